// Package verifier answers "which key is this?" from memory: an index from
// key hash to the key's identity, fed by watches on ApiKeyRecords and
// ApiKeys, with no API server call on the request path.
package verifier

import (
	"context"
	"encoding/hex"
	"errors"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
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
	ErrUnknown = errors.New("invalid key")
	ErrRevoked = errors.New("key revoked")
	ErrExpired = errors.New("key expired")
)

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
}

// record is what the index keeps of an ApiKeyRecord.
type record struct {
	uid     types.UID // the record's own
	id      Identity
	revoked bool
}

// keyState is what the index keeps of an ApiKey.
type keyState struct {
	revoked   bool
	deleting  bool
	expiresAt *time.Time
}

// Verifier is the in-memory index. It is safe for concurrent use.
type Verifier struct {
	// log reports faults of the index's input, for operators.
	log   logr.Logger
	clock clock.PassiveClock
	// fences has its own lock: fencing never takes the index's.
	fences *fenceTable

	mu     sync.RWMutex
	byHash map[[32]byte]*record
	hashOf map[types.UID][32]byte // record name (the ApiKey UID) → hash
	keys   map[types.UID]keyState
	synced func() bool
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
		log:    ctrllog.Log.WithName("verifier"),
		clock:  clk,
		fences: newFenceTable(clk, fenceTTL, o.confirmAfter, o.maxFences),
		byHash: map[[32]byte]*record{},
		hashOf: map[types.UID][32]byte{},
		keys:   map[types.UID]keyState{},
		synced: func() bool { return false },
	}
}

// Verify resolves a presented key; on error the Identity is zero.
func (v *Verifier) Verify(raw string) (Identity, error) {
	id, _, err := v.Resolve(raw)
	return id, err
}

// Resolve is Verify that also names the tenant of a known key, refused or
// not, so that a refusal can be counted for it; an unknown or malformed
// key has none. Nothing allocates, allowed or refused. A malformed key, or
// a Prefixed key whose checksum fails, is refused before any lookup. A key
// authenticates only if its record is not revoked, its ApiKey exists and
// is neither revoked nor being deleted, nor fenced, and it has not expired
// at this instant.
func (v *Verifier) Resolve(raw string) (id Identity, tenant string, err error) {
	if _, err := keys.Parse(raw); err != nil {
		return Identity{}, "", ErrMalformed
	}
	hash := keys.Sum(raw)
	now := v.clock.Now()

	v.mu.RLock()
	defer v.mu.RUnlock()
	rec, ok := v.byHash[hash]
	if !ok {
		return Identity{}, "", ErrUnknown
	}
	id = rec.id
	ks, ok := v.keys[id.KeyUID]
	if !ok || rec.revoked || ks.revoked || ks.deleting || v.fences.holds(id.KeyUID, now) {
		return Identity{}, id.Tenant, ErrRevoked
	}
	if ks.expiresAt != nil {
		id.ExpiresAt = ks.expiresAt
	}
	if id.ExpiresAt != nil && !now.Before(*id.ExpiresAt) {
		return Identity{}, id.Tenant, ErrExpired
	}
	return id, id.Tenant, nil
}

// Fence stops the key from authenticating until fenceTTL passes, for good
// once its revocation is seen, or until the API server, asked when the
// watch stays silent, shows no revocation. It implements the admission
// webhook's RevocationFence; it fails only when the fence table is full.
func (v *Verifier) Fence(_ context.Context, key *authv1alpha1.ApiKey) error {
	return v.fences.add(key)
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

// SetRecord indexes a record; the watch calls it, as do tests. A pending
// record is not indexed: its key has not been delivered. A hash belongs to
// the first record indexed with it: the API server names records by hash,
// so a second one is a fault, refused and logged — never a way for a key
// value, revoked or of another tenant, to authenticate anew.
func (v *Verifier) SetRecord(r *authv1alpha1.ApiKeyRecord) {
	if r.Spec.Pending {
		return
	}
	var hash [32]byte
	if n, err := hex.Decode(hash[:], []byte(r.Spec.Hash)); err != nil || n != len(hash) {
		return // the API server's schema admits no other hash
	}
	rec := &record{
		uid: r.UID,
		id: Identity{
			Record:    r.Name,
			Tenant:    r.Spec.Tenant,
			KeyName:   r.Spec.KeyName,
			KeyUID:    types.UID(r.Spec.KeyUID),
			Hint:      r.Spec.Hint,
			Format:    r.Spec.Format,
			CreatedAt: r.CreationTimestamp.Time,
		},
		revoked: r.Spec.Revoked,
	}
	if r.Spec.ExpiresAt != nil {
		t := r.Spec.ExpiresAt.Time
		rec.id.ExpiresAt = &t
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if held, ok := v.byHash[hash]; ok && held.uid != r.UID {
		v.log.Error(nil, "Refused to index a second record of a key value already recorded",
			"record", klog.KObj(r), "tenant", r.Spec.Tenant, "keyName", r.Spec.KeyName,
			"heldByTenant", held.id.Tenant, "heldByKeyName", held.id.KeyName)
		return
	}
	if old, ok := v.hashOf[r.UID]; ok && old != hash {
		delete(v.byHash, old)
	}
	v.byHash[hash] = rec
	v.hashOf[r.UID] = hash
	if rec.revoked {
		v.fences.drop(rec.id.KeyUID)
	}
}

// RemoveRecord drops a record from the index; a refused duplicate held
// nothing, so removing it drops nothing.
func (v *Verifier) RemoveRecord(r *authv1alpha1.ApiKeyRecord) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if hash, ok := v.hashOf[r.UID]; ok {
		delete(v.byHash, hash)
		delete(v.hashOf, r.UID)
	}
}

// SetKey notes an ApiKey's revocation, deletion and expiry.
func (v *Verifier) SetKey(k *authv1alpha1.ApiKey) {
	ks := keyState{revoked: k.Spec.Revoked, deleting: !k.DeletionTimestamp.IsZero()}
	if k.Spec.ExpiresAt != nil {
		t := k.Spec.ExpiresAt.Time
		ks.expiresAt = &t
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.keys[k.UID] = ks
	if ks.revoked || ks.deleting {
		v.fences.drop(k.UID)
	}
}

// RemoveKey forgets a deleted ApiKey: its key no longer authenticates.
func (v *Verifier) RemoveKey(k *authv1alpha1.ApiKey) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.keys, k.UID)
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
	recReg, err := recInf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { withRecord(obj, v.SetRecord) },
		UpdateFunc: func(_, obj any) { withRecord(obj, v.SetRecord) },
		DeleteFunc: func(obj any) { withRecord(obj, v.RemoveRecord) },
	})
	if err != nil {
		return err
	}
	keyReg, err := keyInf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { withKey(obj, v.SetKey) },
		UpdateFunc: func(_, obj any) { withKey(obj, v.SetKey) },
		DeleteFunc: func(obj any) { withKey(obj, v.RemoveKey) },
	})
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.synced = func() bool { return recReg.HasSynced() && keyReg.HasSynced() }
	v.mu.Unlock()
	return nil
}

func withRecord(obj any, f func(*authv1alpha1.ApiKeyRecord)) {
	if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if r, ok := obj.(*authv1alpha1.ApiKeyRecord); ok {
		f(r)
	}
}

func withKey(obj any, f func(*authv1alpha1.ApiKey)) {
	if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if k, ok := obj.(*authv1alpha1.ApiKey); ok {
		f(k)
	}
}
