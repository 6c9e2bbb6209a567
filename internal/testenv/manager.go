package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/latchkey-dev/latchkey/pkg/devenv/controlplane"
)

// ManagerBinary builds bin/manager's code into a temporary directory and
// returns a way to run it against the control plane.
type ManagerBinary struct {
	Path, Kubeconfig, CertDir string
}

// BuildManager builds the manager and writes what it needs to run.
func (e *Env) BuildManager(tb testing.TB) *ManagerBinary {
	tb.Helper()
	m, err := e.BuildManagerIn(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// Process is a running manager.
type Process struct {
	Cmd   *exec.Cmd
	Probe int
}

// Start runs the manager with its probe on a free port, no metrics, ext_authz
// and the peer fence endpoint on free loopback ports unless args say
// otherwise (a later flag wins), and the given flags (the webhook flags
// among them).
func (m *ManagerBinary) Start(tb testing.TB, env []string, args ...string) *Process {
	tb.Helper()
	p, err := m.Command(env, args...)
	if err != nil {
		tb.Fatal(err)
	}
	if err := p.Cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Kill() })
	return p
}

// Kill stops the manager at once (SIGKILL), as a crash would.
func (p *Process) Kill() {
	if p.Cmd.ProcessState == nil {
		_ = p.Cmd.Process.Kill()
		_ = p.Cmd.Wait()
	}
}

// WaitReady waits until the manager's /readyz answers 200.
func (p *Process) WaitReady(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	for deadline := time.Now().Add(timeout); !p.Ready(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatal("the manager did not become ready")
		}
	}
}

// RSS is the manager's resident memory in bytes.
func (p *Process) RSS(tb testing.TB) int64 {
	tb.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Cmd.Process.Pid))
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

// ReadyRSS runs the manager (webhooks off) until it is ready, its key index
// synced, and a few seconds more, and returns its resident memory in bytes.
func (m *ManagerBinary) ReadyRSS(tb testing.TB) int64 {
	tb.Helper()
	p := m.Start(tb, []string{"ENABLE_WEBHOOKS=false"}, "--webhook-port", strconv.Itoa(FreePort(tb)),
		"--admission-port", strconv.Itoa(FreePort(tb)), "--webhook-cert-path", m.CertDir)
	defer p.Kill()
	p.WaitReady(tb, 5*time.Minute)
	time.Sleep(3 * time.Second) // let start-up garbage be collected
	return p.RSS(tb)
}

// FreePort is a loopback port nothing listens on, for a process to serve.
func FreePort(tb testing.TB) int {
	tb.Helper()
	port, err := controlplane.FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	return port
}
