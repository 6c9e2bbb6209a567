package replicas

import (
	"fmt"
	"strings"
	"testing"
	"time"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

const trials = 50

// TestRevocationOnEveryReplica revokes (then suspends) a key per trial
// while goroutines hammer /authorize on each of the three replicas with
// it: no replica may accept a request that started after the call
// returned. It measures, per replica, when it first refused the key,
// from the call's return (negative: before it returned, fenced while the
// write was admitted).
//
//	go test -run RevocationOnEveryReplica -v ./test/replicas/ | grep FIGURE
func TestRevocationOnEveryReplica(t *testing.T) {
	for _, c := range []struct {
		what     string
		takeAway func(testing.TB, *authv1alpha1.ApiKey)
	}{{"revocation", revoke}, {"suspension", suspend}} {
		t.Run(c.what, func(t *testing.T) {
			m := measureTakeAways(t, c.what, replicas, hammers, c.takeAway)
			t.Logf("FIGURE %s on %d replicas over %d trials (%d goroutines hammering each), first refusal answered, from the call's return (negative: before it): %s",
				c.what, len(replicas), trials, hammers, m.refusals(replicas))
			t.Logf("FIGURE %s call with %d replicas serving: %s", c.what, len(replicas), spread(m.took))
		})
	}
}

// BenchmarkRevokeLatency measures the revoke call's own latency with 1, 2
// and 3 replicas serving (the others shut down, their Leases deleted), in
// trials like TestRevocationOnEveryReplica's: with nothing calling the
// key but one request after the return, and with every serving replica
// hammered, which also gives when each replica first refused the key.
//
//	go test -run '^$' -bench RevokeLatency -benchtime 1x ./test/replicas/
func BenchmarkRevokeLatency(b *testing.B) {
	for range b.N {
		quiet, hammered := map[int][]time.Duration{}, map[int]takeAways{}
		for n := len(replicas); n >= 1; n-- {
			quiet[n] = measureTakeAways(b, "revocation", replicas[:n], 0, revoke).took
			hammered[n] = measureTakeAways(b, "revocation", replicas[:n], hammers, revoke)
			if n > 1 {
				gone := replicas[n-1]
				if err := gone.stop(); err != nil {
					b.Fatal(err)
				}
				servingLeaseGone(b, gone.name)
			}
		}
		for n := 1; n <= len(replicas); n++ {
			b.Logf("FIGURE revoke call with %d replica(s) serving, %d calls each: quiet %s; hammered (%d goroutines on each replica) %s; first refusal answered, from the return: %s",
				n, trials, spread(quiet[n]), hammers, spread(hammered[n].took), hammered[n].refusals(replicas[:n]))
		}
		// The next round, or test, starts from three replicas again.
		for _, r := range replicas[1:] {
			if err := r.start(); err != nil {
				b.Fatal(err)
			}
		}
		for _, r := range replicas[1:] {
			if err := r.waitReady(readyWithin); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// takeAways are the figures of trials: each call's duration and, by
// replica, when it first refused the key.
type takeAways struct {
	took    []time.Duration
	refused map[*replica][]time.Duration
}

// refusals formats when each replica of rs first refused.
func (m takeAways) refusals(rs []*replica) string {
	parts := make([]string, 0, len(rs))
	for _, r := range rs {
		parts = append(parts, r.name+" "+spread(m.refused[r]))
	}
	return strings.Join(parts, "; ")
}

// measureTakeAways runs the trials against rs: each mints a key, has per
// goroutines hammer it on every replica of rs while takeAway changes it
// through the API, and fails if a replica accepts a request that started
// after the call returned.
func measureTakeAways(tb testing.TB, what string, rs []*replica, per int, takeAway func(testing.TB, *authv1alpha1.ApiKey)) takeAways {
	tb.Helper()
	ns := env.Namespace(tb)
	m := takeAways{refused: map[*replica][]time.Duration{}}
	for i := range trials {
		key, raw := mint(tb, ns, fmt.Sprintf("k%02d", i), rs)
		h := hammer(raw, rs, per)
		time.Sleep(5 * time.Millisecond)
		start := time.Now()
		takeAway(tb, key)
		returned := time.Now()
		m.took = append(m.took, returned.Sub(start))
		// One request to each replica that surely starts after the call
		// returned, however the hammering goroutines are scheduled.
		for _, r := range rs {
			h.add(r, try(r, raw))
		}
		time.Sleep(10 * time.Millisecond)
		got := h.stop()
		if acceptedAfter(tb, what, returned, got) {
			tb.FailNow()
		}
		for _, r := range rs {
			d, ok := firstRefusal(got[r], returned)
			if !ok {
				tb.Fatalf("%s: %s never refused the key", key.Name, r.name)
			}
			m.refused[r] = append(m.refused[r], d)
		}
	}
	return m
}
