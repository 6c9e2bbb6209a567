package fencing

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// takenPoll is how often a taken lease is read to see its holder back.
const takenPoll = 50 * time.Millisecond

// Bound is the longest Fence waits for the replicas it cannot reach, the
// two API calls it makes aside.
func (r *Replica) Bound() time.Duration { return r.FenceTimeout + drift(r.Lease) }

// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=system,resources=leases,verbs=get;list;create;update;delete

// Fence stops what stop takes away from key on every replica that may
// serve before it returns (docs/replicas.md, "Admitting a revocation"):
// here, on every peer that answers, and on every other lease holder by
// taking its lease and waiting until it has run out or its holder has
// caught up. It is the admission webhook's RevocationFence. It fails —
// and the change is refused — when it cannot be sure.
func (r *Replica) Fence(ctx context.Context, key *authv1alpha1.ApiKey, stop verifier.Stop) error {
	pc := r.client.Load()
	if pc == nil {
		return errors.New("this replica is still starting")
	}
	if err := r.Verifier.Fence(ctx, key, stop); err != nil {
		return err
	}
	logger := log.FromContext(ctx).WithName("fencing")
	// Within the admission call: kube-apiserver gives up on it after
	// AdmissionTimeout, and a late "allowed" is no use.
	ctx, cancel := context.WithTimeout(ctx, AdmissionTimeout-admissionMargin)
	defer cancel()
	f := FenceOf(verifier.HeldFence{
		Key: types.NamespacedName{Namespace: key.Namespace, Name: key.Name}, UID: key.UID, Generation: key.Generation, Stop: stop,
	})

	round, err := r.askPeers(ctx, func(ctx context.Context, url string) (Answer, error) { return pc.fence(ctx, url, f) })
	if err != nil {
		return err
	}
	var waits []taken
	for i := range round.leases {
		l := &round.leases[i]
		if l.Name == r.leaseName() || round.answered(l) || r.staleAt(l, round.sent, drift(r.Lease)) {
			continue
		}
		t, err := r.take(ctx, l)
		if err != nil {
			return err
		}
		if t != nil {
			logger.Info("Took the serving lease of a replica that could not be told of a fence",
				"replica", ptr.Deref(l.Spec.HolderIdentity, ""), "apiKey", klog.KObj(key))
			waits = append(waits, *t)
		}
	}
	return r.await(ctx, waits)
}

// admissionMargin is kept from the admission timeout for the answer to
// reach kube-apiserver.
const admissionMargin = 300 * time.Millisecond

// taken is a lease this replica took: its holder stops serving by until
// at the latest.
type taken struct {
	key     client.ObjectKey
	version string
	until   time.Time
}

// take takes l from its holder, with l's version as precondition; on a
// conflict (the holder renewed) it reads the lease again and decides again.
// nil means no wait is needed after all.
func (r *Replica) take(ctx context.Context, l *coordinationv1.Lease) (*taken, error) {
	for {
		// The holder's last renewal committed before this version was
		// seen, so its serving ends a lease after that at the latest.
		until := r.firstSeen(l).Add(drift(r.Lease))
		next := l.DeepCopy()
		if next.Annotations == nil {
			next.Annotations = map[string]string{}
		}
		next.Annotations[AnnotationTakenBy] = r.Identity()
		next.Annotations[AnnotationServing] = "false"
		err := r.Client.Update(ctx, next)
		switch {
		case err == nil:
			return &taken{key: client.ObjectKeyFromObject(l), version: next.ResourceVersion, until: until}, nil
		case apierrors.IsNotFound(err):
			return nil, nil // let go of: its holder has stopped
		case !apierrors.IsConflict(err):
			return nil, fmt.Errorf("taking the serving lease %s: %w", l.Name, err)
		}
		if err := r.Reader.Get(ctx, client.ObjectKeyFromObject(l), l); err != nil {
			if apierrors.IsNotFound(err) {
				return nil, nil
			}
			return nil, fmt.Errorf("reading the serving lease %s: %w", l.Name, err)
		}
		r.noteSeen([]coordinationv1.Lease{*l}, time.Time{})
	}
}

// await waits until every taken lease has run out, or its holder has
// caught up since it was taken (which it does only holding the fence).
func (r *Replica) await(ctx context.Context, waits []taken) error {
	for len(waits) > 0 {
		now := r.Clock.Now()
		left := waits[:0]
		for _, t := range waits {
			if !now.Before(t.until) || r.caughtUpSince(ctx, t) {
				continue
			}
			left = append(left, t)
		}
		if waits = left; len(waits) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for replicas that could not be told of the fence: %w", ctx.Err())
		case <-r.Clock.After(takenPoll):
		}
	}
	return nil
}

// caughtUpSince says whether t's lease shows its holder serving again
// since it was taken.
func (r *Replica) caughtUpSince(ctx context.Context, t taken) bool {
	l := &coordinationv1.Lease{}
	if err := r.Reader.Get(ctx, t.key, l); err != nil {
		return apierrors.IsNotFound(err)
	}
	return l.ResourceVersion != t.version && l.Annotations[AnnotationTakenBy] == "" && l.Annotations[AnnotationServing] == yes
}

// A peerRound is what one call to every peer, beside a list of the
// serving leases, found.
type peerRound struct {
	// answers are the peers' answers, by the replica that gave them.
	answers map[string]Answer
	// failed: the peers could not be listed, or one did not answer.
	failed bool
	// sent is when the lease list was sent, and leases what it read.
	sent   time.Time
	leases []coordinationv1.Lease
}

// answered says whether l's holder answered.
func (p *peerRound) answered(l *coordinationv1.Lease) bool {
	_, ok := p.answers[ptr.Deref(l.Spec.HolderIdentity, "")]
	return ok
}

// askPeers makes call to every peer at once, each bounded by
// --fence-timeout, while it lists the serving leases from the API server;
// only a failed list is an error.
func (r *Replica) askPeers(ctx context.Context, call func(context.Context, string) (Answer, error)) (peerRound, error) {
	logger := log.FromContext(ctx)
	round := peerRound{answers: map[string]Answer{}}
	urls, err := r.Peers.URLs(ctx)
	if err != nil {
		logger.Info("Could not list the peers; counting on their leases", "error", err.Error())
		round.failed = true
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, url := range urls {
		wg.Go(func() {
			a, err := call(ctx, url)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				logger.V(1).Info("A peer did not answer", "peer", url, "error", err.Error())
				round.failed = true
				return
			}
			round.answers[a.Replica] = a
		})
	}
	round.sent = r.Clock.Now()
	leases, listErr := r.listLeases(ctx)
	wg.Wait()
	if listErr != nil {
		return peerRound{}, fmt.Errorf("listing the serving leases: %w", listErr)
	}
	r.noteSeen(leases.Items, round.sent)
	round.leases = leases.Items
	return round, nil
}
