package usage

import (
	"fmt"
	"maps"
	"slices"
	"time"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// ApplyBatch applies a decoded batch, sent with the key named reporter, to
// the ledger at now. It reports false, changing nothing, when the batch was
// applied before: its key is among the recent ones, or seen says it is in
// a segment. It changes nothing either when it returns an error: a batch
// applies whole or not at all.
func ApplyBatch(l *Ledger, b *Batch, reporter string, seen func(ID) bool, now time.Time) (bool, error) {
	key := Hash(b.IdempotencyKey)
	if slices.Contains(l.Recent, key) || (seen != nil && seen(key)) {
		return false, nil
	}
	today := l.Today(now)
	batches := l.Batches
	if l.BatchDate != today {
		batches = 0
	}
	if batches >= MaxBatchesPerDay {
		return false, fmt.Errorf("%w: the tenant has sent %d batches on %s (UTC), the most one day holds; send more executions per batch", ErrTooManyBatches, MaxBatchesPerDay, today)
	}
	if len(l.Recent) >= MaxRecent {
		return false, ErrBusy
	}

	days := slices.Clone(l.Days)
	flights := maps.Clone(l.InFlight)
	finishedList := l.Finished
	finished := make(map[ID]bool, len(l.Finished))
	for _, id := range l.Finished {
		finished[id] = true
	}
	who := reporterHash(reporter)
	mine := 0
	for _, f := range flights {
		if f.Reporter == who {
			mine++
		}
	}
	oldest := Day(now.AddDate(0, 0, -(LedgerDays - 1)))
	markFinished := func(id ID) {
		finishedList = append(finishedList, id)
		finished[id] = true
	}

	for i, e := range b.Executions {
		id := Hash(e.ID)
		f, flying := flights[id]
		switch {
		case finished[id]:
			if !e.State.Terminal() {
				return false, invalid("executions[%d] (id %q) already finished; it cannot be %s again", i, short(e.ID), e.State)
			}
			// A repeated terminal report: already counted.
		case flying && e.State.Terminal():
			started := time.UnixMilli(f.StartedAt)
			delete(flights, id)
			if f.Reporter == who {
				mine--
			}
			if Day(started) >= oldest {
				finish(day(&days, Day(started)), e, started)
			}
			markFinished(id)
		case flying:
			f.State = e.State
			flights[id] = f
		default:
			d := Day(e.StartedAt)
			if d < oldest {
				return false, invalid("executions[%d].startedAt is more than %d days ago", i, LedgerDays)
			}
			if e.State.Terminal() {
				dd := day(&days, d)
				dd.Total++
				finish(dd, e, e.StartedAt)
				markFinished(id)
				break
			}
			if len(flights) >= MaxInFlight {
				return false, fmt.Errorf("%w: the tenant has %d, the most it may have; report some as finished, then retry", ErrTooManyInFlight, MaxInFlight)
			}
			if mine >= MaxInFlightPerKey {
				return false, fmt.Errorf("%w: this key has %d, the most one key may have; report some as finished, then retry", ErrTooManyInFlight, MaxInFlightPerKey)
			}
			day(&days, d).Total++
			flights[id] = Flight{Reporter: who, StartedAt: e.StartedAt.UnixMilli(), State: e.State}
			mine++
		}
	}

	l.Days, l.InFlight = days, flights
	if n := len(finishedList) - MaxFinished; n > 0 {
		// A new slice: the old one may back the ledger a caller still holds.
		finishedList = slices.Clone(finishedList[n:])
	}
	l.Finished = finishedList
	l.Recent = append(slices.Clip(l.Recent), key)
	l.BatchDate, l.Batches = today, batches+1
	prune(l, now)
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

// AddVerifications adds a day's verification counts.
func AddVerifications(l *Ledger, date string, allowed, denied int64, now time.Time) {
	d := day(&l.Days, date)
	d.VerificationsAllowed += allowed
	d.VerificationsDenied += denied
	prune(l, now)
}

// day returns the counters of date, adding them in order if new.
func day(days *[]authv1alpha1.LedgerDay, date string) *authv1alpha1.LedgerDay {
	i, found := slices.BinarySearchFunc(*days, date, func(d authv1alpha1.LedgerDay, date string) int {
		switch {
		case d.Date < date:
			return -1
		case d.Date > date:
			return 1
		}
		return 0
	})
	if !found {
		*days = slices.Insert(*days, i, authv1alpha1.LedgerDay{Date: date})
	}
	return &(*days)[i]
}

// prune drops what no window can show.
func prune(l *Ledger, now time.Time) {
	oldest := Day(now.AddDate(0, 0, -(LedgerDays - 1)))
	l.Days = slices.DeleteFunc(l.Days, func(d authv1alpha1.LedgerDay) bool { return d.Date < oldest })
	oldestMillis := now.AddDate(0, 0, -(LedgerDays - 1)).UnixMilli()
	maps.DeleteFunc(l.InFlight, func(_ ID, f Flight) bool { return f.StartedAt < oldestMillis })
}
