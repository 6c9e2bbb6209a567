// Package clusterext is how a kubeconfig names Latchkey's endpoints for
// `kubectl latchkey whoami`: an extension of the cluster entry, written
// by whoever wrote the kubeconfig (`make dev` does), so that the plugin
// never takes an endpoint from the directory it runs in.
package clusterext

import (
	"encoding/json"
	"fmt"

	"k8s.io/apimachinery/pkg/runtime"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Name is the extension's name in a cluster entry's extensions.
const Name = "latchkey.dev/endpoints"

// Endpoints are Latchkey's endpoints as a kubeconfig names them:
//
//	clusters:
//	- name: dev
//	  cluster:
//	    server: https://127.0.0.1:6443
//	    extensions:
//	    - name: latchkey.dev/endpoints
//	      extension:
//	        url: https://127.0.0.1:9443
//	        certificate-authority-data: LS0t…
type Endpoints struct {
	// URL is the endpoints' base URL.
	URL string `json:"url"`
	// CertificateAuthorityData is the PEM CA that signed the endpoints'
	// certificate; empty: the system's roots.
	CertificateAuthorityData []byte `json:"certificate-authority-data,omitempty"`
}

// Set names the endpoints in the cluster entry.
func Set(c *clientcmdapi.Cluster, e Endpoints) error {
	raw, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if c.Extensions == nil {
		c.Extensions = map[string]runtime.Object{}
	}
	c.Extensions[Name] = &runtime.Unknown{Raw: raw, ContentType: runtime.ContentTypeJSON}
	return nil
}

// Get reads the endpoints the cluster entry names, if it names any.
func Get(c *clientcmdapi.Cluster) (Endpoints, bool, error) {
	var e Endpoints
	obj, ok := c.Extensions[Name]
	if !ok {
		return e, false, nil
	}
	u, ok := obj.(*runtime.Unknown)
	if !ok {
		return e, false, fmt.Errorf("the kubeconfig's extension %s is a %T, not JSON", Name, obj)
	}
	if err := json.Unmarshal(u.Raw, &e); err != nil {
		return e, false, fmt.Errorf("reading the kubeconfig's extension %s: %w", Name, err)
	}
	if e.URL == "" {
		return e, false, fmt.Errorf("the kubeconfig's extension %s has no url", Name)
	}
	return e, true, nil
}
