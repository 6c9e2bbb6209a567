package fencing

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/yaml"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/config/webhook"
	"github.com/latchkey-dev/latchkey/internal/certs"
	"github.com/latchkey-dev/latchkey/internal/testenv"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	testenv.Main(m, testenv.Options{}, func(e *testenv.Env) error { env = e; return nil })
}

// Short timeouts keep the tests quick; the protocol's rules do not
// depend on their size.
const (
	testLease        = 800 * time.Millisecond
	testFenceTimeout = 300 * time.Millisecond
)

// lazyPeers are peers whose addresses are known only once they listen.
type lazyPeers func() []string

func (p lazyPeers) URLs(context.Context) ([]string, error) {
	var urls []string
	for _, u := range p() {
		if u != "" {
			urls = append(urls, u)
		}
	}
	return urls, nil
}

// certDir writes a certificate of a CA of its own: replicas sharing a
// directory share the replica certificate, others do not.
func certDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := certs.WriteLocal(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startReplica runs a replica with a verifier of its own, fed by a cache
// of its own, until the test ends.
func startReplica(t *testing.T, ns, name, dir string, peers Peers, bind string) *Replica {
	t.Helper()
	return startReplicaWith(t, ns, name, dir, peers, bind, func(*Replica) {})
}

// startReplicaWith is startReplica with tune applied before it starts.
func startReplicaWith(t *testing.T, ns, name, dir string, peers Peers, bind string, tune func(*Replica)) *Replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := verifier.NewWatchClient(env.Config, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	v := verifier.New(clock.RealClock{}, 0)
	v.Watch(ctx, c)
	r := &Replica{
		Name: name, Namespace: ns, Client: env.Client, Reader: env.Client, Verifier: v, Peers: peers,
		Lease: testLease, FenceTimeout: testFenceTimeout, BindAddress: bind, CertDir: dir, Clock: clock.RealClock{},
	}
	tune(r)
	var wg sync.WaitGroup
	wg.Go(func() { _ = r.Start(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return r
}

// url is r's peer URL; empty while r is not started (the replica being
// started asks for its peers before it is assigned).
func url(r *Replica) string {
	if r == nil {
		return ""
	}
	if a := r.Addr(); a != nil {
		return "https://" + a.String()
	}
	return ""
}

func waitServing(t *testing.T, rs ...*Replica) {
	t.Helper()
	for _, r := range rs {
		NewWithT(t).Eventually(r.Ready, 20*time.Second, 20*time.Millisecond).Should(Succeed(), r.Name)
	}
}

func apiKey(ns string) *authv1alpha1.ApiKey {
	k := &authv1alpha1.ApiKey{}
	k.Namespace, k.Name, k.UID, k.Generation = ns, "key", types.UID("uid-"+ns), 1
	return k
}

func holds(r *Replica, uid types.UID) bool {
	for _, f := range r.Verifier.HeldFences() {
		if f.UID == uid {
			return true
		}
	}
	return false
}

func lease(t *testing.T, ns, name string) *coordinationv1.Lease {
	t.Helper()
	l := &coordinationv1.Lease{}
	NewWithT(t).Expect(env.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: LeasePrefix + name}, l)).To(Succeed())
	return l
}

// Reachable peers are told of the fence directly: nobody's lease is taken.
func TestPeersAreFencedDirectly(t *testing.T) {
	g := NewWithT(t)
	ns, dir := env.Namespace(t), certDir(t)
	var a, b *Replica
	peers := lazyPeers(func() []string { return []string{url(a), url(b)} })
	a = startReplica(t, ns, "a", dir, peers, "127.0.0.1:0")
	b = startReplica(t, ns, "b", dir, peers, "127.0.0.1:0")
	waitServing(t, a, b)
	before := lease(t, ns, "b").Annotations

	key := apiKey(ns)
	g.Expect(a.Fence(context.Background(), key, verifier.Stop{Revoked: true})).To(Succeed())
	g.Expect(holds(a, key.UID)).To(BeTrue())
	g.Expect(holds(b, key.UID)).To(BeTrue(), "the peer holds the fence when Fence returns")
	g.Expect(lease(t, ns, "b").Annotations[AnnotationTakenBy]).To(BeEmpty())
	g.Expect(before[AnnotationServing]).To(Equal(yes))
	g.Expect(b.Ready()).To(Succeed(), "a peer told directly keeps serving")
}

// A peer that cannot be told (its port closed) but renews its lease has
// the lease taken: it stops serving before Fence returns, or holds the
// fence, and serves again once it has caught up — from the fencing
// replica's table.
func TestAPeerThatCannotBeToldHasItsLeaseTaken(t *testing.T) {
	g := NewWithT(t)
	ns, dir := env.Namespace(t), certDir(t)
	var a *Replica
	peers := lazyPeers(func() []string { return []string{url(a)} })
	a = startReplica(t, ns, "a", dir, peers, "127.0.0.1:0")
	b := startReplica(t, ns, "b", dir, peers, "0")
	waitServing(t, a, b)

	key := apiKey(ns)
	start := time.Now()
	g.Expect(a.Fence(context.Background(), key, verifier.Stop{Suspended: true})).To(Succeed())
	took := time.Since(start)
	g.Expect(!b.MayServe() || holds(b, key.UID)).To(BeTrue(), "serving without the fence after Fence returned")
	g.Eventually(b.Ready, 10*time.Second, 20*time.Millisecond).Should(Succeed())
	g.Expect(holds(b, key.UID)).To(BeTrue(), "caught up from the fencing replica's table")
	t.Logf("FIGURE a peer whose port is closed: Fence took %s (at most --fence-timeout + lease = %s)", took.Round(time.Millisecond), a.Bound())
}

// A lease nobody renews (a frozen or dead replica) is taken once and then,
// unchanged for longer than a lease, judged stale and left alone.
func TestALeaseNobodyRenewsIsTakenThenStale(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns, dir := env.Namespace(t), certDir(t)
	var a *Replica
	a = startReplica(t, ns, "a", dir, lazyPeers(func() []string { return []string{url(a)} }), "127.0.0.1:0")
	waitServing(t, a)
	// A replica that renewed once, just now, and froze.
	ghost := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: LeasePrefix + "ghost", Labels: map[string]string{LabelServingLease: yes}}}
	mark(ghost, "ghost/1", time.Now(), true)
	g.Expect(env.Client.Create(ctx, ghost)).To(Succeed())

	start := time.Now()
	g.Expect(a.Fence(ctx, apiKey(ns), verifier.Stop{Revoked: true})).To(Succeed())
	first := time.Since(start)
	taken := lease(t, ns, "ghost")
	g.Expect(taken.Annotations[AnnotationTakenBy]).To(Equal(a.Identity()))

	time.Sleep(drift(testLease) + 100*time.Millisecond)
	start = time.Now()
	g.Expect(a.Fence(ctx, apiKey(ns), verifier.Stop{Suspended: true})).To(Succeed())
	second := time.Since(start)
	g.Expect(lease(t, ns, "ghost").ResourceVersion).To(Equal(taken.ResourceVersion), "a stale lease is not taken again")
	// Stale for long, it is deleted: its holder, back, would take a new one.
	g.Eventually(func() bool {
		return apierrors.IsNotFound(env.Client.Get(ctx, client.ObjectKeyFromObject(ghost), &coordinationv1.Lease{}))
	}, forgetAfter(testLease)+5*time.Second, 100*time.Millisecond).Should(BeTrue())
	t.Logf("FIGURE a lease nobody renews: first Fence %s (waits for it to run out), once stale %s", first.Round(time.Millisecond), second.Round(time.Millisecond))
}

// A replica that cannot list the leases refuses: a revocation is never
// admitted unfenced.
func TestFenceFailsWhenLeasesCannotBeListed(t *testing.T) {
	g := NewWithT(t)
	ns, dir := env.Namespace(t), certDir(t)
	a := startReplica(t, ns, "a", dir, StaticPeers(nil), "127.0.0.1:0")
	waitServing(t, a)
	a.Reader = unlisting(t)
	err := a.Fence(context.Background(), apiKey(ns), verifier.Stop{Revoked: true})
	g.Expect(err).To(MatchError(ContainSubstring("listing the serving leases")))
}

// unlisting is a reader of the API server whose lists fail.
func unlisting(t *testing.T) client.Reader {
	return interceptor.NewClient(withWatch(t), interceptor.Funcs{
		List: func(context.Context, client.WithWatch, client.ObjectList, ...client.ListOption) error {
			return fmt.Errorf("the API server is unreachable")
		},
	})
}

// Only a holder of the replica certificate may call a replica's peer
// endpoint: no certificate, another certificate or plain HTTP is refused
// at the handshake. A well-formed call answers with the replica's name, a
// malformed one 400 with the reason.
func TestPeerCallsAreAuthenticated(t *testing.T) {
	g := NewWithT(t)
	ns, dir := env.Namespace(t), certDir(t)
	a := startReplica(t, ns, "a", dir, StaticPeers(nil), "127.0.0.1:0")
	waitServing(t, a)
	addr := a.Addr().String()

	own, err := tls.LoadX509KeyPair(filepath.Join(dir, certs.CertFile), filepath.Join(dir, certs.KeyFile))
	g.Expect(err).NotTo(HaveOccurred())
	otherDir := certDir(t)
	other, err := tls.LoadX509KeyPair(filepath.Join(otherDir, certs.CertFile), filepath.Join(otherDir, certs.KeyFile))
	g.Expect(err).NotTo(HaveOccurred())
	call := func(cert *tls.Certificate, body string) (int, string, error) {
		cfg := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the test checks the server's side
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		resp, err := c.Post("https://"+addr+PathFence, "application/json", strings.NewReader(body))
		if err != nil {
			return 0, "", err
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	key := apiKey(ns)
	good, _ := json.Marshal(Fence{APIKey: KeyRef{Namespace: ns, Name: key.Name, UID: "forged", Generation: 1}, Stop: Stop{Revoked: true}})

	_, _, err = call(nil, string(good))
	g.Expect(err).To(HaveOccurred(), "no client certificate")
	_, _, err = call(&other, string(good))
	g.Expect(err).To(HaveOccurred(), "another certificate")
	// The replica certificate is public (it is served to every caller):
	// presenting it without its private key fails the handshake.
	stolen := tls.Certificate{Certificate: own.Certificate, PrivateKey: other.PrivateKey}
	_, _, err = call(&stolen, string(good))
	g.Expect(err).To(HaveOccurred(), "the replica certificate with another key")
	resp, err := http.Post("http://"+addr+PathFence, "application/json", bytes.NewReader(good))
	if err == nil {
		_ = resp.Body.Close()
		g.Expect(resp.StatusCode).NotTo(Equal(http.StatusOK), "plain HTTP")
	}
	g.Expect(holds(a, "forged")).To(BeFalse(), "nothing refused was fenced")

	code, body, err := call(&own, string(good))
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(code).To(Equal(http.StatusOK))
	g.Expect(body).To(ContainSubstring(`"replica":"` + a.Identity() + `"`))
	g.Expect(holds(a, "forged")).To(BeTrue())
	for body, reason := range map[string]string{
		`{`: "malformed body",
		`{"apiKey":{"namespace":"n","name":"k","uid":"u"},"stop":{}}`:                     "stop takes nothing away",
		`{"apiKey":{"namespace":"n","name":"k"},"stop":{"revoked":true}}`:                 "apiKey.uid is required",
		`{"apiKey":{"namespace":"n","name":"k","uid":"u"},"stop":{"revoked":true},"x":1}`: "unknown field",
	} {
		code, msg, err := call(&own, body)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(code).To(Equal(http.StatusBadRequest), body)
		g.Expect(msg).To(ContainSubstring(reason), body)
	}
	// The replica's own client reaches it; a server with another
	// certificate is refused by the client as well.
	pc := newPeerClient(ClientTLS(&tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &own, nil }}), time.Second)
	got, err := pc.fences(context.Background(), "https://"+addr)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(got.Replica).To(Equal(a.Identity()))
	stranger := newPeerClient(ClientTLS(&tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &other, nil }}), time.Second)
	_, err = stranger.fences(context.Background(), "https://"+addr)
	g.Expect(err).To(HaveOccurred())
}

// EndpointSlices name the peers on the Service's port named fence,
// ready or not, this replica's own address aside.
func TestEndpointSlicePeers(t *testing.T) {
	g := NewWithT(t)
	ns := env.Namespace(t)
	slice := fmt.Sprintf(`apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-abc
  namespace: %s
  labels: {kubernetes.io/service-name: svc}
addressType: IPv4
ports: [{name: fence, port: 9445}, {name: verification, port: 9443}]
endpoints:
- addresses: [10.0.0.1]
  targetRef: {kind: Pod, name: pod-1}
- addresses: [10.0.0.2]
  conditions: {ready: false}
  targetRef: {kind: Pod, name: pod-2}
- addresses: [10.0.0.3]
  targetRef: {kind: Pod, name: self}
`, ns)
	_, errOut, err := env.Kubectl(slice, "apply", "-f", "-")
	g.Expect(err).NotTo(HaveOccurred(), errOut)
	urls, err := EndpointSlicePeers{Reader: env.Client, Namespace: ns, Service: "svc", Self: "self"}.URLs(context.Background())
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(urls).To(ConsistOf("https://10.0.0.1:9445", "https://10.0.0.2:9445"))
}

// The shapes on the wire round-trip, and a fence that names no key or
// takes nothing away is refused.
func TestFenceWire(t *testing.T) {
	g := NewWithT(t)
	at := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	h := verifier.HeldFence{Key: types.NamespacedName{Namespace: "n", Name: "k"}, UID: "u", Generation: 3,
		Stop: verifier.Stop{Suspended: true, RotationRequested: at, Scopes: []string{"write"}}}
	b, err := json.Marshal(FenceOf(h))
	g.Expect(err).NotTo(HaveOccurred())
	var f Fence
	g.Expect(decodeStrict(bytes.NewReader(b), &f)).To(Succeed())
	back, err := f.Held()
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(back.Stop.RotationRequested.Equal(at)).To(BeTrue())
	back.Stop.RotationRequested = at
	g.Expect(back).To(Equal(h))
	g.Expect(decodeStrict(strings.NewReader(strings.Repeat(" ", maxBody+1)+"{}"), &f)).To(MatchError(ContainSubstring("larger than")))
	g.Expect(decodeStrict(strings.NewReader(`{} {}`), &f)).To(MatchError(ContainSubstring("more than one")))
	_, err = Fence{APIKey: KeyRef{UID: "u"}, Stop: Stop{Revoked: true}}.Held()
	g.Expect(err).To(MatchError(ContainSubstring("namespace")))
}

// Catching up fences what the API server shows taken away that the index
// does not show yet — revocation, suspension, a removed scope, deletion —
// and nothing for a key unchanged, made since, or ahead in the index.
func TestCatchUpFencesWhatTheIndexMissed(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := env.Namespace(t)
	made := map[string]*authv1alpha1.ApiKey{}
	for _, name := range []string{"revoked", "suspended", "rescoped", "deleted", "unchanged", "ahead"} {
		k := &authv1alpha1.ApiKey{Spec: authv1alpha1.ApiKeySpec{Scopes: []string{"read", "write"}}}
		k.Namespace, k.Name = ns, name
		g.Expect(env.Client.Create(ctx, k)).To(Succeed())
		made[name] = k
	}
	v := verifier.New(clock.RealClock{}, 0)
	for _, k := range made {
		v.SetKey(k.DeepCopy())
	}
	change := func(name string, f func(*authv1alpha1.ApiKey)) {
		k := made[name]
		base := k.DeepCopy()
		f(k)
		g.Expect(env.Client.Patch(ctx, k, client.MergeFrom(base))).To(Succeed())
	}
	change("revoked", func(k *authv1alpha1.ApiKey) { k.Spec.Revoked = true })
	change("suspended", func(k *authv1alpha1.ApiKey) { k.Spec.Suspended = true })
	change("rescoped", func(k *authv1alpha1.ApiKey) { k.Spec.Scopes = []string{"read"} })
	g.Expect(env.Client.Delete(ctx, made["deleted"])).To(Succeed())
	// The watch is ahead of the API server read for this one: the index
	// holds a later generation that added a scope.
	ahead := made["ahead"].DeepCopy()
	ahead.Generation++
	ahead.Spec.Scopes = append(ahead.Spec.Scopes, "admin")
	v.SetKey(ahead)
	fresh := &authv1alpha1.ApiKey{}
	fresh.Namespace, fresh.Name = ns, "fresh"
	g.Expect(env.Client.Create(ctx, fresh)).To(Succeed())
	// Made and revoked before the watch brought it in: it is fenced too.
	late := &authv1alpha1.ApiKey{}
	late.Namespace, late.Name = ns, "late"
	g.Expect(env.Client.Create(ctx, late)).To(Succeed())
	made["late"] = late
	change("late", func(k *authv1alpha1.ApiKey) { k.Spec.Revoked = true })

	g.Expect(v.CatchUp(ctx, env.Client)).To(Succeed())
	got := map[string]verifier.Stop{}
	for _, f := range v.HeldFences() {
		if f.Key.Namespace == ns {
			got[f.Key.Name] = f.Stop
		}
	}
	g.Expect(got).To(Equal(map[string]verifier.Stop{
		"revoked":   {Revoked: true},
		"suspended": {Suspended: true},
		"rescoped":  {Scopes: []string{"write"}},
		"deleted":   {Revoked: true},
		"late":      {Revoked: true},
	}))
}

// AdmissionTimeout is the admission webhook's own timeout, and the
// default lease and fence timeout fit inside it with a second to spare.
func TestAdmissionTimeoutIsTheWebhooks(t *testing.T) {
	g := NewWithT(t)
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{}
	g.Expect(yaml.UnmarshalStrict(webhook.Manifests, vwc)).To(Succeed())
	for _, w := range vwc.Webhooks {
		g.Expect(w.TimeoutSeconds).To(HaveValue(BeEquivalentTo(AdmissionTimeout/time.Second)), w.Name)
	}
	r := &Replica{Lease: DefaultServingLease, FenceTimeout: DefaultFenceTimeout}
	g.Expect(r.Bound() + time.Second).To(BeNumerically("<=", AdmissionTimeout))
}

// A replica whose lease was taken serves again only after catching up,
// even when taking the lease back fails at first: the failed write is
// never renewed from (a renewal from it would skip the catch-up and tell
// the fencing replica it had caught up).
func TestATakenLeaseServesAgainOnlyAfterCatchingUp(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns, dir := env.Namespace(t), certDir(t)
	var a *Replica
	a = startReplica(t, ns, "a", dir, lazyPeers(func() []string { return []string{url(a)} }), "127.0.0.1:0")
	var failNext atomic.Bool
	b := startReplicaWith(t, ns, "b", dir, lazyPeers(func() []string { return []string{url(a)} }), "0", func(r *Replica) {
		r.Client = interceptor.NewClient(withWatch(t), interceptor.Funcs{
			Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
				if failNext.CompareAndSwap(true, false) {
					return apierrors.NewInternalError(errors.New("injected"))
				}
				return c.Update(ctx, obj, opts...)
			},
		})
	})
	waitServing(t, a, b)

	// A fence only a holds, and b's lease taken as a would take it.
	key := apiKey(ns)
	g.Expect(a.Verifier.Fence(ctx, key, verifier.Stop{Revoked: true})).To(Succeed())
	failNext.Store(false)
	// b renews meanwhile: taken as a takes it, read again on a conflict.
	g.Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		l := lease(t, ns, "b")
		l.Annotations[AnnotationTakenBy], l.Annotations[AnnotationServing] = "a/test", "false"
		return env.Client.Update(ctx, l)
	})).To(Succeed())
	// b's renewal conflicts; its first write taking the lease back fails.
	g.Eventually(func() bool { return !b.MayServe() }, 5*time.Second, 5*time.Millisecond).Should(BeTrue())
	failNext.Store(true)
	g.Eventually(b.Ready, 10*time.Second, 10*time.Millisecond).Should(Succeed())
	g.Expect(holds(b, key.UID)).To(BeTrue(), "b serves again holding what a held: it caught up")
}

// Seen versions: a complete list forgets only leases noted before it was
// sent; a version not seen here counts as first seen now; staleness is
// judged at the list's start.
func TestSeenVersions(t *testing.T) {
	g := NewWithT(t)
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC))
	r := &Replica{Clock: clk, Lease: time.Second}
	l := coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "x", ResourceVersion: "1"}}
	old := clk.Now()
	clk.Step(100 * time.Millisecond)
	r.noteSeen([]coordinationv1.Lease{l}, clk.Now())
	r.noteSeen(nil, old) // an older list, answered later, that missed x
	g.Expect(r.firstSeen(&l)).To(Equal(clk.Now()))
	noted := clk.Now()
	clk.Step(5 * time.Second)
	g.Expect(r.firstSeen(&l)).To(Equal(noted))
	other := l
	other.ResourceVersion = "2"
	g.Expect(r.firstSeen(&other)).To(Equal(clk.Now()), "a version not seen here")
	g.Expect(r.staleAt(&l, noted.Add(drift(r.Lease)), drift(r.Lease))).To(BeFalse())
	g.Expect(r.staleAt(&l, noted.Add(drift(r.Lease)+time.Millisecond), drift(r.Lease))).To(BeTrue())
	g.Expect(r.staleAt(&other, clk.Now(), drift(r.Lease))).To(BeFalse())
	r.noteSeen(nil, clk.Now())
	g.Expect(r.staleAt(&l, clk.Now(), 0)).To(BeFalse(), "forgotten by a complete list sent after it was noted")
}

func withWatch(t *testing.T) client.WithWatch {
	t.Helper()
	w, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return w
}
