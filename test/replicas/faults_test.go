package replicas

import (
	"net/http"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/latchkey-dev/latchkey/internal/testenv"
)

// queued is how many requests are sent to a frozen replica after the
// revoke call returned, to be answered when it is thawed.
const queued = 8

// TestFrozenReplica freezes replica 2 (SIGSTOP) and revokes a key that
// every replica is being called with: the revoke call returns (replica 0
// cannot reach replica 2, so it takes its serving Lease and waits for it
// to run out, ≈ --fence-timeout + --serving-lease + D/50 ≈ 3.6s). Thawed,
// replica 2 accepts no request that started after the call returned, those
// queued while it was frozen among them; it catches up, becomes ready,
// refuses the revoked key and accepts a new one.
//
//	go test -run FrozenReplica -v ./test/replicas/ | grep FIGURE
func TestFrozenReplica(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	frozen, others := replicas[2], replicas[:2]
	key, raw := mint(t, ns, "frozen", replicas)
	h := hammer(raw, others, hammers)
	// Each of these waits for an answer while the replica is frozen, and
	// calls again once it has one.
	onFrozen := hammer(raw, []*replica{frozen}, 2)
	time.Sleep(20 * time.Millisecond)

	frozen.signal(t, syscall.SIGSTOP)
	thawed := false
	thaw := func() {
		if !thawed {
			frozen.signal(t, syscall.SIGCONT)
			thawed = true
		}
	}
	t.Cleanup(func() {
		thaw()
		running(t, frozen)
	})
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	revoke(t, key)
	returned := time.Now()
	took := returned.Sub(start)
	t.Logf("FIGURE revoke call with replica 2 frozen: %v (bound --fence-timeout + --serving-lease + D/50 = %v)",
		took.Round(time.Millisecond), fenceTimeout+servingLease+servingLease/50)

	// Requests that start now reach the frozen replica's listen queue and
	// wait there.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var late []attempt
	for range queued {
		wg.Go(func() {
			a := try(frozen, raw)
			mu.Lock()
			late = append(late, a)
			mu.Unlock()
		})
	}
	for _, r := range others {
		h.add(r, try(r, raw))
	}
	time.Sleep(500 * time.Millisecond)
	thaw()
	resumed := time.Now()
	wg.Wait()
	got := h.stop()
	for r, as := range onFrozen.stop() {
		got[r] = append(as, late...)
	}
	failed := acceptedAfter(t, "revocation", returned, got)
	t.Logf("FIGURE frozen replica, thawed: %d requests queued after the revoke returned answered %v; every request after the return, by status: %v",
		queued, statuses(late), statuses(after(got[frozen], returned)))
	if failed {
		t.FailNow()
	}

	g.Expect(frozen.waitReady(readyWithin)).To(Succeed())
	t.Logf("FIGURE frozen replica ready %v after SIGCONT", time.Since(resumed).Round(time.Millisecond))
	g.Expect(frozen.authorize(raw)).To(Equal(http.StatusUnauthorized))
	_, fresh := mint(t, ns, "after-thaw", replicas)
	g.Expect(frozen.authorize(fresh)).To(Equal(http.StatusOK))
}

// TestReplicaKilledMidFence freezes replica 1 so that replica 0's fence
// call to it hangs, and kills it (SIGKILL) 200ms into the revocation: the
// revocation completes. Restarted with the same flags and name, replica 1
// answers no request with 200 for the revoked key from its start on, and
// once it has caught up and is ready it refuses that key and accepts a
// live one.
//
//	go test -run ReplicaKilledMidFence -v ./test/replicas/ | grep FIGURE
func TestReplicaKilledMidFence(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	victim := replicas[1]
	survivors := []*replica{replicas[0], replicas[2]}
	key, raw := mint(t, ns, "doomed", replicas)
	_, live := mint(t, ns, "live", replicas)
	h := hammer(raw, survivors, hammers)
	time.Sleep(20 * time.Millisecond)

	t.Cleanup(func() { running(t, victim) })
	victim.signal(t, syscall.SIGSTOP)
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- patchErr(key, revoked) }()
	time.Sleep(200 * time.Millisecond)
	victim.kill()
	select {
	case err := <-done:
		g.Expect(err).NotTo(HaveOccurred())
	case <-time.After(30 * time.Second):
		t.Fatal("the revocation did not complete within 30s of the replica's death")
	}
	returned := time.Now()
	for _, r := range survivors {
		h.add(r, try(r, raw))
	}
	got := h.stop()
	t.Logf("FIGURE revoke call with replica 1 killed 200ms into it: %v", returned.Sub(start).Round(time.Millisecond))
	if acceptedAfter(t, "revocation", returned, got) {
		t.FailNow()
	}

	// From before it starts until it is ready, the restarted replica is
	// called with the revoked key: refused connections, then refusals.
	restart := hammer(raw, []*replica{victim}, hammers)
	restarted := time.Now()
	g.Expect(victim.start()).To(Succeed())
	g.Expect(victim.waitReady(readyWithin)).To(Succeed())
	ready := time.Since(restarted)
	during := restart.stop()[victim]
	accepted := 0
	for _, a := range during {
		if a.status == http.StatusOK {
			accepted++
		}
	}
	t.Logf("FIGURE killed replica restarted: ready %v after its start; its answers to the revoked key until then, by status (0: connection refused): %v",
		ready.Round(time.Millisecond), statuses(during))
	g.Expect(accepted).To(BeZero(), "the restarted replica accepted the revoked key")
	g.Expect(victim.authorize(raw)).To(Equal(http.StatusUnauthorized))
	g.Expect(victim.authorize(live)).To(Equal(http.StatusOK))
	// It caught up from its index's first lists, begun once its peers were
	// asked (verifier.Watching.AfterListPoint), not from a list of its own.
	logged, err := os.ReadFile(victim.log.Name())
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(logged)).To(ContainSubstring("no list of ApiKeys to catch up with"))
}

// TestPeerPortClosed starts a fourth replica whose fence endpoint is off
// (--fence-bind-address=0) at a URL replica 0 lists among its peers
// (closedPeer, where nothing listens), so that replica 0's fence call to
// it is refused at once, as a peer's closed port would be: the
// revocation still completes (replica 0 takes its serving Lease; the
// replica stops serving, catches up and takes its Lease back), no
// replica — the fourth among them — accepts a request that started after
// the call returned, and the call's duration is the cost.
//
//	go test -run PeerPortClosed -v ./test/replicas/ | grep FIGURE
func TestPeerPortClosed(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	closed := &replica{name: "replica-closed"}
	closed.port, closed.admissionPort = testenv.FreePort(t), testenv.FreePort(t)
	closed.flags = replicaFlags(closed, false, fenceURLs(replicas))
	g.Expect(closed.start()).To(Succeed())
	defer closed.kill()
	g.Expect(closed.waitReady(readyWithin)).To(Succeed())
	all := append(append([]*replica{}, replicas...), closed)

	key, raw := mint(t, ns, "cut-off", all)
	h := hammer(raw, all, hammers)
	time.Sleep(20 * time.Millisecond)
	start := time.Now()
	revoke(t, key)
	returned := time.Now()
	for _, r := range all {
		h.add(r, try(r, raw))
	}
	got := h.stop()
	t.Logf("FIGURE revoke call with a peer's fence port closed: %v (bound --fence-timeout + --serving-lease + D/50 = %v); that peer's answers after the return, by status: %v",
		returned.Sub(start).Round(time.Millisecond), fenceTimeout+servingLease+servingLease/50, statuses(after(got[closed], returned)))
	if acceptedAfter(t, "revocation", returned, got) {
		t.FailNow()
	}
	g.Expect(closed.waitReady(readyWithin)).To(Succeed())
	g.Expect(closed.authorize(raw)).To(Equal(http.StatusUnauthorized))

	// Shut down, the replica leaves no Lease for the next revocation to
	// wait out.
	g.Expect(closed.stop()).To(Succeed())
	servingLeaseGone(t, closed.name)
}

// after are the attempts that started after returned.
func after(as []attempt, returned time.Time) []attempt {
	var out []attempt
	for _, a := range as {
		if a.start.After(returned) {
			out = append(out, a)
		}
	}
	return out
}
