package usage

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// running is n executions of one reporter, started at the hour, named prefix-i.
func running(prefix string, n int) []Execution {
	es := make([]Execution, 0, n)
	for i := range n {
		es = append(es, ex(fmt.Sprintf("%s-%d", prefix, i), Running, at(0, 1), 0))
	}
	return es
}

func TestTheLedgersBoundsRefuseWithAReason(t *testing.T) {
	tests := []struct {
		name string
		// setup brings a ledger to the bound; then batch is sent by reporter.
		setup    func(t *testing.T, l *Ledger)
		reporter string
		batch    []Execution
		want     error
		reason   string
	}{
		{
			name: "a key at its in-flight cap is refused",
			setup: func(t *testing.T, l *Ledger) {
				mustApply(t, l, "fill", "a", running("a", MaxInFlightPerKey)...)
			},
			reporter: "a", batch: running("a-more", 1),
			want: ErrTooManyInFlight, reason: "this key has 1000",
		},
		{
			name: "another key of the tenant is not",
			setup: func(t *testing.T, l *Ledger) {
				mustApply(t, l, "fill", "a", running("a", MaxInFlightPerKey)...)
			},
			reporter: "b", batch: running("b", MaxInFlightPerKey),
		},
		{
			name: "a key that finishes its executions gets its slots back, whoever reports the finish",
			setup: func(t *testing.T, l *Ledger) {
				mustApply(t, l, "fill", "a", running("a", MaxInFlightPerKey)...)
				mustApply(t, l, "finish", "b", ex("a-0", Succeeded, at(0, 1), time.Second))
			},
			reporter: "a", batch: running("a-more", 1),
		},
		{
			name: "the tenant at its in-flight cap is refused",
			setup: func(t *testing.T, l *Ledger) {
				for r := range MaxInFlight / MaxInFlightPerKey {
					mustApply(t, l, fmt.Sprint(r), fmt.Sprint(r), running(fmt.Sprint(r), MaxInFlightPerKey)...)
				}
			},
			reporter: "another", batch: running("x", 1),
			want: ErrTooManyInFlight, reason: "the tenant has 5000",
		},
		{
			name:     "a tenant at its batches of the day is refused",
			setup:    func(_ *testing.T, l *Ledger) { l.BatchDate, l.Batches = Day(now), MaxBatchesPerDay },
			reporter: "a", batch: running("x", 1),
			want: ErrTooManyBatches, reason: "100000 batches on 2026-11-22",
		},
		{
			name:     "the day's batches start again on the next UTC day",
			setup:    func(_ *testing.T, l *Ledger) { l.BatchDate, l.Batches = Day(now.AddDate(0, 0, -1)), MaxBatchesPerDay },
			reporter: "a", batch: running("x", 1),
		},
		{
			name: "recent keys that could not move are not outgrown",
			setup: func(_ *testing.T, l *Ledger) {
				for i := range MaxRecent {
					l.Recent = append(l.Recent, Hash(fmt.Sprint("recent-", i)))
				}
			},
			reporter: "a", batch: running("x", 1),
			want: ErrBusy,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := empty()
			tt.setup(t, l)
			before := fmt.Sprint(l.Encode())
			applied, err := ApplyBatch(l, &Batch{IdempotencyKey: "the batch", Executions: tt.batch}, tt.reporter, nil, now)
			if tt.want == nil {
				if err != nil || !applied {
					t.Fatalf("applied %v, %v", applied, err)
				}
				return
			}
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("err = %v, want %v saying %q", err, tt.want, tt.reason)
			}
			if fmt.Sprint(l.Encode()) != before {
				t.Fatal("a refused batch changed the ledger")
			}
		})
	}
}

func mustApply(t *testing.T, l *Ledger, key, reporter string, es ...Execution) {
	t.Helper()
	if applied, err := ApplyBatch(l, &Batch{IdempotencyKey: key, Executions: es}, reporter, nil, now); err != nil || !applied {
		t.Fatalf("applied %v, %v", applied, err)
	}
}

func TestABatchKeyInASegmentIsNotAppliedAgain(t *testing.T) {
	l := empty()
	b := &Batch{IdempotencyKey: "moved", Executions: []Execution{ex("a", Succeeded, at(0, 1), time.Second)}}
	inSegment := func(id ID) bool { return id == Hash("moved") }
	applied, err := ApplyBatch(l, b, "svc", inSegment, now)
	if err != nil || applied {
		t.Fatalf("applied %v, %v", applied, err)
	}
	if s := Summarise(l, 30, now); s.Executions != 0 || l.Batches != 0 {
		t.Fatalf("a known batch counted: %+v", s)
	}
}

func TestADayNeverStartsTwice(t *testing.T) {
	l := empty()
	mustApply(t, l, "today", "svc", ex("a", Succeeded, at(0, 1), time.Second))
	// A replica whose clock is an hour behind, just after midnight.
	behind := time.Date(2026, 11, 21, 23, 30, 0, 0, time.UTC)
	if _, err := ApplyBatch(l, &Batch{IdempotencyKey: "late", Executions: []Execution{ex("b", Succeeded, at(1, 1), time.Second)}}, "svc", nil, behind); err != nil {
		t.Fatal(err)
	}
	if l.BatchDate != "2026-11-22" || l.Batches != 2 {
		t.Fatalf("batches %d on %s", l.Batches, l.BatchDate)
	}
}

// fullState is a state with every bound reached and every counter at its
// widest, the largest a tenant's state object can be.
func fullState() *Ledger {
	l := empty()
	for d := range LedgerDays + 1 {
		l.Days = append(l.Days, authv1alpha1.LedgerDay{
			Date: Day(now.AddDate(0, 0, d-LedgerDays)), Total: 1<<63 - 1, Succeeded: 1<<63 - 1, Failed: 1<<63 - 1,
			DurationMillis: 1<<63 - 1, VerificationsAllowed: 1<<63 - 1, VerificationsDenied: 1<<63 - 1,
		})
	}
	for i := range MaxInFlight {
		l.InFlight[Hash(fmt.Sprint("flight-", i))] = Flight{Reporter: uint32(i), StartedAt: now.UnixMilli(), State: Paused}
	}
	for i := range MaxFinished {
		l.Finished = append(l.Finished, Hash(fmt.Sprint("finished-", i)))
	}
	for i := range MaxRecent {
		l.Recent = append(l.Recent, Hash(fmt.Sprint("recent-", i)))
	}
	l.Moves, l.BatchDate, l.Batches = 1<<63-1, Day(now), MaxBatchesPerDay
	return l
}

func TestAFullStateSurvivesEncodingAndStaysSmall(t *testing.T) {
	l := fullState()
	s := l.Encode()
	again, err := Decode(s)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(again.Encode()) != fmt.Sprint(s) || len(again.InFlight) != MaxInFlight {
		t.Fatal("decoding changed the state")
	}
	b, err := json.Marshal(authv1alpha1.UsageLedgerSpec{State: s})
	if err != nil {
		t.Fatal(err)
	}
	// The API server's bound is 1.5 MiB; the envtest test measures the object with its metadata.
	if len(b) > 320_000 {
		t.Fatalf("a full state encodes to %d bytes", len(b))
	}
	// Each field at its cap fits the CRD's maxLength (of its base64 form).
	for _, field := range []struct {
		name      string
		b         []byte
		maxLength int
	}{{"inFlight", s.InFlight, 166668}, {"finished", s.Finished, 80000}, {"recentBatches", s.RecentBatches, 32000}} {
		if n := base64.StdEncoding.EncodedLen(len(field.b)); n != field.maxLength {
			t.Errorf("%s at its cap is %d base64 characters; the CRD allows %d", field.name, n, field.maxLength)
		}
	}
}

func TestACorruptStateIsRefused(t *testing.T) {
	for _, s := range []*authv1alpha1.LedgerState{
		{InFlight: make([]byte, flightSize+1)},
		{Finished: make([]byte, IDSize-1)},
		{RecentBatches: make([]byte, 1)},
		{InFlight: make([]byte, flightSize)}, // state 0
	} {
		if _, err := Decode(s); err == nil || !strings.Contains(err.Error(), "corrupt") {
			t.Fatalf("err = %v", err)
		}
	}
}
