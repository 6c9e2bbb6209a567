package usage

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

var now = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

func at(daysAgo int, hour int) time.Time {
	return time.Date(2026, 11, 22-daysAgo, hour, 0, 0, 0, time.UTC)
}

func ex(id string, s State, started time.Time, dur time.Duration) Execution {
	e := Execution{ID: id, State: s, StartedAt: started}
	if s.Terminal() {
		f := started.Add(dur)
		e.FinishedAt = &f
	}
	return e
}

func apply(t *testing.T, l *Ledger, key string, es ...Execution) {
	t.Helper()
	if _, err := ApplyBatch(l, &Batch{IdempotencyKey: key, Executions: es}, "svc", nil, now); err != nil {
		t.Fatal(err)
	}
}

func empty() *Ledger {
	l, _ := Decode(nil)
	return l
}

func TestSummaryFollowsTheSeed(t *testing.T) {
	tests := []struct {
		name    string
		batches [][]Execution
		window  int
		check   func(t *testing.T, s authv1alpha1.UsageStatus)
	}{
		{"running and paused count toward the total only", [][]Execution{{
			ex("a", Running, at(0, 1), 0), ex("b", Paused, at(0, 1), 0), ex("c", Succeeded, at(0, 1), 10*time.Second),
		}}, 30, func(t *testing.T, s authv1alpha1.UsageStatus) {
			expect(t, s.Executions == 3 && s.Succeeded == 1 && s.Failed == 0 && s.InFlight == 2, s)
			expect(t, s.SuccessRate == "100.0" && s.AverageDurationSeconds == "10.000", s)
		}},
		{"failed, cancelled and compensating all count as failed", [][]Execution{{
			ex("a", Failed, at(1, 1), time.Second), ex("b", Cancelled, at(1, 1), time.Second),
			ex("c", Compensating, at(1, 1), time.Second), ex("d", Succeeded, at(1, 1), time.Second),
		}}, 30, func(t *testing.T, s authv1alpha1.UsageStatus) {
			expect(t, s.Failed == 3 && s.Succeeded == 1 && s.SuccessRate == "25.0", s)
		}},
		{"the average covers completed executions only", [][]Execution{{
			ex("a", Succeeded, at(0, 1), 2*time.Second), ex("b", Failed, at(0, 1), 4*time.Second),
			ex("c", Running, at(0, 1), 0),
		}}, 30, func(t *testing.T, s authv1alpha1.UsageStatus) {
			expect(t, s.AverageDurationSeconds == "3.000", s)
		}},
		{"no completed execution leaves rate and average unset", [][]Execution{{ex("a", Running, at(0, 1), 0)}},
			30, func(t *testing.T, s authv1alpha1.UsageStatus) {
				expect(t, s.SuccessRate == "" && s.AverageDurationSeconds == "", s)
			}},
		{"an execution reported running then finished counts once, on the day it started", [][]Execution{
			{ex("a", Running, at(2, 23), 0)},
			{ex("a", Paused, at(2, 23), 0)},
			{ex("a", Succeeded, at(2, 23), 2*time.Hour)},
		}, 30, func(t *testing.T, s authv1alpha1.UsageStatus) {
			expect(t, s.Executions == 1 && s.Succeeded == 1 && s.InFlight == 0 && s.AverageDurationSeconds == "7200.000", s)
			d := s.Days[len(s.Days)-3]
			expect(t, d.Date == "2026-11-20" && d.Total == 1 && d.Succeeded == 1, s)
		}},
		{"a repeated terminal report is counted once", [][]Execution{
			{ex("a", Failed, at(0, 1), time.Second)}, {ex("a", Failed, at(0, 1), time.Second)},
		}, 30, func(t *testing.T, s authv1alpha1.UsageStatus) {
			expect(t, s.Executions == 1 && s.Failed == 1, s)
		}},
		{"days outside the window drop off", [][]Execution{{
			ex("old", Succeeded, at(7, 1), time.Second), ex("new", Succeeded, at(6, 1), time.Second),
		}}, 7, func(t *testing.T, s authv1alpha1.UsageStatus) {
			expect(t, s.Executions == 1 && len(s.Days) == 7 && s.Days[0].Date == "2026-11-16" && s.Days[6].Date == "2026-11-22", s)
			expect(t, s.WindowStart.Time.Equal(time.Date(2026, 11, 16, 0, 0, 0, 0, time.UTC)), s)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := empty()
			for i, b := range tt.batches {
				apply(t, l, fmt.Sprint(i), b...)
			}
			tt.check(t, Summarise(l, tt.window, now))
		})
	}
}

func expect(t *testing.T, ok bool, s authv1alpha1.UsageStatus) {
	t.Helper()
	if !ok {
		t.Fatalf("summary %+v", s)
	}
}

func TestARetriedBatchIsNotAppliedTwice(t *testing.T) {
	l := empty()
	b := &Batch{IdempotencyKey: "k", Executions: []Execution{ex("a", Succeeded, at(0, 1), time.Second)}}
	for i, want := range []bool{true, false, false} {
		applied, err := ApplyBatch(l, b, "svc", nil, now)
		if err != nil || applied != want {
			t.Fatalf("attempt %d: applied %v, %v", i, applied, err)
		}
	}
	if s := Summarise(l, 30, now); s.Executions != 1 {
		t.Fatalf("%d executions", s.Executions)
	}
}

func TestBadBatchesChangeNothing(t *testing.T) {
	l := empty()
	apply(t, l, "first", ex("done", Succeeded, at(0, 1), time.Second))
	before := fmt.Sprint(l.Encode())
	_, err := ApplyBatch(l, &Batch{IdempotencyKey: "second", Executions: []Execution{
		ex("new", Succeeded, at(0, 2), time.Second), ex("done", Running, at(0, 1), 0),
	}}, "svc", nil, now)
	var inv *InvalidError
	if !errors.As(err, &inv) || !strings.Contains(err.Error(), "executions[1]") || !strings.Contains(err.Error(), "already finished") {
		t.Fatalf("err = %v", err)
	}
	if fmt.Sprint(l.Encode()) != before {
		t.Fatal("a refused batch changed the ledger")
	}
}

func TestDecodeBatchRefuses(t *testing.T) {
	good := `{"id":"a","state":"succeeded","startedAt":"2026-11-22T10:00:00Z","finishedAt":"2026-11-22T10:00:01Z"}`
	tests := []struct{ name, body, reason string }{
		{"an empty body", ``, "empty body"},
		{"a body that is not JSON", `{`, "not a JSON report"},
		{"a missing idempotency key", `{"executions":[` + good + `]}`, "idempotencyKey is required"},
		{"no executions", `{"idempotencyKey":"k","executions":[]}`, "executions is empty"},
		{"an unknown state", `{"idempotencyKey":"k","executions":[{"id":"a","state":"done","startedAt":"2026-11-22T10:00:00Z"}]}`, "executions[0].state must be"},
		{"a missing id", `{"idempotencyKey":"k","executions":[{"state":"running","startedAt":"2026-11-22T10:00:00Z"}]}`, "executions[0].id is required"},
		{"finishedAt before startedAt", `{"idempotencyKey":"k","executions":[{"id":"a","state":"failed","startedAt":"2026-11-22T10:00:00Z","finishedAt":"2026-11-22T09:00:00Z"}]}`, "finishedAt is before its startedAt"},
		{"a terminal state without finishedAt", `{"idempotencyKey":"k","executions":[{"id":"a","state":"failed","startedAt":"2026-11-22T10:00:00Z"}]}`, "finishedAt is required"},
		{"a timestamp far in the future", `{"idempotencyKey":"k","executions":[{"id":"a","state":"running","startedAt":"2026-11-23T10:00:00Z"}]}`, "startedAt is in the future"},
		{"a timestamp that is not RFC 3339", `{"idempotencyKey":"k","executions":[{"id":"a","state":"running","startedAt":"yesterday"}]}`, "RFC 3339"},
		{"an unknown field", `{"idempotencyKey":"k","tenant":"other","executions":[` + good + `]}`, "unknown field"},
		{"more than the batch limit", `{"idempotencyKey":"k","executions":[` + strings.Repeat(good+",", MaxBatchExecutions) + good + `]}`, "the limit is 1000"},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is refused", func(t *testing.T) {
			_, err := DecodeBatch([]byte(tt.body), now)
			var inv *InvalidError
			if !errors.As(err, &inv) || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("err = %v, want %q", err, tt.reason)
			}
		})
	}
	if _, err := DecodeBatch([]byte(`{"idempotencyKey":"k","executions":[`+good+`]}`), now); err != nil {
		t.Fatal(err)
	}
}

func TestLedgerStaysBounded(t *testing.T) {
	l := empty()
	for b := range 30 {
		es := make([]Execution, 0, MaxBatchExecutions)
		for i := range MaxBatchExecutions {
			es = append(es, ex(fmt.Sprintf("%d-%d", b, i), Succeeded, at(b%90, 1), time.Second))
		}
		apply(t, l, fmt.Sprint(b), es...)
	}
	if len(l.Finished) > MaxFinished || len(l.Days) > LedgerDays || len(l.Recent) != 30 {
		t.Fatalf("ledger grew: %d finished, %d days", len(l.Finished), len(l.Days))
	}
	if s := Summarise(l, 90, now); s.Executions != 30*MaxBatchExecutions {
		t.Fatalf("%d executions", s.Executions)
	}
}
