package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/testenv"
)

// readmeNginx is the nginx configuration the README gives, its two
// locations apart: the protected one and Latchkey's auth_request one.
func readmeNginx(t *testing.T) (protected, auth string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(b), "```nginx\n")
	block, _, ok2 := strings.Cut(block, "```")
	protected, auth, ok3 := strings.Cut(block, "location = /_latchkey {")
	if !ok || !ok2 || !ok3 {
		t.Fatal("the README has no nginx example with a location = /_latchkey")
	}
	return protected, "location = /_latchkey {" + auth
}

// startNginx runs nginx (the Debian package) on 127.0.0.1 with the README's
// configuration in front of upstream: /api/ for any tenant, and, the same
// with the pin the README describes, /pinned/ for pinnedTenant only. It
// returns nginx's base URL.
func startNginx(t *testing.T, upstream, pinnedTenant string) string {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		bin = "/usr/sbin/nginx"
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("nginx is not installed; .ci/run installs it (apt-get install nginx-light)")
		}
		t.Skip("nginx is not installed: apt-get install nginx-light to run this test")
	}
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, env.WebhookCA, 0o600); err != nil {
		t.Fatal(err)
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;"
	}
	protected, auth := readmeNginx(t)
	// The README's names for the service, Latchkey and its CA, here; the
	// local certificate is issued to localhost.
	local := strings.NewReplacer("http://my-service", upstream,
		"https://latchkey-webhook-service.latchkey-system.svc", endpoint,
		"/etc/latchkey/ca.crt", ca,
		"proxy_ssl_verify on;", "proxy_ssl_verify on;\n  proxy_ssl_name localhost;")
	const unpinned = `proxy_set_header X-Latchkey-Tenant-Required "";`
	if !strings.Contains(auth, unpinned) {
		t.Fatalf("the README's auth location does not clear X-Latchkey-Tenant-Required:\n%s", auth)
	}
	pinned := strings.NewReplacer("location /api/", "location /pinned/", "/_latchkey", "/_latchkey_pinned").Replace(protected) +
		strings.NewReplacer("/_latchkey", "/_latchkey_pinned", unpinned, "proxy_set_header X-Latchkey-Tenant-Required "+pinnedTenant+";").Replace(auth)
	conf := fmt.Sprintf(`%s
daemon off;
master_process off;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events {}
http {
  access_log off;
  client_body_temp_path %[2]s/body;
  proxy_temp_path %[2]s/proxy;
  fastcgi_temp_path %[2]s/fastcgi;
  uwsgi_temp_path %[2]s/uwsgi;
  scgi_temp_path %[2]s/scgi;
  server {
    listen %[3]s;
    %[4]s
    %[5]s
    %[6]s
  }
}
`, user, dir, addr, local.Replace(protected), local.Replace(auth), local.Replace(pinned))
	confFile := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", confFile, "-e", filepath.Join(dir, "error.log"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(dir, "error.log")); err == nil {
				t.Logf("nginx error.log:\n%s", b)
			}
		}
	})
	base := "http://" + addr
	NewWithT(t).Eventually(func() error {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			_ = c.Close()
		}
		return err
	}).WithTimeout(10 * time.Second).Should(Succeed())
	return base
}

// TestNginxAuthRequest puts nginx auth_request, configured as the README
// says, in front of a service and checks who gets through, and what
// reaches the service: the tenant and key Latchkey named, never the ones a
// client sent, and never the key.
func TestNginxAuthRequest(t *testing.T) {
	ns, other := env.Namespace(t), env.Namespace(t)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen := map[string][]string{}
		for name, values := range r.Header {
			if strings.HasPrefix(name, "X-Latchkey-") || name == "Authorization" {
				seen[name] = values
			}
		}
		_ = json.NewEncoder(w).Encode(seen)
	}))
	defer upstream.Close()
	base := startNginx(t, upstream.URL, ns)

	_, validRaw := mint(t, ns, "valid", authv1alpha1.ApiKeySpec{})
	revoked, revokedRaw := mint(t, ns, "revoked", authv1alpha1.ApiKeySpec{})
	revoke(t, revoked)
	soon := metav1.NewTime(time.Now().Add(3 * time.Second))
	_, expiringRaw := mint(t, ns, "expiring", authv1alpha1.ApiKeySpec{ExpiresAt: &soon})
	_, otherRaw := mint(t, other, "theirs", authv1alpha1.ApiKeySpec{Format: authv1alpha1.FormatHex})

	get := func(path, raw string, sent http.Header) (int, map[string][]string) {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, base+path, nil)
		for name, values := range sent {
			for _, v := range values {
				req.Header.Add(name, v)
			}
		}
		if raw != "" {
			req.Header.Set("Authorization", "Bearer "+raw)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		var seen map[string][]string
		if resp.StatusCode == http.StatusOK {
			if err := json.Unmarshal(b, &seen); err != nil {
				t.Fatalf("the service's answer %q: %v", b, err)
			}
		}
		return resp.StatusCode, seen
	}
	// What a client sends to choose who it is, or to unpin a tenant.
	forged := http.Header{
		"X-Latchkey-Tenant":          {other},
		"X-Latchkey-Key":             {other + "/theirs"},
		"x-latchkey-key":             {"kube-system/admin"},
		"X-Latchkey-Tenant-Required": {other},
	}
	tests := []struct {
		name   string
		path   string
		raw    string
		sent   http.Header
		status int
		tenant string
		key    string
	}{
		{"a valid key reaches the service with its tenant and name", "/api/x", validRaw, nil, 200, ns, ns + "/valid"},
		{"a client's own X-Latchkey-* headers never reach the service", "/api/x", validRaw, forged, 200, ns, ns + "/valid"},
		{"no key is refused", "/api/x", "", nil, 401, "", ""},
		{"no key with forged headers is refused", "/api/x", "", forged, 401, "", ""},
		{"a wrong key is refused", "/api/x", validRaw[:len(validRaw)-2] + "zz", nil, 401, "", ""},
		{"a revoked key is refused", "/api/x", revokedRaw, nil, 401, "", ""},
		{"another tenant's key passes where no tenant is pinned", "/api/x", otherRaw, nil, 200, other, other + "/theirs"},
		{"another tenant's key is forbidden where the tenant is pinned", "/pinned/x", otherRaw, nil, 403, "", ""},
		{"a client cannot repin a pinned location to its own tenant", "/pinned/x", otherRaw, forged, 403, "", ""},
		{"the pinned tenant's own key passes", "/pinned/x", validRaw, forged, 200, ns, ns + "/valid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			status, seen := get(tt.path, tt.raw, tt.sent)
			g.Expect(status).To(Equal(tt.status))
			if status != http.StatusOK {
				return
			}
			g.Expect(seen).To(Equal(map[string][]string{"X-Latchkey-Tenant": {tt.tenant}, "X-Latchkey-Key": {tt.key}}),
				"the service sees only the tenant and key Latchkey named, and not the key itself")
		})
	}
	t.Run("a key is refused from the instant it expires", func(t *testing.T) {
		status, _ := get("/api/x", expiringRaw, nil)
		NewWithT(t).Expect(status).To(Equal(200))
		time.Sleep(time.Until(soon.Time))
		status, _ = get("/api/x", expiringRaw, nil)
		NewWithT(t).Expect(status).To(Equal(401))
	})
}
