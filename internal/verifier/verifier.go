// Package verifier answers "which key is this?" from memory: an index from
// key hash to the key's identity, fed by watches on ApiKeyRecords and
// ApiKeys, with no API server call on the request path.
package verifier

import (
	"context"
	"encoding/hex"
	"errors"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/informers"
	"github.com/latchkey-dev/latchkey/internal/keys"
)

// DefaultFenceTTL is how long a fence holds a key whose revocation was
// admitted but has not been seen persisted. The watch normally shows the
// revocation within milliseconds; a fence that outlives this was for a
// write that never landed.
const DefaultFenceTTL = 30 * time.Second

// Why a key was refused. The texts go to callers: they never hold key material.
var (
	ErrMalformed = errors.New("malformed key")
	// ErrUnknown says no more than "invalid": whether a key exists is not
	// for a guesser to learn. Revoked and expired are said only of keys
	// that once authenticated, which their caller holds.
	ErrUnknown   = errors.New("invalid key")
	ErrRevoked   = errors.New("key revoked")
	ErrExpired   = errors.New("key expired")
	ErrSuspended = errors.New("key suspended")
	// ErrRotated refuses a key a rotation replaced, once its grace period
	// is over.
	ErrRotated = errors.New("key replaced by a rotation")
	// ErrNotServing refuses every key while this replica cannot be sure it
	// holds every revocation (docs/replicas.md): it is not a verdict on the
	// key, so callers answer it as unavailable, not unauthenticated.
	ErrNotServing = errors.New("this replica is not serving: it cannot yet confirm it holds every revocation; retry")
)

// A Gate says whether this replica may answer keys now: the serving
// lease (internal/fencing), which keeps its own clock.
type Gate interface {
	MayServe() bool
}

// Identity is who a valid key belongs to.
type Identity struct {
	Tenant  string
	KeyName string
	KeyUID  types.UID
	// RecordHash is the hash of the key, which names its ApiKeyRecord
	// (RecordName), where last use is written.
	RecordHash [32]byte
	Hint       string
	Format     authv1alpha1.KeyFormat
	CreatedAt  time.Time
	// ExpiresAt is the zero time when the key does not expire.
	ExpiresAt time.Time
	// Scopes are the key's (its ApiKey's spec.scopes, shared: never
	// changed), and ScopeList the same joined with commas, as the
	// X-Latchkey-Scopes header carries them. Scopes a fence holds off
	// (removed, the removal not seen yet) are in neither.
	Scopes    []string
	ScopeList string
}

// RecordName is the name of the key's ApiKeyRecord: its hash in hex.
func (id *Identity) RecordName() string { return nameOf(id.RecordHash) }

// HasScope says whether the key has scope.
func (id *Identity) HasScope(scope string) bool { return slices.Contains(id.Scopes, scope) }

// A stream is one of the index's watches.
type stream interface {
	Synced() bool
	ListedAt() (int64, bool)
}

// Verifier is the in-memory index. It is safe for concurrent use.
type Verifier struct {
	// log reports faults of the index's input, for operators.
	log   logr.Logger
	clock clock.PassiveClock
	// fences has its own lock: fencing never takes the index's.
	fences *fenceTable

	// The index keeps of each record and ApiKey only the fields a verdict
	// and an Identity read, copied out of the watch's objects (which it
	// never holds), as values with no pointer in them (store.go).
	mu sync.RWMutex
	// byHash finds a delivered record by its hash: its entry, of the
	// first key indexed with it.
	byHash  hashIndex[[32]byte]
	entries slab[entry]
	// slots hold, per key UID, the ApiKey and the entries of its records,
	// pending ones among them, while either is indexed: an entry names
	// its key's slot, so a verdict takes one map lookup, and the leader's
	// controllers find a key's records without a map of their own.
	slots slab[slot]
	byUID hashIndex[types.UID]
	// byName holds the slots of the ApiKeys indexed, by name, and
	// bySecret those of the ApiKeys that name a Secret other than their
	// own name, by that Secret (names.go).
	byName   hashIndex[types.NamespacedName]
	bySecret map[types.NamespacedName][]int32
	// tallies count each namespace's ApiKeys by state, for Usage.
	tallies map[sym]*tally
	texts   arena
	syms    symbols
	// scopeSets are the sets of scopes keys have, each once while a key
	// has it; 0 is none. freeScopes are numbers free for another set.
	scopeSets  []scopes
	scopeIDs   map[string]uint32
	freeScopes []uint32
	streams    []stream
	// listPoints counts ListPoint's calls; the streams read it as each of
	// their lists begins.
	listPoints atomic.Int64
	// keySinks and recordSinks are fed what the watches bring, after the
	// index.
	keySinks    []informers.Sink[*authv1alpha1.ApiKey]
	recordSinks []informers.Sink[*authv1alpha1.ApiKeyRecord]
	// gate, when set, must allow every answer.
	gate Gate
}

// A slot is the index's place for one key UID.
type slot struct {
	uid  text
	used bool
	// hasKey is false while the ApiKey is not indexed (not yet, or
	// deleted).
	hasKey bool
	key    key
	// entries is the first of the entries of the key's records.
	entries int32
}

// An entry is one record of a key: pending, refused as a second record
// of a hash another key holds, or indexed (in byHash).
type entry struct {
	hash [32]byte
	// slot is its key's; 0 while the entry is free.
	slot int32
	// next is the key's next entry; 0 is none.
	next    int32
	indexed bool
	rec     record
}

// record is what the index keeps of a delivered ApiKeyRecord; instants
// are Unix nanoseconds, 0 for none.
type record struct {
	tenant, format sym
	hint           text
	created        int64
	expiresAt      int64
	minted         int64
	validUntil     int64
	// revokedAt is when it was revoked (0: not), and keyGone says it was
	// for its key's deletion (Deleted or Orphaned).
	revokedAt                 int64
	revoked, rotated, keyGone bool
}

// key is what the index keeps of an ApiKey; instants as in record.
type key struct {
	namespace sym
	name      text
	// secret is spec.secretName when it is not the key's own name, which
	// it is for most keys: none then.
	secret text
	// phase is status.phase as the controller last wrote it.
	phase      sym
	generation int64
	grace      time.Duration
	// rotationRequested is spec.rotation.requestedAt.
	rotationRequested int64
	expiresAt         int64
	// scopes is 0 for a key without scopes, as most are.
	scopes    uint32
	revoked   bool
	deleting  bool
	suspended bool
}

// scopes are a key's scopes and the same joined, as the X-Latchkey-Scopes
// header carries them: built once per set rather than per request.
type scopes struct {
	list   []string
	joined string
	// id is the set's key in scopeIDs, and keys how many keys have it.
	id   string
	keys int
}

// nanos is t in Unix nanoseconds, 0 for the zero time.
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// instant is nanos undone.
func instant(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// New returns an empty verifier.
func New(clk clock.PassiveClock, fenceTTL time.Duration, opts ...Option) *Verifier {
	if fenceTTL <= 0 {
		fenceTTL = DefaultFenceTTL
	}
	o := options{maxFences: DefaultMaxFences, confirmAfter: DefaultFenceConfirmAfter}
	for _, opt := range opts {
		opt(&o)
	}
	return &Verifier{
		gate:    o.gate,
		log:     ctrllog.Log.WithName("verifier"),
		clock:   clk,
		fences:  newFenceTable(clk, fenceTTL, o.confirmAfter, o.maxFences),
		byHash:  newHashIndex(hashDigest),
		entries: newSlab[entry](),
		slots:   newSlab[slot](),
		byUID:   newHashIndex(hashUID),
		byName:  newHashIndex(hashName),
		tallies: map[sym]*tally{},
		syms:    newSymbols(),

		bySecret:  map[types.NamespacedName][]int32{},
		scopeSets: []scopes{{}},
		scopeIDs:  map[string]uint32{},
	}
}

// Verify resolves a presented key; on error the Identity is zero.
func (v *Verifier) Verify(raw string) (Identity, error) {
	id, _, err := v.Resolve(raw)
	return id, err
}

// Resolve is Verify that also names the tenant of a known key, refused or
// not, so that a refusal can be counted for it; an unknown or malformed
// key has none. Nothing allocates, allowed or refused, unless a fence holds
// scopes of the key off. A malformed key, or a Prefixed key whose checksum
// fails, is refused before any lookup. A key authenticates only if its
// record is not revoked, its ApiKey exists and is neither revoked, being
// deleted nor suspended, a rotation has not replaced it (at once with a
// grace period of 0s, else at its record's validUntil), no fence stops
// it, and it has not expired at this instant.
func (v *Verifier) Resolve(raw string) (id Identity, tenant string, err error) {
	if _, err := keys.Parse(raw); err != nil {
		return Identity{}, "", ErrMalformed
	}
	if v.gate != nil && !v.gate.MayServe() {
		return Identity{}, "", ErrNotServing
	}
	hash := keys.Sum(raw)
	now := v.clock.Now()

	v.mu.RLock()
	defer v.mu.RUnlock()
	ei, ok := v.byHash.get(hash, v.hasHash(hash))
	if !ok {
		return Identity{}, "", ErrUnknown
	}
	e := v.entries.at(ei)
	rec := &e.rec
	tenant = v.syms.name(rec.tenant)
	s := v.slots.at(e.slot)
	k := &s.key
	if !s.hasKey || k.revoked || k.deleting {
		return Identity{}, tenant, ErrRevoked
	}
	if rec.revoked {
		if rec.rotated {
			return Identity{}, tenant, ErrRotated
		}
		return Identity{}, tenant, ErrRevoked
	}
	uid := types.UID(v.texts.get(s.uid))
	fenced := v.fences.holds(uid, now)
	switch {
	case fenced.Revoked:
		return Identity{}, tenant, ErrRevoked
	case k.suspended || fenced.Suspended:
		return Identity{}, tenant, ErrSuspended
	case rec.validUntil != 0 && now.UnixNano() >= rec.validUntil,
		k.grace == 0 && rec.supersededAt(instant(k.rotationRequested)),
		rec.supersededAt(fenced.RotationRequested):
		return Identity{}, tenant, ErrRotated
	}
	expiresAt := rec.expiresAt
	if k.expiresAt != 0 {
		expiresAt = k.expiresAt
	}
	if expiresAt != 0 && now.UnixNano() >= expiresAt {
		return Identity{}, tenant, ErrExpired
	}
	sc := &v.scopeSets[k.scopes]
	id = Identity{
		Tenant:     tenant,
		KeyName:    v.texts.get(k.name),
		KeyUID:     uid,
		RecordHash: hash,
		Hint:       v.texts.get(rec.hint),
		Format:     authv1alpha1.KeyFormat(v.syms.name(rec.format)),
		CreatedAt:  instant(rec.created),
		ExpiresAt:  instant(expiresAt),
		Scopes:     sc.list,
		ScopeList:  sc.joined,
	}
	if len(fenced.Scopes) > 0 {
		id.Scopes = slices.DeleteFunc(slices.Clone(id.Scopes), func(s string) bool { return slices.Contains(fenced.Scopes, s) })
		id.ScopeList = strings.Join(id.Scopes, ",")
	}
	return id, tenant, nil
}

// supersededAt says whether a rotation requested at requested (the zero
// time: none) replaces the record's key (ApiKeyRecord.SupersededAt).
func (r *record) supersededAt(requested time.Time) bool {
	return !requested.IsZero() && authv1alpha1.Superseded(time.Unix(0, r.minted), requested)
}

// Fence stops what stop takes away from the key until fenceTTL passes,
// for good once the watch shows the change, or until the API server,
// asked when the watch stays silent, does not show it. It implements the
// admission webhook's RevocationFence; it fails only when the fence table
// is full.
func (v *Verifier) Fence(_ context.Context, key *authv1alpha1.ApiKey, stop Stop) error {
	return v.fences.add(key, stop)
}

// Size is how many records the index holds.
func (v *Verifier) Size() int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.byHash.len()
}

// Fences is how many fences hold now.
func (v *Verifier) Fences() int { return v.fences.len() }

// ListPoint marks an instant after which a list of the API server's
// objects shows every change a replica catching up needs (fencing's
// catch-up, once its peers are asked or waited out), and returns it for
// ListedSince.
func (v *Verifier) ListPoint() int64 { return v.listPoints.Add(1) }

// ListedSince says whether the index is synced from lists that all began
// after point: then they show every change persisted before it, as the
// catch-up's own list of ApiKeys would, so that list need not be made.
func (v *Verifier) ListedSince(point int64) bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	for _, s := range v.streams {
		if at, ok := s.ListedAt(); !ok || at < point {
			return false
		}
	}
	return len(v.streams) > 0
}

// Serving reports whether this replica answers keys: the index is synced
// and the gate, if any, allows answers.
func (v *Verifier) Serving() bool { return v.Synced() && (v.gate == nil || v.gate.MayServe()) }

// Synced reports whether the index holds everything the API server had
// when it started watching.
func (v *Verifier) Synced() bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	for _, s := range v.streams {
		if !s.Synced() {
			return false
		}
	}
	return len(v.streams) > 0
}

// SetRecord indexes a record; the watch calls it, as do tests. A pending
// record is not indexed: its key has not been delivered. A hash belongs to
// the first key whose record is indexed with it: the API server names
// records by hash, so a record of another key with the same hash is a
// fault, refused and logged — never a way for a key value, revoked or of
// another tenant, to authenticate anew. A record's hash never changes (the
// schema says so), so a record is found again by it.
func (v *Verifier) SetRecord(r *authv1alpha1.ApiKeyRecord) {
	hash, ok := hashOf(r)
	if !ok || !fits(r.Spec.KeyUID) || !fits(r.Spec.Hint) {
		return // the API server's schema admits no other hash, nor longer texts
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	si := v.slotLocked(types.UID(r.Spec.KeyUID))
	ei := v.entryLocked(si, hash)
	if r.Spec.Pending {
		return
	}
	if held, ok := v.byHash.get(hash, v.hasHash(hash)); ok && held != ei {
		other := v.entries.at(held)
		v.log.Error(nil, "Refused to index a second record of a key value already recorded",
			"record", klog.KObj(r), "tenant", r.Spec.Tenant, "keyName", r.Spec.KeyName,
			"heldByTenant", v.syms.name(other.rec.tenant), "heldByKeyUID", v.texts.get(v.slots.at(other.slot).uid))
		return
	}
	e := v.entries.at(ei)
	rec := record{
		tenant: v.syms.of(r.Spec.Tenant), format: v.syms.of(string(r.Spec.Format)), hint: v.keepText(e.rec.hint, r.Spec.Hint),
		created: nanos(r.CreationTimestamp.Time), minted: r.Minted().UnixNano(), revoked: r.Spec.Revoked,
		rotated: r.Spec.Revoked && r.Spec.RevocationReason == authv1alpha1.RevocationRotated,
		keyGone: r.Spec.Revoked && (r.Spec.RevocationReason == authv1alpha1.RevocationDeleted ||
			r.Spec.RevocationReason == authv1alpha1.RevocationOrphaned),
	}
	if t := r.Spec.RevokedAt; t != nil && r.Spec.Revoked {
		rec.revokedAt = nanos(t.Time)
	}
	if t := r.Spec.ExpiresAt; t != nil {
		rec.expiresAt = nanos(t.Time)
	}
	if t := r.Spec.ValidUntil; t != nil {
		rec.validUntil = nanos(t.Time)
	}
	// A revoked record lifts no fence: a key's records are revoked one by
	// one, and the others, in their grace period, must stay fenced until
	// the ApiKey itself shows the revocation.
	e.rec, e.indexed = rec, true
	v.byHash.set(hash, ei, v.hasHash(hash))
}

// hasHash says whether an entry filed in byHash is hash's.
func (v *Verifier) hasHash(hash [32]byte) func(int32) bool {
	return func(ei int32) bool { return v.entries.at(ei).hash == hash }
}

// keepText is old if it already holds s (a status write brings the same
// texts back), else s in a new text, old freed.
func (v *Verifier) keepText(old text, s string) text {
	if v.texts.get(old) == s {
		return old
	}
	v.texts.free(old)
	return v.texts.put(s)
}

// slotLocked is the slot of the key with uid, made if there is none.
func (v *Verifier) slotLocked(uid types.UID) int32 {
	if si, ok := v.slotOfLocked(uid); ok {
		return si
	}
	si := v.slots.alloc()
	s := v.slots.at(si)
	s.uid, s.used = v.texts.put(string(uid)), true
	v.byUID.set(uid, si, v.hasUID(uid))
	return si
}

// slotOfLocked is the slot of the key with uid, if there is one.
func (v *Verifier) slotOfLocked(uid types.UID) (int32, bool) {
	return v.byUID.get(uid, v.hasUID(uid))
}

func (v *Verifier) hasUID(uid types.UID) func(int32) bool {
	return func(si int32) bool { return v.texts.get(v.slots.at(si).uid) == string(uid) }
}

// uidOf is the UID of the slot's key.
func (v *Verifier) uidOf(si int32) types.UID { return types.UID(v.texts.get(v.slots.at(si).uid)) }

// entryLocked is the slot's entry for hash, made (not indexed) if it has
// none.
func (v *Verifier) entryLocked(si int32, hash [32]byte) int32 {
	s := v.slots.at(si)
	for ei := s.entries; ei != 0; ei = v.entries.at(ei).next {
		if v.entries.at(ei).hash == hash {
			return ei
		}
	}
	ei := v.entries.alloc()
	e := v.entries.at(ei)
	e.hash, e.slot, e.next = hash, si, s.entries
	s.entries = ei
	return ei
}

// dropEntryLocked forgets the slot's entry for hash, if it has one.
func (v *Verifier) dropEntryLocked(si int32, hash [32]byte) {
	s := v.slots.at(si)
	for at := &s.entries; *at != 0; at = &v.entries.at(*at).next {
		ei := *at
		e := v.entries.at(ei)
		if e.hash != hash {
			continue
		}
		*at = e.next
		if e.indexed {
			v.byHash.del(hash, ei)
		}
		v.texts.free(e.rec.hint)
		v.entries.release(ei)
		return
	}
}

// dropIfEmptyLocked forgets a slot that holds neither an ApiKey nor a
// record, and compacts the texts when most of them are freed.
func (v *Verifier) dropIfEmptyLocked(si int32) {
	s := v.slots.at(si)
	if s.hasKey || s.entries != 0 {
		return
	}
	v.byUID.del(v.uidOf(si), si)
	v.texts.free(s.uid)
	v.slots.release(si)
	if v.texts.wasteful() {
		v.compactLocked()
	}
}

// compactLocked copies the texts held into a fresh arena. Strings made of
// the old one stay as they are, in chunks the collector frees once none
// is held.
func (v *Verifier) compactLocked() {
	old := v.texts
	v.texts = arena{}
	move := func(t *text) { *t = v.texts.put(old.get(*t)) }
	for si := int32(1); si < v.slots.next; si++ {
		if s := v.slots.at(si); s.used {
			move(&s.uid)
			move(&s.key.name)
			move(&s.key.secret)
		}
	}
	for ei := int32(1); ei < v.entries.next; ei++ {
		if e := v.entries.at(ei); e.slot != 0 {
			move(&e.rec.hint)
		}
	}
}

// RemoveRecord drops a record from the index; a refused duplicate held
// nothing, so removing it drops nothing.
func (v *Verifier) RemoveRecord(r *authv1alpha1.ApiKeyRecord) {
	hash, ok := hashOf(r)
	if !ok {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	si, ok := v.slotOfLocked(types.UID(r.Spec.KeyUID))
	if !ok {
		return
	}
	v.dropEntryLocked(si, hash)
	v.dropIfEmptyLocked(si)
}

// nameOf is the name of the record with hash.
func nameOf(hash [32]byte) string { return hex.EncodeToString(hash[:]) }

// RecordNames names the records of the ApiKey with uid, pending ones
// among them.
func (v *Verifier) RecordNames(uid types.UID) []string {
	v.mu.RLock()
	defer v.mu.RUnlock()
	si, ok := v.slotOfLocked(uid)
	if !ok {
		return nil
	}
	return v.recordNamesLocked(si, nil)
}

// recordNamesLocked appends the names of the slot's records to names.
func (v *Verifier) recordNamesLocked(si int32, names []string) []string {
	for ei := v.slots.at(si).entries; ei != 0; ei = v.entries.at(ei).next {
		names = append(names, nameOf(v.entries.at(ei).hash))
	}
	return names
}

// Orphans names the records whose ApiKey the index does not hold: the
// record controller's work once the index has synced.
func (v *Verifier) Orphans() []string {
	v.mu.RLock()
	defer v.mu.RUnlock()
	var out []string
	for si := int32(1); si < v.slots.next; si++ {
		if s := v.slots.at(si); s.used && !s.hasKey {
			out = v.recordNamesLocked(si, out)
		}
	}
	return out
}

// A GoneRecord is a record revoked for its key's deletion.
type GoneRecord struct {
	Name      string
	RevokedAt time.Time
}

// GoneRecords are the tenant's records revoked for their keys' deletion
// (Deleted or Orphaned), as the record controller trims them.
func (v *Verifier) GoneRecords(tenant string) []GoneRecord {
	v.mu.RLock()
	defer v.mu.RUnlock()
	t, ok := v.syms.lookup(tenant)
	if !ok {
		return nil
	}
	var out []GoneRecord
	v.byHash.each(func(ei int32) {
		if e := v.entries.at(ei); e.rec.keyGone && e.rec.revokedAt != 0 && e.rec.tenant == t {
			out = append(out, GoneRecord{Name: nameOf(e.hash), RevokedAt: instant(e.rec.revokedAt)})
		}
	})
	return out
}

// Namespaces are those the index holds an ApiKey of.
func (v *Verifier) Namespaces() []string {
	v.mu.RLock()
	defer v.mu.RUnlock()
	out := make([]string, 0, len(v.tallies))
	for ns := range v.tallies {
		out = append(out, v.syms.name(ns))
	}
	return out
}

// stateLocked is ApiKey.State of the key as the index holds it.
func (v *Verifier) stateLocked(k *key, now time.Time) authv1alpha1.Phase {
	var a authv1alpha1.ApiKey
	a.Spec.Revoked, a.Spec.Suspended, a.Status.Phase = k.revoked, k.suspended, authv1alpha1.Phase(v.syms.name(k.phase))
	if k.expiresAt != 0 {
		a.Spec.ExpiresAt = &metav1.Time{Time: instant(k.expiresAt)}
	}
	return a.State(now)
}

// HasKey says whether the index holds the ApiKey with uid.
func (v *Verifier) HasKey(uid types.UID) bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	si, ok := v.slotOfLocked(uid)
	return ok && v.slots.at(si).hasKey
}

// hashOf is a record's hash as the index's key.
func hashOf(r *authv1alpha1.ApiKeyRecord) (hash [32]byte, ok bool) {
	n, err := hex.Decode(hash[:], []byte(r.Spec.Hash))
	return hash, err == nil && n == len(hash)
}

// SetKey notes an ApiKey's revocation, deletion, suspension, rotation,
// scopes and expiry.
func (v *Verifier) SetKey(k *authv1alpha1.ApiKey) {
	if !fits(string(k.UID)) || !fits(k.Name) || !fits(k.Spec.SecretName) {
		return // the API server's schema admits no longer names
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	si := v.slotLocked(k.UID)
	s := v.slots.at(si)
	old := s.key
	if s.hasKey {
		v.tallyKeyLocked(&old, -1)
		v.unfileLocked(si, &old)
	}
	e := key{
		namespace: v.syms.of(k.Namespace), name: v.keepText(old.name, k.Name), generation: k.Generation,
		revoked: k.Spec.Revoked, deleting: !k.DeletionTimestamp.IsZero(), suspended: k.Spec.Suspended,
		phase: v.syms.of(string(k.Status.Phase)), grace: k.GracePeriod(), rotationRequested: nanos(k.RotationRequested()),
		scopes: v.scopesOfLocked(k.Spec.Scopes),
	}
	if t := k.Spec.ExpiresAt; t != nil {
		e.expiresAt = nanos(t.Time)
	}
	if k.Spec.SecretName != k.Name {
		e.secret = v.keepText(old.secret, k.Spec.SecretName)
	} else {
		v.texts.free(old.secret)
	}
	if s.hasKey {
		v.releaseScopesLocked(old.scopes)
	}
	s.key, s.hasKey = e, true
	v.tallyKeyLocked(&e, 1)
	v.fileLocked(si, &e)
	v.fences.dropSeen(k)
}

// scopesOfLocked is the number of the set of scopes list for one more key,
// made if no key has it yet.
func (v *Verifier) scopesOfLocked(list []string) uint32 {
	if len(list) == 0 {
		return 0
	}
	id := strings.Join(list, "\x00")
	n, ok := v.scopeIDs[id]
	if !ok {
		list = slices.Clone(list)
		set := scopes{list: list, joined: strings.Join(list, ","), id: id}
		if free := len(v.freeScopes); free > 0 {
			n, v.freeScopes = v.freeScopes[free-1], v.freeScopes[:free-1]
			v.scopeSets[n] = set
		} else {
			n = uint32(len(v.scopeSets))
			v.scopeSets = append(v.scopeSets, set)
		}
		v.scopeIDs[id] = n
	}
	v.scopeSets[n].keys++
	return n
}

// releaseScopesLocked is scopesOfLocked undone: a set no key has is
// forgotten (what an Identity holds of it stays as it is).
func (v *Verifier) releaseScopesLocked(n uint32) {
	if n == 0 {
		return
	}
	set := &v.scopeSets[n]
	if set.keys--; set.keys == 0 {
		delete(v.scopeIDs, set.id)
		*set = scopes{}
		v.freeScopes = append(v.freeScopes, n)
	}
}

// RemoveKey forgets a deleted ApiKey: its key no longer authenticates.
func (v *Verifier) RemoveKey(k *authv1alpha1.ApiKey) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if si, ok := v.slotOfLocked(k.UID); ok {
		v.removeKeyLocked(si)
		return
	}
	v.fences.drop(k.UID) // a fence may hold a key the watch never brought
}

func (v *Verifier) removeKeyLocked(si int32) {
	s := v.slots.at(si)
	if s.hasKey {
		v.tallyKeyLocked(&s.key, -1)
		v.unfileLocked(si, &s.key)
		v.texts.free(s.key.name)
		v.texts.free(s.key.secret)
		v.releaseScopesLocked(s.key.scopes)
	}
	s.key, s.hasKey = key{}, false
	v.fences.drop(v.uidOf(si))
	v.dropIfEmptyLocked(si)
}

// apiKeyLocked is the slot's ApiKey as far as the index knows it: what
// TakenAway and the fences read.
func (v *Verifier) apiKeyLocked(si int32) *authv1alpha1.ApiKey {
	s := v.slots.at(si)
	k := &s.key
	a := &authv1alpha1.ApiKey{}
	a.Namespace, a.Name, a.UID, a.Generation = v.syms.name(k.namespace), v.texts.get(k.name), v.uidOf(si), k.generation
	if k.deleting {
		a.DeletionTimestamp = &metav1.Time{}
	}
	a.Spec.Revoked, a.Spec.Suspended = k.revoked, k.suspended
	a.Spec.Scopes = v.scopeSets[k.scopes].list
	a.Spec.Rotation = &authv1alpha1.RotationSpec{GracePeriod: &metav1.Duration{Duration: k.grace}}
	if k.rotationRequested != 0 {
		a.Spec.Rotation.RequestedAt = &metav1.Time{Time: instant(k.rotationRequested)}
	}
	return a
}

// records is the index as the record stream's Sink.
type records Verifier

func (s *records) Set(r *authv1alpha1.ApiKeyRecord)    { (*Verifier)(s).SetRecord(r) }
func (s *records) Remove(r *authv1alpha1.ApiKeyRecord) { (*Verifier)(s).RemoveRecord(r) }

func (s *records) Replace(list []*authv1alpha1.ApiKeyRecord) {
	v := (*Verifier)(s)
	// A record is named by its hash, so a hash is listed once: for its
	// key, delivered or pending.
	type listing struct {
		key       types.UID
		delivered bool
	}
	listed := make(map[[32]byte]listing, len(list))
	for _, r := range list {
		if hash, ok := hashOf(r); ok {
			listed[hash] = listing{types.UID(r.Spec.KeyUID), !r.Spec.Pending}
		}
	}
	// What the list lacks first — records deleted, or made again for
	// another key, while the watch was away — so that a record listed for
	// a key is not refused as a second one of a hash the index still
	// files under the key it was deleted from.
	v.mu.Lock()
	for ei := int32(1); ei < v.entries.next; ei++ {
		e := v.entries.at(ei)
		if e.slot == 0 {
			continue
		}
		l, ok := listed[e.hash]
		switch {
		case !ok || l.key != v.uidOf(e.slot):
			si := e.slot
			v.dropEntryLocked(si, e.hash)
			v.dropIfEmptyLocked(si)
		case !l.delivered && e.indexed:
			v.byHash.del(e.hash, ei)
			e.indexed = false
		}
	}
	v.mu.Unlock()
	for _, r := range list {
		v.SetRecord(r)
	}
}

// apiKeys is the index as the ApiKey stream's Sink.
type apiKeys Verifier

func (s *apiKeys) Set(k *authv1alpha1.ApiKey)    { (*Verifier)(s).SetKey(k) }
func (s *apiKeys) Remove(k *authv1alpha1.ApiKey) { (*Verifier)(s).RemoveKey(k) }

func (s *apiKeys) Replace(list []*authv1alpha1.ApiKey) {
	v := (*Verifier)(s)
	listed := make(map[types.UID]bool, len(list))
	for _, k := range list {
		listed[k.UID] = true
		v.SetKey(k)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for si := int32(1); si < v.slots.next; si++ {
		if sl := v.slots.at(si); sl.hasKey && !listed[v.uidOf(si)] {
			v.removeKeyLocked(si)
		}
	}
}

// Watch feeds the index from watches of its own on ApiKeyRecords and
// ApiKeys through c (a NewWatchClient), until ctx ends. It runs on every
// replica, leader or not: every replica answers verification requests.
func (v *Verifier) Watch(ctx context.Context, c client.WithWatch) { v.WatchNamespace(ctx, c, "") }

// WatchNamespace is Watch of one namespace's ApiKeys and records (those of
// its tenant), or of all when namespace is empty. A Verifier is fed by one
// Watch: a relist drops what its own list lacks.
func (v *Verifier) WatchNamespace(ctx context.Context, c client.WithWatch, namespace string) {
	var keyScope, recordScope client.ListOptions
	if namespace != "" {
		keyScope.Namespace = namespace
		recordScope.FieldSelector = fields.OneTermEqualSelector("spec.tenant", namespace)
	}
	recs := informers.NewStream(c, recordScope,
		func() *wireRecordList { return &wireRecordList{} }, func() *wireRecord { return &wireRecord{} }, (*wireRecord).record,
		append([]informers.Sink[*authv1alpha1.ApiKeyRecord]{(*records)(v)}, v.recordSinks...)...)
	apis := informers.NewStream(c, keyScope,
		func() *wireKeyList { return &wireKeyList{} }, func() *wireKey { return &wireKey{} }, (*wireKey).apiKey,
		append([]informers.Sink[*authv1alpha1.ApiKey]{(*apiKeys)(v)}, v.keySinks...)...)
	recs.CountLists(v.listPoints.Load)
	apis.CountLists(v.listPoints.Load)
	v.mu.Lock()
	v.streams = append(v.streams, recs, apis)
	v.mu.Unlock()
	go recs.Run(ctx)
	go apis.Run(ctx)
}

// FeedRecordsTo has Watch feed sink the records it brings too, after the
// index. It must come before Watch.
func (v *Verifier) FeedRecordsTo(sink informers.Sink[*authv1alpha1.ApiKeyRecord]) {
	v.mustNotWatchYet()
	v.recordSinks = append(v.recordSinks, sink)
}

// mustNotWatchYet panics once Watch has started: a sink added later would
// miss the first list, and whatever it indexes would stay incomplete.
func (v *Verifier) mustNotWatchYet() {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if len(v.streams) > 0 {
		panic("verifier: a sink was added after Watch started")
	}
}

// FeedKeysTo has Watch feed sink the ApiKeys it brings too, so that what
// else needs a few fields of every ApiKey shares the index's watch rather
// than caching the objects. It must come before Watch.
func (v *Verifier) FeedKeysTo(sink informers.Sink[*authv1alpha1.ApiKey]) {
	v.mustNotWatchYet()
	v.keySinks = append(v.keySinks, sink)
}

// Watching runs Watch as a manager's Runnable, on every replica: of
// Namespace only when it is set.
type Watching struct {
	Verifier *Verifier
	// Client is a NewWatchClient.
	Client    client.WithWatch
	Namespace string
	// AfterListPoint holds the watches until the first ListPoint (for up
	// to listPointWait), so that a starting replica's first lists are its
	// catch-up's (ListedSince): at 100,000 keys the catch-up's own list of
	// every ApiKey's metadata, after the index's, delayed serving by
	// seconds.
	AfterListPoint bool
}

// listPointWait bounds how long Watching waits for a ListPoint: a replica
// that cannot take its serving lease still indexes keys for the
// controllers, and catches up by a list once it takes it.
const listPointWait = 10 * time.Second

// Start watches until ctx ends. Once the first lists are indexed it
// returns the memory they took to the operating system: every ApiKey and
// record was decoded and held at once for them, and the Go runtime would
// otherwise keep those pages resident long after they were free — at
// 100,000 keys a restarted replica held 120 MiB more than its heap in use.
func (w Watching) Start(ctx context.Context) error {
	v := w.Verifier
	if w.AfterListPoint {
		pointed := func(context.Context) (bool, error) { return v.listPoints.Load() > 0, nil }
		if err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, listPointWait, true, pointed); ctx.Err() != nil {
			return err
		}
	}
	began := v.clock.Now()
	v.WatchNamespace(ctx, w.Client, w.Namespace)
	synced := func(context.Context) (bool, error) { return v.Synced(), nil }
	if wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, synced) == nil {
		v.mu.RLock()
		slots, records := v.slots.len(), v.byHash.len()
		v.mu.RUnlock()
		v.log.Info("Indexed the first lists", "slots", slots, "records", records,
			"took", v.clock.Since(began).Round(time.Millisecond).String())
		debug.FreeOSMemory()
	}
	<-ctx.Done()
	return nil
}

// NeedLeaderElection is false: every replica answers keys.
func (Watching) NeedLeaderElection() bool { return false }
