// Package verifiertest fills a verifier with keys — a few named ones for
// tests of the endpoints, many for benchmarks and load runs — and spoils
// keys for tests.
package verifiertest

import (
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/keys"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// Populated returns a verifier holding n active Prefixed keys of ten
// tenants, and the raw keys, for benchmarks and load runs.
func Populated(tb testing.TB, n int) (*verifier.Verifier, []string) {
	tb.Helper()
	v := verifier.New(clock.RealClock{}, time.Minute)
	raws := make([]string, n)
	for i := range n {
		raw, err := keys.Generate(rand.Reader, keys.Prefixed)
		if err != nil {
			tb.Fatal(err)
		}
		raws[i] = raw
		uid := types.UID(fmt.Sprintf("key-%d", i))
		tenant := fmt.Sprintf("tenant-%d", i%10)
		v.SetKey(&authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: fmt.Sprintf("k%d", i), UID: uid}})
		v.SetRecord(&authv1alpha1.ApiKeyRecord{
			ObjectMeta: metav1.ObjectMeta{Name: keys.Hash(raw), UID: types.UID(fmt.Sprintf("rec-%d", i))},
			Spec: authv1alpha1.ApiKeyRecordSpec{
				Hash: keys.Hash(raw), Tenant: tenant, KeyName: fmt.Sprintf("k%d", i), KeyUID: string(uid),
				Hint: keys.Hint(raw), Format: authv1alpha1.FormatPrefixed,
			},
		})
	}
	return v, raws
}

// Named returns a verifier at clk holding one Prefixed key per name, all of
// tenant-a except "other" (tenant-b): "revoked" is revoked, "expired"
// expired a second before clk's now, "active" has the scopes read and
// write, any other name is a plain valid key; and the raw keys by name. The
// i-th key's ApiKey has the UID key-uid-<i>.
func Named(tb testing.TB, clk clock.PassiveClock, names ...string) (*verifier.Verifier, map[string]string) {
	tb.Helper()
	v := verifier.New(clk, time.Minute)
	raws := make(map[string]string, len(names))
	for i, name := range names {
		raw, err := keys.Generate(rand.Reader, keys.Prefixed)
		if err != nil {
			tb.Fatal(err)
		}
		tenant := "tenant-a"
		if name == "other" {
			tenant = "tenant-b"
		}
		key := &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: name, UID: types.UID(fmt.Sprintf("key-uid-%d", i))}}
		switch name {
		case "active":
			key.Spec.Scopes = []string{"read", "write"}
		case "revoked":
			key.Spec.Revoked = true
		case "expired":
			at := metav1.NewTime(clk.Now().Add(-time.Second))
			key.Spec.ExpiresAt = &at
		}
		v.SetKey(key)
		v.SetRecord(&authv1alpha1.ApiKeyRecord{
			ObjectMeta: metav1.ObjectMeta{Name: keys.Hash(raw), UID: types.UID(fmt.Sprintf("rec-uid-%d", i)), CreationTimestamp: metav1.NewTime(clk.Now())},
			Spec: authv1alpha1.ApiKeyRecordSpec{Hash: keys.Hash(raw), Tenant: tenant, KeyName: name,
				KeyUID: string(key.UID), Hint: keys.Hint(raw), Format: authv1alpha1.FormatPrefixed},
		})
		raws[name] = raw
	}
	return v, raws
}

// BadChecksum is raw with its last character changed, so that its checksum
// no longer holds.
func BadChecksum(raw string) string {
	last := "x"
	if strings.HasSuffix(raw, last) {
		last = "y"
	}
	return raw[:len(raw)-1] + last
}
