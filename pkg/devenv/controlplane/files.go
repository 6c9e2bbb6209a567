package controlplane

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/latchkey-dev/latchkey/internal/plugin/clusterext"
)

// Endpoint is the base URL of the verification endpoints, such as
// https://127.0.0.1:40123 (/authorize, /tokenreview, /whoami, /v1/executions).
func (cp *ControlPlane) Endpoint() string {
	return fmt.Sprintf("https://%s:%d", cp.WebhookHost(), cp.WebhookPort())
}

// HTTPClient trusts the endpoints' certificate.
func (cp *ControlPlane) HTTPClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cp.WebhookCA)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}
}

// APIServerAudiences are the audiences kube-apiserver's token webhook asks
// for: its own, which defaults to its service account issuer (envtest's is
// its own URL). None without the token webhook.
func (cp *ControlPlane) APIServerAudiences() []string {
	if !cp.tokenWebhook {
		return nil
	}
	return []string{cp.Environment.ControlPlane.APIServer.SecureServing.URL("https", "/").String()}
}

// Files are what WriteFiles wrote.
type Files struct {
	Kubeconfig, CA, Endpoint string
	// ExtAuthzEndpoint holds ExtAuthzAddress, host:port, served with CA.
	ExtAuthzEndpoint string
	// KeyKubeconfig names the cluster but holds no credentials, for
	// `kubectl --kubeconfig KeyKubeconfig --token=KEY`.
	KeyKubeconfig string
}

// WriteFiles writes an admin kubeconfig, the endpoints' CA, the
// endpoints' base URL and ext_authz's host:port into dir, for people and
// scripts to use. The kubeconfig's cluster names the endpoints too (clusterext), for `kubectl
// latchkey whoami`.
func (cp *ControlPlane) WriteFiles(dir string) (Files, error) {
	f := Files{
		Kubeconfig: filepath.Join(dir, "kubeconfig"),
		CA:         filepath.Join(dir, "ca.crt"),
		Endpoint:   filepath.Join(dir, "endpoint"),

		ExtAuthzEndpoint: filepath.Join(dir, "ext-authz-endpoint"),

		KeyKubeconfig: filepath.Join(dir, "key-kubeconfig"),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, err
	}
	if err := cp.WriteAdminKubeconfig(f.Kubeconfig); err != nil {
		return f, err
	}
	if err := cp.nameEndpoints(f.Kubeconfig); err != nil {
		return f, err
	}
	if err := writeKeyKubeconfig(f.Kubeconfig, f.KeyKubeconfig); err != nil {
		return f, err
	}
	if err := os.WriteFile(f.CA, cp.WebhookCA, 0o600); err != nil {
		return f, err
	}
	if err := os.WriteFile(f.ExtAuthzEndpoint, []byte(cp.ExtAuthzAddress()+"\n"), 0o600); err != nil {
		return f, err
	}
	return f, os.WriteFile(f.Endpoint, []byte(cp.Endpoint()+"\n"), 0o600)
}

// writeKeyKubeconfig writes the admin kubeconfig with no credentials, for
// `kubectl --token=KEY`: with the admin's client certificate beside it, the
// certificate would win and kubectl would speak as the admin.
func writeKeyKubeconfig(admin, file string) error {
	cfg, err := clientcmd.LoadFromFile(admin)
	if err != nil {
		return err
	}
	for name := range cfg.AuthInfos {
		cfg.AuthInfos[name] = clientcmdapi.NewAuthInfo()
	}
	return clientcmd.WriteToFile(*cfg, file)
}

// nameEndpoints names the endpoints in every cluster of the kubeconfig.
func (cp *ControlPlane) nameEndpoints(kubeconfig string) error {
	cfg, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		return err
	}
	for _, c := range cfg.Clusters {
		if err := clusterext.Set(c, clusterext.Endpoints{URL: cp.Endpoint(), CertificateAuthorityData: cp.WebhookCA}); err != nil {
			return err
		}
	}
	return clientcmd.WriteToFile(*cfg, kubeconfig)
}
