// Package testenv starts a real control plane (kube-apiserver and etcd, via
// envtest) with Latchkey's CRDs and webhooks installed, for integration tests.
package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/pkg/devenv/controlplane"
)

// Env is a running control plane for tests.
type Env struct {
	*controlplane.ControlPlane
}

// RepoRoot is the root of the repository.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
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
	// Webhooks installs the admission webhook; a manager in the test must
	// serve it with ServingOptions() (in process) or ServingFlags() (the
	// manager binary).
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
	cp, err := controlplane.Start(controlplane.Options{
		AssetsDir: assets, Webhooks: opts.Webhooks, TokenWebhook: opts.TokenWebhook,
	})
	if err != nil {
		return nil, err
	}
	e, err := Wrap(cp)
	if err != nil {
		_ = cp.Stop()
	}
	return e, err
}

// Wrap gives a running control plane the test helpers, with a client that
// is not throttled: tests create many objects quickly, and client-side
// throttling would only measure itself.
func Wrap(cp *controlplane.ControlPlane) (*Env, error) {
	cfg := rest.CopyConfig(cp.Config)
	cfg.QPS, cfg.Burst = 500, 1000
	c, err := client.New(cfg, client.Options{Scheme: cp.Scheme})
	if err != nil {
		return nil, err
	}
	wrapped := *cp
	wrapped.Client = c
	return &Env{ControlPlane: &wrapped}, nil
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

// InstallDocs splits dist/install.yaml into its documents, by kind.
func InstallDocs(tb testing.TB) map[string][]string {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(RepoRoot(), "dist", "install.yaml"))
	if err != nil {
		tb.Fatalf("%v: run make build-installer", err)
	}
	return DocsByKind(string(b))
}

// DocsByKind splits a multi-document manifest, as kustomize writes it, into
// its documents, by kind.
func DocsByKind(manifest string) map[string][]string {
	docs := map[string][]string{}
	for _, doc := range strings.Split(manifest, "\n---\n") {
		var head struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil || head.Kind == "" {
			continue
		}
		docs[head.Kind] = append(docs[head.Kind], doc)
	}
	return docs
}

// ForgedAdmissionReview is what an attacker who knows an ApiKey's name and
// UID (they are in events, Secret ownerReferences and TokenReview answers)
// sends to switch its key off, had they no need of kube-apiserver's
// credentials: an AdmissionReview of a DELETE, or of an UPDATE turning
// spec.revoked on.
func ForgedAdmissionReview(key *authv1alpha1.ApiKey, op admissionv1.Operation) ([]byte, error) {
	raw := func(k *authv1alpha1.ApiKey) (k8sruntime.RawExtension, error) {
		b, err := json.Marshal(k)
		return k8sruntime.RawExtension{Raw: b}, err
	}
	gv := authv1alpha1.GroupVersion
	req := &admissionv1.AdmissionRequest{
		UID:       "forged",
		Kind:      metav1.GroupVersionKind{Group: gv.Group, Version: gv.Version, Kind: "ApiKey"},
		Resource:  metav1.GroupVersionResource{Group: gv.Group, Version: gv.Version, Resource: "apikeys"},
		Name:      key.Name,
		Namespace: key.Namespace,
		Operation: op,
	}
	var err error
	if req.OldObject, err = raw(key); err != nil {
		return nil, err
	}
	if op == admissionv1.Update {
		revoked := key.DeepCopy()
		revoked.Spec.Revoked = true
		if req.Object, err = raw(revoked); err != nil {
			return nil, err
		}
	}
	return json.Marshal(&admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request:  req,
	})
}

// AdmissionPath is where the ApiKey admission webhook is served.
const AdmissionPath = "/validate-auth-latchkey-dev-v1alpha1-apikey"

// Main is a TestMain for a package whose tests need a control plane: it
// starts one with o, hands it to use (which may start what the tests talk
// to), runs the tests, stops the control plane and exits with their code.
func Main(m *testing.M, o Options, use func(*Env) error) {
	e, err := Start(o)
	if err == nil {
		if err = use(e); err != nil {
			_ = e.Stop()
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if err := e.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.Exit(code)
}
