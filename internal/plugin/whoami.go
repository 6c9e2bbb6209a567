package plugin

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/latchkey-dev/latchkey/internal/plugin/clusterext"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

const whoAmILong = `Show which tenant and key an API key resolves to, by asking Latchkey's
/whoami endpoint. The key comes from LATCHKEY_API_KEY or --key-file. The
endpoint comes from --endpoint (or LATCHKEY_ENDPOINT) with --ca-file, from
the kubeconfig's cluster (its extension latchkey.dev/endpoints, which make
dev writes into bin/dev/kubeconfig), and from nowhere else: not from a file
in the current directory, which could name a server of its own and receive
your key, nor from a guess. Redirects are not followed.`

func newWhoAmI(o *Options) *cobra.Command {
	var keyFile, endpoint, caFile string
	cmd := &cobra.Command{
		Use:   "whoami",
		Short: "Show which tenant and key an API key resolves to",
		Long:  whoAmILong,
		Example: `  LATCHKEY_API_KEY=lk_… kubectl latchkey whoami
  kubectl latchkey whoami --key-file ./key --endpoint https://latchkey.example.internal --ca-file ca.crt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := readKey(keyFile)
			if err != nil {
				return err
			}
			url, ca, err := o.endpoint(endpoint, caFile)
			if err != nil {
				return err
			}
			httpClient, err := whoAmIClient(ca)
			if err != nil {
				return err
			}
			if _, ok := protocol.BearerToken(protocol.Bearer(key)); !ok {
				return errors.New("the key holds characters no Latchkey key has: check it is complete and unquoted")
			}
			who, err := askWhoAmI(httpClient, url, key)
			if err != nil {
				return err
			}
			printWhoAmI(o.Streams.Out, who)
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key-file", "", "Read the key from this file instead of LATCHKEY_API_KEY.")
	cmd.Flags().StringVar(&endpoint, "endpoint", os.Getenv("LATCHKEY_ENDPOINT"), "Base URL of Latchkey's endpoints.")
	cmd.Flags().StringVar(&caFile, "ca-file", os.Getenv("LATCHKEY_CA_FILE"), "CA certificate that signed the endpoints' certificate.")
	return cmd
}

// readKey is the key from keyFile, or else from LATCHKEY_API_KEY.
func readKey(keyFile string) (string, error) {
	key := os.Getenv("LATCHKEY_API_KEY")
	if keyFile != "" {
		b, err := os.ReadFile(keyFile)
		if err != nil {
			return "", fmt.Errorf("reading --key-file: %w", err)
		}
		key = strings.TrimSpace(string(b))
	}
	if key == "" {
		return "", fmt.Errorf("no key: set LATCHKEY_API_KEY or pass --key-file")
	}
	return key, nil
}

// whoAmIClient trusts ca (nil: the system's roots) and follows no
// redirect: one could carry the key to a URL nobody configured.
func whoAmIClient(ca []byte) (*http.Client, error) {
	httpClient := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	if ca != nil {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ca) {
			return nil, errors.New("the endpoints' CA holds no PEM certificate")
		}
		httpClient.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	}
	return httpClient, nil
}

// askWhoAmI sends key to url's /whoami, turning a refusal into advice on
// what to check.
func askWhoAmI(httpClient *http.Client, url, key string) (protocol.WhoAmI, error) {
	var who protocol.WhoAmI
	whoami := strings.TrimRight(url, "/") + protocol.PathWhoAmI
	req, _ := http.NewRequest(http.MethodGet, whoami, nil)
	req.Header.Set("Authorization", protocol.Bearer(key))
	resp, err := httpClient.Do(req)
	if err != nil {
		return who, fmt.Errorf("calling %s: %w", whoami, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode == http.StatusUnauthorized {
		reason := strings.TrimSpace(string(body))
		return who, fmt.Errorf("the key was refused (%s): check it is complete and Active with `kubectl latchkey list`", reason)
	}
	if resp.StatusCode != http.StatusOK {
		return who, fmt.Errorf("%s answered %d: %s", whoami, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, &who); err != nil {
		return who, fmt.Errorf("reading the answer of %s: %w", protocol.PathWhoAmI, err)
	}
	return who, nil
}

func printWhoAmI(w io.Writer, who protocol.WhoAmI) {
	expires := "never"
	if who.ExpiresAt != nil {
		expires = who.ExpiresAt.UTC().Format(time.RFC3339)
	}
	scopes := "none"
	if len(who.Scopes) > 0 {
		scopes = strings.Join(who.Scopes, ", ")
	}
	fmt.Fprintf(w, "Tenant:   %s\nKey:      %s (%s)\nCreated:  %s\nExpires:  %s\nScopes:   %s\n",
		who.Tenant, who.KeyName, who.KeyHint, who.CreatedAt.UTC().Format(time.RFC3339), expires, scopes)
}

// endpoint finds Latchkey's endpoints and the CA of their certificate
// (nil: the system's roots): the flag, or the kubeconfig's cluster.
func (o *Options) endpoint(flagURL, flagCA string) (string, []byte, error) {
	ca, err := readCA(flagCA)
	if err != nil {
		return "", nil, err
	}
	if flagURL != "" {
		return flagURL, ca, nil
	}
	named, ok, err := o.kubeconfigEndpoints()
	if err != nil {
		return "", nil, err
	}
	if !ok {
		return "", nil, errors.New("no endpoint: pass --endpoint (or set LATCHKEY_ENDPOINT) with --ca-file, such as https://latchkey-webhook-service.latchkey-system.svc inside the cluster, or name it in the kubeconfig's cluster (extension " + clusterext.Name + ")")
	}
	if ca == nil {
		ca = named.CertificateAuthorityData
	}
	return named.URL, ca, nil
}

func readCA(file string) ([]byte, error) {
	if file == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading --ca-file: %w", err)
	}
	return pem, nil
}

// kubeconfigEndpoints are the endpoints the kubeconfig's cluster names, as
// kubectl picks the cluster: --cluster, or the context's.
func (o *Options) kubeconfigEndpoints() (clusterext.Endpoints, bool, error) {
	raw, err := o.Flags.ToRawKubeConfigLoader().RawConfig()
	if err != nil {
		return clusterext.Endpoints{}, false, fmt.Errorf("reading the kubeconfig: %w", err)
	}
	current := raw.CurrentContext
	if o.Flags.Context != nil && *o.Flags.Context != "" {
		current = *o.Flags.Context
	}
	cluster := ""
	if c, ok := raw.Contexts[current]; ok {
		cluster = c.Cluster
	}
	if o.Flags.ClusterName != nil && *o.Flags.ClusterName != "" {
		cluster = *o.Flags.ClusterName
	}
	c, ok := raw.Clusters[cluster]
	if !ok {
		return clusterext.Endpoints{}, false, nil
	}
	return clusterext.Get(c)
}
