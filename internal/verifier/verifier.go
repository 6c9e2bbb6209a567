// Package verifier answers "which key is this?" from memory: an index from
// key hash to the key's identity, fed by watches on ApiKeyRecords and
// ApiKeys, with no API server call on the request path.
package verifier

import (
	"context"
	"encoding/hex"
	"errors"
	"maps"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
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

// Verifier is the in-memory index. It is safe for concurrent use.
type Verifier struct {
	// log reports faults of the index's input, for operators.
	log   logr.Logger
	clock clock.PassiveClock
	// fences has its own lock: fencing never takes the index's.
	fences *fenceTable

	// The index keeps of each record and ApiKey only the fields a verdict
	// and an Identity read, copied out of the watch's objects (which it
	// never holds): a few strings and instants per key rather than two
	// typed objects, their metadata and a store's keys and indexes. A
	// record and a key are never changed once indexed, only replaced, so
	// what an Identity or a snapshot holds of them stays true to the
	// instant it was taken.
	mu     sync.RWMutex
	byHash map[[32]byte]*record
	// slots holds, per key UID, the ApiKey and the hashes of its records,
	// pending ones among them, while either is indexed: a record points
	// to its key's slot, so a verdict takes one map lookup, and the
	// leader's controllers find a key's records without a map of their own.
	slots map[types.UID]*slot
	// tallies count each namespace's ApiKeys by state, for Usage.
	tallies map[string]*tally
	// byName holds the slots of the ApiKeys indexed, by name, and
	// bySecret those of the ApiKeys that name a Secret other than their
	// own name, by that Secret (names.go).
	byName   map[types.NamespacedName]*slot
	bySecret map[types.NamespacedName][]*slot
	streams  []interface{ Synced() bool }
	// keySinks and recordSinks are fed what the watches bring, after the
	// index.
	keySinks    []informers.Sink[*authv1alpha1.ApiKey]
	recordSinks []informers.Sink[*authv1alpha1.ApiKeyRecord]
	// gate, when set, must allow every answer.
	gate Gate
}

// A slot is the index's place for one key UID.
type slot struct {
	// key is nil while the ApiKey is not indexed (not yet, or deleted).
	key *key
	uid types.UID
	// hashes are the key's records' hashes (their names), pending ones
	// among them.
	hashes [][32]byte
}

// record is what the index keeps of a delivered ApiKeyRecord; instants
// are Unix nanoseconds, 0 for none, so that a record takes one small
// allocation.
type record struct {
	slot         *slot
	tenant, hint string
	format       authv1alpha1.KeyFormat
	created      int64
	expiresAt    int64
	minted       int64
	validUntil   int64
	// revokedAt is when it was revoked (0: not), and keyGone says it was
	// for its key's deletion (Deleted or Orphaned).
	revokedAt                 int64
	revoked, rotated, keyGone bool
}

// key is what the index keeps of an ApiKey; instants as in record.
type key struct {
	uid             types.UID
	namespace, name string
	// secret is spec.secretName when it is not the key's own name, which
	// it is for most keys: "" then.
	secret string
	// phase is status.phase as the controller last wrote it.
	phase      authv1alpha1.Phase
	generation int64
	grace      time.Duration
	// rotationRequested is spec.rotation.requestedAt.
	rotationRequested int64
	expiresAt         int64
	// scopes is nil for a key without scopes, as most are.
	scopes    *scopes
	revoked   bool
	deleting  bool
	suspended bool
}

// scopes are a key's scopes and the same joined, as the X-Latchkey-Scopes
// header carries them: built once per change rather than per request.
type scopes struct {
	list   []string
	joined string
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
		byHash:  map[[32]byte]*record{},
		slots:   map[types.UID]*slot{},
		tallies: map[string]*tally{},

		byName:   map[types.NamespacedName]*slot{},
		bySecret: map[types.NamespacedName][]*slot{},
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
	rec, ok := v.byHash[hash]
	if !ok {
		return Identity{}, "", ErrUnknown
	}
	k := rec.slot.key
	if k == nil || k.revoked || k.deleting {
		return Identity{}, rec.tenant, ErrRevoked
	}
	if rec.revoked {
		if rec.rotated {
			return Identity{}, rec.tenant, ErrRotated
		}
		return Identity{}, rec.tenant, ErrRevoked
	}
	fenced := v.fences.holds(k.uid, now)
	switch {
	case fenced.Revoked:
		return Identity{}, rec.tenant, ErrRevoked
	case k.suspended || fenced.Suspended:
		return Identity{}, rec.tenant, ErrSuspended
	case rec.validUntil != 0 && now.UnixNano() >= rec.validUntil,
		k.grace == 0 && rec.supersededAt(instant(k.rotationRequested)),
		rec.supersededAt(fenced.RotationRequested):
		return Identity{}, rec.tenant, ErrRotated
	}
	expiresAt := rec.expiresAt
	if k.expiresAt != 0 {
		expiresAt = k.expiresAt
	}
	if expiresAt != 0 && now.UnixNano() >= expiresAt {
		return Identity{}, rec.tenant, ErrExpired
	}
	id = Identity{
		Tenant:     rec.tenant,
		KeyName:    k.name,
		KeyUID:     k.uid,
		RecordHash: hash,
		Hint:       rec.hint,
		Format:     rec.format,
		CreatedAt:  instant(rec.created),
		ExpiresAt:  instant(expiresAt),
	}
	if k.scopes != nil {
		id.Scopes, id.ScopeList = k.scopes.list, k.scopes.joined
	}
	if len(fenced.Scopes) > 0 {
		id.Scopes = slices.DeleteFunc(slices.Clone(id.Scopes), func(s string) bool { return slices.Contains(fenced.Scopes, s) })
		id.ScopeList = strings.Join(id.Scopes, ",")
	}
	return id, id.Tenant, nil
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
	return len(v.byHash)
}

// Fences is how many fences hold now.
func (v *Verifier) Fences() int { return v.fences.len() }

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
	if !ok {
		return // the API server's schema admits no other hash
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.slotLocked(types.UID(r.Spec.KeyUID))
	if !slices.Contains(s.hashes, hash) {
		s.hashes = append(s.hashes, hash)
	}
	if r.Spec.Pending {
		return
	}
	e := &record{
		slot: s, tenant: informers.Intern(r.Spec.Tenant), hint: r.Spec.Hint, format: informers.Intern(r.Spec.Format),
		created: nanos(r.CreationTimestamp.Time), minted: r.Minted().UnixNano(), revoked: r.Spec.Revoked,
		rotated: r.Spec.Revoked && r.Spec.RevocationReason == authv1alpha1.RevocationRotated,
		keyGone: r.Spec.Revoked && (r.Spec.RevocationReason == authv1alpha1.RevocationDeleted ||
			r.Spec.RevocationReason == authv1alpha1.RevocationOrphaned),
	}
	if t := r.Spec.RevokedAt; t != nil && r.Spec.Revoked {
		e.revokedAt = nanos(t.Time)
	}
	if t := r.Spec.ExpiresAt; t != nil {
		e.expiresAt = nanos(t.Time)
	}
	if t := r.Spec.ValidUntil; t != nil {
		e.validUntil = nanos(t.Time)
	}
	if held, ok := v.byHash[hash]; ok && held.slot != s {
		v.log.Error(nil, "Refused to index a second record of a key value already recorded",
			"record", klog.KObj(r), "tenant", r.Spec.Tenant, "keyName", r.Spec.KeyName,
			"heldByTenant", held.tenant, "heldByKeyUID", held.slot.uid)
		return
	}
	// A revoked record lifts no fence: a key's records are revoked one by
	// one, and the others, in their grace period, must stay fenced until
	// the ApiKey itself shows the revocation.
	v.byHash[hash] = e
}

// slotLocked is the slot of the key with uid, made if there is none.
func (v *Verifier) slotLocked(uid types.UID) *slot {
	s, ok := v.slots[uid]
	if !ok {
		s = &slot{uid: uid}
		v.slots[uid] = s
	}
	return s
}

// dropIfEmptyLocked forgets a slot that holds neither an ApiKey nor a record.
func (v *Verifier) dropIfEmptyLocked(s *slot) {
	if s.key == nil && len(s.hashes) == 0 {
		delete(v.slots, s.uid)
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
	s, ok := v.slots[types.UID(r.Spec.KeyUID)]
	if !ok {
		return
	}
	s.hashes = slices.DeleteFunc(s.hashes, func(h [32]byte) bool { return h == hash })
	if held, ok := v.byHash[hash]; ok && held.slot == s {
		delete(v.byHash, hash)
	}
	v.dropIfEmptyLocked(s)
}

// nameOf is the name of the record with hash.
func nameOf(hash [32]byte) string { return hex.EncodeToString(hash[:]) }

// RecordNames names the records of the ApiKey with uid, pending ones
// among them.
func (v *Verifier) RecordNames(uid types.UID) []string {
	v.mu.RLock()
	defer v.mu.RUnlock()
	s, ok := v.slots[uid]
	if !ok {
		return nil
	}
	names := make([]string, len(s.hashes))
	for i, h := range s.hashes {
		names[i] = nameOf(h)
	}
	return names
}

// Orphans names the records whose ApiKey the index does not hold: the
// record controller's work once the index has synced.
func (v *Verifier) Orphans() []string {
	v.mu.RLock()
	defer v.mu.RUnlock()
	var out []string
	for _, s := range v.slots {
		if s.key == nil {
			for _, h := range s.hashes {
				out = append(out, nameOf(h))
			}
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
	var out []GoneRecord
	for hash, r := range v.byHash {
		if r.keyGone && r.revokedAt != 0 && r.tenant == tenant {
			out = append(out, GoneRecord{Name: nameOf(hash), RevokedAt: instant(r.revokedAt)})
		}
	}
	return out
}

// Namespaces are those the index holds an ApiKey of.
func (v *Verifier) Namespaces() []string {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return slices.Collect(maps.Keys(v.tallies))
}

// state is ApiKey.State of the key as the index holds it.
func (k *key) state(now time.Time) authv1alpha1.Phase {
	var a authv1alpha1.ApiKey
	a.Spec.Revoked, a.Spec.Suspended, a.Status.Phase = k.revoked, k.suspended, k.phase
	if k.expiresAt != 0 {
		a.Spec.ExpiresAt = &metav1.Time{Time: instant(k.expiresAt)}
	}
	return a.State(now)
}

// HasKey says whether the index holds the ApiKey with uid.
func (v *Verifier) HasKey(uid types.UID) bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	s, ok := v.slots[uid]
	return ok && s.key != nil
}

// hashOf is a record's hash as the index's key.
func hashOf(r *authv1alpha1.ApiKeyRecord) (hash [32]byte, ok bool) {
	n, err := hex.Decode(hash[:], []byte(r.Spec.Hash))
	return hash, err == nil && n == len(hash)
}

// SetKey notes an ApiKey's revocation, deletion, suspension, rotation,
// scopes and expiry.
func (v *Verifier) SetKey(k *authv1alpha1.ApiKey) {
	e := &key{
		namespace: informers.Intern(k.Namespace), name: k.Name, generation: k.Generation,
		revoked: k.Spec.Revoked, deleting: !k.DeletionTimestamp.IsZero(), suspended: k.Spec.Suspended,
		phase: informers.Intern(k.Status.Phase), grace: k.GracePeriod(), rotationRequested: nanos(k.RotationRequested()),
	}
	if t := k.Spec.ExpiresAt; t != nil {
		e.expiresAt = nanos(t.Time)
	}
	if k.Spec.SecretName != k.Name {
		e.secret = k.Spec.SecretName
	}
	if len(k.Spec.Scopes) > 0 {
		list := slices.Clone(k.Spec.Scopes)
		e.scopes = &scopes{list: list, joined: strings.Join(list, ",")}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.slotLocked(k.UID)
	e.uid = s.uid // one copy of its text, the records' slot's
	if s.key != nil {
		v.tallyKeyLocked(s.key, -1)
		v.unfileLocked(s, s.key)
	}
	s.key = e
	v.tallyKeyLocked(e, 1)
	v.fileLocked(s, e)
	v.fences.dropSeen(k)
}

// RemoveKey forgets a deleted ApiKey: its key no longer authenticates.
func (v *Verifier) RemoveKey(k *authv1alpha1.ApiKey) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if s, ok := v.slots[k.UID]; ok {
		v.removeKeyLocked(s)
		return
	}
	v.fences.drop(k.UID) // a fence may hold a key the watch never brought
}

func (v *Verifier) removeKeyLocked(s *slot) {
	if s.key != nil {
		v.tallyKeyLocked(s.key, -1)
		v.unfileLocked(s, s.key)
	}
	s.key = nil
	v.fences.drop(s.uid)
	v.dropIfEmptyLocked(s)
}

// apiKey is the ApiKey as far as the index knows it: what TakenAway and
// the fences read.
func (k *key) apiKey() *authv1alpha1.ApiKey {
	a := &authv1alpha1.ApiKey{}
	a.Namespace, a.Name, a.UID, a.Generation = k.namespace, k.name, k.uid, k.generation
	if k.deleting {
		a.DeletionTimestamp = &metav1.Time{}
	}
	a.Spec.Revoked, a.Spec.Suspended = k.revoked, k.suspended
	if k.scopes != nil {
		a.Spec.Scopes = k.scopes.list
	}
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
	listed := make(map[[32]byte]bool, len(list))
	indexed := make(map[[32]byte]bool, len(list))
	for _, r := range list {
		if hash, ok := hashOf(r); ok {
			listed[hash] = true
			indexed[hash] = !r.Spec.Pending
		}
		v.SetRecord(r)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for hash := range v.byHash {
		if !indexed[hash] {
			delete(v.byHash, hash)
		}
	}
	for _, sl := range v.slots {
		sl.hashes = slices.DeleteFunc(sl.hashes, func(h [32]byte) bool { return !listed[h] })
		v.dropIfEmptyLocked(sl)
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
	for uid, sl := range v.slots {
		if sl.key != nil && !listed[uid] {
			v.removeKeyLocked(sl)
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
}

// Start watches until ctx ends. Once the first lists are indexed it
// returns the memory they took to the operating system: every ApiKey and
// record was decoded and held at once for them, and the Go runtime would
// otherwise keep those pages resident long after they were free — at
// 100,000 keys a restarted replica held 120 MiB more than its heap in use.
func (w Watching) Start(ctx context.Context) error {
	w.Verifier.WatchNamespace(ctx, w.Client, w.Namespace)
	synced := func(context.Context) (bool, error) { return w.Verifier.Synced(), nil }
	if wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, synced) == nil {
		debug.FreeOSMemory()
	}
	<-ctx.Done()
	return nil
}

// NeedLeaderElection is false: every replica answers keys.
func (Watching) NeedLeaderElection() bool { return false }
