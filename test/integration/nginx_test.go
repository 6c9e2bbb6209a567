package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/latchkey-dev/latchkey/internal/testenv"
	"github.com/latchkey-dev/latchkey/test/gateways"
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
// says, in front of a service, and checks it as test/gateways checks
// every gateway: who gets through, and what reaches the service.
func TestNginxAuthRequest(t *testing.T) {
	gateways.Check(t, lk, startNginx, gateways.Options{})
}
