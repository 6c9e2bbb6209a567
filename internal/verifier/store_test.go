package verifier

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"hash/maphash"
	mrand "math/rand/v2"
	"os"
	"reflect"
	"runtime"
	"testing"
	"time"
	"unsafe"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/keys"
)

// indexed is a key and its record, as the index is given them, and what
// an Identity of it says.
type indexed struct {
	raw string
	key *authv1alpha1.ApiKey
	rec *authv1alpha1.ApiKeyRecord
}

func newIndexed(t *testing.T, i int, now time.Time) indexed {
	t.Helper()
	raw, err := keys.Generate(rand.Reader, keys.Prefixed)
	if err != nil {
		t.Fatal(err)
	}
	name, uid := fmt.Sprintf("key-%d", i), types.UID(fmt.Sprintf("uid-%d", i))
	ns := fmt.Sprintf("tenant-%d", i%3)
	return indexed{
		raw: raw,
		key: &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: uid},
			Spec: authv1alpha1.ApiKeySpec{Scopes: []string{"read", fmt.Sprint("s", i%2)}}},
		rec: &authv1alpha1.ApiKeyRecord{
			ObjectMeta: metav1.ObjectMeta{Name: keys.Hash(raw), CreationTimestamp: metav1.NewTime(now)},
			Spec: authv1alpha1.ApiKeyRecordSpec{Hash: keys.Hash(raw), Tenant: ns, KeyName: name, KeyUID: string(uid),
				Hint: keys.Hint(raw), Format: authv1alpha1.FormatPrefixed},
		},
	}
}

func (k indexed) check(t *testing.T, id Identity, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: Verify = %v", k.key.Name, err)
	}
	if id.KeyName != k.key.Name || id.KeyUID != k.key.UID || id.Tenant != k.key.Namespace || id.Hint != k.rec.Spec.Hint ||
		id.ScopeList != "read,"+k.key.Spec.Scopes[1] || id.RecordName() != k.rec.Name {
		t.Fatalf("%s: Identity = %+v", k.key.Name, id)
	}
}

// TestTextsOutliveTheirKeysAndACompaction: the index's texts are copied
// into a fresh arena once most are freed, and what it handed out before
// (an Identity's names) stays as it was, with every key still answered.
func TestTextsOutliveTheirKeysAndACompaction(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC))
	v := New(clk, 10*time.Second)
	const n = 12000 // enough texts for more chunks than a compaction waits for
	all := make([]indexed, n)
	ids := make([]Identity, n)
	for i := range all {
		all[i] = newIndexed(t, i, clk.Now())
		v.SetKey(all[i].key)
		v.SetRecord(all[i].rec)
	}
	for i := range all {
		var err error
		ids[i], err = v.Verify(all[i].raw)
		all[i].check(t, ids[i], err)
	}
	chunks := len(v.texts.chunks)
	for i := range all {
		if i%8 != 0 {
			v.RemoveRecord(all[i].rec)
			v.RemoveKey(all[i].key)
		}
	}
	if len(v.texts.chunks) >= chunks || v.texts.wasteful() {
		t.Fatalf("the arena kept %d of %d chunks, %d of %d bytes live", len(v.texts.chunks), chunks, v.texts.live, v.texts.used)
	}
	runtime.GC()
	for i := range all {
		all[i].check(t, ids[i], nil) // handed out before: unchanged
		id, err := v.Verify(all[i].raw)
		if i%8 != 0 {
			if err == nil {
				t.Fatalf("%s: removed, yet Verify = %+v", all[i].key.Name, id)
			}
			continue
		}
		all[i].check(t, id, err)
	}
	if got, want := v.slots.len(), n/8; got != want || v.entries.len() != want || v.Size() != want {
		t.Fatalf("%d slots, %d entries, %d records held, want %d", got, v.entries.len(), v.Size(), want)
	}
	// Freed places are taken again.
	next := v.slots.next
	for i := range all {
		if i%8 != 0 {
			v.SetKey(all[i].key)
			v.SetRecord(all[i].rec)
		}
	}
	if v.slots.next != next {
		t.Fatalf("the slots grew to %d with %d free", v.slots.next, next-1-int32(n/8))
	}
	for i := range all {
		id, err := v.Verify(all[i].raw)
		all[i].check(t, id, err)
	}
}

// TestAHashIndexTellsKeysOfOneHashApart: keys whose 64-bit hashes are
// the same are each found, replaced and removed on their own.
func TestAHashIndexTellsKeysOfOneHashApart(t *testing.T) {
	x := newHashIndex(func(maphash.Seed, string) uint64 { return 7 }) // every key collides
	values := map[int32]string{}
	has := func(k string) func(int32) bool { return func(i int32) bool { return values[i] == k } }
	set := func(k string, i int32) {
		values[i] = k
		x.set(k, i, has(k))
	}
	for i, k := range []string{"a", "b", "c"} {
		set(k, int32(i+1))
	}
	set("b", 5) // b moves
	for k, want := range map[string]int32{"a": 1, "b": 5, "c": 3} {
		if got, ok := x.get(k, has(k)); !ok || got != want {
			t.Errorf("get(%q) = %d, %v; want %d", k, got, ok, want)
		}
	}
	if _, ok := x.get("d", has("d")); ok {
		t.Error("a key never filed is found")
	}
	x.del("a", 1)
	x.del("c", 9) // not what c is filed under: stays
	if _, ok := x.get("a", has("a")); ok {
		t.Error("a is found after its deletion")
	}
	for k, want := range map[string]int32{"b": 5, "c": 3} {
		if got, ok := x.get(k, has(k)); !ok || got != want {
			t.Errorf("after a's deletion, get(%q) = %d, %v; want %d", k, got, ok, want)
		}
	}
	x.del("b", 5)
	x.del("c", 3)
	if x.len() != 0 {
		t.Errorf("%d keys filed after every deletion", x.len())
	}
}

// TestATableFindsWhatIsFiledThroughGrowthAndDeletion: random filings and
// deletions, with hashes of few values (long runs of cells that wrap
// around the table's end) and of many, leave the table holding what a map
// holds, each index found under its hash; a table of values without
// pointers is off the heap and unmapped as it grows.
func TestATableFindsWhatIsFiledThroughGrowthAndDeletion(t *testing.T) {
	for _, spread := range []uint64{7, 1 << 40} {
		t.Run(fmt.Sprintf("spread=%d", spread), func(t *testing.T) {
			rng := mrand.New(mrand.NewPCG(1, spread))
			mapped := MappedBytes()
			var x table
			want := map[int32]uint64{} // index → hash
			is := func(i int32) func(int32) bool { return func(j int32) bool { return j == i } }
			for step := range 20_000 {
				i := int32(rng.IntN(3000) + 1)
				if h, ok := want[i]; ok && rng.IntN(2) == 0 {
					at, found := x.find(h, is(i))
					if !found {
						t.Fatalf("step %d: %d is not found under %#x", step, i, h)
					}
					x.remove(at)
					delete(want, i)
				} else if !ok {
					h := rng.Uint64() % spread
					x.insert(h|uint64(rng.Uint32())<<32, i)
					want[i] = h
				}
				if step%997 == 0 || step == 19_999 {
					if x.n != len(want) {
						t.Fatalf("step %d: %d cells used, %d filed", step, x.n, len(want))
					}
					for i, h := range want {
						if _, found := x.find(h, is(i)); !found {
							t.Fatalf("step %d: %d is not found under %#x", step, i, h)
						}
					}
				}
			}
			if slabsOffHeap {
				if got, size := MappedBytes()-mapped, int64(len(x.cells))*8; got != size {
					t.Errorf("%d bytes mapped for %d cells of 8 bytes: the grown tables were not all unmapped", got, len(x.cells))
				}
			}
		})
	}
}

// listedStream is a stream whose list began at a count.
type listedStream struct {
	at     int64
	synced bool
}

func (s listedStream) Synced() bool            { return s.synced }
func (s listedStream) ListedAt() (int64, bool) { return s.at, s.synced }

// TestTheIndexIsListedSinceAPointOnlyIfEveryListBeganAfterIt: a
// catch-up may skip its own list only when every one of the index's
// lists is in and began after its point.
func TestTheIndexIsListedSinceAPointOnlyIfEveryListBeganAfterIt(t *testing.T) {
	v := New(clocktesting.NewFakeClock(time.Now()), time.Second)
	if v.ListedSince(v.ListPoint()) {
		t.Fatal("listed since a point with no watch at all")
	}
	point := v.ListPoint()
	for _, tt := range []struct {
		name    string
		streams []stream
		want    bool
	}{
		{"both began after", []stream{listedStream{point, true}, listedStream{point + 1, true}}, true},
		{"one began before", []stream{listedStream{point, true}, listedStream{point - 1, true}}, false},
		{"one not synced", []stream{listedStream{point, true}, listedStream{point, false}}, false},
	} {
		v.streams = tt.streams
		if got := v.ListedSince(point); got != tt.want {
			t.Errorf("%s: ListedSince = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestARelistGivesAHashToTheKeyItIsListedFor: a record deleted and made
// again for another key while the watch was away is, after the relist,
// the new key's: never still the old one's, and not refused as a second
// record of a hash the old key held.
func TestARelistGivesAHashToTheKeyItIsListedFor(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC))
	v := New(clk, 10*time.Second)
	a := newIndexed(t, 1, clk.Now())
	v.SetKey(a.key)
	v.SetRecord(a.rec)
	b := newIndexed(t, 2, clk.Now())
	b.raw = a.raw
	b.rec.Name, b.rec.Spec.Hash, b.rec.Spec.Hint = a.rec.Name, a.rec.Spec.Hash, a.rec.Spec.Hint
	(*apiKeys)(v).Replace([]*authv1alpha1.ApiKey{a.key, b.key})
	(*records)(v).Replace([]*authv1alpha1.ApiKeyRecord{b.rec})
	id, err := v.Verify(b.raw)
	b.check(t, id, err)
	if got := v.RecordNames(a.key.UID); len(got) != 0 {
		t.Fatalf("the old key still has records %v", got)
	}
}

// TestASetOfScopesGoesWithItsLastKey: a set of scopes is held once while
// keys have it, and forgotten with the last, what was handed out of it
// staying as it was.
func TestASetOfScopesGoesWithItsLastKey(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC))
	v := New(clk, 10*time.Second)
	all := []indexed{newIndexed(t, 0, clk.Now()), newIndexed(t, 2, clk.Now()), newIndexed(t, 1, clk.Now())}
	for _, k := range all {
		v.SetKey(k.key)
		v.SetRecord(k.rec)
	}
	if len(v.scopeIDs) != 2 {
		t.Fatalf("%d sets held for two distinct sets", len(v.scopeIDs))
	}
	id, err := v.Verify(all[0].raw)
	all[0].check(t, id, err)
	changed := all[0].key.DeepCopy()
	changed.Spec.Scopes = []string{"other"}
	v.SetKey(changed) // all[1] still has read,s0
	if len(v.scopeIDs) != 3 {
		t.Fatalf("%d sets held, want 3", len(v.scopeIDs))
	}
	for _, k := range append(all[1:], indexed{key: changed}) {
		v.RemoveKey(k.key)
	}
	if len(v.scopeIDs) != 0 || len(v.freeScopes) != 3 {
		t.Fatalf("%d sets held and %d free after every key went", len(v.scopeIDs), len(v.freeScopes))
	}
	all[0].check(t, id, nil)
	v.SetKey(all[1].key)
	if len(v.scopeSets) != 4 || len(v.freeScopes) != 2 {
		t.Fatalf("a new set took no free number: %d numbers, %d free", len(v.scopeSets), len(v.freeScopes))
	}
}

// TestSlabsOfValuesWithoutPointersAreOffTheHeap: the index's slots and
// records are mapped off the heap, keep their values through
// collections, and are unmapped with their slab; values with pointers
// stay where the collector sees them.
func TestSlabsOfValuesWithoutPointersAreOffTheHeap(t *testing.T) {
	for _, tt := range []struct {
		name string
		t    reflect.Type
		want bool
	}{
		{"a record's entry", reflect.TypeFor[entry](), true},
		{"a key's slot", reflect.TypeFor[slot](), true},
		{"a string", reflect.TypeFor[struct{ s string }](), false},
		{"an array of pointers", reflect.TypeFor[[4]*int](), false},
		{"an empty array of pointers", reflect.TypeFor[[0]*int](), true},
		{"a slice in a nested struct", reflect.TypeFor[struct{ a struct{ b []byte } }](), false},
	} {
		if got := pointerFree(tt.t); got != tt.want {
			t.Errorf("%s: pointer-free %v, want %v", tt.name, got, tt.want)
		}
	}
	if !slabsOffHeap {
		t.Skip("slabs are on the heap on " + runtime.GOOS + " and under the race detector")
	}

	const n = 5 * slabChunk
	at := entries(t, n)
	if runtime.GOOS == "linux" {
		for deadline := time.Now().Add(10 * time.Second); isMapped(t, at); {
			if time.Now().After(deadline) {
				t.Fatalf("a dropped slab left its chunk at %#x mapped", at)
			}
			runtime.GC()
			time.Sleep(10 * time.Millisecond)
		}
	}
	mapped := MappedBytes()

	p := newSlab[*int]()
	for i := range n {
		v := i
		*p.at(p.alloc()) = &v
	}
	runtime.GC()
	for i := range int32(n) {
		if got := **p.at(i + 1); got != int(i) {
			t.Fatalf("pointer %d reads %d after a collection", i+1, got)
		}
	}
	if got := MappedBytes() - mapped; got != 0 {
		t.Errorf("a slab of pointers mapped %d bytes off the heap", got)
	}
}

// entries fills a slab of n entries, off the heap, reads them back after a
// collection, and returns where its first chunk is mapped.
func entries(t *testing.T, n int) uintptr {
	heap := heapAlloc()
	s := newSlab[entry]()
	for i := range n {
		e := s.at(s.alloc())
		e.hash[0], e.hash[31], e.slot = byte(i), byte(i>>8), int32(i)
	}
	size := int64(unsafe.Sizeof(entry{}))
	var got int64
	for _, m := range s.mapped {
		got += int64(len(m.b))
	}
	if got < int64(n)*size {
		t.Fatalf("%d entries of %d bytes mapped %d bytes off the heap", n, size, got)
	}
	if got := heapAlloc() - heap; got > int64(n)*size/4 {
		t.Errorf("%d entries of %d bytes grew the heap by %d bytes", n, size, got)
	}
	runtime.GC()
	for i := range int32(n) {
		if e := s.at(i + 1); e.hash[0] != byte(i) || e.hash[31] != byte(i>>8) || e.slot != i {
			t.Fatalf("entry %d reads %d after a collection", i+1, e.slot)
		}
	}
	if !isMapped(t, uintptr(unsafe.Pointer(&s.mapped[0].b[0]))) && runtime.GOOS == "linux" {
		t.Fatal("the first chunk is not in /proc/self/maps")
	}
	return uintptr(unsafe.Pointer(&s.mapped[0].b[0]))
}

// isMapped reports whether a mapping of /proc/self/maps holds addr (the
// kernel merges neighbouring anonymous mappings into one range).
func isMapped(t *testing.T, addr uintptr) bool {
	if runtime.GOOS != "linux" {
		return true
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	for line := range bytes.Lines(maps) {
		var start, end uintptr
		if _, err := fmt.Sscanf(string(line), "%x-%x", &start, &end); err == nil && start <= addr && addr < end {
			return true
		}
	}
	return false
}

func heapAlloc() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
