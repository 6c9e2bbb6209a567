// Package verifiertest fills a verifier with many keys, for benchmarks and
// load runs, and spoils keys for tests.
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

// BadChecksum is raw with its last character changed, so that its checksum
// no longer holds.
func BadChecksum(raw string) string {
	last := "x"
	if strings.HasSuffix(raw, last) {
		last = "y"
	}
	return raw[:len(raw)-1] + last
}
