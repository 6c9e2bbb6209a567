package plugin

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/keys"
)

// redact hides raw keys in what a failing test prints: only the plugin's
// own output may show a key, once.
func redact(s string, raws ...string) string {
	for _, raw := range raws {
		if raw != "" {
			s = strings.ReplaceAll(s, raw, keys.Hint(raw))
		}
	}
	return s
}

// usable waits until the operator accepts raw: a new or resumed key is
// learnt from the watch, milliseconds after the status that announces it.
func usable(t *testing.T, raw string) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if err = lk.Verifies(raw); err == nil {
			return
		}
	}
	t.Fatalf("%s is refused: %v", keys.Hint(raw), err)
}

// ciKey is the ApiKey "ci" in ns, as it is now.
func ciKey(t testing.TB, ns string) *authv1alpha1.ApiKey {
	t.Helper()
	k := &authv1alpha1.ApiKey{}
	if err := lk.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "ci"}, k); err != nil {
		t.Fatal(err)
	}
	return k
}

func TestRotate(t *testing.T) {
	ns := lk.Namespace(t)
	_, first := lk.Mint(t, ns, "ci", authv1alpha1.ApiKeySpec{})

	for _, grace := range []string{"200h", "-1s", "soon"} {
		if _, err := run(t, time.Now(), "", "rotate", "ci", "--grace", grace, "-n", ns); err == nil || !strings.Contains(err.Error(), "--grace must be a duration between 0s and 168h") {
			t.Fatalf("--grace %s: %v", grace, err)
		}
	}
	if got := ciKey(t, ns); got.Spec.Rotation != nil {
		t.Fatalf("a refused --grace still sent %+v", got.Spec.Rotation)
	}
	if _, err := run(t, time.Now(), "", "rotate", "nope", "-n", ns); err == nil || !strings.Contains(err.Error(), `no ApiKey "nope"`) {
		t.Fatalf("rotating a missing key: %v", err)
	}

	out, err := run(t, time.Now(), "", "rotate", "ci", "--grace", "30m", "-n", ns)
	second := lk.RawKey(t, ciKey(t, ns))
	if err != nil {
		t.Fatalf("rotate: %v\n%s", err, redact(out, first, second))
	}
	key := ciKey(t, ns)
	if second == first || key.Status.Rotation != 1 || keys.Hint(second) != key.Status.KeyHint {
		t.Fatalf("after rotate: rotation %d, hint %s, Secret's key %s (first %s)", key.Status.Rotation, key.Status.KeyHint, keys.Hint(second), keys.Hint(first))
	}
	if strings.Count(out, second) != 1 || strings.Contains(out, first) || !strings.Contains(out, "Rotated API key "+ns+"/ci") ||
		!strings.Contains(out, "The previous key ("+keys.Hint(first)+") keeps working until") {
		t.Fatalf("rotate printed:\n%s", redact(out, first, second))
	}
	if len(key.Status.PreviousKeys) != 1 || !strings.Contains(out, key.Status.PreviousKeys[0].ValidUntil.UTC().Format(time.RFC3339)) {
		t.Fatalf("previous keys %+v, rotate printed:\n%s", key.Status.PreviousKeys, redact(out, first, second))
	}
	usable(t, second)
	if err := lk.Verifies(first); err != nil {
		t.Fatalf("the previous key within its grace period: %v", err)
	}

	// At once again, within the same second: the request still has to be
	// later than the last one, and grace 0s ends the previous key at once.
	out, err = run(t, time.Now(), "", "rotate", "ci", "--grace", "0s", "-n", ns, "-o", "json")
	third := lk.RawKey(t, ciKey(t, ns))
	if err != nil || strings.Count(out, third) != 1 || !strings.Contains(out, `"rotation": 2`) {
		t.Fatalf("rotate --grace 0s -o json: %v\n%s", err, redact(out, first, second, third))
	}
	if err := lk.Verifies(second); err == nil {
		t.Fatalf("the key a 0s rotation replaced still works")
	}
	usable(t, third)

	// A Secret gone: the operator will not rotate into another, and rotate
	// says why rather than waiting out its timeout.
	if err := lk.Client.Delete(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ci"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := run(t, time.Now(), "", "rotate", "ci", "-n", ns); err == nil || !strings.Contains(err.Error(), "cannot be rotated now (SecretMissing)") {
		t.Fatalf("rotating a key whose Secret is gone: %v", err)
	}
}

func TestSuspendResume(t *testing.T) {
	ns := lk.Namespace(t)
	_, raw := lk.Mint(t, ns, "partner", authv1alpha1.ApiKeySpec{})

	out, err := run(t, time.Now(), "", "suspend", "partner", "-n", ns)
	if err != nil || !strings.Contains(out, "Suspended "+ns+"/partner") || strings.Contains(out, raw) {
		t.Fatalf("suspend: %v\n%s", err, redact(out, raw))
	}
	if err := lk.Verifies(raw); err == nil || !strings.Contains(err.Error(), "suspended") {
		t.Fatalf("a suspended key: %v", err)
	}
	if out, err := run(t, time.Now(), "", "list", "-n", ns); err != nil || !strings.Contains(out, "Suspended") || !strings.Contains(out, "Active keys: 0") {
		t.Fatalf("list of a suspended key: %v\n%s", err, out)
	}
	if out, err := run(t, time.Now(), "", "suspend", "partner", "-n", ns); err != nil || !strings.Contains(out, "Suspended "+ns+"/partner") {
		t.Fatalf("suspending twice: %v\n%s", err, out)
	}

	out, err = run(t, time.Now(), "", "resume", "partner", "-n", ns)
	if err != nil || !strings.Contains(out, "Resumed "+ns+"/partner") {
		t.Fatalf("resume: %v\n%s", err, redact(out, raw))
	}
	usable(t, raw)

	if _, err := run(t, time.Now(), "", "revoke", "partner", "--yes", "-n", ns); err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"suspend", "resume", "rotate"} {
		if _, err := run(t, time.Now(), "", verb, "partner", "-n", ns); err == nil || !strings.Contains(err.Error(), "is Revoked") {
			t.Fatalf("%s of a revoked key: %v", verb, err)
		}
	}
}

// list warns of a key that expires soon and shows scopes with -o wide;
// whoami shows them too.
func TestListExpiresSoonAndScopes(t *testing.T) {
	ns := lk.Namespace(t)
	now := time.Now()
	in3d := metav1.NewTime(now.Add(3*24*time.Hour + time.Hour))
	in30d := metav1.NewTime(now.Add(30 * 24 * time.Hour))
	_, soonRaw := lk.Mint(t, ns, "soon", authv1alpha1.ApiKeySpec{ExpiresAt: &in3d, Scopes: []string{"orders:read", "orders:write"}})
	lk.Mint(t, ns, "later", authv1alpha1.ApiKeySpec{ExpiresAt: &in30d})

	out, err := run(t, now, "", "list", "-n", ns)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out, "\n")
	if len(lines) < 3 || !strings.HasSuffix(lines[1], "Active") || !strings.HasSuffix(lines[2], "Active, expires in 3d") || strings.Contains(out, "SCOPES") {
		t.Fatalf("list:\n%s", out)
	}
	out, err = run(t, now, "", "list", "-n", ns, "-o", "wide")
	if err != nil || !strings.Contains(out, "SCOPES") || !strings.Contains(out, "orders:read,orders:write") {
		t.Fatalf("list -o wide: %v\n%s", err, out)
	}

	caFile := filepath.Join(t.TempDir(), "ca.crt")
	_ = os.WriteFile(caFile, lk.WebhookCA, 0o600)
	t.Setenv("LATCHKEY_API_KEY", soonRaw)
	out, err = run(t, now, "", "whoami", "--endpoint", lk.Endpoint, "--ca-file", caFile)
	if err != nil || !strings.Contains(out, "Scopes:   orders:read, orders:write") {
		t.Fatalf("whoami: %v\n%s", err, redact(out, soonRaw))
	}
}

// Colour goes only where the caller asked for it or to a terminal: the
// warning colour marks keys that expire soon, and STATUS stays the last
// column so that escape codes misalign nothing.
func TestListColours(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *metav1.Time { return ptr.To(metav1.NewTime(now.Add(d))) }
	list := []authv1alpha1.ApiKey{
		{ObjectMeta: metav1.ObjectMeta{Name: "soon"}, Spec: authv1alpha1.ApiKeySpec{ExpiresAt: at(5 * time.Hour), Scopes: []string{"read"}},
			Status: authv1alpha1.ApiKeyStatus{Phase: authv1alpha1.PhaseActive, KeyHint: "lk_AAAAA…aaaa"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "gone"}, Spec: authv1alpha1.ApiKeySpec{ExpiresAt: at(-time.Hour)},
			Status: authv1alpha1.ApiKeyStatus{Phase: authv1alpha1.PhaseActive, KeyHint: "lk_BBBBB…bbbb"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "rotating"}, Spec: authv1alpha1.ApiKeySpec{ExpiresAt: at(time.Hour)},
			Status: authv1alpha1.ApiKeyStatus{Phase: authv1alpha1.PhaseActive, KeyHint: "lk_CCCCC…cccc", Conditions: []metav1.Condition{
				{Type: authv1alpha1.ConditionExpiringSoon, Status: metav1.ConditionFalse, Reason: authv1alpha1.ReasonNotExpiring},
			}}},
	}
	for _, colour := range []bool{false, true} {
		var out bytes.Buffer
		o := &Options{Streams: genericiooptions.IOStreams{Out: &out}, Clock: clocktesting.NewFakeClock(now), Color: &colour}
		if err := o.printKeys(list, false, true); err != nil {
			t.Fatal(err)
		}
		name := "list-wide.txt"
		if colour {
			name = "list-wide-colour.txt"
		}
		golden(t, name, out.String())
	}
}

// BenchmarkRotate runs `kubectl latchkey rotate` 20 times against the real
// operator and prints the time from the command's start to the new key
// authenticating (the operator's own verifier, as every endpoint asks it),
// median and max.
//
//	go test -run '^$' -bench Rotate -benchtime 1x ./internal/plugin/
func BenchmarkRotate(b *testing.B) {
	ns := lk.Namespace(b)
	lk.Mint(b, ns, "ci", authv1alpha1.ApiKeySpec{})
	for range b.N {
		took := make([]time.Duration, 0, 20)
		for range cap(took) {
			start := time.Now()
			if _, err := run(b, time.Now(), "", "rotate", "ci", "--grace", "1m", "-n", ns, "-o", "json"); err != nil {
				b.Fatal(err)
			}
			raw := lk.RawKey(b, ciKey(b, ns))
			for lk.Verifies(raw) != nil {
				time.Sleep(time.Millisecond)
			}
			took = append(took, time.Since(start))
		}
		slices.Sort(took)
		b.Logf("FIGURE kubectl latchkey rotate to the new key authenticating, %d rotations: median %v, max %v",
			len(took), took[len(took)/2].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
	}
}
