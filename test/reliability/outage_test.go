package reliability

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/latchkey-dev/latchkey/internal/testenv"
	. "github.com/onsi/gomega"
)

// TestAPIServerOutage (case 2): kube-apiserver and etcd are frozen
// (SIGSTOP) for 30 seconds while keys are verified, then thawed.
// Verification answers from the index throughout (keys cannot be revoked
// while the API server is down, so this is safe), and the manager
// reconnects by itself: minting resumes without a restart.
func TestAPIServerOutage(t *testing.T) {
	slow(t)
	g := NewWithT(t)
	ns := env.Namespace(t)
	_, raw := mint(t, ns, "during-outage")
	control := childProcesses("kube-apiserver", "etcd")
	g.Expect(control).To(HaveLen(2))

	client := newClient(4)
	stop := keepVerifying(func() (int, error) { return authorize(client, raw) })

	for _, pid := range control {
		g.Expect(syscall.Kill(pid, syscall.SIGSTOP)).To(Succeed())
	}
	time.Sleep(30 * time.Second)
	for _, pid := range control {
		g.Expect(syscall.Kill(pid, syscall.SIGCONT)).To(Succeed())
	}
	thawed := time.Now()
	calls, failed := stop()

	// Minting resumes in the same manager process.
	mint(t, ns, "after-outage")
	resumed := time.Since(thawed)
	g.Expect(failed).To(BeZero())
	record(t, "02 API server and etcd down for 30s", fmt.Sprintf("%d of %d verifications failed during the outage; a new key Active %.1fs after the API server came back, no manager restart",
		failed, calls, resumed.Seconds()))
}

// childProcesses finds this process's children with the given names.
func childProcesses(names ...string) []int {
	var pids []int
	for _, pid := range testenv.ChildrenOf(os.Getpid()) {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err == nil && slices.Contains(names, strings.TrimSpace(string(comm))) {
			pids = append(pids, pid)
		}
	}
	return pids
}
