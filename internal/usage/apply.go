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
	batches, err := batchesToday(l, today)
	if err != nil {
		return false, err
	}
	a := newApplying(l, reporter, now)
	for i, e := range b.Executions {
		if err := a.execution(i, e); err != nil {
			return false, err
		}
	}
	a.commit(l)
	l.Recent = append(slices.Clip(l.Recent), key)
	l.BatchDate, l.Batches = today, batches+1
	prune(l, now)
	return true, nil
}

// batchesToday counts the tenant's batches of today. It refuses one more
// past a day's most, or while the recent keys wait to be moved to a
// segment: a batch whose key the ledger cannot remember would count twice
// when retried.
func batchesToday(l *Ledger, today string) (int32, error) {
	batches := l.Batches
	if l.BatchDate != today {
		batches = 0
	}
	if batches >= MaxBatchesPerDay {
		return 0, fmt.Errorf("%w: the tenant has sent %d batches on %s (UTC), the most one day holds; send more executions per batch", ErrTooManyBatches, MaxBatchesPerDay, today)
	}
	if len(l.Recent) >= MaxRecent {
		return 0, ErrBusy
	}
	return batches, nil
}

// applying is a batch being applied to copies of a ledger's counters, so
// that a batch refused halfway leaves the ledger as it was.
type applying struct {
	days         []authv1alpha1.LedgerDay
	flights      map[ID]Flight
	finishedList []ID
	finished     map[ID]bool
	// who is the reporter, mine its executions in flight: a key has a
	// bound of its own, so that one key cannot take a tenant's all.
	who    uint32
	mine   int
	oldest string
}

func newApplying(l *Ledger, reporter string, now time.Time) *applying {
	a := &applying{
		days:         slices.Clone(l.Days),
		flights:      maps.Clone(l.InFlight),
		finishedList: l.Finished,
		finished:     make(map[ID]bool, len(l.Finished)),
		who:          reporterHash(reporter),
		oldest:       Day(now.AddDate(0, 0, -(LedgerDays - 1))),
	}
	for _, id := range l.Finished {
		a.finished[id] = true
	}
	for _, f := range a.flights {
		if f.Reporter == a.who {
			a.mine++
		}
	}
	return a
}

// execution applies the report of executions[i].
func (a *applying) execution(i int, e Execution) error {
	id := Hash(e.ID)
	f, flying := a.flights[id]
	switch {
	case a.finished[id]:
		if !e.State.Terminal() {
			return invalid("executions[%d] (id %q) already finished; it cannot be %s again", i, short(e.ID), e.State)
		}
		// A repeated terminal report: already counted.
	case flying && e.State.Terminal():
		a.land(id, f, e)
	case flying:
		f.State = e.State
		a.flights[id] = f
	default:
		return a.start(i, id, e)
	}
	return nil
}

// land finishes an execution in flight, counting it on the day it started
// unless that day has left the ledger.
func (a *applying) land(id ID, f Flight, e Execution) {
	started := time.UnixMilli(f.StartedAt)
	delete(a.flights, id)
	if f.Reporter == a.who {
		a.mine--
	}
	if Day(started) >= a.oldest {
		finish(day(&a.days, Day(started)), e, started)
	}
	a.markFinished(id)
}

// start counts an execution first reported: finished at once, or put in
// flight within the tenant's and the key's bounds.
func (a *applying) start(i int, id ID, e Execution) error {
	d := Day(e.StartedAt)
	if d < a.oldest {
		return invalid("executions[%d].startedAt is more than %d days ago", i, LedgerDays)
	}
	if e.State.Terminal() {
		dd := day(&a.days, d)
		dd.Total++
		finish(dd, e, e.StartedAt)
		a.markFinished(id)
		return nil
	}
	if len(a.flights) >= MaxInFlight {
		return fmt.Errorf("%w: the tenant has %d, the most it may have; report some as finished, then retry", ErrTooManyInFlight, MaxInFlight)
	}
	if a.mine >= MaxInFlightPerKey {
		return fmt.Errorf("%w: this key has %d, the most one key may have; report some as finished, then retry", ErrTooManyInFlight, MaxInFlightPerKey)
	}
	day(&a.days, d).Total++
	a.flights[id] = Flight{Reporter: a.who, StartedAt: e.StartedAt.UnixMilli(), State: e.State}
	a.mine++
	return nil
}

func (a *applying) markFinished(id ID) {
	a.finishedList = append(a.finishedList, id)
	a.finished[id] = true
}

// commit writes the applied counters to l, keeping the newest MaxFinished.
func (a *applying) commit(l *Ledger) {
	l.Days, l.InFlight = a.days, a.flights
	finishedList := a.finishedList
	if n := len(finishedList) - MaxFinished; n > 0 {
		// A new slice: the old one may back the ledger a caller still holds.
		finishedList = slices.Clone(finishedList[n:])
	}
	l.Finished = finishedList
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
