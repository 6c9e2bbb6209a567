package usage

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

// Bounds of a ledger. Each one bounds an object's size; together they keep
// the state object under 300 kB and a segment at 160 kB whatever the load.
const (
	LedgerDays = 90
	// MaxInFlight is per tenant and MaxInFlightPerKey per reporting key, so
	// that one key cannot take every slot of its tenant.
	MaxInFlight       = 5000
	MaxInFlightPerKey = 1000
	MaxFinished       = 5000
	// MaxBatchesPerDay bounds the idempotency keys a tenant's ledger must
	// remember, one UTC day's worth: the day's segments hold at most this
	// plus the recent keys carried over from the day before.
	MaxBatchesPerDay = 100_000
	// MoveAt is how many recent batch keys the store moves to a segment at
	// once; MaxRecent bounds them should moving fail.
	MoveAt    = 1000
	MaxRecent = 2000
	// SegmentKeys is how many keys one segment holds, and MaxSegments how
	// many segments one day can need.
	SegmentKeys = 10_000
	MaxSegments = (MaxBatchesPerDay+MaxRecent+SegmentKeys-1)/SegmentKeys + 1

	dateLayout = "2006-01-02"
	flightSize = IDSize + 4 + 8 + 1
)

// IDSize is the bytes of a hashed execution id or idempotency key: 96 bits,
// so that two days' keys at the cap collide with a probability under 1e-18.
const IDSize = 12

// ErrTooManyInFlight refuses a batch that would track more executions in
// flight than the tenant, or the reporting key, may have; the caller should
// report some as finished, then retry.
var ErrTooManyInFlight = errors.New("too many executions in flight")

// ErrTooManyBatches refuses a batch past a tenant's batches of a UTC day:
// remembering more keys is what would make the ledger grow without bound,
// and forgetting them would count retries twice.
var ErrTooManyBatches = errors.New("too many batches today")

// ErrBusy refuses a batch while recent keys cannot be moved to a segment.
var ErrBusy = errors.New("the ledger's recent batch keys are full; retry shortly")

// ID is a hashed execution id or idempotency key.
type ID [IDSize]byte

// Hash keeps ledger entries short and of fixed size whatever ids services use.
func Hash(s string) ID {
	sum := sha256.Sum256([]byte(s))
	return ID(sum[:IDSize])
}

// reporterHash tells reporting keys apart in a flight record; two keys of a
// tenant colliding in 32 bits only share a budget.
func reporterHash(name string) uint32 {
	sum := sha256.Sum256([]byte(name))
	return binary.BigEndian.Uint32(sum[:4])
}

// Day is the UTC date of t.
func Day(t time.Time) string { return t.UTC().Format(dateLayout) }

// Flight is an execution in flight.
type Flight struct {
	Reporter  uint32
	StartedAt int64 // Unix milliseconds
	State     State
}

// Ledger is a decoded LedgerState.
type Ledger struct {
	Days      []authv1alpha1.LedgerDay
	InFlight  map[ID]Flight
	Finished  []ID // oldest first
	Recent    []ID
	Moves     int64
	BatchDate string
	Batches   int32
}

var flightStates = []State{1: Running, 2: Paused}

// Decode reads a stored state; nil is an empty ledger.
func Decode(s *authv1alpha1.LedgerState) (*Ledger, error) {
	l := &Ledger{InFlight: map[ID]Flight{}}
	if s == nil {
		return l, nil
	}
	if len(s.InFlight)%flightSize != 0 || len(s.Finished)%IDSize != 0 || len(s.RecentBatches)%IDSize != 0 {
		return nil, errors.New("the usage ledger's state is corrupt: a binary field is not a whole number of entries")
	}
	l.Days = slices.Clone(s.Days)
	for r := range slices.Chunk(s.InFlight, flightSize) {
		st := int(r[flightSize-1])
		if st >= len(flightStates) || flightStates[st] == "" {
			return nil, fmt.Errorf("the usage ledger's state is corrupt: in-flight state %d", st)
		}
		l.InFlight[ID(r[:IDSize])] = Flight{
			Reporter:  binary.BigEndian.Uint32(r[IDSize:]),
			StartedAt: int64(binary.BigEndian.Uint64(r[IDSize+4:])),
			State:     flightStates[st],
		}
	}
	l.Finished = ids(s.Finished)
	l.Recent = ids(s.RecentBatches)
	l.Moves, l.BatchDate, l.Batches = s.Moves, s.BatchDate, s.Batches
	return l, nil
}

func ids(b []byte) []ID {
	out := make([]ID, 0, len(b)/IDSize)
	for r := range slices.Chunk(b, IDSize) {
		out = append(out, ID(r))
	}
	return out
}

// Encode is the stored form of l; in-flight records are sorted, so that
// equal ledgers encode equally.
func (l *Ledger) Encode() *authv1alpha1.LedgerState {
	s := &authv1alpha1.LedgerState{
		Days: l.Days, Moves: l.Moves, BatchDate: l.BatchDate, Batches: l.Batches,
		Finished: JoinIDs(l.Finished), RecentBatches: JoinIDs(l.Recent),
	}
	keys := slices.SortedFunc(maps.Keys(l.InFlight), func(a, b ID) int { return bytes.Compare(a[:], b[:]) })
	if len(keys) > 0 {
		s.InFlight = make([]byte, 0, len(keys)*flightSize)
	}
	for _, id := range keys {
		f := l.InFlight[id]
		s.InFlight = append(s.InFlight, id[:]...)
		s.InFlight = binary.BigEndian.AppendUint32(s.InFlight, f.Reporter)
		s.InFlight = binary.BigEndian.AppendUint64(s.InFlight, uint64(f.StartedAt))
		s.InFlight = append(s.InFlight, byte(slices.Index(flightStates, f.State)))
	}
	return s
}

// JoinIDs is the fixed-width binary form of ids.
func JoinIDs(ids []ID) []byte {
	if len(ids) == 0 {
		return nil
	}
	b := make([]byte, 0, len(ids)*IDSize)
	for _, id := range ids {
		b = append(b, id[:]...)
	}
	return b
}

// SplitIDs reads the binary form of ids.
func SplitIDs(b []byte) ([]ID, error) {
	if len(b)%IDSize != 0 {
		return nil, errors.New("a batch-key segment is corrupt: not a whole number of keys")
	}
	return ids(b), nil
}

// Today is the UTC day batches count on and keys move to: the clock's, or
// the ledger's when a replica whose clock is behind writes after one whose
// clock is not, so that a day never starts twice.
func (l *Ledger) Today(now time.Time) string { return max(Day(now), l.BatchDate) }

// Apply applies a decoded batch, sent with the key named reporter, to the
// ledger at now. It reports false, changing nothing, when the batch was
// applied before: its key is among the recent ones, or seen says it is in
// a segment. It changes nothing either when it returns an error: a batch
// applies whole or not at all.
func Apply(l *Ledger, b *Batch, reporter string, seen func(ID) bool, now time.Time) (bool, error) {
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

// CountVerifications adds verification counts of a day.
func CountVerifications(l *Ledger, date string, allowed, denied int64, now time.Time) {
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

// Summarise computes a Usage status for the window of windowDays UTC days
// ending today. Executions count on the day they started.
func Summarise(l *Ledger, windowDays int, now time.Time) authv1alpha1.UsageStatus {
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
	for _, f := range l.InFlight {
		if !time.UnixMilli(f.StartedAt).Before(start) {
			st.InFlight++
		}
	}
	if completed := st.Succeeded + st.Failed; completed > 0 {
		st.SuccessRate = strconv.FormatFloat(float64(st.Succeeded)*100/float64(completed), 'f', 1, 64)
		st.AverageDurationSeconds = strconv.FormatFloat(float64(durationMillis)/1000/float64(completed), 'f', 3, 64)
	}
	return st
}
