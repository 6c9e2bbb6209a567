package replicas

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/latchkey-dev/latchkey/internal/certs"
)

// TestPeerCallsAreAuthenticated: only a holder of the replicas' own
// certificate can fence a key on a replica. Without a client certificate,
// with one of another authority (a client certificate, and one naming the
// replicas' host as theirs does), or over plain HTTP, a well-formed fence
// call is refused before any handler runs, and the key stays usable; with
// the shared certificate it answers 200 naming the replica and fences the
// key there (and only there), and a malformed body answers 400.
func TestPeerCallsAreAuthenticated(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	target, other := replicas[1], replicas[0]
	key, raw := mint(t, ns, "fenced", replicas)
	fence, err := json.Marshal(map[string]any{
		"apiKey": map[string]any{"namespace": key.Namespace, "name": key.Name, "uid": key.UID, "generation": key.Generation},
		"stop":   map[string]any{"revoked": true},
	})
	g.Expect(err).NotTo(HaveOccurred())
	fenceURL := target.fenceURL() + "/v1/fence"

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(env.WebhookCA)
	shared, err := tls.LoadX509KeyPair(filepath.Join(env.WebhookCertDir, certs.CertFile), filepath.Join(env.WebhookCertDir, certs.KeyFile))
	g.Expect(err).NotTo(HaveOccurred())
	intruder, err := certs.NewAuthority("intruder-ca", time.Now(), time.Hour)
	g.Expect(err).NotTo(HaveOccurred())
	pair := func(cert, key []byte, err error) []tls.Certificate {
		g.Expect(err).NotTo(HaveOccurred())
		c, err := tls.X509KeyPair(cert, key)
		g.Expect(err).NotTo(HaveOccurred())
		return []tls.Certificate{c}
	}
	with := func(certificates []tls.Certificate) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certificates, MinVersion: tls.VersionTLS12},
		}}
	}
	for name, c := range map[string]*http.Client{
		"no client certificate":                  with(nil),
		"another authority's client certificate": with(pair(intruder.IssueClient("latchkey", time.Now(), time.Hour))),
		"another authority's certificate for the replicas' names": with(pair(intruder.Issue([]string{"localhost"},
			[]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, time.Now(), time.Hour))),
	} {
		status, _, err := post(c, fenceURL, fence)
		g.Expect(err).To(HaveOccurred(), "%s: the fence call was answered %d", name, status)
	}
	// Go's TLS server answers plain HTTP with a 400 of its own, before
	// any handler.
	status, _, err := post(&http.Client{Timeout: 5 * time.Second}, "http://127.0.0.1:"+strconv.Itoa(target.fencePort)+"/v1/fence", fence)
	if err == nil {
		g.Expect(status).To(Equal(http.StatusBadRequest), "plain HTTP")
	}
	g.Expect(target.authorize(raw)).To(Equal(http.StatusOK), "a refused fence call fenced the key")

	peer := with([]tls.Certificate{shared})
	for name, body := range map[string]string{
		"not JSON":      "{not json",
		"unknown field": strings.Replace(string(fence), `"stop"`, `"halt"`, 1),
		"no uid":        strings.Replace(string(fence), string(key.UID), "", 1),
	} {
		status, answer, err := post(peer, fenceURL, []byte(body))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(status).To(Equal(http.StatusBadRequest), "%s: %s", name, answer)
	}
	g.Expect(target.authorize(raw)).To(Equal(http.StatusOK), "a malformed fence call fenced the key")
	g.Expect(fences(g, peer, target)).NotTo(ContainSubstring(string(key.UID)))

	status, answer, err := post(peer, fenceURL, fence)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(status).To(Equal(http.StatusOK), answer)
	var named struct{ Replica string }
	g.Expect(json.Unmarshal([]byte(answer), &named)).To(Succeed())
	g.Expect(named.Replica).To(HavePrefix(target.name+"/"), "the replica's name and its incarnation")
	// Idempotent: the same fence again is the same fence.
	status, answer, err = post(peer, fenceURL, fence)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(status).To(Equal(http.StatusOK), answer)
	g.Expect(fences(g, peer, target)).To(ContainSubstring(string(key.UID)))
	g.Expect(target.authorize(raw)).To(Equal(http.StatusUnauthorized), "the fence did not hold the key")
	g.Expect(other.authorize(raw)).To(Equal(http.StatusOK), "a fence call to one replica fenced another")
}

// post sends body to url and returns the answer's status and body.
func post(c *http.Client, url string, body []byte) (int, string, error) {
	resp, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// fences is what GET /v1/fences answers on r, which must name r.
func fences(g Gomega, c *http.Client, r *replica) string {
	resp, err := c.Get(r.fenceURL() + "/v1/fences")
	g.Expect(err).NotTo(HaveOccurred())
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK), string(b))
	var named struct{ Replica string }
	g.Expect(json.Unmarshal(b, &named)).To(Succeed())
	// The replica's name and its process's incarnation.
	g.Expect(named.Replica).To(HavePrefix(r.name + "/"))
	return string(b)
}
