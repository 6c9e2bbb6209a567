package verifier

import (
	"context"
	"crypto/rand"
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/keys"
)

// fixture is a verifier holding one Active key.
type fixture struct {
	v   *Verifier
	clk *clocktesting.FakeClock
	raw string
	key *authv1alpha1.ApiKey
	rec *authv1alpha1.ApiKeyRecord
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC))
	raw, err := keys.Generate(rand.Reader, keys.Prefixed)
	if err != nil {
		t.Fatal(err)
	}
	key := &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant-a", Name: "ci", UID: "uid-1"}}
	rec := &authv1alpha1.ApiKeyRecord{
		ObjectMeta: metav1.ObjectMeta{Name: keys.Hash(raw), UID: "rec-1", CreationTimestamp: metav1.NewTime(clk.Now())},
		Spec: authv1alpha1.ApiKeyRecordSpec{
			Hash: keys.Hash(raw), Tenant: "tenant-a", KeyName: "ci", KeyUID: "uid-1",
			Hint: keys.Hint(raw), Format: authv1alpha1.FormatPrefixed,
		},
	}
	v := New(clk, 10*time.Second)
	v.SetKey(key)
	v.SetRecord(rec)
	return &fixture{v: v, clk: clk, raw: raw, key: key, rec: rec}
}

// withKey is the fixture's ApiKey changed by change, as a new object: the
// index keeps the objects it is given.
func (f *fixture) withKey(change func(*authv1alpha1.ApiKey)) *authv1alpha1.ApiKey {
	k := f.key.DeepCopy()
	k.Generation++
	change(k)
	return k
}

func rotation(requested time.Time, grace time.Duration) *authv1alpha1.RotationSpec {
	return &authv1alpha1.RotationSpec{RequestedAt: &metav1.Time{Time: requested}, GracePeriod: &metav1.Duration{Duration: grace}}
}

func TestVerify(t *testing.T) {
	other, _ := keys.Generate(rand.Reader, keys.Hex)
	tests := []struct {
		name    string
		change  func(f *fixture)
		present func(f *fixture) string
		want    error
	}{
		{"a valid key resolves to its tenant and name", nil, nil, nil},
		{"a key with a typo fails before any lookup", nil,
			func(f *fixture) string { return f.raw[:10] + flip(f.raw[10]) + f.raw[11:] }, ErrMalformed},
		{"a well-formed key nobody minted is unknown", nil, func(*fixture) string { return other }, ErrUnknown},
		{"a revoked record fails", func(f *fixture) {
			r := f.rec.DeepCopy()
			r.Spec.Revoked = true
			f.v.SetRecord(r)
		}, nil, ErrRevoked},
		{"an ApiKey revoked in spec fails before its record is revoked", func(f *fixture) {
			k := f.key.DeepCopy()
			k.Spec.Revoked = true
			f.v.SetKey(k)
		}, nil, ErrRevoked},
		{"an ApiKey being deleted fails", func(f *fixture) {
			k := f.key.DeepCopy()
			now := metav1.NewTime(f.clk.Now())
			k.DeletionTimestamp = &now
			f.v.SetKey(k)
		}, nil, ErrRevoked},
		{"a key whose ApiKey is gone fails", func(f *fixture) { f.v.RemoveKey(f.key) }, nil, ErrRevoked},
		{"a key whose record is gone is unknown", func(f *fixture) { f.v.RemoveRecord(f.rec) }, nil, ErrUnknown},
		{"a key whose record is pending is unknown: it has not been delivered", func(f *fixture) {
			f.v.RemoveRecord(f.rec)
			r := f.rec.DeepCopy()
			r.Spec.Pending = true
			f.v.SetRecord(r)
		}, nil, ErrUnknown},
		{"a second record of a revoked key's value never brings it back", func(f *fixture) {
			r := f.rec.DeepCopy()
			r.Spec.Revoked = true
			f.v.SetRecord(r)
			f.v.SetKey(&authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant-b", Name: "copy", UID: "uid-copy"}})
			f.v.SetRecord(duplicate(f.rec))
		}, nil, ErrRevoked},
		{"removing a refused second record leaves the first in place", func(f *fixture) {
			f.v.SetRecord(duplicate(f.rec))
			f.v.RemoveRecord(duplicate(f.rec))
		}, nil, nil},
		{"a fenced key fails", func(f *fixture) { _ = f.v.Fence(context.Background(), f.key, Stop{Revoked: true}) }, nil, ErrRevoked},
		{"a fence that is never followed by a revocation lapses", func(f *fixture) {
			_ = f.v.Fence(context.Background(), f.key, Stop{Revoked: true})
			f.clk.Step(10 * time.Second)
		}, nil, nil},
		{"a key fails at the instant it expires", func(f *fixture) {
			k := f.key.DeepCopy()
			at := metav1.NewTime(f.clk.Now())
			k.Spec.ExpiresAt = &at
			f.v.SetKey(k)
		}, nil, ErrExpired},
		{"a key works until the instant before it expires", func(f *fixture) {
			k := f.key.DeepCopy()
			at := metav1.NewTime(f.clk.Now().Add(time.Nanosecond))
			k.Spec.ExpiresAt = &at
			f.v.SetKey(k)
		}, nil, nil},
		{"a suspended key fails", func(f *fixture) { f.v.SetKey(f.withKey(func(k *authv1alpha1.ApiKey) { k.Spec.Suspended = true })) }, nil, ErrSuspended},
		{"a resumed key works again", func(f *fixture) {
			f.v.SetKey(f.withKey(func(k *authv1alpha1.ApiKey) { k.Spec.Suspended = true }))
			f.v.SetKey(f.key)
		}, nil, nil},
		{"a suspension fenced before the watch shows it holds the key off", func(f *fixture) {
			_ = f.v.Fence(context.Background(), f.key, Stop{Suspended: true})
		}, nil, ErrSuspended},
		{"revoked beats suspended", func(f *fixture) {
			f.v.SetKey(f.withKey(func(k *authv1alpha1.ApiKey) { k.Spec.Suspended, k.Spec.Revoked = true, true }))
		}, nil, ErrRevoked},
		{"a rotation with a grace period of 0s stops the key at once", func(f *fixture) {
			f.v.SetKey(f.withKey(func(k *authv1alpha1.ApiKey) { k.Spec.Rotation = rotation(f.clk.Now().Add(time.Second), 0) }))
		}, nil, ErrRotated},
		{"a 0s rotation fenced before the watch shows it stops the key", func(f *fixture) {
			_ = f.v.Fence(context.Background(), f.key, Stop{RotationRequested: f.clk.Now().Add(time.Second)})
		}, nil, ErrRotated},
		{"a rotation with a grace period leaves the key working", func(f *fixture) {
			f.v.SetKey(f.withKey(func(k *authv1alpha1.ApiKey) { k.Spec.Rotation = rotation(f.clk.Now().Add(time.Second), time.Hour) }))
		}, nil, nil},
		{"a rotation requested before the key was minted does not replace it", func(f *fixture) {
			f.v.SetKey(f.withKey(func(k *authv1alpha1.ApiKey) { k.Spec.Rotation = rotation(f.clk.Now().Add(-time.Second), 0) }))
		}, nil, nil},
		{"a record revoked when its grace period ended says it was rotated", func(f *fixture) {
			r := f.rec.DeepCopy()
			r.Spec.Revoked, r.Spec.RevocationReason = true, authv1alpha1.RevocationRotated
			f.v.SetRecord(r)
		}, nil, ErrRotated},
		{"a record past its validUntil fails", func(f *fixture) {
			r := f.rec.DeepCopy()
			until := metav1.NewTime(f.clk.Now())
			r.Spec.ValidUntil = &until
			f.v.SetRecord(r)
		}, nil, ErrRotated},
		{"and works the instant before", func(f *fixture) {
			r := f.rec.DeepCopy()
			until := metav1.NewTime(f.clk.Now().Add(time.Nanosecond))
			r.Spec.ValidUntil = &until
			f.v.SetRecord(r)
		}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			if tt.change != nil {
				tt.change(f)
			}
			raw := f.raw
			if tt.present != nil {
				raw = tt.present(f)
			}
			id, tenant, err := f.v.Resolve(raw)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
			if err == nil && (id.Tenant != "tenant-a" || id.KeyName != "ci" || id.KeyUID != types.UID("uid-1")) {
				t.Fatalf("Verify resolved to %+v", id)
			}
			if err != nil && !reflect.DeepEqual(id, Identity{}) {
				t.Fatalf("Verify refused the key and still returned %+v", id)
			}
			// A known key's refusal is counted for its tenant; an unknown
			// key has none to learn.
			known := err == nil || errors.Is(err, ErrRevoked) || errors.Is(err, ErrExpired) || errors.Is(err, ErrSuspended) || errors.Is(err, ErrRotated)
			if (tenant != "") != known || (known && tenant != "tenant-a") {
				t.Fatalf("Resolve = %q, %v: a known key names its tenant, and only it", tenant, err)
			}
			if v, verr := f.v.Verify(raw); !reflect.DeepEqual(v, id) || verr != err {
				t.Fatalf("Verify and Resolve disagree: %+v %v", v, verr)
			}
		})
	}
}

func TestFencesAreDroppedOnceTheRevocationIsSeen(t *testing.T) {
	f := newFixture(t)
	_ = f.v.Fence(context.Background(), f.key, Stop{Revoked: true})
	if f.v.Fences() != 1 {
		t.Fatalf("%d fences", f.v.Fences())
	}
	f.v.SetKey(f.withKey(func(k *authv1alpha1.ApiKey) { k.Spec.Revoked = true }))
	if f.v.Fences() != 0 {
		t.Fatal("the fence outlived the revocation it stood for")
	}
	if _, err := f.v.Verify(f.raw); !errors.Is(err, ErrRevoked) {
		t.Fatalf("Verify = %v", err)
	}
}

// duplicate is a record of another tenant's key with rec's hash: what a
// planted copy of a key value would have produced.
func duplicate(rec *authv1alpha1.ApiKeyRecord) *authv1alpha1.ApiKeyRecord {
	d := rec.DeepCopy()
	d.UID = "rec-copy"
	d.Spec.Tenant, d.Spec.KeyName, d.Spec.KeyUID = "tenant-b", "copy", "uid-copy"
	return d
}

func TestUnknownKeysAreOnlyInvalid(t *testing.T) {
	if ErrUnknown.Error() != "invalid key" {
		t.Fatalf("an unknown key is refused as %q: it must not tell a guesser more than \"invalid key\"", ErrUnknown)
	}
}

func flip(c byte) string {
	if c == 'a' {
		return "b"
	}
	return "a"
}

// TestResolveNeverAllocates: the request path allocates nothing, whatever
// the answer, so a flood of any kind of key costs no garbage.
func TestResolveNeverAllocates(t *testing.T) {
	f := newFixture(t)
	revoked := newFixture(t)
	r := revoked.rec.DeepCopy()
	r.Spec.Revoked = true
	revoked.v.SetRecord(r)
	other, _ := keys.Generate(rand.Reader, keys.Prefixed)
	for name, call := range map[string]func(){
		"valid":     func() { _, _, _ = f.v.Resolve(f.raw) },
		"revoked":   func() { _, _, _ = revoked.v.Resolve(revoked.raw) },
		"unknown":   func() { _, _, _ = f.v.Resolve(other) },
		"malformed": func() { _, _, _ = f.v.Resolve(f.raw[:20]) },
	} {
		if n := testing.AllocsPerRun(100, call); n != 0 {
			t.Errorf("a %s key: %v allocations per call", name, n)
		}
	}
}

// TestScopes: a key's scopes come with its identity, joined once; scopes a
// fence holds off are in neither until the watch shows them removed.
func TestScopes(t *testing.T) {
	f := newFixture(t)
	f.v.SetKey(f.withKey(func(k *authv1alpha1.ApiKey) { k.Spec.Scopes = []string{"read", "write", "admin"} }))
	id, err := f.v.Verify(f.raw)
	if err != nil || id.ScopeList != "read,write,admin" || !id.HasScope("write") {
		t.Fatalf("scopes %v %q, %v", id.Scopes, id.ScopeList, err)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = f.v.Verify(f.raw) }); n != 0 {
		t.Errorf("%v allocations per verification of a key with scopes", n)
	}
	_ = f.v.Fence(context.Background(), f.key, Stop{Scopes: []string{"write"}})
	id, _ = f.v.Verify(f.raw)
	if id.HasScope("write") || id.ScopeList != "read,admin" {
		t.Fatalf("a fenced scope is still granted: %v %q", id.Scopes, id.ScopeList)
	}
	// The watch shows write still there: the fence stands.
	f.v.SetKey(f.withKey(func(k *authv1alpha1.ApiKey) { k.Spec.Scopes = []string{"read", "write", "admin"} }))
	if f.v.Fences() != 1 {
		t.Fatal("a fence was lifted by an object that does not show its change")
	}
	f.v.SetKey(f.withKey(func(k *authv1alpha1.ApiKey) { k.Spec.Scopes = []string{"read", "admin"} }))
	if f.v.Fences() != 0 {
		t.Fatal("the fence outlived the watch showing the scope removed")
	}
	if id, _ = f.v.Verify(f.raw); id.HasScope("write") || !id.HasScope("admin") {
		t.Fatalf("scopes after the removal: %v", id.Scopes)
	}
}

func TestTakenAway(t *testing.T) {
	at := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	key := func(change func(*authv1alpha1.ApiKeySpec)) *authv1alpha1.ApiKey {
		k := &authv1alpha1.ApiKey{Spec: authv1alpha1.ApiKeySpec{Scopes: []string{"a", "b"}}}
		if change != nil {
			change(&k.Spec)
		}
		return k
	}
	tests := []struct {
		name    string
		updated *authv1alpha1.ApiKey
		want    Stop
	}{
		{"nothing", key(nil), Stop{}},
		{"revocation", key(func(s *authv1alpha1.ApiKeySpec) { s.Revoked = true }), Stop{Revoked: true}},
		{"suspension", key(func(s *authv1alpha1.ApiKeySpec) { s.Suspended = true }), Stop{Suspended: true}},
		{"a rotation with no grace", key(func(s *authv1alpha1.ApiKeySpec) { s.Rotation = rotation(at, 0) }), Stop{RotationRequested: at}},
		{"a rotation with grace takes nothing at once", key(func(s *authv1alpha1.ApiKeySpec) { s.Rotation = rotation(at, time.Minute) }), Stop{}},
		{"a rotation with the default grace takes nothing at once", key(func(s *authv1alpha1.ApiKeySpec) {
			s.Rotation = &authv1alpha1.RotationSpec{RequestedAt: &metav1.Time{Time: at}}
		}), Stop{}},
		{"a scope removed", key(func(s *authv1alpha1.ApiKeySpec) { s.Scopes = []string{"b", "c"} }), Stop{Scopes: []string{"a"}}},
	}
	t.Run("a grace period cut to 0s", func(t *testing.T) {
		old := key(func(s *authv1alpha1.ApiKeySpec) { s.Rotation = rotation(at, time.Hour) })
		if got := TakenAway(old, key(func(s *authv1alpha1.ApiKeySpec) { s.Rotation = rotation(at, 0) })); !got.RotationRequested.Equal(at) {
			t.Fatalf("TakenAway = %+v", got)
		}
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := TakenAway(key(nil), tt.updated); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("TakenAway = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestFenceLiftedOnlyByANewerObject: a lagging watch that delivers an older
// object which happens to show the change (suspended, resumed, suspended
// again) does not lift the fence of the latest change.
func TestFenceLiftedOnlyByANewerObject(t *testing.T) {
	f := newFixture(t)
	f.key.Generation = 3 // suspended at 2, resumed at 3
	f.v.SetKey(f.key)
	_ = f.v.Fence(context.Background(), f.key, Stop{Suspended: true})
	stale := f.key.DeepCopy()
	stale.Generation, stale.Spec.Suspended = 2, true
	f.v.SetKey(stale)
	resumed := f.key.DeepCopy()
	f.v.SetKey(resumed) // the watch catches up to 3, the resume
	if _, err := f.v.Verify(f.raw); !errors.Is(err, ErrSuspended) {
		t.Fatalf("a stale object lifted the fence: Verify = %v", err)
	}
	f.v.SetKey(f.withKey(func(k *authv1alpha1.ApiKey) { k.Spec.Suspended = true }))
	if f.v.Fences() != 0 {
		t.Fatal("the object that shows the change did not lift the fence")
	}
}

// TestASecondChangeGetsAFenceOfItsOwn: a change fenced while another's
// fence holds is confirmed and timed on its own, so that the first
// change's lapse cannot lift it.
func TestASecondChangeGetsAFenceOfItsOwn(t *testing.T) {
	f := newFixture(t)
	_ = f.v.Fence(context.Background(), f.key, Stop{Scopes: []string{"write"}})
	f.clk.Step(9 * time.Second) // the fixture's TTL is 10 s
	_ = f.v.Fence(context.Background(), f.key, Stop{Suspended: true})
	f.clk.Step(2 * time.Second)
	if _, err := f.v.Verify(f.raw); !errors.Is(err, ErrSuspended) {
		t.Fatalf("the second change's fence lapsed with the first's: Verify = %v", err)
	}
}

// TestARevokedRecordLiftsNoFence: the records of a revoked key are revoked
// one by one; the first one seen revoked leaves the others fenced until the
// ApiKey shows the revocation.
func TestARevokedRecordLiftsNoFence(t *testing.T) {
	f := newFixture(t)
	raw2, _ := keys.Generate(rand.Reader, keys.Prefixed)
	current := &authv1alpha1.ApiKeyRecord{
		ObjectMeta: metav1.ObjectMeta{Name: keys.Hash(raw2), UID: "rec-2", CreationTimestamp: metav1.NewTime(f.clk.Now())},
		Spec: authv1alpha1.ApiKeyRecordSpec{Hash: keys.Hash(raw2), Tenant: "tenant-a", KeyName: "ci", KeyUID: "uid-1",
			Hint: keys.Hint(raw2), Format: authv1alpha1.FormatPrefixed, Rotation: 1},
	}
	f.v.SetRecord(current)
	_ = f.v.Fence(context.Background(), f.key, Stop{Revoked: true})
	revoked := current.DeepCopy()
	revoked.Spec.Revoked, revoked.Spec.RevocationReason = true, authv1alpha1.RevocationRevoked
	f.v.SetRecord(revoked)
	if _, err := f.v.Verify(f.raw); !errors.Is(err, ErrRevoked) {
		t.Fatalf("the previous key, in its grace period, authenticates after the revocation: %v", err)
	}
}

// TestARelistDropsWhatItLacks: a relist after the watch fell behind holds
// every object there is; a key or record it lacks was deleted meanwhile,
// and its key no longer authenticates, its fence gone with it.
func TestARelistDropsWhatItLacks(t *testing.T) {
	f := newFixture(t)
	other := newFixture(t)
	(*apiKeys)(f.v).Set(other.key)
	(*records)(f.v).Set(other.rec)
	if _, err := f.v.Verify(other.raw); err != nil {
		t.Fatalf("Verify = %v", err)
	}
	_ = f.v.Fence(context.Background(), f.key, Stop{Suspended: true})

	(*records)(f.v).Replace([]*authv1alpha1.ApiKeyRecord{f.rec})
	if _, err := f.v.Verify(other.raw); !errors.Is(err, ErrUnknown) {
		t.Fatalf("a record the relist lacks: Verify = %v, want ErrUnknown", err)
	}
	if f.v.Size() != 1 {
		t.Fatalf("the index holds %d records after a relist of one", f.v.Size())
	}
	(*apiKeys)(f.v).Replace(nil)
	if _, err := f.v.Verify(f.raw); !errors.Is(err, ErrRevoked) {
		t.Fatalf("a key whose ApiKey the relist lacks: Verify = %v, want ErrRevoked", err)
	}
	if f.v.Fences() != 0 {
		t.Fatal("the fence of a deleted key outlived it")
	}
}

// TestTheIndexHoldsNoObjectOfTheWatch: an object the watch brings may be
// changed or dropped after; the index keeps its own copy of what it reads.
func TestTheIndexHoldsNoObjectOfTheWatch(t *testing.T) {
	f := newFixture(t)
	k := f.withKey(func(k *authv1alpha1.ApiKey) { k.Spec.Scopes = []string{"read", "write"} })
	f.v.SetKey(k)
	k.Spec.Scopes[0], k.Spec.Revoked = "admin", true
	f.rec.Spec.Tenant, f.rec.Spec.Revoked = "tenant-b", true
	id, err := f.v.Verify(f.raw)
	if err != nil || id.Tenant != "tenant-a" || id.ScopeList != "read,write" || !id.HasScope("read") {
		t.Fatalf("Verify = %+v, %v: the index changed with objects it was given", id, err)
	}
}

// TestASinkAddedAfterWatchIsRefused: it would miss the first list.
func TestASinkAddedAfterWatchIsRefused(t *testing.T) {
	v := New(clocktesting.NewFakeClock(time.Now()), 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	v.Watch(ctx, nil)
	defer func() {
		if recover() == nil {
			t.Fatal("FeedKeysTo after Watch did not panic")
		}
	}()
	v.FeedKeysTo(&apiKeys{})
}

// TestTheIndexCountsATenantsKeys: what Usage reads of the index.
func TestTheIndexCountsATenantsKeys(t *testing.T) {
	f := newFixture(t)
	f.v.SetKey(&authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant-a", Name: "old", UID: "uid-2"},
		Spec: authv1alpha1.ApiKeySpec{Revoked: true}})
	f.v.SetKey(&authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant-b", Name: "b", UID: "uid-3"},
		Status: authv1alpha1.ApiKeyStatus{Phase: authv1alpha1.PhaseActive}})
	counts, found := f.v.CountKeys("tenant-a", f.clk.Now())
	if !found || counts.Revoked != 1 || counts.Active != 0 {
		t.Errorf("tenant-a: %+v, %v; want one revoked (the fixture's key has no phase yet: Pending)", counts, found)
	}
	if _, found := f.v.CountKeys("tenant-c", f.clk.Now()); found {
		t.Error("a tenant with no keys has some")
	}
	ns := f.v.Namespaces()
	slices.Sort(ns)
	if !slices.Equal(ns, []string{"tenant-a", "tenant-b"}) {
		t.Errorf("Namespaces = %v", ns)
	}
}

// TestTheCountsFollowEveryChangeAndExpiry: the counts kept per tenant
// as keys change, are deleted and expire are those a scan of every key
// at that instant gives.
func TestTheCountsFollowEveryChangeAndExpiry(t *testing.T) {
	f := newFixture(t)
	now := f.clk.Now()
	active := func(name string, change func(*authv1alpha1.ApiKey)) *authv1alpha1.ApiKey {
		k := &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant-a", Name: name, UID: types.UID("uid-" + name)},
			Status: authv1alpha1.ApiKeyStatus{Phase: authv1alpha1.PhaseActive}}
		if change != nil {
			change(k)
		}
		return k
	}
	expiring := func(in time.Duration) func(*authv1alpha1.ApiKey) {
		return func(k *authv1alpha1.ApiKey) { k.Spec.ExpiresAt = &metav1.Time{Time: now.Add(in)} }
	}
	scan := func() authv1alpha1.UsageKeys {
		var c authv1alpha1.UsageKeys
		for si := int32(1); si < f.v.slots.next; si++ {
			if s := f.v.slots.at(si); s.hasKey && f.v.syms.name(s.key.namespace) == "tenant-a" {
				switch f.v.stateLocked(&s.key, f.clk.Now()) {
				case authv1alpha1.PhaseActive:
					c.Active++
				case authv1alpha1.PhaseRevoked:
					c.Revoked++
				case authv1alpha1.PhaseExpired:
					c.Expired++
				}
			}
		}
		return c
	}
	check := func(step string, want authv1alpha1.UsageKeys) {
		t.Helper()
		got, found := f.v.CountKeys("tenant-a", f.clk.Now())
		if !found || got != want || got != scan() {
			t.Errorf("%s: counts %+v (found %v), want %+v (a scan: %+v)", step, got, found, want, scan())
		}
	}
	check("the fixture's pending key", authv1alpha1.UsageKeys{})
	f.v.SetKey(active("a", nil))
	f.v.SetKey(active("b", expiring(time.Minute)))
	f.v.SetKey(active("c", expiring(time.Hour)))
	check("three active", authv1alpha1.UsageKeys{Active: 3})
	f.v.SetKey(active("a", func(k *authv1alpha1.ApiKey) { k.Spec.Revoked = true }))
	check("one revoked", authv1alpha1.UsageKeys{Active: 2, Revoked: 1})
	f.clk.Step(time.Minute)
	check("one expired", authv1alpha1.UsageKeys{Active: 1, Revoked: 1, Expired: 1})
	f.v.SetKey(active("d", nil))
	f.v.RemoveKey(active("b", nil))
	check("one deleted, one added", authv1alpha1.UsageKeys{Active: 2, Revoked: 1})
	f.clk.Step(time.Hour)
	f.v.SetKey(active("e", expiring(time.Second)))
	check("another expired, one expired when added", authv1alpha1.UsageKeys{Active: 1, Revoked: 1, Expired: 2})
	for _, name := range []string{"a", "c", "d", "e"} {
		f.v.RemoveKey(active(name, nil))
	}
	f.v.RemoveKey(f.key)
	if _, found := f.v.CountKeys("tenant-a", f.clk.Now()); found || len(f.v.tallies) != 0 {
		t.Errorf("a tenant whose keys are all deleted is still counted (%d tallies)", len(f.v.tallies))
	}
}

// TestAKeysSlotGoesWithItsLastEntry: the index forgets a key UID once it
// holds neither its ApiKey nor a record of it, whichever goes last, and a
// record that comes before its ApiKey authenticates once the ApiKey comes.
func TestAKeysSlotGoesWithItsLastEntry(t *testing.T) {
	f := newFixture(t)
	f.v.RemoveRecord(f.rec)
	if f.v.slots.len() != 1 || !f.v.HasKey(f.key.UID) {
		t.Fatal("the slot went with the record while the ApiKey is indexed")
	}
	f.v.RemoveKey(f.key)
	if f.v.slots.len() != 0 {
		t.Fatalf("%d slots held with no ApiKey and no record", f.v.slots.len())
	}

	f.v.SetRecord(f.rec)
	if _, err := f.v.Verify(f.raw); !errors.Is(err, ErrRevoked) {
		t.Fatalf("a record without its ApiKey: Verify = %v, want ErrRevoked", err)
	}
	if got := f.v.Orphans(); !slices.Equal(got, []string{f.rec.Name}) {
		t.Fatalf("Orphans = %v, want the record", got)
	}
	f.v.SetKey(f.key)
	id, err := f.v.Verify(f.raw)
	if err != nil {
		t.Fatalf("the ApiKey after its record: Verify = %v", err)
	}
	if id.RecordName() != f.rec.Name || id.KeyUID != f.key.UID || id.KeyName != "ci" ||
		!id.CreatedAt.Equal(f.rec.CreationTimestamp.Time) || !id.ExpiresAt.IsZero() {
		t.Fatalf("Identity = %+v", id)
	}
	if got := f.v.RecordNames(f.key.UID); !slices.Equal(got, []string{f.rec.Name}) {
		t.Fatalf("RecordNames = %v", got)
	}
	f.v.RemoveKey(f.key)
	f.v.RemoveRecord(f.rec)
	if f.v.slots.len() != 0 || f.v.Size() != 0 {
		t.Fatalf("%d slots and %d records held after both went", f.v.slots.len(), f.v.Size())
	}
}

func named(ns, name, secret string) *authv1alpha1.ApiKey {
	return &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "/" + name)},
		Spec: authv1alpha1.ApiKeySpec{SecretName: secret}}
}

// TestTheIndexNamesWhoDeliversToASecret feeds the index as the watch
// would and asks it who else delivers to a Secret, as admission does.
func TestTheIndexNamesWhoDeliversToASecret(t *testing.T) {
	v := New(clocktesting.NewFakeClock(time.Now()), 0)
	a, b := named("ns", "a", "shared"), named("ns", "b", "shared")
	(*apiKeys)(v).Replace([]*authv1alpha1.ApiKey{a})
	v.SetKey(a) // twice is once
	v.SetKey(named("other", "c", "shared"))
	v.SetKey(named("ns", "own", ""))  // delivers to its own name
	v.SetKey(named("ns", "me", "me")) // so does this one, naming it

	for _, tc := range []struct {
		name string
		key  *authv1alpha1.ApiKey
		want string
	}{
		{"another ApiKey's Secret", b, "a"},
		{"its own Secret is not another's", a, ""},
		{"the same name in another namespace is another Secret", named("third", "d", "shared"), ""},
		{"an ApiKey delivering to its own name", named("ns", "own", ""), ""},
		{"the Secret of an ApiKey delivering to its own name", named("ns", "y", "own"), "own"},
		{"the Secret of one naming its own name", named("ns", "z", "me"), "me"},
	} {
		if got := v.OtherHolder(tc.key); got != tc.want {
			t.Errorf("%s: OtherHolder = %q, want %q", tc.name, got, tc.want)
		}
	}
	v.SetKey(b)
	v.RemoveKey(a)
	if got := v.OtherHolder(a); got != "b" {
		t.Errorf("after a's deletion, OtherHolder = %q, want b", got)
	}
	v.RemoveKey(b)
	if got := v.OtherHolder(a); got != "" {
		t.Errorf("after b's deletion, OtherHolder = %q, want none", got)
	}
	// A relist drops the ApiKeys it lacks: their deletes were missed.
	(*apiKeys)(v).Replace([]*authv1alpha1.ApiKey{a})
	v.RemoveKey(a)
	if v.byName.len() != 0 || len(v.bySecret) != 0 {
		t.Errorf("the index still files %v by name and %v by Secret after every ApiKey went", v.byName, v.bySecret)
	}
}

// TestTheIndexNamesTheKeysInUse: revoked keys, keys being deleted and
// deleted keys are not in use; a name deleted and made again under
// another UID stays filed when the old one's deletion comes.
func TestTheIndexNamesTheKeysInUse(t *testing.T) {
	v := New(clocktesting.NewFakeClock(time.Now()), 0)
	inUse, revoked, deleting, deleted := named("t", "in-use", ""), named("t", "revoked", ""), named("t", "deleting", ""), named("t", "deleted", "")
	for _, k := range []*authv1alpha1.ApiKey{inUse, revoked, deleting, deleted} {
		v.SetKey(k)
	}
	revoked = revoked.DeepCopy()
	revoked.Spec.Revoked = true
	v.SetKey(revoked)
	deleting = deleting.DeepCopy()
	deleting.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	v.SetKey(deleting)
	v.RemoveKey(deleted)
	want := []types.NamespacedName{{Namespace: "t", Name: "in-use"}}
	if got := keysInUse(v); !slices.Equal(got, want) || v.CountInUse() != 1 {
		t.Errorf("keys in use %v (counted %d), want %v", got, v.CountInUse(), want)
	}
	again := inUse.DeepCopy()
	again.UID = "another"
	v.SetKey(again)
	if got := keysInUse(v); !slices.Equal(got, want) || v.CountInUse() != 1 {
		t.Errorf("with a name made again before the old one's deletion came, keys in use %v (counted %d), want %v once",
			got, v.CountInUse(), want)
	}
	v.RemoveKey(inUse)
	if got := keysInUse(v); !slices.Equal(got, want) || v.CountInUse() != 1 {
		t.Errorf("once the old one's deletion came, keys in use %v (counted %d), want %v", got, v.CountInUse(), want)
	}
}

// keysInUse walks v's keys in use as the walk of Secret checks does.
func keysInUse(v *Verifier) []types.NamespacedName {
	var names []types.NamespacedName
	for at := int32(1); ; {
		name, next, ok := v.NextInUse(at)
		if !ok {
			return names
		}
		names, at = append(names, name), next
	}
}
