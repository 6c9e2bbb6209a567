// Package controlplane starts etcd and kube-apiserver (envtest's binaries)
// with Latchkey's CRDs and admission webhook configuration installed: the
// part of a local Latchkey that is not the operator itself.
package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/latchkey-dev/latchkey/config/crd"
	"github.com/latchkey-dev/latchkey/config/webhook"
	"github.com/latchkey-dev/latchkey/internal/certs"
	"github.com/latchkey-dev/latchkey/internal/scheme"
	"github.com/latchkey-dev/latchkey/internal/serving"
)

// Options say what the control plane is started with.
type Options struct {
	// AssetsDir holds kube-apiserver, etcd and kubectl (`make envtest`).
	AssetsDir string
	// Webhooks installs the admission webhook, pointing at 127.0.0.1 on
	// AdmissionPort with a local CA, and gives kube-apiserver a client
	// certificate for it; something must serve it (the operator, with
	// ServingOptions or ServingFlags).
	Webhooks bool
	// TokenWebhook points kube-apiserver's webhook token authenticator at
	// /tokenreview on the webhook server (implies Webhooks), with a 1s cache.
	TokenWebhook bool
	// FeatureGates, when set, is kube-apiserver's --feature-gates.
	FeatureGates string
}

// ControlPlane is a running etcd and kube-apiserver with Latchkey's CRDs.
type ControlPlane struct {
	Environment *envtest.Environment
	// Config is an admin rest.Config; Client uses it, with no cache.
	Config *rest.Config
	Scheme *k8sruntime.Scheme
	Client client.Client
	// WebhookCertDir holds the webhook server's certificate (tls.crt,
	// tls.key) and WebhookCA the CA that signed it, when webhooks are on.
	WebhookCertDir string
	WebhookCA      []byte
	// AdmissionClientCA is the file of the CA that signed kube-apiserver's
	// client certificate for the admission webhook: the operator's
	// --admission-client-ca.
	AdmissionClientCA string
	// verificationPort is where the verification endpoints (and the token
	// webhook) are served.
	verificationPort int
	// extAuthzPort is where Envoy's ext_authz is served over gRPC.
	extAuthzPort int
	tokenWebhook bool
}

// Start starts etcd and kube-apiserver and installs the CRDs (and webhook
// configuration).
func Start(o Options) (*ControlPlane, error) {
	if o.AssetsDir == "" {
		return nil, errors.New("no envtest assets: run `make envtest` and set KUBEBUILDER_ASSETS to the directory it prints")
	}
	crds, err := embeddedCRDs()
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{BinaryAssetsDirectory: o.AssetsDir, CRDs: crds}
	cp := &ControlPlane{Environment: env, Scheme: scheme.New(), tokenWebhook: o.TokenWebhook}
	if o.Webhooks || o.TokenWebhook {
		vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{}
		if err := yaml.UnmarshalStrict(webhook.Manifests, vwc); err != nil {
			return nil, fmt.Errorf("reading the webhook configuration: %w", err)
		}
		env.WebhookInstallOptions = envtest.WebhookInstallOptions{
			ValidatingWebhooks: []*admissionregistrationv1.ValidatingWebhookConfiguration{vwc},
			LocalServingHost:   "127.0.0.1",
		}
		// The serving certificate and port must be known before
		// kube-apiserver starts, to write its token webhook configuration;
		// and envtest's own CA cannot sign for OpenSSL clients such as nginx.
		if cp.WebhookCertDir, err = os.MkdirTemp("", "latchkey-webhook-certs-"); err != nil {
			return nil, err
		}
		if cp.WebhookCA, err = certs.WriteLocal(cp.WebhookCertDir); err != nil {
			return nil, err
		}
		if env.WebhookInstallOptions.LocalServingPort, err = FreePort(); err != nil {
			return nil, err
		}
		if cp.verificationPort, err = FreePort(); err != nil {
			return nil, err
		}
		if cp.extAuthzPort, err = FreePort(); err != nil {
			return nil, err
		}
		file, err := cp.writeAdmissionConfig()
		if err != nil {
			return nil, err
		}
		env.ControlPlane.GetAPIServer().Configure().Set("admission-control-config-file", file)
	}
	if o.TokenWebhook {
		file, err := writeTokenWebhookConfig(cp.WebhookCertDir, cp.WebhookCA, cp.WebhookPort())
		if err != nil {
			return nil, err
		}
		env.ControlPlane.GetAPIServer().Configure().
			Set("authentication-token-webhook-config-file", file).
			Set("authentication-token-webhook-cache-ttl", "1s").
			Set("authentication-token-webhook-version", "v1")
	}
	if o.FeatureGates != "" {
		env.ControlPlane.GetAPIServer().Configure().Set("feature-gates", o.FeatureGates)
	}
	if cp.Config, err = env.Start(); err != nil {
		return nil, fmt.Errorf("starting etcd and kube-apiserver: %w", err)
	}
	if cp.Client, err = client.New(cp.Config, client.Options{Scheme: cp.Scheme}); err != nil {
		_ = cp.Stop()
		return nil, err
	}
	if cp.WebhookCA != nil {
		if err := cp.trustWebhookCA(); err != nil {
			_ = cp.Stop()
			return nil, err
		}
	}
	return cp, nil
}

// WebhookHost is where the webhook configurations point.
func (cp *ControlPlane) WebhookHost() string {
	return cp.Environment.WebhookInstallOptions.LocalServingHost
}

// WebhookPort is the port of the verification endpoints, where the token
// webhook points.
func (cp *ControlPlane) WebhookPort() int { return cp.verificationPort }

// ExtAuthzPort is the port of Envoy's ext_authz over gRPC, served with
// the endpoints' certificate.
func (cp *ControlPlane) ExtAuthzPort() int { return cp.extAuthzPort }

// ExtAuthzAddress is where Envoy's ext_authz is served: host:port.
func (cp *ControlPlane) ExtAuthzAddress() string {
	return net.JoinHostPort(cp.WebhookHost(), strconv.Itoa(cp.extAuthzPort))
}

// AdmissionPort is the port the admission webhook configuration points at.
func (cp *ControlPlane) AdmissionPort() int {
	return cp.Environment.WebhookInstallOptions.LocalServingPort
}

// ServingOptions serve what this control plane's webhook configurations
// point at, requiring its kube-apiserver's client certificate for
// admission.
func (cp *ControlPlane) ServingOptions() serving.Options {
	return cp.ServingOptionsOn(cp.WebhookPort(), cp.AdmissionPort())
}

// ServingOptionsOn is ServingOptions on other ports, for a second server
// beside the one the configurations point at.
func (cp *ControlPlane) ServingOptionsOn(verificationPort, admissionPort int) serving.Options {
	return serving.Options{
		Host: cp.WebhookHost(), VerificationPort: verificationPort, AdmissionPort: admissionPort,
		CertDir: cp.WebhookCertDir, AdmissionClientCA: cp.AdmissionClientCA,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }},
	}
}

// ServingFlags are the manager binary's flags for ServingOptions, with
// ext_authz on ExtAuthzAddress.
func (cp *ControlPlane) ServingFlags() []string {
	return cp.servingFlags(cp.WebhookPort(), cp.AdmissionPort(), cp.ExtAuthzAddress())
}

// ServingFlagsOn are the manager binary's flags for ServingOptionsOn, with
// ext_authz on any free loopback port.
func (cp *ControlPlane) ServingFlagsOn(verificationPort, admissionPort int) []string {
	return cp.servingFlags(verificationPort, admissionPort, net.JoinHostPort(cp.WebhookHost(), "0"))
}

func (cp *ControlPlane) servingFlags(verificationPort, admissionPort int, extAuthz string) []string {
	return []string{
		"--webhook-port", strconv.Itoa(verificationPort), "--admission-port", strconv.Itoa(admissionPort),
		"--webhook-cert-path", cp.WebhookCertDir, "--admission-client-ca", cp.AdmissionClientCA,
		"--ext-authz-bind-address", extAuthz,
	}
}

// Stop stops kube-apiserver and etcd and removes their data.
func (cp *ControlPlane) Stop() error {
	if cp.WebhookCertDir != "" {
		defer func() { _ = os.RemoveAll(cp.WebhookCertDir) }()
	}
	return cp.Environment.Stop()
}

// WriteAdminKubeconfig writes a kubeconfig for an admin of the control plane.
func (cp *ControlPlane) WriteAdminKubeconfig(file string) error {
	user, err := cp.Environment.ControlPlane.AddUser(envtest.User{Name: "latchkey-dev-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return err
	}
	return os.WriteFile(file, kc, 0o600)
}

// trustWebhookCA points the installed webhook configurations at the
// certs CA instead of envtest's.
func (cp *ControlPlane) trustWebhookCA() error {
	ctx := context.Background()
	var list admissionregistrationv1.ValidatingWebhookConfigurationList
	if err := cp.Client.List(ctx, &list); err != nil {
		return err
	}
	for i := range list.Items {
		vwc := &list.Items[i]
		for j := range vwc.Webhooks {
			vwc.Webhooks[j].ClientConfig.CABundle = cp.WebhookCA
		}
		if err := cp.Client.Update(ctx, vwc); err != nil {
			return err
		}
	}
	return nil
}

func embeddedCRDs() ([]*apiextensionsv1.CustomResourceDefinition, error) {
	var crds []*apiextensionsv1.CustomResourceDefinition
	err := fs.WalkDir(crd.Bases, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		f, err := crd.Bases.Open(path)
		if err != nil {
			return err
		}
		defer func() { _ = f.Close() }()
		c := &apiextensionsv1.CustomResourceDefinition{}
		if err := utilyaml.NewYAMLOrJSONDecoder(f, 4096).Decode(c); err != nil {
			return fmt.Errorf("reading %s: %w", path, err)
		}
		crds = append(crds, c)
		return nil
	})
	return crds, err
}

// FreePort is a loopback port nothing listens on, for a server to take.
// It is drawn from 20000–32767, below the kernel's ephemeral ports
// (32768–60999 on Linux, 49152–65535 on macOS): a port the kernel hands a
// listener on :0 is free only until it hands it again to the next
// outgoing connection, which with test binaries running side by side it
// did ("bind: address already in use"). Below that range only another
// draw can take it, in the seconds between a draw and the server binding
// (a control plane starts in between), which it also did, in this process
// or another: a draw claims its port for claimFor. :0 is the fallback.
func FreePort() (int, error) {
	claims := filepath.Join(os.TempDir(), "latchkey-ports")
	if err := os.MkdirAll(claims, 0o700); err != nil {
		return 0, err
	}
	for range 100 {
		port := 20000 + rand.IntN(32768-20000)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		_ = l.Close()
		if claim(claims, port) {
			return port, nil
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// claimFor is how long a drawn port stays another draw's to skip: more than
// a control plane takes to start before the server binds it.
const claimFor = 2 * time.Minute

// claim takes port for claimFor unless another draw holds it: a file
// created exclusively in dir, whose age says when the claim lapses.
func claim(dir string, port int) bool {
	path := filepath.Join(dir, strconv.Itoa(port))
	if fi, err := os.Stat(path); err == nil {
		if time.Since(fi.ModTime()) < claimFor {
			return false
		}
		_ = os.Remove(path)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return false
	}
	return f.Close() == nil
}

// writeAdmissionConfig gives kube-apiserver a client certificate for the
// admission webhook, as a cluster's administrator would: an
// AdmissionConfiguration whose webhook kubeconfig has a user named by the
// webhook's host:port, which kube-apiserver looks up for each call. It
// writes the CA for the operator's --admission-client-ca too.
func (cp *ControlPlane) writeAdmissionConfig() (string, error) {
	ca, err := certs.NewAuthority("latchkey-local-admission-client-ca", time.Now(), 365*24*time.Hour)
	if err != nil {
		return "", err
	}
	cert, key, err := ca.IssueClient("kube-apiserver", time.Now(), 365*24*time.Hour)
	if err != nil {
		return "", err
	}
	cp.AdmissionClientCA = filepath.Join(cp.WebhookCertDir, "admission-client-ca.crt")
	if err := os.WriteFile(cp.AdmissionClientCA, ca.CertPEM, 0o600); err != nil {
		return "", err
	}
	kc := clientcmdapi.NewConfig()
	kc.AuthInfos[net.JoinHostPort(cp.WebhookHost(), strconv.Itoa(cp.AdmissionPort()))] = &clientcmdapi.AuthInfo{
		ClientCertificateData: cert, ClientKeyData: key,
	}
	kubeconfig := filepath.Join(cp.WebhookCertDir, "admission-webhooks.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		return "", err
	}
	webhookConfig := map[string]any{
		"apiVersion":     "apiserver.config.k8s.io/v1",
		"kind":           "WebhookAdmissionConfiguration",
		"kubeConfigFile": kubeconfig,
	}
	config, err := yaml.Marshal(map[string]any{
		"apiVersion": "apiserver.config.k8s.io/v1",
		"kind":       "AdmissionConfiguration",
		"plugins": []map[string]any{
			{"name": "ValidatingAdmissionWebhook", "configuration": webhookConfig},
			{"name": "MutatingAdmissionWebhook", "configuration": webhookConfig},
		},
	})
	if err != nil {
		return "", err
	}
	file := filepath.Join(cp.WebhookCertDir, "admission-configuration.yaml")
	return file, os.WriteFile(file, config, 0o600)
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
