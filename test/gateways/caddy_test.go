package gateways

import (
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// caddyFirst is the first line of the README's Caddyfile.
const caddyFirst = "# Caddy: forward_auth asks Latchkey, then the key is stripped"

// startCaddy runs Caddy (the Debian package) with the README's Caddyfile in
// front of upstream, its names for the site, the service, Latchkey, its CA
// and the pinned tenant replaced by the test's.
func startCaddy(t *testing.T, upstream, pinnedTenant string) string {
	t.Helper()
	bin, err := exec.LookPath("caddy")
	if err != nil {
		missing(t, "caddy is not installed: apt-get install caddy to run this test (.ci/run installs it)")
	}
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(ca, lk.WebhookCA, 0o600); err != nil {
		t.Fatal(err)
	}
	service, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	addr := listenAddress(t)
	local := strings.NewReplacer("api.example.com {", "http://"+addr+" {",
		"my-service:8080", service.Host,
		"https://latchkey-webhook-service.latchkey-system.svc", lk.Endpoint,
		"/etc/latchkey/ca.crt", ca,
		"route /payments/*", "route /pinned/*",
		"X-Latchkey-Tenant-Required payments", "X-Latchkey-Tenant-Required "+pinnedTenant)
	// Caddy's admin endpoint, and (by its environment) the configuration it
	// saves, stay out of the way of any other Caddy on the machine.
	conf := "{\n\tadmin off\n}\n\n" + local.Replace(readmeBlock(t, "caddyfile", caddyFirst))
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", file, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_CONFIG_HOME="+dir, "XDG_DATA_HOME="+dir)
	return run(t, cmd, addr)
}

// TestCaddyForwardAuth puts Caddy's forward_auth, configured as the README
// says, in front of a service.
func TestCaddyForwardAuth(t *testing.T) {
	Check(t, lk, startCaddy, Options{Caller: "127.0.0.5", Flooder: "127.0.0.4"})
}
