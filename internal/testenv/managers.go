package testenv

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/latchkey-dev/latchkey/internal/certs"
	"github.com/latchkey-dev/latchkey/pkg/devenv/controlplane"
)

// BuildManagerIn is BuildManager for a TestMain, which has no testing.TB:
// a package whose tests share manager processes builds them once, into dir.
func (e *Env) BuildManagerIn(dir string) (*ManagerBinary, error) {
	m := &ManagerBinary{
		Path:       filepath.Join(dir, "manager"),
		Kubeconfig: filepath.Join(dir, "kubeconfig"),
		CertDir:    filepath.Join(dir, "certs"),
	}
	build := exec.Command("go", "build", "-o", m.Path, "./cmd")
	build.Dir = RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building the manager: %w\n%s", err, out)
	}
	if err := e.WriteAdminKubeconfig(m.Kubeconfig); err != nil {
		return nil, err
	}
	if _, err := certs.WriteLocal(m.CertDir); err != nil {
		return nil, err
	}
	return m, nil
}

// Command is Start without starting: the manager's command with the flags
// Start gives it, for a caller that sets its output and outlives any one
// test, and so starts (and kills) it itself.
func (m *ManagerBinary) Command(env []string, args ...string) (*Process, error) {
	probe, err := controlplane.FreePort()
	if err != nil {
		return nil, err
	}
	p := &Process{Probe: probe}
	p.Cmd = exec.Command(m.Path, append([]string{
		"--kubeconfig=" + m.Kubeconfig, "--metrics-bind-address=0", "--ext-authz-bind-address=127.0.0.1:0", "--fence-bind-address=127.0.0.1:0",
		"--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", p.Probe),
	}, args...)...)
	p.Cmd.Env = append(os.Environ(), env...)
	return p, nil
}

// Ready reports whether the manager's /readyz answers 200 now.
func (p *Process) Ready() bool {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", p.Probe))
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
