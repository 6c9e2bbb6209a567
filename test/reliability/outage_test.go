package reliability

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/latchkey-dev/latchkey/internal/fencing"

	. "github.com/onsi/gomega"

	"github.com/latchkey-dev/latchkey/internal/testenv"
)

// TestAPIServerOutage (case 2): kube-apiserver and etcd are frozen
// (SIGSTOP) while a key is verified, then thawed, twice.
//
// With the serving lease (the default), the replica cannot tell an outage
// from being cut off while another replica revokes (docs/replicas.md), so
// it fails closed: it answers the key until its lease runs out, then 503
// (never 401, never a wrong answer), and serves again by itself once the
// API server is back. With --serving-lease=0 (one replica that must
// answer through outages) it answers from its index throughout: keys
// cannot be revoked while the API server is down. Either way the manager
// reconnects by itself: minting resumes without a restart.
func TestAPIServerOutage(t *testing.T) {
	slow(t)
	g := NewWithT(t)
	ns := env.Namespace(t)
	_, raw := mint(t, ns, "during-outage")
	control := childProcesses("kube-apiserver", "etcd")
	g.Expect(control).To(HaveLen(2))
	client := newClient(4)

	// outage freezes the control plane for d while the key is verified,
	// counting the answers by status, and returns how long after the thaw
	// the key was answered 200 again.
	outage := func(d time.Duration) (map[int]int, time.Duration) {
		var mu sync.Mutex
		answers := map[int]int{}
		stop := keepVerifying(func() (int, error) {
			status, err := authorize(client, raw)
			mu.Lock()
			answers[status]++
			mu.Unlock()
			return status, err
		})
		for _, pid := range control {
			g.Expect(syscall.Kill(pid, syscall.SIGSTOP)).To(Succeed())
		}
		time.Sleep(d)
		for _, pid := range control {
			g.Expect(syscall.Kill(pid, syscall.SIGCONT)).To(Succeed())
		}
		thawed := time.Now()
		g.Eventually(func() (int, error) { return authorize(client, raw) }, 30*time.Second, 20*time.Millisecond).Should(Equal(http.StatusOK))
		back := time.Since(thawed)
		stop()
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(answers), back
	}

	leased, leasedBack := outage(20 * time.Second)
	g.Expect(slices.Sorted(maps.Keys(leased))).To(Equal([]int{http.StatusOK, http.StatusServiceUnavailable}),
		"with the serving lease: 200 until it runs out, then 503, nothing else")
	mint(t, ns, "after-outage")

	servingLease = 0
	t.Cleanup(func() {
		servingLease = fencing.DefaultServingLease
		g.Expect(lk.RestartOperator(context.Background())).To(Succeed())
	})
	g.Expect(lk.RestartOperator(context.Background())).To(Succeed())
	plain, _ := outage(20 * time.Second)
	g.Expect(slices.Sorted(maps.Keys(plain))).To(Equal([]int{http.StatusOK}), "--serving-lease=0 answers throughout")
	thawed := time.Now()
	mint(t, ns, "after-second-outage")
	resumed := time.Since(thawed)

	record(t, "02 API server and etcd down for 20s, twice", fmt.Sprintf(
		"serving lease (default): %d answered 200 then %d 503 (fail closed), 200 again %.1fs after the thaw; --serving-lease=0: %d of %d answered 200 throughout; "+
			"a new key Active %.1fs after the API server came back, no manager restart",
		leased[http.StatusOK], leased[http.StatusServiceUnavailable], leasedBack.Seconds(), plain[http.StatusOK], plain[http.StatusOK], resumed.Seconds()))
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
