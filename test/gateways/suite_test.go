package gateways

import (
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"go.uber.org/zap/zapcore"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/latchkey-dev/latchkey/internal/operator"
	"github.com/latchkey-dev/latchkey/internal/testenv"
	"github.com/latchkey-dev/latchkey/internal/testenv/inprocess"
)

var lk *inprocess.Latchkey

// TestMain runs Latchkey as make dev does, told, as the README tells a
// cluster behind Traefik or Caddy, that the gateways on 127.0.0.1 name
// their client in X-Forwarded-For: the tests call from other loopback
// addresses, so that a flood from one leaves another alone.
func TestMain(m *testing.M) {
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))
	inprocess.Main(m, inprocess.Options{
		Logger: ctrl.Log,
		Tune: func(o *operator.Options) {
			o.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
			o.ClientAddressHeader = "X-Forwarded-For"
		},
	}, func(l *inprocess.Latchkey) { lk = l })
}

// missing skips a test whose gateway this machine lacks, except in CI,
// where .ci/run installs it and its absence is a failure.
func missing(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// readmeBlock is the README's fenced block of the language whose first
// line is first: the configuration the README gives, as a test runs it.
func readmeBlock(t *testing.T, lang, first string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(b), "```"+lang+"\n"+first+"\n")
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 {
		t.Fatalf("the README has no %s block starting %q", lang, first)
	}
	return first + "\n" + block
}

// listenAddress is a free address on 127.0.0.1 for a gateway to listen on.
func listenAddress(t *testing.T) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
}

// run starts a gateway's program, stops it when the test ends, and waits
// until a request through it to /api/ reaches Latchkey, which refuses
// it for want of a key (or, were the polls many, limits it). Its output
// is shown when the test fails.
func run(t *testing.T, cmd *exec.Cmd, addr string) string {
	t.Helper()
	out := &testenv.Logs{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waited error
	exited := make(chan struct{})
	go func() { waited = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("%s:\n%s", filepath.Base(cmd.Path), out.String())
		}
	})
	base := "http://" + addr
	NewWithT(t).Eventually(func(g Gomega) {
		select {
		case <-exited:
			t.Fatalf("%s exited: %v", filepath.Base(cmd.Path), waited)
		default:
		}
		resp, err := http.Get(base + "/api/ready")
		g.Expect(err).NotTo(HaveOccurred())
		_ = resp.Body.Close()
		g.Expect(resp.StatusCode).To(BeElementOf(http.StatusUnauthorized, http.StatusTooManyRequests))
	}).WithTimeout(20 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
	return base
}
