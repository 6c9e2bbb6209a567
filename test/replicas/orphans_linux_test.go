package replicas

import (
	"os/exec"
	"syscall"
)

// A manager dies with the test binary, even when a panic or go test's
// timeout ends it before TestMain can kill the managers: none is left
// running against a control plane that is gone.
func init() {
	dieWithTest = func(cmd *exec.Cmd) { cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
}
