package v1alpha1

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/serving"
	"github.com/latchkey-dev/latchkey/internal/testenv"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

var (
	env   *testenv.Env
	fence = &recordingFence{}
)

// recordingFence remembers what it fenced, and fails while failing is set.
type recordingFence struct {
	mu      sync.Mutex
	fenced  []string
	stops   map[string][]verifier.Stop
	failing bool
}

func (f *recordingFence) Fence(_ context.Context, key *authv1alpha1.ApiKey, stop verifier.Stop) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failing {
		return errors.New("verifier unavailable")
	}
	name := key.Namespace + "/" + key.Name
	f.fenced = append(f.fenced, name)
	if f.stops == nil {
		f.stops = map[string][]verifier.Stop{}
	}
	f.stops[name] = append(f.stops[name], stop)
	return nil
}

// stopsOf is what was fenced of a key, in order.
func (f *recordingFence) stopsOf(name string) []verifier.Stop {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]verifier.Stop(nil), f.stops[name]...)
}

func (f *recordingFence) has(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.fenced {
		if n == name {
			return true
		}
	}
	return false
}

func (f *recordingFence) setFailing(v bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failing = v
}

// TestMain starts a control plane with the webhook configuration installed,
// and a manager serving the webhook over TLS on the port envtest registered.
func TestMain(m *testing.M) {
	testenv.Main(m, testenv.Options{Webhooks: true}, func(e *testenv.Env) error {
		env = e
		_, err := env.StartManager(nil, ctrl.Options{WebhookServer: serving.New(env.ServingOptions())}, func(mgr ctrl.Manager) error {
			keys := verifier.New(clock.RealClock{}, 0)
			watchClient, err := verifier.NewWatchClient(mgr.GetConfig(), mgr.GetHTTPClient(), mgr.GetRESTMapper())
			if err != nil {
				return err
			}
			if err := (&ApiKeyValidator{Clock: clock.RealClock{}, Fence: fence, Keys: keys}).SetupWebhookWithManager(mgr); err != nil {
				return err
			}
			return mgr.Add(verifier.Watching{Verifier: keys, Client: watchClient})
		})
		return err
	})
}

func apply(t *testing.T, manifest string) (string, error) {
	t.Helper()
	stdout, stderr, err := env.Kubectl(manifest, "apply", "-f", "-")
	return stdout + stderr, err
}

// TestKubectlRefusesBadManifests applies manifests with kubectl, as a user
// or a GitOps tool would, and checks each refusal names the field and why.
func TestKubectlRefusesBadManifests(t *testing.T) {
	ns := env.Namespace(t)
	past := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	good := func(name, extra string) string {
		return fmt.Sprintf("apiVersion: auth.latchkey.dev/v1alpha1\nkind: ApiKey\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n%s", name, ns, extra)
	}
	_, err := apply(t, good("first", "  secretName: shared\n"))
	NewWithT(t).Expect(err).NotTo(HaveOccurred())

	tests := []struct {
		name     string
		manifest string
		want     []string
	}{
		{"an unknown format is refused naming spec.format", good("a", "  format: Base64\n"),
			[]string{"spec.format", "Unsupported value", `"Prefixed"`, `"Hex"`}},
		{"a description over 256 characters is refused naming spec.description", good("b", "  description: "+strings.Repeat("x", 257)+"\n"),
			[]string{"spec.description", "256"}},
		{"a secretName that is not a DNS name is refused naming spec.secretName", good("c", "  secretName: Not_A_Name\n"),
			[]string{"spec.secretName"}},
		{"an expiry in the past is refused naming spec.expiresAt", good("d", "  expiresAt: \""+past+"\"\n"),
			[]string{"spec.expiresAt", "must be in the future"}},
		{"a Secret another ApiKey delivers to is refused naming spec.secretName", good("e", "  secretName: shared\n"),
			[]string{"spec.secretName", `ApiKey "first" already delivers its key to this Secret`}},
		{"a revoked that is not a boolean is refused naming spec.revoked", good("f", "  revoked: \"yes\"\n"),
			[]string{"spec.revoked"}},
		{"a grace period over 168h is refused naming spec.rotation.gracePeriod", good("g", "  rotation:\n    gracePeriod: 169h\n"),
			[]string{"spec.rotation.gracePeriod", "between 0s and 168h"}},
		{"a negative grace period is refused naming spec.rotation.gracePeriod", good("h", "  rotation:\n    gracePeriod: -1s\n"),
			[]string{"spec.rotation.gracePeriod", "between 0s and 168h"}},
		{"a grace period that is no duration is refused naming it", good("i", "  rotation:\n    gracePeriod: soon\n"),
			[]string{"spec.rotation.gracePeriod"}},
		{"rotating every 59m is refused naming spec.rotation.every", good("j", "  rotation:\n    every: 59m\n"),
			[]string{"spec.rotation.every", "between 1h and 8760h"}},
		{"an upper-case scope is refused naming spec.scopes", good("k", "  scopes: [Read]\n"),
			[]string{"spec.scopes[0]", "should match"}},
		{"a scope over 63 characters is refused naming spec.scopes", good("l", "  scopes: ["+strings.Repeat("a", 64)+"]\n"),
			[]string{"spec.scopes[0]", "63"}},
		{"17 scopes are refused naming spec.scopes", good("m", "  scopes: [a0,a1,a2,a3,a4,a5,a6,a7,a8,a9,b0,b1,b2,b3,b4,b5,b6]\n"),
			[]string{"spec.scopes", "16"}},
		{"a scope twice is refused naming spec.scopes", good("dup", "  scopes: [read, read]\n"),
			[]string{"spec.scopes[1]", "Duplicate"}},
		{"a suspended that is not a boolean is refused naming spec.suspended", good("o", "  suspended: maybe\n"),
			[]string{"spec.suspended"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			out, err := apply(t, tt.manifest)
			g.Expect(err).To(HaveOccurred(), out)
			for _, w := range tt.want {
				g.Expect(out).To(ContainSubstring(w))
			}
		})
	}
}

// TestImmutableFieldsAndOneWayRevocation changes fields with kubectl apply.
func TestImmutableFieldsAndOneWayRevocation(t *testing.T) {
	ns := env.Namespace(t)
	m := func(spec string) string {
		return fmt.Sprintf("apiVersion: auth.latchkey.dev/v1alpha1\nkind: ApiKey\nmetadata:\n  name: k\n  namespace: %s\nspec:\n%s", ns, spec)
	}
	g := NewWithT(t)
	_, err := apply(t, m("  secretName: one\n  format: Hex\n"))
	g.Expect(err).NotTo(HaveOccurred())

	tests := []struct {
		name string
		spec string
		want []string
	}{
		{"changing secretName is refused", "  secretName: two\n  format: Hex\n", []string{"spec.secretName", "secretName is immutable"}},
		{"removing secretName is refused", "  format: Hex\n", []string{"spec.secretName", "secretName is immutable"}},
		{"changing format is refused", "  secretName: one\n  format: Prefixed\n", []string{"spec.format", "format is immutable"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := apply(t, m(tt.spec))
			NewWithT(t).Expect(err).To(HaveOccurred(), out)
			for _, w := range tt.want {
				NewWithT(t).Expect(out).To(ContainSubstring(w))
			}
		})
	}

	t.Run("revoking fences the key before it is persisted, and un-revoking is refused", func(t *testing.T) {
		g := NewWithT(t)
		_, err := apply(t, m("  secretName: one\n  format: Hex\n  revoked: true\n"))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(fence.has(ns + "/k")).To(BeTrue())
		out, err := apply(t, m("  secretName: one\n  format: Hex\n  revoked: false\n"))
		g.Expect(err).To(HaveOccurred())
		g.Expect(out).To(ContainSubstring("spec.revoked"))
		g.Expect(out).To(ContainSubstring("revoked cannot be changed from true to false"))
		out, err = apply(t, m("  secretName: one\n  format: Hex\n"))
		g.Expect(err).To(HaveOccurred(), "dropping the field defaults it to false, which is refused too")
		g.Expect(out).To(ContainSubstring("revoked cannot be changed from true to false"))
	})
}

// TestChangesThatTakeAwayAreFenced: suspension, a rotation with no grace
// period and a scope's removal are fenced before they are persisted, as
// revocation is; resuming, a rotation with grace and adding a scope are
// not.
func TestChangesThatTakeAwayAreFenced(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	m := func(spec string) string {
		return fmt.Sprintf("apiVersion: auth.latchkey.dev/v1alpha1\nkind: ApiKey\nmetadata:\n  name: k\n  namespace: %s\nspec:\n  scopes: [read, write]\n%s", ns, spec)
	}
	_, err := apply(t, m(""))
	g.Expect(err).NotTo(HaveOccurred())
	at := time.Now().Add(time.Minute).UTC().Truncate(time.Second)
	steps := []struct {
		spec string
		want *verifier.Stop
	}{
		{"  suspended: true\n", &verifier.Stop{Suspended: true}},
		{"  suspended: false\n", nil},
		{"  rotation: {requestedAt: \"" + at.Add(-30*time.Second).Format(time.RFC3339) + "\", gracePeriod: 10m}\n", nil},
		{"  rotation: {requestedAt: \"" + at.Format(time.RFC3339) + "\", gracePeriod: 0s}\n", &verifier.Stop{RotationRequested: at}},
	}
	for _, step := range steps {
		before := len(fence.stopsOf(ns + "/k"))
		out, err := apply(t, m(step.spec))
		g.Expect(err).NotTo(HaveOccurred(), out)
		stops := fence.stopsOf(ns + "/k")
		if step.want == nil {
			g.Expect(stops).To(HaveLen(before), "applying %q fenced", step.spec)
			continue
		}
		g.Expect(stops).To(HaveLen(before+1), "applying %q did not fence", step.spec)
		g.Expect(stops[before].Suspended).To(Equal(step.want.Suspended))
		g.Expect(stops[before].RotationRequested.Equal(step.want.RotationRequested)).To(BeTrue(), "%v", stops[before])
	}
	out, err := apply(t, strings.Replace(m("  rotation: {requestedAt: \""+at.Format(time.RFC3339)+"\", gracePeriod: 0s}\n"), "[read, write]", "[write, admin]", 1))
	g.Expect(err).NotTo(HaveOccurred(), out)
	stops := fence.stopsOf(ns + "/k")
	g.Expect(stops[len(stops)-1].Scopes).To(Equal([]string{"read"}))
}

func TestFenceFailsClosed(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	key := &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "k"}}
	g.Expect(env.Client.Create(ctx, key)).To(Succeed())

	fence.setFailing(true)
	defer fence.setFailing(false)
	base := key.DeepCopy()
	key.Spec.Revoked = true
	err := env.Client.Patch(ctx, key, client.MergeFrom(base))
	g.Expect(apierrors.IsServiceUnavailable(err) || strings.Contains(fmt.Sprint(err), "could not stop the key")).To(BeTrue(), "got %v", err)
	err = env.Client.Delete(ctx, key)
	g.Expect(err).To(HaveOccurred())
	g.Expect(err.Error()).To(ContainSubstring("could not stop the key from authenticating"))

	got := &authv1alpha1.ApiKey{}
	g.Expect(env.Client.Get(ctx, client.ObjectKeyFromObject(key), got)).To(Succeed())
	g.Expect(got.Spec.Revoked).To(BeFalse(), "nothing was persisted")

	fence.setFailing(false)
	g.Expect(env.Client.Delete(ctx, key)).To(Succeed())
	g.Expect(fence.has(ns + "/k")).To(BeTrue())
}

func TestDryRunDoesNotFence(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	key := &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "k"}}
	g.Expect(env.Client.Create(ctx, key)).To(Succeed())
	g.Expect(env.Client.Delete(ctx, key, client.DryRunAll)).To(Succeed())
	g.Expect(fence.has(ns + "/k")).To(BeFalse())
}
