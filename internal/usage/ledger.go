package usage

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

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
