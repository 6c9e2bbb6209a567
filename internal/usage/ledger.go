package usage

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// Bounds of a ledger.
const (
	LedgerDays    = 90
	MaxInFlight   = 5000
	MaxFinished   = 5000
	MaxBatches    = 2000
	BatchMemory   = 24 * time.Hour
	dateLayout    = "2006-01-02"
	hashedIDBytes = 12
)

// ErrTooManyInFlight refuses a batch that would track more executions in
// flight than a ledger holds; the caller should finish some, then retry.
var ErrTooManyInFlight = errors.New("too many executions in flight for this tenant")

// Day is the UTC date of t.
func Day(t time.Time) string { return t.UTC().Format(dateLayout) }

// hashID keeps ledger entries short and of fixed size whatever ids services use.
func hashID(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:hashedIDBytes])
}

// Apply applies a decoded batch to the ledger at now. It reports false,
// changing nothing, when the batch was applied before. It changes nothing
// either when it returns an error: a batch applies whole or not at all.
func Apply(l *authv1alpha1.UsageLedgerSpec, b *Batch, now time.Time) (bool, error) {
	key := hashID(b.IdempotencyKey)
	if slices.ContainsFunc(l.Batches, func(x authv1alpha1.LedgerBatch) bool { return x.Key == key }) {
		return false, nil
	}
	next := l.DeepCopy()
	oldest := Day(now.AddDate(0, 0, -(LedgerDays - 1)))
	finished := make(map[string]bool, len(next.Finished))
	for _, id := range next.Finished {
		finished[id] = true
	}

	for i, e := range b.Executions {
		id := hashID(e.ID)
		flight := slices.IndexFunc(next.InFlight, func(x authv1alpha1.LedgerExecution) bool { return x.ID == id })
		switch {
		case finished[id]:
			if !e.State.Terminal() {
				return false, invalid("executions[%d] (id %q) already finished; it cannot be %s again", i, short(e.ID), e.State)
			}
			// A repeated terminal report: already counted.
		case flight >= 0 && e.State.Terminal():
			started := time.UnixMilli(next.InFlight[flight].StartedAtMillis)
			next.InFlight = slices.Delete(next.InFlight, flight, flight+1)
			if Day(started) >= oldest {
				finish(day(next, Day(started)), e, started)
			}
			next.Finished, finished[id] = append(next.Finished, id), true
		case flight >= 0:
			next.InFlight[flight].State = string(e.State)
		default:
			d := Day(e.StartedAt)
			if d < oldest {
				return false, invalid("executions[%d].startedAt is more than %d days ago", i, LedgerDays)
			}
			day(next, d).Total++
			if e.State.Terminal() {
				finish(day(next, d), e, e.StartedAt)
				next.Finished, finished[id] = append(next.Finished, id), true
				break
			}
			if len(next.InFlight) >= MaxInFlight {
				return false, fmt.Errorf("%w (%d); report some as finished, then retry", ErrTooManyInFlight, MaxInFlight)
			}
			next.InFlight = append(next.InFlight, authv1alpha1.LedgerExecution{
				ID: id, State: string(e.State), StartedAtMillis: e.StartedAt.UnixMilli(),
			})
		}
	}

	next.Batches = append(next.Batches, authv1alpha1.LedgerBatch{Key: key, AppliedAt: now.Unix()})
	prune(next, now)
	*l = *next
	return true, nil
}

// finish counts a completed execution on the day it started, once.
func finish(d *authv1alpha1.LedgerDay, e Execution, started time.Time) {
	if e.State == Succeeded {
		d.Succeeded++
	} else {
		d.Failed++
	}
	if dur := e.FinishedAt.Sub(started); dur > 0 {
		d.DurationMillis += dur.Milliseconds()
	}
}

// CountVerifications adds verification counts of a day.
func CountVerifications(l *authv1alpha1.UsageLedgerSpec, date string, allowed, denied int64, now time.Time) {
	d := day(l, date)
	d.VerificationsAllowed += allowed
	d.VerificationsDenied += denied
	prune(l, now)
}

// day returns the ledger's counters of date, adding them in order if new.
func day(l *authv1alpha1.UsageLedgerSpec, date string) *authv1alpha1.LedgerDay {
	i, found := slices.BinarySearchFunc(l.Days, date, func(d authv1alpha1.LedgerDay, date string) int {
		switch {
		case d.Date < date:
			return -1
		case d.Date > date:
			return 1
		}
		return 0
	})
	if !found {
		l.Days = slices.Insert(l.Days, i, authv1alpha1.LedgerDay{Date: date})
	}
	return &l.Days[i]
}

// prune drops what no window can show and memory no longer needed.
func prune(l *authv1alpha1.UsageLedgerSpec, now time.Time) {
	oldest := Day(now.AddDate(0, 0, -(LedgerDays - 1)))
	l.Days = slices.DeleteFunc(l.Days, func(d authv1alpha1.LedgerDay) bool { return d.Date < oldest })
	oldestMillis := now.AddDate(0, 0, -(LedgerDays - 1)).UnixMilli()
	l.InFlight = slices.DeleteFunc(l.InFlight, func(e authv1alpha1.LedgerExecution) bool { return e.StartedAtMillis < oldestMillis })
	if n := len(l.Finished) - MaxFinished; n > 0 {
		l.Finished = slices.Delete(l.Finished, 0, n)
	}
	since := now.Add(-BatchMemory).Unix()
	l.Batches = slices.DeleteFunc(l.Batches, func(b authv1alpha1.LedgerBatch) bool { return b.AppliedAt < since })
	if n := len(l.Batches) - MaxBatches; n > 0 {
		l.Batches = slices.Delete(l.Batches, 0, n)
	}
}

// Summarise computes a Usage status for the window of windowDays UTC days
// ending today. Executions count on the day they started.
func Summarise(l *authv1alpha1.UsageLedgerSpec, windowDays int, now time.Time) authv1alpha1.UsageStatus {
	today := now.UTC().Truncate(24 * time.Hour)
	start := today.AddDate(0, 0, -(windowDays - 1))
	byDate := map[string]authv1alpha1.LedgerDay{}
	for _, d := range l.Days {
		byDate[d.Date] = d
	}
	st := authv1alpha1.UsageStatus{WindowStart: &metav1.Time{Time: start}}
	var durationMillis int64
	for i := range windowDays {
		date := Day(start.AddDate(0, 0, i))
		d := byDate[date]
		st.Days = append(st.Days, authv1alpha1.UsageDay{
			Date: date, Total: d.Total, Succeeded: d.Succeeded, Failed: d.Failed,
			VerificationsAllowed: d.VerificationsAllowed, VerificationsDenied: d.VerificationsDenied,
		})
		st.Executions += d.Total
		st.Succeeded += d.Succeeded
		st.Failed += d.Failed
		durationMillis += d.DurationMillis
	}
	for _, e := range l.InFlight {
		if !time.UnixMilli(e.StartedAtMillis).Before(start) {
			st.InFlight++
		}
	}
	if completed := st.Succeeded + st.Failed; completed > 0 {
		st.SuccessRate = strconv.FormatFloat(float64(st.Succeeded)*100/float64(completed), 'f', 1, 64)
		st.AverageDurationSeconds = strconv.FormatFloat(float64(durationMillis)/1000/float64(completed), 'f', 3, 64)
	}
	return st
}
