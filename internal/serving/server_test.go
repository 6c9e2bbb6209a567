package serving

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/latchkey-dev/latchkey/internal/certs"
	"github.com/latchkey-dev/latchkey/internal/endpoints"
	"github.com/latchkey-dev/latchkey/internal/metrics"
)

// fixture is a running Server on loopback with an echo handler on each
// listener, and a client CA for its admission listener.
type fixture struct {
	s             *Server
	verify, admit string
	ca            *x509.CertPool
	clientCA      *certs.Authority
	clientCAFile  string
}

func start(t *testing.T, tune func(*Options)) *fixture {
	t.Helper()
	dir := t.TempDir()
	caPEM, err := certs.WriteLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	clientCA, err := certs.NewAuthority("test-client-ca", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "client-ca.crt")
	if err := os.WriteFile(caFile, clientCA.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	vp, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	ap, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	o := Options{
		Host: "127.0.0.1", VerificationPort: vp, AdmissionPort: ap, CertDir: dir,
		AdmissionClientCA: caFile,
	}
	if tune != nil {
		tune(&o)
	}
	s := New(o)
	s.UseMetrics(metrics.New(prometheus.NewRegistry()))
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, _ = fmt.Fprintf(w, "%s %d", r.URL.Path, len(b))
	})
	s.Register("/authorize", echo)
	s.Register("/authorize/", echo)
	s.Register("/validate-auth-latchkey-dev-v1alpha1-apikey", echo)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	f := &fixture{s: s, verify: fmt.Sprintf("127.0.0.1:%d", vp), admit: fmt.Sprintf("127.0.0.1:%d", ap), ca: pool, clientCA: clientCA, clientCAFile: caFile}
	for _, addr := range []string{f.verify, f.admit} {
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				_ = c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never listened", addr)
			}
		}
	}
	return f
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (f *fixture) client(cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: f.ca, MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

func (f *fixture) clientCert(t *testing.T, ca *certs.Authority, name string) *tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := ca.IssueClient(name, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &c
}

func post(c *http.Client, url string) (int, string, error) {
	resp, err := c.Post(url, "application/json", strings.NewReader("{}"))
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

const admissionPath = "/validate-auth-latchkey-dev-v1alpha1-apikey"

func TestAdmissionIsServedOnlyToTheAPIServersCertificate(t *testing.T) {
	f := start(t, nil)
	stranger, err := certs.NewAuthority("someone-else", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		cert *tls.Certificate
	}{
		{"no client certificate", nil},
		{"a certificate of another CA", f.clientCert(t, stranger, "kube-apiserver")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if status, body, err := post(f.client(tt.cert), "https://"+f.admit+admissionPath); err == nil {
				t.Fatalf("admission answered %d %q without the API server's certificate", status, body)
			}
		})
	}
	t.Run("the API server's certificate", func(t *testing.T) {
		status, body, err := post(f.client(f.clientCert(t, f.clientCA, "kube-apiserver")), "https://"+f.admit+admissionPath)
		if err != nil || status != http.StatusOK || body != admissionPath+" 2" {
			t.Fatalf("admission = %d %q %v", status, body, err)
		}
	})
	t.Run("admission is not served on the verification listener", func(t *testing.T) {
		status, _, err := post(f.client(nil), "https://"+f.verify+admissionPath)
		if err != nil || status != http.StatusNotFound {
			t.Fatalf("verification listener answered %d %v for an admission path", status, err)
		}
	})
	t.Run("verification is not served on the admission listener", func(t *testing.T) {
		status, _, err := post(f.client(f.clientCert(t, f.clientCA, "kube-apiserver")), "https://"+f.admit+"/authorize")
		if err != nil || status != http.StatusNotFound {
			t.Fatalf("admission listener answered %d %v for /authorize", status, err)
		}
	})
}

func TestAdmissionClientNames(t *testing.T) {
	f := start(t, func(o *Options) { o.AdmissionClientNames = []string{"kube-apiserver"} })
	if status, _, err := post(f.client(f.clientCert(t, f.clientCA, "kube-apiserver")), "https://"+f.admit+admissionPath); err != nil || status != http.StatusOK {
		t.Fatalf("an allowed name: %d %v", status, err)
	}
	if status, _, err := post(f.client(f.clientCert(t, f.clientCA, "someone")), "https://"+f.admit+admissionPath); err == nil {
		t.Fatalf("a name not allowed was answered %d", status)
	}
}

func TestAdmissionWithoutClientCAIsServed(t *testing.T) {
	f := start(t, func(o *Options) { o.AdmissionClientCA = "" })
	if status, _, err := post(f.client(nil), "https://"+f.admit+admissionPath); err != nil || status != http.StatusOK {
		t.Fatalf("admission without a client CA: %d %v", status, err)
	}
}

// dialTLS opens a TLS connection to addr from the loopback address from.
func (f *fixture) dialTLS(t *testing.T, from, addr string) *tls.Conn {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: f.ca, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatalf("dialing from %s: %v", from, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// closedByServer reports whether the server closed c (it reads EOF or a
// reset) within wait.
func closedByServer(c net.Conn, wait time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(wait))
	_, err := io.ReadAll(c)
	var ne net.Error
	return !errors.As(err, &ne) || !ne.Timeout()
}

func TestSlowBodiesAreCutAtReadTimeout(t *testing.T) {
	f := start(t, func(o *Options) {
		o.Verification = DefaultLimits()
		o.Verification.ReadTimeout = 500 * time.Millisecond
	})
	c := f.dialTLS(t, "127.0.0.1", f.verify)
	_, _ = fmt.Fprintf(c, "POST /authorize HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n{")
	// A byte every 100ms keeps a connection with no read timeout open for
	// ever; this one is cut at the timeout.
	cut := false
	for range 100 {
		time.Sleep(100 * time.Millisecond)
		if _, err := c.Write([]byte(" ")); err != nil {
			cut = true
			break
		}
	}
	if !cut && !closedByServer(c, time.Second) {
		t.Fatal("a body trickling in for 10s was never cut")
	}
}

func TestIdleConnectionsAreClosed(t *testing.T) {
	f := start(t, func(o *Options) {
		o.Verification = DefaultLimits()
		o.Verification.IdleTimeout = 300 * time.Millisecond
		o.Verification.ReadHeaderTimeout = 300 * time.Millisecond
	})
	t.Run("after a request", func(t *testing.T) {
		c := f.dialTLS(t, "127.0.0.1", f.verify)
		_, _ = fmt.Fprintf(c, "GET /authorize HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%v %v", resp, err)
		}
		_ = resp.Body.Close()
		if !closedByServer(c, 5*time.Second) {
			t.Fatal("an idle keep-alive connection stayed open")
		}
	})
	t.Run("before any request", func(t *testing.T) {
		c := f.dialTLS(t, "127.0.0.1", f.verify)
		if !closedByServer(c, 5*time.Second) {
			t.Fatal("a connection that never sent a request stayed open")
		}
	})
}

func TestConnectionCaps(t *testing.T) {
	f := start(t, func(o *Options) {
		o.Verification = DefaultLimits()
		o.Verification.MaxConnsPerAddress, o.Verification.MaxConns = 3, 5
	})
	refused := func(cap string) float64 {
		return testutil.ToFloat64(f.s.metrics.ConnectionsRefused.WithLabelValues(listenerVerification, cap))
	}
	works := func(c *tls.Conn) bool {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintf(c, "GET /authorize HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return false
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	tryDial := func(from string) error {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
		c, err := tls.DialWithDialer(d, "tcp", f.verify, &tls.Config{RootCAs: f.ca, MinVersion: tls.VersionTLS12})
		if err == nil {
			defer func() { _ = c.Close() }()
			if !works(c) {
				return errors.New("closed after the handshake")
			}
		}
		return err
	}
	held := make([]*tls.Conn, 0, 5)
	for range 3 {
		held = append(held, f.dialTLS(t, "127.0.0.2", f.verify))
	}
	for _, c := range held {
		if !works(c) {
			t.Fatal("a connection within the per-address cap was refused")
		}
	}
	if tryDial("127.0.0.2") == nil {
		t.Fatal("a fourth connection from one address was served")
	}
	if refused(refusedPerAddress) != 1 {
		t.Fatalf("per-address refusals counted %v", refused(refusedPerAddress))
	}
	for _, from := range []string{"127.0.0.3", "127.0.0.4"} {
		held = append(held, f.dialTLS(t, from, f.verify))
	}
	if tryDial("127.0.0.5") == nil {
		t.Fatal("a sixth connection in all was served")
	}
	if refused(refusedTotal) != 1 {
		t.Fatalf("total refusals counted %v", refused(refusedTotal))
	}
	// Closing one gives its place back.
	_ = held[0].Close()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if err := tryDial("127.0.0.2"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a closed connection's place was never given back")
		}
	}
}

// TestCapsLeaveRoomForHeldRefusals: the failure limiter parks up to
// DefaultMaxHeldPerAddress refusals of one address on their connections;
// the per-address cap leaves that address as many again for valid requests.
func TestCapsLeaveRoomForHeldRefusals(t *testing.T) {
	if DefaultMaxConnsPerAddress < 2*endpoints.DefaultMaxHeldPerAddress {
		t.Fatalf("DefaultMaxConnsPerAddress %d < 2 × endpoints.DefaultMaxHeldPerAddress %d",
			DefaultMaxConnsPerAddress, endpoints.DefaultMaxHeldPerAddress)
	}
	if DefaultMaxConns < endpoints.DefaultMaxHeld {
		t.Fatalf("DefaultMaxConns %d < endpoints.DefaultMaxHeld %d", DefaultMaxConns, endpoints.DefaultMaxHeld)
	}
}

func TestNewConnectionRatePerAddress(t *testing.T) {
	f := start(t, func(o *Options) {
		o.Verification = DefaultLimits()
		o.Verification.NewConnsPerAddressPerSecond, o.Verification.NewConnsPerAddressBurst = 0.001, 2
	})
	for range 2 {
		c := f.dialTLS(t, "127.0.0.6", f.verify)
		_ = c.Close()
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.6")}, Timeout: 5 * time.Second}
	if c, err := tls.DialWithDialer(d, "tcp", f.verify, &tls.Config{RootCAs: f.ca, MinVersion: tls.VersionTLS12}); err == nil {
		_ = c.Close()
		t.Fatal("a third new connection within the burst's refill was served")
	}
	if n := testutil.ToFloat64(f.s.metrics.ConnectionsRefused.WithLabelValues(listenerVerification, refusedRate)); n != 1 {
		t.Fatalf("rate refusals counted %v", n)
	}
	// Another address has its own budget.
	_ = f.dialTLS(t, "127.0.0.7", f.verify).Close()
}

func TestUnknownPathsPastTheHeldBoundCloseTheConnection(t *testing.T) {
	f := start(t, func(o *Options) {
		o.Verification = DefaultLimits()
		o.Verification.MaxHeldUnknown = 1
		o.Verification.UnknownPathHold = time.Hour
	})
	held := f.dialTLS(t, "127.0.0.1", f.verify)
	_, _ = fmt.Fprintf(held, "GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
	var resp *http.Response
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c := f.dialTLS(t, "127.0.0.1", f.verify)
		_ = c.SetDeadline(time.Now().Add(time.Second))
		_, _ = fmt.Fprintf(c, "GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
		var err error
		if resp, err = http.ReadResponse(bufio.NewReader(c), nil); err == nil {
			_ = resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("an unknown path past the held bound was never answered")
		}
	}
	if resp.StatusCode != http.StatusNotFound || !resp.Close {
		t.Fatalf("answered %d, close %v; want 404 closing the connection", resp.StatusCode, resp.Close)
	}
}

// TestSubtreesAreServedAsSent: every path under a subtree is served as the
// client sent it — Envoy's HTTP ext_authz passes on the original path,
// which may hold "//" or ".." — rather than redirected to a clean one, as
// http.ServeMux would.
func TestSubtreesAreServedAsSent(t *testing.T) {
	f := start(t, nil)
	for _, path := range []string{"/authorize/api//things", "/authorize/./x", "/authorize/a/../b", "/authorize/"} {
		c := f.dialTLS(t, "127.0.0.1", f.verify)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != path+" 0" {
			t.Errorf("%s: %d %q, want it served as sent", path, resp.StatusCode, b)
		}
	}
}
