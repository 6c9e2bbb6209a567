package verifier

import (
	"encoding/binary"
	"hash/maphash"
	"reflect"
	"runtime"
	"sync/atomic"
	"unsafe"

	"k8s.io/apimachinery/pkg/types"
)

// The index is stored so that the garbage collector has nothing in it to
// scan, and so that a key costs a few fixed-size values rather than a
// dozen small objects: slots and records are values in chunked slabs,
// found through tables of numbers; their texts (names, UIDs, hints) are
// byte ranges of an arena; the texts many keys share (namespaces, tenants,
// formats, phases, scope lists) are numbers into a table of symbols.
// None of those holds a pointer, so however many keys there are, a
// collection marks a handful of objects for the index. As pointers and
// strings (ten small objects a key) the index took 513 bytes a key at
// 100,000 keys and a full collection 16–18 ms; as values it takes 315
// bytes and 1.4 ms, and at 1,000,000 keys 3.6 ms where it took 0.5–0.8 s
// (BenchmarkVerify's heap-B/key less its ≈ 96 bytes of raw keys, and
// BenchmarkCollect, two alternated runs each). Under load at 10,000 keys
// the collector's marking had taken 13 % of the manager's core. The slabs
// and the tables (264 bytes a key at 100,000 keys) are mapped off the
// heap (allocate), so that the collector's headroom does not double them
// in the resident set: 15 bytes a key stay on the heap, where with the
// slabs alone off it the maps had kept 114.

// A text is a string of the index's arena: the chunk, and where in it.
type text struct {
	chunk uint32
	off   uint16
	n     uint16
}

// arenaChunk is the size of one chunk of the arena. A text never spans
// two, so no text is longer.
const arenaChunk = 64 << 10

// An arena holds the index's texts. Its bytes are never written twice:
// what a text names stays as it is for as long as a string made of it
// (Identity.KeyName, a fence's key) is held, after the text itself is
// freed or the arena compacted, so those strings are handed out without
// a copy. The collector keeps a chunk while a string points into it.
type arena struct {
	chunks [][]byte
	// used is the bytes the chunks hold, live those of texts not freed.
	used, live int
}

// fits says whether s can be a text.
func fits(s string) bool { return len(s) <= arenaChunk && len(s) <= 1<<16-1 }

// put copies s into the arena; s must fit.
func (a *arena) put(s string) text {
	if s == "" {
		return text{}
	}
	c := len(a.chunks) - 1
	if c < 0 || len(a.chunks[c])+len(s) > arenaChunk {
		a.chunks = append(a.chunks, make([]byte, 0, arenaChunk))
		c++
	}
	off := len(a.chunks[c])
	a.chunks[c] = append(a.chunks[c], s...)
	a.used += len(s)
	a.live += len(s)
	return text{chunk: uint32(c), off: uint16(off), n: uint16(len(s))}
}

// get is the string t names, sharing the arena's bytes.
func (a *arena) get(t text) string {
	if t.n == 0 {
		return ""
	}
	return unsafe.String(&a.chunks[t.chunk][t.off], int(t.n))
}

// free notes that nothing holds t any more.
func (a *arena) free(t text) { a.live -= int(t.n) }

// wasteful says whether more than half the arena is texts freed, enough
// of it to be worth copying the rest into a fresh one.
func (a *arena) wasteful() bool { return a.used-a.live > a.live && a.used > 4*arenaChunk }

// A sym is a text many keys share, held once in symbols; 0 is "".
type sym uint32

// symbols hold the texts many keys share: namespaces (and so tenants),
// formats and phases. They are never forgotten: there are as many as
// namespaces that ever held a key, not keys. (Sets of scopes, which may
// be as many as keys, are the Verifier's scopeSets, forgotten with their
// last key.)
type symbols struct {
	names []string
	ids   map[string]sym
}

func newSymbols() symbols { return symbols{names: []string{""}, ids: map[string]sym{"": 0}} }

// of is the symbol of s, made if s has none.
func (t *symbols) of(s string) sym {
	if id, ok := t.ids[s]; ok {
		return id
	}
	s = string([]byte(s)) // its own copy, not a part of a decoded object
	id := sym(len(t.names))
	t.names = append(t.names, s)
	t.ids[s] = id
	return id
}

// lookup is the symbol of s, if it has one.
func (t *symbols) lookup(s string) (sym, bool) {
	id, ok := t.ids[s]
	return id, ok
}

func (t *symbols) name(id sym) string { return t.names[id] }

// slabChunk is how many values one chunk of a slab holds.
const slabChunk = 1024

// A slab holds values of T in chunks that are never moved, so that a
// value keeps its index, and a growing slab copies nothing. Indexes start
// at 1: 0 is none.
//
// A chunk of values without pointers is mapped off the Go heap
// (mapMemory), where the platform allows: the slots and records, most of
// the index, then cost the process their bytes once, where on the heap
// the collector's headroom (GOGC=100: the heap grows to twice what is
// live before a collection) about doubled them in the resident set. The
// collector never looks into such a chunk, which is safe only because
// nothing in it points anywhere (pointerFree); the texts it refers to are
// ranges of the arena, which stays on the heap.
type slab[T any] struct {
	chunks []*[slabChunk]T
	// mapped keeps each off-heap chunk's mapping, which it unmaps when
	// the slab is collected.
	mapped []*mapping
	free   []int32
	next   int32
}

// newChunk is a chunk of zero values, off the heap if it can be.
func (s *slab[T]) newChunk() *[slabChunk]T {
	c, m := allocate[[slabChunk]T](1)
	if m != nil {
		s.mapped = append(s.mapped, m)
	}
	return &c[0]
}

// A mapping is memory mapped off the Go heap, unmapped once unreachable
// or freed.
type mapping struct {
	b       []byte
	cleanup runtime.Cleanup
}

// mappedBytes is how many bytes are mapped off the heap now.
var mappedBytes atomic.Int64

// allocate is n zero values of T off the heap, if T has no pointers and
// the platform allows, with their mapping; else on the heap, with no
// mapping. The caller holds the mapping for as long as it uses the
// values.
func allocate[T any](n int) ([]T, *mapping) {
	size := n * int(unsafe.Sizeof(*new(T)))
	if !slabsOffHeap || size == 0 || !pointerFree(reflect.TypeFor[T]()) {
		return make([]T, n), nil
	}
	b, ok := mapMemory(size)
	if !ok {
		return make([]T, n), nil
	}
	m := &mapping{b: b}
	m.cleanup = runtime.AddCleanup(m, unmapMemory, b)
	return unsafe.Slice((*T)(unsafe.Pointer(&b[0])), n), m
}

// free unmaps m at once (nil: nothing), for a caller sure that nothing
// reads its values any more.
func (m *mapping) free() {
	if m == nil {
		return
	}
	m.cleanup.Stop()
	unmapMemory(m.b)
}

// pointerFree reports whether values of t hold no pointer the collector
// would have to see: no string, slice, map, pointer, interface, channel
// or function, at any depth.
func pointerFree(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return true
	case reflect.Array:
		return t.Len() == 0 || pointerFree(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if !pointerFree(t.Field(i).Type) {
				return false
			}
		}
		return true
	default:
		return false
	}
}

func newSlab[T any]() slab[T] { return slab[T]{next: 1} }

// alloc is the index of a zero value of the slab's.
func (s *slab[T]) alloc() int32 {
	if n := len(s.free); n > 0 {
		i := s.free[n-1]
		s.free = s.free[:n-1]
		return i
	}
	i := s.next
	if int(i)/slabChunk == len(s.chunks) {
		s.chunks = append(s.chunks, s.newChunk())
	}
	s.next++
	return i
}

// len is how many values are in use.
func (s *slab[T]) len() int { return int(s.next) - 1 - len(s.free) }

// at is the value at i.
func (s *slab[T]) at(i int32) *T { return &s.chunks[i/slabChunk][i%slabChunk] }

// release zeroes the value at i for reuse.
func (s *slab[T]) release(i int32) {
	var zero T
	*s.at(i) = zero
	s.free = append(s.free, i)
}

// A hashIndex finds a slab's value by a key of K through the key's 64-bit
// hash, in a table of numbers where a map by K would hold its strings.
// The caller says whether the value at an index has the key, so keys of
// one hash are told apart by their values.
type hashIndex[K comparable] struct {
	seed   maphash.Seed
	hashOf func(maphash.Seed, K) uint64
	t      table
}

func newHashIndex[K comparable](hashOf func(maphash.Seed, K) uint64) hashIndex[K] {
	return hashIndex[K]{seed: maphash.MakeSeed(), hashOf: hashOf}
}

func (x *hashIndex[K]) hash(k K) uint64 { return x.hashOf(x.seed, k) }

// hashUID and hashName hash without the allocation of maphash.Comparable,
// which makes its argument escape.
func hashUID(seed maphash.Seed, uid types.UID) uint64 { return maphash.String(seed, string(uid)) }

func hashName(seed maphash.Seed, n types.NamespacedName) uint64 {
	var h maphash.Hash
	h.SetSeed(seed)
	_, _ = h.WriteString(n.Namespace)
	_ = h.WriteByte(0)
	_, _ = h.WriteString(n.Name)
	return h.Sum64()
}

// hashDigest is the first bytes of a record's hash: a SHA-256 digest of a
// random key is as evenly spread as a seeded hash would make it, and
// nobody chooses one, so hashing it again would add nothing.
func hashDigest(_ maphash.Seed, d [32]byte) uint64 { return binary.LittleEndian.Uint64(d[:8]) }

// get is the index filed under k; has says whether the value at an index
// has k.
func (x *hashIndex[K]) get(k K, has func(int32) bool) (int32, bool) {
	if at, ok := x.t.find(x.hash(k), has); ok {
		return x.t.cells[at].i, true
	}
	return 0, false
}

// set files i under k, in place of what was.
func (x *hashIndex[K]) set(k K, i int32, has func(int32) bool) {
	h := x.hash(k)
	if at, ok := x.t.find(h, has); ok {
		x.t.cells[at].i = i
		return
	}
	x.t.insert(h, i)
}

// del unfiles k if i is what is filed under it.
func (x *hashIndex[K]) del(k K, i int32) {
	if at, ok := x.t.find(x.hash(k), func(j int32) bool { return j == i }); ok {
		x.t.remove(at)
	}
}

// len is how many keys are filed.
func (x *hashIndex[K]) len() int { return x.t.n }

// each calls f with every index filed, in no order; f must not change
// what is filed.
func (x *hashIndex[K]) each(f func(int32)) {
	for _, c := range x.t.cells {
		if c.i != 0 {
			f(c.i)
		}
	}
}

// A table files indexes (never 0) under 64-bit hashes, open-addressed
// with linear probing, in cells of 8 bytes, off the heap where slabs are
// (allocate): 11–21 bytes a key at a load of 3/8 to 3/4, where a Go map
// of the same took 36 on the heap (64 by a record's 32-byte hash), which
// the collector's headroom about doubles. A cell keeps the low half of
// its hash, which is also where its probe begins, so that the table
// grows and deletes without the keys.
type table struct {
	cells []cell
	mem   *mapping
	// n is how many cells are used.
	n int
}

type cell struct {
	tag uint32
	i   int32
}

// find is the cell of the first index filed under h that ok accepts.
func (t *table) find(h uint64, ok func(int32) bool) (int, bool) {
	if t.n == 0 {
		return 0, false
	}
	mask, tag := len(t.cells)-1, uint32(h)
	for at := int(tag) & mask; ; at = (at + 1) & mask {
		c := t.cells[at]
		if c.i == 0 {
			return 0, false
		}
		if c.tag == tag && ok(c.i) {
			return at, true
		}
	}
}

// insert files i under h beside whatever is filed there already.
func (t *table) insert(h uint64, i int32) {
	if (t.n+1)*4 > len(t.cells)*3 {
		t.grow()
	}
	t.place(cell{tag: uint32(h), i: i})
	t.n++
}

// place puts c in the first free cell from its own.
func (t *table) place(c cell) {
	mask := len(t.cells) - 1
	at := int(c.tag) & mask
	for t.cells[at].i != 0 {
		at = (at + 1) & mask
	}
	t.cells[at] = c
}

// grow doubles the cells, the first time to 64. The index's lock is held
// for writing, so nothing reads the old cells as they are unmapped.
func (t *table) grow() {
	old, oldMem := t.cells, t.mem
	t.cells, t.mem = allocate[cell](max(64, 2*len(old)))
	for _, c := range old {
		if c.i != 0 {
			t.place(c)
		}
	}
	oldMem.free()
}

// remove empties the cell at, moving back each later cell of the run that
// a probe from its own cell would no longer reach past the gap.
func (t *table) remove(at int) {
	mask := len(t.cells) - 1
	for j := at; ; {
		j = (j + 1) & mask
		c := t.cells[j]
		if c.i == 0 {
			break
		}
		// The gap is on c's probe if it is no nearer j than c's own cell.
		if (j-int(c.tag))&mask >= (j-at)&mask {
			t.cells[at] = c
			at = j
		}
	}
	t.cells[at] = cell{}
	t.n--
}
