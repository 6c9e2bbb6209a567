package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// startNginx runs nginx (the Debian package) on 127.0.0.1 with auth_request
// to /authorize in front of upstream: /api/ for any tenant, /pinned/ for
// pinnedTenant only. It returns nginx's base URL.
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
	authLocation := func(name, extra string) string {
		return fmt.Sprintf(`
    location = %s {
      internal;
      proxy_pass %s/authorize;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Real-IP $remote_addr;
      %s
      proxy_ssl_trusted_certificate %s;
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
    }`, name, endpoint, extra, ca)
	}
	protected := func(prefix, auth string) string {
		return fmt.Sprintf(`
    location %s {
      auth_request %s;
      auth_request_set $latchkey_tenant $upstream_http_x_latchkey_tenant;
      auth_request_set $latchkey_key $upstream_http_x_latchkey_key;
      proxy_set_header X-Latchkey-Tenant $latchkey_tenant;
      proxy_set_header X-Latchkey-Key $latchkey_key;
      proxy_pass %s;
    }`, prefix, auth, upstream)
	}
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
    %[7]s
  }
}
`, user, dir, addr,
		protected("/api/", "/_auth"), protected("/pinned/", "/_auth_pinned"),
		authLocation("/_auth", ""), authLocation("/_auth_pinned", "proxy_set_header X-Latchkey-Tenant-Required "+pinnedTenant+";"))
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

// TestNginxAuthRequest puts nginx auth_request in front of a service and
// checks who gets through.
func TestNginxAuthRequest(t *testing.T) {
	ns, other := env.Namespace(t), env.Namespace(t)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = fmt.Fprintf(w, "hello %s via %s", r.Header.Get("X-Latchkey-Tenant"), r.Header.Get("X-Latchkey-Key"))
	}))
	defer upstream.Close()
	base := startNginx(t, upstream.URL, ns)

	valid, validRaw := mint(t, ns, "valid", authv1alpha1.ApiKeySpec{})
	_ = valid
	revoked, revokedRaw := mint(t, ns, "revoked", authv1alpha1.ApiKeySpec{})
	revoke(t, revoked)
	soon := metav1.NewTime(time.Now().Add(3 * time.Second))
	_, expiringRaw := mint(t, ns, "expiring", authv1alpha1.ApiKeySpec{ExpiresAt: &soon})
	_, otherRaw := mint(t, other, "theirs", authv1alpha1.ApiKeySpec{Format: authv1alpha1.FormatHex})

	get := func(path, raw string) (int, string) {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, base+path, nil)
		if raw != "" {
			req.Header.Set("Authorization", "Bearer "+raw)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	tests := []struct {
		name   string
		path   string
		raw    string
		status int
		body   string
	}{
		{"a valid key reaches the service with its tenant", "/api/x", validRaw, 200, "hello " + ns + " via " + ns + "/valid"},
		{"no key is refused", "/api/x", "", 401, ""},
		{"a wrong key is refused", "/api/x", validRaw[:len(validRaw)-2] + "zz", 401, ""},
		{"a revoked key is refused", "/api/x", revokedRaw, 401, ""},
		{"another tenant's key passes where no tenant is pinned", "/api/x", otherRaw, 200, "hello " + other},
		{"another tenant's key is forbidden where the tenant is pinned", "/pinned/x", otherRaw, 403, ""},
		{"the pinned tenant's own key passes", "/pinned/x", validRaw, 200, "hello " + ns},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := get(tt.path, tt.raw)
			NewWithT(t).Expect(status).To(Equal(tt.status), body)
			NewWithT(t).Expect(body).To(ContainSubstring(tt.body))
		})
	}
	t.Run("a key is refused from the instant it expires", func(t *testing.T) {
		status, _ := get("/api/x", expiringRaw)
		NewWithT(t).Expect(status).To(Equal(200))
		time.Sleep(time.Until(soon.Time))
		status, _ = get("/api/x", expiringRaw)
		NewWithT(t).Expect(status).To(Equal(401))
	})
}
