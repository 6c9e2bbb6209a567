package testenv

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/latchkey-dev/latchkey/internal/certs"
)

// ManagerBinary builds bin/manager's code into a temporary directory and
// returns a way to run it against the control plane.
type ManagerBinary struct {
	Path, Kubeconfig, CertDir string
}

// BuildManager builds the manager and writes what it needs to run.
func (e *Env) BuildManager(tb testing.TB) *ManagerBinary {
	tb.Helper()
	dir := tb.TempDir()
	m := &ManagerBinary{
		Path:       filepath.Join(dir, "manager"),
		Kubeconfig: filepath.Join(dir, "kubeconfig"),
		CertDir:    filepath.Join(dir, "certs"),
	}
	build := exec.Command("go", "build", "-o", m.Path, "./cmd")
	build.Dir = RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		tb.Fatalf("building the manager: %v\n%s", err, out)
	}
	if err := e.WriteAdminKubeconfig(m.Kubeconfig); err != nil {
		tb.Fatal(err)
	}
	if _, err := certs.WriteLocal(m.CertDir); err != nil {
		tb.Fatal(err)
	}
	return m
}

// ReadyRSS runs the manager until it is ready (its key index synced) and
// a few seconds more, and returns its resident memory in bytes.
func (m *ManagerBinary) ReadyRSS(tb testing.TB) int64 {
	tb.Helper()
	probe, webhook := freePort(tb), freePort(tb)
	cmd := exec.Command(m.Path,
		"--kubeconfig", m.Kubeconfig, "--metrics-bind-address=0",
		"--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", probe),
		"--webhook-port", strconv.Itoa(webhook), "--webhook-cert-path", m.CertDir)
	cmd.Env = append(os.Environ(), "ENABLE_WEBHOOKS=false")
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", probe))
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			tb.Fatal("the manager did not become ready")
		}
	}
	time.Sleep(3 * time.Second) // let start-up garbage be collected
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb << 10
		}
	}
	tb.Fatal("no VmRSS")
	return 0
}

func freePort(tb testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}
