package fencing

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/latchkey-dev/latchkey/internal/certs"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// Defaults of the protocol's timeouts (docs/replicas.md).
const (
	// DefaultServingLease is D: how long a renewal lets a replica serve.
	DefaultServingLease = 3 * time.Second
	// DefaultFenceTimeout bounds each call to a peer.
	DefaultFenceTimeout = 500 * time.Millisecond
	// AdmissionTimeout is the admission webhook's timeoutSeconds
	// (config/webhook): no admission call lasts longer.
	AdmissionTimeout = 5 * time.Second
)

// Lease naming and the annotations of a serving lease.
const (
	LeasePrefix = "latchkey-replica-"
	// LabelServingLease marks serving leases, so that they are listed
	// apart from leader election's.
	LabelServingLease = "latchkey.dev/serving-lease"
	// AnnotationTakenBy names the replica that took the lease to fence a
	// key its holder could not be told of; empty once the holder took it back.
	AnnotationTakenBy = "latchkey.dev/taken-by"
	// AnnotationServing is "true" once the holder, holding the lease
	// without a break, has caught up.
	AnnotationServing = "latchkey.dev/serving"
	yes               = "true"
)

// listLeases lists the serving leases of r's namespace from the API server.
func (r *Replica) listLeases(ctx context.Context) (*coordinationv1.LeaseList, error) {
	var leases coordinationv1.LeaseList
	err := r.Reader.List(ctx, &leases, client.InNamespace(r.Namespace), client.MatchingLabels{LabelServingLease: yes})
	return &leases, err
}

// drift is what a lease's length is stretched by wherever one replica
// judges another's lease by its own clock: clock rates between nodes
// differ far less.
func drift(d time.Duration) time.Duration { return d + d/50 }

// Replica is this replica's part in the protocol: it holds the serving
// lease, serves its peers, catches up whenever it did not hold the lease
// without a break, and fences every replica that may serve when the
// admission webhook admits a change that takes a key away. A manager
// Runnable on every replica.
type Replica struct {
	// Name is this replica's (the pod's); its lease is LeasePrefix+Name in
	// Namespace.
	Name, Namespace string
	// Client writes leases; Reader reads from the API server (leases,
	// ApiKeys for catching up, EndpointSlices): nothing here is cached.
	Client   client.Client
	Reader   client.Reader
	Verifier *verifier.Verifier
	Peers    Peers
	// Lease is D; FenceTimeout bounds each call to a peer.
	Lease, FenceTimeout time.Duration
	// BindAddress is where peers are served ("0": nowhere, as if the
	// port were closed).
	BindAddress string
	// TLSOpts and CertDir are the webhook server's: peers present its
	// certificate.
	TLSOpts []func(*tls.Config)
	CertDir string
	Clock   clock.WithTicker

	// until is the instant serving ends, nil when not serving.
	until atomic.Pointer[time.Time]
	// client is set once Start has the certificate; a fence admitted
	// before is refused.
	client atomic.Pointer[peerClient]
	// identity is Name and this process's incarnation: what the lease's
	// holder and every peer answer say, so that another process under the
	// same name is never taken for this one.
	identity     string
	identityOnce sync.Once

	mu sync.Mutex
	// seen is when this replica first saw each serving lease's version.
	seen map[string]seenVersion
	addr net.Addr
}

type seenVersion struct {
	version string
	// at is when the version was first seen: its renewal had committed.
	at time.Time
}

// NeedLeaderElection is false: every replica serves.
func (*Replica) NeedLeaderElection() bool { return false }

// MayServe says whether this replica may answer keys now: the verifier's
// gate. It reads its own clock, the one the lease is measured on,
// whatever the verifier's is, and both its readings: the monotonic one,
// which no clock step moves, and the wall one, which a node's suspension
// or a paused VM moves on (the monotonic clock stops with them).
func (r *Replica) MayServe() bool {
	u := r.until.Load()
	if u == nil {
		return false
	}
	now := r.Clock.Now()
	return now.Before(*u) && now.Round(0).Before(u.Round(0))
}

// Ready is the readiness check: nil while the replica may serve.
func (r *Replica) Ready() error {
	if !r.MayServe() {
		return errors.New("not serving: the serving lease is not held, or the replica has not caught up since it was")
	}
	return nil
}

// Addr is where peers are served, nil until the listener is open.
func (r *Replica) Addr() net.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.addr
}

func (r *Replica) leaseName() string { return LeasePrefix + r.Name }

// Identity is this replica's name and its process's incarnation.
func (r *Replica) Identity() string {
	r.identityOnce.Do(func() { r.identity = r.Name + "/" + strings.ToLower(rand.Text()[:8]) })
	return r.identity
}

// Start serves peers and holds the lease until ctx ends, then stops
// serving and lets go of the lease.
func (r *Replica) Start(ctx context.Context) error {
	logger := log.FromContext(ctx).WithName("fencing").WithValues("replica", r.Name)
	ctx = log.IntoContext(ctx, logger)
	base, err := certs.ServingConfig(ctx, r.TLSOpts, r.CertDir)
	if err != nil {
		return fmt.Errorf("the peer listener: %w", err)
	}
	pc := newPeerClient(ClientTLS(base), r.FenceTimeout)
	defer pc.http.CloseIdleConnections()
	r.client.Store(pc)
	served := make(chan error, 1)
	if r.BindAddress != "0" && r.BindAddress != "" {
		l, err := net.Listen("tcp", r.BindAddress)
		if err != nil {
			return fmt.Errorf("the peer listener: %w", err)
		}
		r.mu.Lock()
		r.addr = l.Addr()
		r.mu.Unlock()
		logger.Info("Serving peers", "address", l.Addr().String())
		go func() {
			served <- serve(ctx, tls.NewListener(l, ServerTLS(base)), &peerHandler{identity: r.Identity(), verifier: r.Verifier})
		}()
	} else {
		close(served)
	}
	r.hold(ctx)
	return <-served
}

// holding is the lease as this replica holds it.
type holding struct {
	lease *coordinationv1.Lease
	// last is when the last renewal that kept the lease without a break
	// started.
	last time.Time
	// epoch counts breaks; caughtUp is the epoch the last catch-up was for.
	epoch    int
	caughtUp atomic.Int64
	cancel   context.CancelFunc
	// wake asks for a renewal now: a catch-up is done.
	wake chan struct{}
}

// hold renews the lease every D/4 until ctx ends. Whenever the lease is
// not held without a break — first taken, taken from this replica, or a
// renewal that came back after the lease had run out — serving stops and
// a catch-up starts; serving resumes at the first renewal after it.
func (r *Replica) hold(ctx context.Context) {
	logger := log.FromContext(ctx)
	h := &holding{wake: make(chan struct{}, 1)}
	h.caughtUp.Store(-1)
	tick := r.Clock.NewTicker(r.Lease / 4)
	defer tick.Stop()
	for {
		r.renew(ctx, h)
		r.observe(ctx)
		select {
		case <-ctx.Done():
			r.until.Store(nil)
			if h.cancel != nil {
				h.cancel()
			}
			r.release(h)
			logger.Info("Stopped serving and let go of the serving lease")
			return
		case <-tick.C():
		case <-h.wake:
		}
	}
}

// renew renews (or takes) the lease once and decides whether to serve.
func (r *Replica) renew(ctx context.Context, h *holding) {
	logger := log.FromContext(ctx)
	start := r.Clock.Now()
	wctx, cancel := context.WithTimeout(ctx, r.Lease)
	defer cancel()
	var err error
	broke := false
	if h.lease != nil {
		next := h.lease.DeepCopy()
		mark(next, r.Identity(), start, h.caughtUp.Load() == int64(h.epoch))
		err = r.Client.Update(wctx, next)
		switch {
		case err == nil:
			h.lease = next
			// Without a break only if the lease had not run out when this
			// renewal came back: a peer that saw the lease unchanged for
			// longer than D skipped it.
			broke = !r.Clock.Now().Before(h.last.Add(r.Lease))
		case apierrors.IsConflict(err) || apierrors.IsNotFound(err):
			// Taken: whether or not it can be taken back now, only an
			// acquisition, and a catch-up after it, serves again.
			r.until.Store(nil)
			h.lease = nil
			logger.Info("The serving lease was taken to fence a key this replica could not be told of; catching up", "error", err.Error())
		}
	}
	if h.lease == nil {
		h.lease, err = r.acquire(wctx)
		broke = err == nil
	}
	if err != nil {
		logger.V(1).Info("Could not renew the serving lease; serving ends when it runs out", "error", err.Error())
		return
	}
	h.last = start
	if broke {
		r.until.Store(nil)
		h.breakHolding()
		var cctx context.Context
		cctx, h.cancel = context.WithCancel(ctx)
		// Admissions that listed the leases before this holding began
		// end within AdmissionTimeout of now.
		go r.catchUp(cctx, h, h.epoch, r.Clock.Now())
		return
	}
	if h.caughtUp.Load() == int64(h.epoch) {
		until := start.Add(r.Lease)
		r.until.Store(&until)
	}
}

// breakHolding ends the holding: no catch-up begun for it counts any more.
func (h *holding) breakHolding() {
	h.epoch++
	if h.cancel != nil {
		h.cancel()
		h.cancel = nil
	}
}

// acquire takes the lease as it is now (creating it if missing): the
// start of an unbroken holding, which serves once caught up. It returns
// no lease unless the write succeeded, so that a failed one is tried
// again as an acquisition, never renewed from.
func (r *Replica) acquire(ctx context.Context) (*coordinationv1.Lease, error) {
	l := &coordinationv1.Lease{}
	err := r.Reader.Get(ctx, client.ObjectKey{Namespace: r.Namespace, Name: r.leaseName()}, l)
	now := r.Clock.Now()
	switch {
	case apierrors.IsNotFound(err):
		l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{
			Namespace: r.Namespace, Name: r.leaseName(), Labels: map[string]string{LabelServingLease: yes},
		}}
		mark(l, r.Identity(), now, false)
		err = r.Client.Create(ctx, l)
	case err == nil:
		mark(l, r.Identity(), now, false)
		err = r.Client.Update(ctx, l)
	}
	if err != nil {
		return nil, err
	}
	return l, nil
}

// mark writes this replica's renewal into l.
func mark(l *coordinationv1.Lease, identity string, now time.Time, serving bool) {
	if l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	delete(l.Annotations, AnnotationTakenBy)
	l.Annotations[AnnotationServing] = strconv.FormatBool(serving)
	l.Spec.HolderIdentity = ptr.To(identity)
	l.Spec.RenewTime = &metav1.MicroTime{Time: now}
}

// release deletes the lease on the way out, so that peers stop counting
// this replica at once. A peer may have taken it since the last renewal:
// then it is read again, and deleted if it is still this replica's.
func (r *Replica) release(h *holding) {
	if h.lease == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.FenceTimeout+time.Second)
	defer cancel()
	l := h.lease
	for range 3 {
		err := r.Client.Delete(ctx, l, client.Preconditions{ResourceVersion: ptr.To(l.ResourceVersion)})
		if !apierrors.IsConflict(err) {
			return
		}
		l = &coordinationv1.Lease{}
		if err := r.Reader.Get(ctx, client.ObjectKeyFromObject(h.lease), l); err != nil || ptr.Deref(l.Spec.HolderIdentity, "") != r.Identity() {
			return
		}
	}
}

// catchUp makes this replica hold every fence it may have missed before
// epoch's holding began, just before began (docs/replicas.md, "Becoming able to
// serve"): its peers' fences, a wait when one cannot be asked, then a list
// of every ApiKey against its index.
func (r *Replica) catchUp(ctx context.Context, h *holding, epoch int, began time.Time) {
	logger := log.FromContext(ctx)
	for {
		err := r.catchUpOnce(ctx, began)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		logger.Info("Could not catch up; retrying", "error", err.Error())
		select {
		case <-ctx.Done():
			return
		case <-r.Clock.After(r.Lease / 4):
		}
	}
	h.caughtUp.Store(int64(epoch))
	select {
	case h.wake <- struct{}{}:
	default:
	}
	logger.Info("Caught up: serving from the next renewal", "took", r.Clock.Since(began).Round(time.Millisecond).String())
}

func (r *Replica) catchUpOnce(ctx context.Context, began time.Time) error {
	pc := r.client.Load()
	round, err := r.askPeers(ctx, pc.fences)
	if err != nil {
		return err
	}
	for _, a := range round.answers {
		for _, f := range a.Fences {
			if held, err := f.Held(); err == nil {
				_ = r.Verifier.FenceHeld(held)
			}
		}
	}
	// Every peer, and every other lease holder, may have admitted a
	// change before this holding began; one whose fences were not read
	// (unreachable, or missing from the peers) is waited out.
	missed := round.failed
	for i := range round.leases {
		if l := &round.leases[i]; l.Name != r.leaseName() && !round.answered(l) {
			missed = true
		}
	}
	if missed {
		// Any admission that listed the leases before this holding began
		// has been answered, and its write persisted, by then.
		if wait := began.Add(AdmissionTimeout).Sub(r.Clock.Now()); wait > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-r.Clock.After(wait):
			}
		}
	}
	// A list that begins now shows every change this holding may have
	// missed; the index's own, if they began since (a replica's first, see
	// verifier.Watching), are such lists, and need no second.
	point := r.Verifier.ListPoint()
	for !r.Verifier.Synced() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.Clock.After(50 * time.Millisecond):
		}
	}
	if r.Verifier.ListedSince(point) {
		log.FromContext(ctx).Info("The key index's lists began after this holding's peers were asked: no list of ApiKeys to catch up with")
		return nil
	}
	return r.Verifier.CatchUp(ctx, r.Reader)
}

// forgetAfter is how long a lease stays stale before it is deleted: its
// holder, if it ever comes back, finds it gone, takes a new one and
// catches up, as after any break.
func forgetAfter(lease time.Duration) time.Duration { return 10 * lease }

// observe notes when each serving lease's version was first seen, which
// is what judging a lease stale takes, and deletes leases stale for long
// (of replicas gone without letting go: killed, or out of a cluster,
// restarted under another name).
func (r *Replica) observe(ctx context.Context) {
	sent := r.Clock.Now()
	leases, err := r.listLeases(ctx)
	if err != nil {
		return
	}
	r.noteSeen(leases.Items, sent)
	for i := range leases.Items {
		l := &leases.Items[i]
		if l.Name != r.leaseName() && r.staleAt(l, sent, forgetAfter(r.Lease)) {
			err := r.Client.Delete(ctx, l, client.Preconditions{ResourceVersion: ptr.To(l.ResourceVersion)})
			if err == nil {
				log.FromContext(ctx).Info("Deleted the serving lease of a replica gone for long", "lease", klog.KObj(l))
			}
		}
	}
}

// noteSeen records the versions of leases, as a list sent at sent shows
// them (nil sent: not a complete list); a complete list forgets the
// leases it lacks that were noted before it was sent — a lease noted
// since, by a newer list, is not its to forget.
func (r *Replica) noteSeen(leases []coordinationv1.Lease, sent time.Time) {
	now := r.Clock.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = map[string]seenVersion{}
	}
	names := make(map[string]bool, len(leases))
	for i := range leases {
		l := &leases[i]
		names[l.Name] = true
		if s, ok := r.seen[l.Name]; !ok || s.version != l.ResourceVersion {
			r.seen[l.Name] = seenVersion{version: l.ResourceVersion, at: now}
		}
	}
	if sent.IsZero() {
		return
	}
	for name, s := range r.seen {
		if !names[name] && s.at.Before(sent) {
			delete(r.seen, name)
		}
	}
}

// firstSeen is when l's version was first seen here; now, if it has not
// been (so that whatever waits from it waits longest).
func (r *Replica) firstSeen(l *coordinationv1.Lease) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := r.seen[l.Name]; ok && s.version == l.ResourceVersion {
		return s.at
	}
	return r.Clock.Now()
}

// staleAt says whether l, as a list sent at sent shows it, had shown the
// same version here for longer than d by then: judged at the list's
// start, so that a renewal committed while the list was read cannot slip
// between the list and the judgement.
func (r *Replica) staleAt(l *coordinationv1.Lease, sent time.Time, d time.Duration) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.seen[l.Name]
	return ok && s.version == l.ResourceVersion && sent.Sub(s.at) > d
}
