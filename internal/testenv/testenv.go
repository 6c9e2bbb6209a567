// Package testenv starts a real control plane (kube-apiserver and etcd, via
// envtest) with Latchkey's CRDs and webhooks installed, for integration tests.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/devcerts"
)

// Env is a running control plane.
type Env struct {
	Environment *envtest.Environment
	Config      *rest.Config
	Scheme      *k8sruntime.Scheme
	// Client talks to the API server directly, with no cache.
	Client client.Client
	// WebhookCertDir holds the webhook server's certificate (devcerts
	// layout) and WebhookCA the CA that signed it, when webhooks are on.
	WebhookCertDir string
	WebhookCA      []byte
}

// RepoRoot is the root of the repository.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Scheme holds the kinds Latchkey uses.
func Scheme() *k8sruntime.Scheme {
	s := k8sruntime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := authv1alpha1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// Assets returns the directory of the envtest binaries: KUBEBUILDER_ASSETS,
// or what hack/envtest.sh builds or finds in its cache.
func Assets() (string, error) {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir, nil
	}
	var stderr bytes.Buffer
	cmd := exec.Command("bash", filepath.Join(RepoRoot(), "hack", "envtest.sh"))
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("hack/envtest.sh: %w: %s", err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

// Options says what to install besides the CRDs.
type Options struct {
	// Webhooks installs config/webhook; a manager in the test must serve them
	// on Environment.WebhookInstallOptions' host, port and certificates.
	Webhooks bool
	// TokenWebhook points kube-apiserver's webhook token authenticator at
	// /tokenreview on the webhook server (implies Webhooks), with a 1s cache.
	TokenWebhook bool
}

// Start starts a control plane. Call it from TestMain and Stop it after.
func Start(opts Options) (*Env, error) {
	assets, err := Assets()
	if err != nil {
		return nil, err
	}
	root := RepoRoot()
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	if opts.Webhooks || opts.TokenWebhook {
		env.WebhookInstallOptions = envtest.WebhookInstallOptions{
			Paths:            []string{filepath.Join(root, "config", "webhook")},
			LocalServingHost: "127.0.0.1",
		}
	}
	var certDir string
	var ca []byte
	if opts.Webhooks || opts.TokenWebhook {
		// The serving certificate and port must be known before
		// kube-apiserver starts, to write its token webhook configuration.
		// envtest's own CA cannot sign for OpenSSL clients such as nginx,
		// so the webhook server uses certificates from devcerts.
		if certDir, err = os.MkdirTemp("", "latchkey-webhook-certs-"); err != nil {
			return nil, err
		}
		if ca, err = devcerts.Write(certDir); err != nil {
			return nil, err
		}
		if env.WebhookInstallOptions.LocalServingPort, err = freePort(); err != nil {
			return nil, err
		}
	}
	if opts.TokenWebhook {
		file, err := writeTokenWebhookConfig(certDir, ca, env.WebhookInstallOptions.LocalServingPort)
		if err != nil {
			return nil, err
		}
		env.ControlPlane.GetAPIServer().Configure().
			Set("authentication-token-webhook-config-file", file).
			Set("authentication-token-webhook-cache-ttl", "1s").
			Set("authentication-token-webhook-version", "v1")
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting envtest: %w", err)
	}
	// Tests create many objects quickly; client-side throttling would only
	// measure itself.
	cfg.QPS, cfg.Burst = 500, 1000
	s := Scheme()
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	e := &Env{Environment: env, Config: cfg, Scheme: s, Client: c, WebhookCertDir: certDir, WebhookCA: ca}
	if ca != nil {
		if err := e.trustWebhookCA(); err != nil {
			_ = env.Stop()
			return nil, err
		}
	}
	return e, nil
}

// trustWebhookCA points the installed webhook configurations at the
// devcerts CA instead of envtest's.
func (e *Env) trustWebhookCA() error {
	ctx := context.Background()
	var list admissionregistrationv1.ValidatingWebhookConfigurationList
	if err := e.Client.List(ctx, &list); err != nil {
		return err
	}
	for i := range list.Items {
		vwc := &list.Items[i]
		for j := range vwc.Webhooks {
			vwc.Webhooks[j].ClientConfig.CABundle = e.WebhookCA
		}
		if err := e.Client.Update(ctx, vwc); err != nil {
			return err
		}
	}
	return nil
}

// WebhookHost and WebhookPort are where a test's manager must serve webhooks.
func (e *Env) WebhookHost() string { return e.Environment.WebhookInstallOptions.LocalServingHost }

// WebhookPort is the port the webhook configurations point at.
func (e *Env) WebhookPort() int { return e.Environment.WebhookInstallOptions.LocalServingPort }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// writeTokenWebhookConfig writes the kubeconfig-format file that tells
// kube-apiserver where to send TokenReviews.
func writeTokenWebhookConfig(dir string, ca []byte, port int) (string, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["latchkey"] = &clientcmdapi.Cluster{
		Server:                   fmt.Sprintf("https://127.0.0.1:%d/tokenreview", port),
		CertificateAuthorityData: ca,
	}
	cfg.AuthInfos["kube-apiserver"] = &clientcmdapi.AuthInfo{}
	cfg.Contexts["webhook"] = &clientcmdapi.Context{Cluster: "latchkey", AuthInfo: "kube-apiserver"}
	cfg.CurrentContext = "webhook"
	file := filepath.Join(dir, "token-webhook.kubeconfig")
	return file, clientcmd.WriteToFile(*cfg, file)
}

// Stop stops the control plane.
func (e *Env) Stop() error {
	if e.WebhookCertDir != "" {
		defer func() { _ = os.RemoveAll(e.WebhookCertDir) }()
	}
	return e.Environment.Stop()
}

// Namespace creates a namespace for one test and deletes it afterwards.
func (e *Env) Namespace(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "t-" + hex.EncodeToString(b)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Client.Create(ctx, ns); err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	t.Cleanup(func() { _ = e.Client.Delete(context.Background(), ns) })
	return name
}

// Kubectl runs the envtest kubectl as the admin user, with stdin as input.
func (e *Env) Kubectl(stdin string, args ...string) (stdout, stderr string, err error) {
	user, err := e.Environment.ControlPlane.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return "", "", err
	}
	k, err := user.Kubectl()
	if err != nil {
		return "", "", err
	}
	var out, errOut bytes.Buffer
	cmd := exec.Command(k.Path, append(append([]string{}, k.Opts...), args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// KubectlWithToken runs kubectl against the API server authenticating with
// a bearer token only, as a key holder would. The token is passed in a
// kubeconfig file, never on a command line that could be logged.
func (e *Env) KubectlWithToken(token string, args ...string) (stdout, stderr string, err error) {
	dir, err := os.MkdirTemp("", "latchkey-kubectl-")
	if err != nil {
		return "", "", err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["envtest"] = &clientcmdapi.Cluster{Server: e.Config.Host, CertificateAuthorityData: e.Config.CAData}
	cfg.AuthInfos["holder"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["holder"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "holder"}
	cfg.CurrentContext = "holder"
	file := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, file); err != nil {
		return "", "", err
	}
	var out, errOut bytes.Buffer
	cmd := exec.Command(filepath.Join(e.Environment.BinaryAssetsDirectory, "kubectl"), append([]string{"--kubeconfig", file}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}
