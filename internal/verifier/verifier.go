// Package verifier answers "which key is this?" from memory: an index from
// key hash to the key's identity, fed by watches on ApiKeyRecords and
// ApiKeys, with no API server call on the request path.
package verifier

import (
	"context"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/cache"
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
	// Record is the name of the key's ApiKeyRecord (its hash), where last
	// use is written.
	Record    string
	Hint      string
	Format    authv1alpha1.KeyFormat
	CreatedAt time.Time
	ExpiresAt *time.Time
	// Scopes are the key's (its ApiKey's spec.scopes, shared: never
	// changed), and ScopeList the same joined with commas, as the
	// X-Latchkey-Scopes header carries them. Scopes a fence holds off
	// (removed, the removal not seen yet) are in neither.
	Scopes    []string
	ScopeList string
}

// HasScope says whether the key has scope.
func (id *Identity) HasScope(scope string) bool { return slices.Contains(id.Scopes, scope) }

// Verifier is the in-memory index. It is safe for concurrent use.
type Verifier struct {
	// log reports faults of the index's input, for operators.
	log   logr.Logger
	clock clock.PassiveClock
	// fences has its own lock: fencing never takes the index's.
	fences *fenceTable

	// The index holds the watch's own objects, which nobody changes (an
	// informer's objects are shared and read-only), rather than copies of
	// their fields: one pointer per key and per record instead of a second
	// copy of each, so that the index costs little beside the cache that
	// holds them anyway.
	mu     sync.RWMutex
	byHash map[[32]byte]*authv1alpha1.ApiKeyRecord
	keys   map[types.UID]*authv1alpha1.ApiKey
	// scopeLists holds the joined scopes of the keys that have any, built
	// once per change rather than per request.
	scopeLists map[types.UID]string
	synced     func() bool
	// gate, when set, must allow every answer.
	gate Gate
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
		gate:       o.gate,
		log:        ctrllog.Log.WithName("verifier"),
		clock:      clk,
		fences:     newFenceTable(clk, fenceTTL, o.confirmAfter, o.maxFences),
		byHash:     map[[32]byte]*authv1alpha1.ApiKeyRecord{},
		keys:       map[types.UID]*authv1alpha1.ApiKey{},
		scopeLists: map[types.UID]string{},
		synced:     func() bool { return false },
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
	keyUID := types.UID(rec.Spec.KeyUID)
	key, ok := v.keys[keyUID]
	if !ok || key.Spec.Revoked || !key.DeletionTimestamp.IsZero() {
		return Identity{}, rec.Spec.Tenant, ErrRevoked
	}
	if rec.Spec.Revoked {
		if rec.Spec.RevocationReason == authv1alpha1.RevocationRotated {
			return Identity{}, rec.Spec.Tenant, ErrRotated
		}
		return Identity{}, rec.Spec.Tenant, ErrRevoked
	}
	fenced := v.fences.holds(keyUID, now)
	switch {
	case fenced.Revoked:
		return Identity{}, rec.Spec.Tenant, ErrRevoked
	case key.Spec.Suspended || fenced.Suspended:
		return Identity{}, rec.Spec.Tenant, ErrSuspended
	case rec.Spec.ValidUntil != nil && !now.Before(rec.Spec.ValidUntil.Time),
		key.GracePeriod() == 0 && key.Supersedes(rec),
		!fenced.RotationRequested.IsZero() && rec.SupersededAt(fenced.RotationRequested):
		return Identity{}, rec.Spec.Tenant, ErrRotated
	}
	expiresAt := rec.Spec.ExpiresAt
	if key.Spec.ExpiresAt != nil {
		expiresAt = key.Spec.ExpiresAt
	}
	if expiresAt != nil && !now.Before(expiresAt.Time) {
		return Identity{}, rec.Spec.Tenant, ErrExpired
	}
	id = Identity{
		Tenant:    rec.Spec.Tenant,
		KeyName:   rec.Spec.KeyName,
		KeyUID:    keyUID,
		Record:    rec.Name,
		Hint:      rec.Spec.Hint,
		Format:    rec.Spec.Format,
		CreatedAt: rec.CreationTimestamp.Time,
		Scopes:    key.Spec.Scopes,
		ScopeList: v.scopeLists[keyUID],
	}
	if expiresAt != nil {
		id.ExpiresAt = &expiresAt.Time
	}
	if len(fenced.Scopes) > 0 {
		id.Scopes = slices.DeleteFunc(slices.Clone(id.Scopes), func(s string) bool { return slices.Contains(fenced.Scopes, s) })
		id.ScopeList = strings.Join(id.Scopes, ",")
	}
	return id, id.Tenant, nil
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
func (v *Verifier) Synced() bool { return v.synced() }

// SetRecord indexes a record; the watch calls it, as do tests. The index
// keeps r itself: the caller never changes it afterwards. A pending record
// is not indexed: its key has not been delivered. A hash belongs to the
// first record indexed with it: the API server names records by hash, so a
// second one is a fault, refused and logged — never a way for a key value,
// revoked or of another tenant, to authenticate anew. A record's hash never
// changes (the schema says so), so a record is found again by it.
func (v *Verifier) SetRecord(r *authv1alpha1.ApiKeyRecord) {
	if r.Spec.Pending {
		return
	}
	hash, ok := hashOf(r)
	if !ok {
		return // the API server's schema admits no other hash
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if held, ok := v.byHash[hash]; ok && held.UID != r.UID {
		v.log.Error(nil, "Refused to index a second record of a key value already recorded",
			"record", klog.KObj(r), "tenant", r.Spec.Tenant, "keyName", r.Spec.KeyName,
			"heldByTenant", held.Spec.Tenant, "heldByKeyName", held.Spec.KeyName)
		return
	}
	// A revoked record lifts no fence: a key's records are revoked one by
	// one, and the others, in their grace period, must stay fenced until
	// the ApiKey itself shows the revocation.
	v.byHash[hash] = r
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
	if held, ok := v.byHash[hash]; ok && held.UID == r.UID {
		delete(v.byHash, hash)
	}
}

// hashOf is a record's hash as the index's key.
func hashOf(r *authv1alpha1.ApiKeyRecord) (hash [32]byte, ok bool) {
	n, err := hex.Decode(hash[:], []byte(r.Spec.Hash))
	return hash, err == nil && n == len(hash)
}

// SetKey notes an ApiKey's revocation, deletion, suspension, rotation,
// scopes and expiry. The index keeps k itself: the caller never changes it
// afterwards.
func (v *Verifier) SetKey(k *authv1alpha1.ApiKey) {
	var list string
	if len(k.Spec.Scopes) > 0 {
		list = strings.Join(k.Spec.Scopes, ",")
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.keys[k.UID] = k
	if list != "" {
		v.scopeLists[k.UID] = list
	} else {
		delete(v.scopeLists, k.UID)
	}
	v.fences.dropSeen(k)
}

// RemoveKey forgets a deleted ApiKey: its key no longer authenticates.
func (v *Verifier) RemoveKey(k *authv1alpha1.ApiKey) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.keys, k.UID)
	delete(v.scopeLists, k.UID)
	v.fences.drop(k.UID)
}

// Watch feeds the index from the cache's informers for ApiKeyRecords and
// ApiKeys. It runs on every replica, leader or not: every replica answers
// verification requests.
func (v *Verifier) Watch(ctx context.Context, c cache.Cache) error {
	recInf, err := c.GetInformer(ctx, &authv1alpha1.ApiKeyRecord{}, cache.BlockUntilSynced(false))
	if err != nil {
		return err
	}
	keyInf, err := c.GetInformer(ctx, &authv1alpha1.ApiKey{}, cache.BlockUntilSynced(false))
	if err != nil {
		return err
	}
	recReg, err := recInf.AddEventHandler(informers.Handle(v.SetRecord, v.RemoveRecord))
	if err != nil {
		return err
	}
	keyReg, err := keyInf.AddEventHandler(informers.Handle(v.SetKey, v.RemoveKey))
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.synced = func() bool { return recReg.HasSynced() && keyReg.HasSynced() }
	v.mu.Unlock()
	return nil
}
