package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/events"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// Event reasons of an ApiKey.
const (
	EventKeyMinted      = "KeyMinted"
	EventSecretNotOwned = "SecretNotOwned"
	EventSecretMissing  = "SecretMissing"
	EventSecretChanged  = "SecretChanged"
	EventKeyRotated     = "KeyRotated"
	EventKeyRevoked     = "KeyRevoked"
	EventKeyExpired     = "KeyExpired"
	EventKeySuspended   = "KeySuspended"
	EventKeyResumed     = "KeyResumed"
	// EventKeyExpiringSoon warns once per key and window, as ExpiringSoon
	// turns True.
	EventKeyExpiringSoon = "KeyExpiringSoon"
	// EventSecretAccessDenied: the namespace has not let Latchkey at its Secrets.
	EventSecretAccessDenied = "SecretAccessDenied"
)

// DefaultSecretCheckInterval is how often an Active key's Secret is looked
// at, at most. Latchkey may not watch Secrets (that would cache every Secret
// in the cluster), so a deleted Secret is noticed on this schedule; with
// more keys than the budget of checks covers in it (interval × checks per
// second: 3,000 at the defaults), about every keys / checks per second.
const DefaultSecretCheckInterval = 10 * time.Minute

// DefaultExpiryWarning is how long before its spec.expiresAt a key is
// ExpiringSoon (the manager's --expiry-warning).
const DefaultExpiryWarning = 7 * 24 * time.Hour

// Defaults of the manager's tuning flags.
const (
	DefaultMaxConcurrentReconciles = 4
	DefaultKubeAPIQPS              = 50
	DefaultKubeAPIBurst            = 100
)

// ApiKeyReconciler mints each ApiKey's key once, keeps its hashed record, and
// reports the key's state in status.
type ApiKeyReconciler struct {
	// Client writes; nothing the controller reads is cached.
	Client client.Client
	// Index is the key index, whose watches bring the passes
	// (SetupWithManager) and which names each key's records; without one
	// they are listed through APIReader.
	Index *verifier.Verifier
	// APIReader reads the ApiKey a pass is for, its records and its Secret
	// from the API server.
	APIReader client.Reader
	Recorder  events.EventRecorder
	Clock     clock.Clock
	// Random is the source of key material: crypto/rand outside tests.
	Random io.Reader
	// SecretCheckInterval is how often an Active key's Secret is checked at
	// most; 0 means DefaultSecretCheckInterval.
	SecretCheckInterval time.Duration
	// SecretChecksPerSecond bounds the Secret reads of all periodic checks
	// together (see secretChecks); 0 means DefaultSecretChecksPerSecond.
	SecretChecksPerSecond float64
	// ServiceAccount is the manager's, namespace:name, for the command that
	// grants it a namespace's Secrets; empty means DefaultServiceAccount.
	ServiceAccount string
	// ExpiryWarning is how long before its expiry a key is ExpiringSoon;
	// 0 means DefaultExpiryWarning.
	ExpiryWarning time.Duration

	checksOnce sync.Once
	checks     *secretChecks
	walkOnce   sync.Once
	expiring   expiringKeys
	created    createdRecords
}

// +kubebuilder:rbac:groups=auth.latchkey.dev,resources=apikeys,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=auth.latchkey.dev,resources=apikeys/status,verbs=get;patch
// +kubebuilder:rbac:groups=auth.latchkey.dev,resources=apikeys/finalizers,verbs=update
// +kubebuilder:rbac:groups=auth.latchkey.dev,resources=apikeyrecords,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=auth.latchkey.dev,resources=apikeyrecords/status,verbs=get;patch
// Secrets in tenants' namespaces (get by name, create, patch to rotate) come from the
// latchkey-key-delivery ClusterRole (config/rbac/key_delivery_role.yaml),
// bound per namespace: the manager holds no cluster-wide Secret access.
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile brings one ApiKey's record, Secret and status in line with its
// spec: its phases act and gather an observation, computeStatus decides the
// status from it, and one write records it.
func (r *ApiKeyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	key := &authv1alpha1.ApiKey{}
	checkDue := r.secretChecks().claim(req.NamespacedName)
	if err := r.APIReader.Get(ctx, req.NamespacedName, key); err != nil {
		if apierrors.IsNotFound(err) {
			r.expiring.set(req.NamespacedName, false)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !key.DeletionTimestamp.IsZero() {
		r.expiring.set(req.NamespacedName, false)
		return ctrl.Result{}, r.reconcileDelete(ctx, key)
	}
	if !controllerutil.ContainsFinalizer(key, authv1alpha1.Finalizer) {
		base := key.DeepCopy()
		controllerutil.AddFinalizer(key, authv1alpha1.Finalizer)
		if err := r.Client.Patch(ctx, key, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
			return ctrl.Result{}, fmt.Errorf("adding finalizer: %w", err)
		}
	}

	o, err := r.reconcileNormal(ctx, key, checkDue)
	if err != nil {
		// Status stays what the last pass that succeeded wrote, with the
		// generation it saw: what this pass half-saw is no status.
		return ctrl.Result{}, err
	}
	status, next := computeStatus(o)
	status.ObservedGeneration = key.Generation
	if err := r.patchStatus(ctx, key, status); err != nil {
		return ctrl.Result{}, err
	}
	r.expiring.set(req.NamespacedName, meta.IsStatusConditionTrue(status.Conditions, authv1alpha1.ConditionExpiringSoon))
	return ctrl.Result{RequeueAfter: requeueAfter(next)}, nil
}

// ExpiringSoonByNamespace counts, by namespace, the keys whose ExpiringSoon
// condition this reconciler last wrote True (the
// latchkey_keys_expiring_soon gauge).
func (r *ApiKeyReconciler) ExpiringSoonByNamespace() map[string]int {
	return r.expiring.byNamespace()
}

func (r *ApiKeyReconciler) reconcileDelete(ctx context.Context, key *authv1alpha1.ApiKey) error {
	if !controllerutil.ContainsFinalizer(key, authv1alpha1.Finalizer) {
		return nil
	}
	records, err := r.keyRecords(ctx, key)
	if err != nil {
		return err
	}
	if err := r.revokeRecords(ctx, records, authv1alpha1.RevocationDeleted); err != nil {
		return err
	}
	base := key.DeepCopy()
	controllerutil.RemoveFinalizer(key, authv1alpha1.Finalizer)
	if err := r.Client.Patch(ctx, key, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return client.IgnoreNotFound(err)
	}
	log.FromContext(ctx).Info("Revoked the record of a deleted key")
	return nil
}

// reconcileNormal revokes, mints, rotates or checks delivery, keeps the
// records' expiry and grace periods, and returns what it observed;
// checkDue says the walk of periodic checks released the key.
func (r *ApiKeyReconciler) reconcileNormal(ctx context.Context, key *authv1alpha1.ApiKey, checkDue bool) (observation, error) {
	checks := r.secretChecks()
	o := observation{key: key, now: r.Clock.Now(),
		serviceAccount: r.ServiceAccount, expiryWarning: r.ExpiryWarning}
	records, err := r.keyRecords(ctx, key)
	if err != nil {
		return o, err
	}
	set := splitRecords(records)
	o.record, o.previous = set.current, set.previous
	if key.Spec.Revoked {
		return o, r.revokeRecords(ctx, records, authv1alpha1.RevocationRevoked)
	}
	if err := r.endAtOnce(ctx, key, o.record, o.now); err != nil {
		return o, err
	}

	// A pass no change caused (its status is of this generation: the
	// walk's, a retry, a resync) reads the Secret only within the shared
	// budget, which the walk took from already; a create or
	// a spec edit reads it at once, and so does a pass with a rotation to
	// make or to finish (a scheduled one, or one a dead pass left pending,
	// whose Secret may already hold a key that does not authenticate yet).
	due := false
	if o.record != nil {
		_, due = rotationDue(key, o.record, o.now)
	}
	if key.Status.ObservedGeneration == key.Generation && len(set.pending) == 0 && !due && !checkDue && !checks.take() {
		o.secret = secretDeferred
		if o.record == nil {
			return o, nil
		}
		return o, r.keepRecords(ctx, key, o)
	}
	if o.record == nil {
		o.record, o.secret, err = r.ensureKey(ctx, key, set.pending)
	} else {
		current, replaced, state, rotateErr := r.ensureRotated(ctx, key, o.record, set.pending, o.now)
		o.record, o.previous, o.secret, err = current, append(replaced, o.previous...), state, rotateErr
	}
	if accessDenied(err) {
		o.secret, err = secretAccessDenied, nil
	}
	if err != nil || o.record == nil {
		return o, err
	}
	return o, r.keepRecords(ctx, key, o)
}

// accessDenied tells RBAC's refusals from other 403s, such as an admission
// webhook's: the authorizer's message says who "cannot" do what.
func accessDenied(err error) bool {
	return apierrors.IsForbidden(err) && strings.Contains(err.Error(), " cannot ")
}

// revokeRecords revokes every delivered record of a key and deletes the
// pending ones, whose keys never authenticated.
func (r *ApiKeyReconciler) revokeRecords(ctx context.Context, records []authv1alpha1.ApiKeyRecord, reason string) error {
	for i := range records {
		if records[i].Spec.Pending {
			continue
		}
		if err := revokeRecord(ctx, r.Client, r.Clock, &records[i], reason); err != nil {
			return err
		}
	}
	return r.deletePending(ctx, records)
}

// revokeRecord marks a record revoked; it keeps the first reason it is given.
func revokeRecord(ctx context.Context, c client.Client, clk clock.PassiveClock, record *authv1alpha1.ApiKeyRecord, reason string) error {
	if record.Spec.Revoked {
		return nil
	}
	base := record.DeepCopy()
	now := metav1.NewTime(clk.Now())
	record.Spec.Revoked = true
	record.Spec.RevokedAt = &now
	record.Spec.RevocationReason = reason
	if err := c.Patch(ctx, record, client.MergeFrom(base)); err != nil {
		return fmt.Errorf("revoking record %s: %w", record.Name, err)
	}
	log.FromContext(ctx).Info("Revoked record", "record", klog.KObj(record), "reason", reason)
	return nil
}

// endAtOnce gives the current key a validUntil when a rotation with a
// grace period of 0s replaces it, before the new key is minted: the
// verifier refuses it from the spec already, but only for as long as the
// spec says 0s, and a validUntil is never extended, so a grace period
// raised afterwards, a reverted spec or a rotation that cannot be made
// (its Secret gone) never brings the key back.
func (r *ApiKeyReconciler) endAtOnce(ctx context.Context, key *authv1alpha1.ApiKey, current *authv1alpha1.ApiKeyRecord, now time.Time) error {
	if current == nil || key.GracePeriod() != 0 || !key.Supersedes(current) {
		return nil
	}
	until := key.RotationRequested()
	if now.Before(until) {
		until = now
	}
	if v := current.Spec.ValidUntil; v != nil && !until.Before(v.Time) {
		return nil
	}
	base := current.DeepCopy()
	current.Spec.ValidUntil = &metav1.Time{Time: until}
	if err := r.Client.Patch(ctx, current, client.MergeFrom(base)); err != nil {
		return fmt.Errorf("ending record %s for a rotation with no grace period: %w", current.Name, err)
	}
	return nil
}

// keepRecords keeps every working key's expiry the ApiKey's, and ends the
// grace periods of the keys the current one replaced.
func (r *ApiKeyReconciler) keepRecords(ctx context.Context, key *authv1alpha1.ApiKey, o observation) error {
	if err := r.syncRecordExpiry(ctx, key, o.record); err != nil {
		return err
	}
	return r.retirePrevious(ctx, key, o.record, o.previous, o.now)
}

// MaxPreviousKeys is how many replaced keys may be in their grace period at
// once (status.previousKeys holds at most as many).
const MaxPreviousKeys = 8

// retirePrevious gives each key current replaced its validUntil, current's
// creation plus the grace period, and revokes it (reason Rotated) once that
// has passed. validUntil is computed from records, never from the clock,
// so that passes that die and the one after them set the same instant, and
// it is never moved later (the API server refuses that too): a key in its
// grace period keeps the one it was given. previous is newest first: past
// the MaxPreviousKeys newest in their grace period, a rotation ends the
// grace of the older ones at once, so that status.previousKeys (at most
// as many) lists every replaced key that still works.
func (r *ApiKeyReconciler) retirePrevious(ctx context.Context, key *authv1alpha1.ApiKey, current *authv1alpha1.ApiKeyRecord, previous []authv1alpha1.ApiKeyRecord, now time.Time) error {
	inGrace := 0
	for i := range previous {
		rec := &previous[i]
		if rec.Spec.Revoked {
			continue
		}
		until := current.CreationTimestamp.Add(key.GracePeriod())
		if inGrace == MaxPreviousKeys && until.After(now) {
			until = now
		}
		if rec.Spec.ValidUntil == nil || until.Before(rec.Spec.ValidUntil.Time) {
			base := rec.DeepCopy()
			rec.Spec.ValidUntil = &metav1.Time{Time: until}
			if err := r.Client.Patch(ctx, rec, client.MergeFrom(base)); err != nil {
				return fmt.Errorf("ending the grace period of record %s: %w", rec.Name, err)
			}
		}
		if rec.Spec.ValidUntil.After(now) {
			inGrace++
			if err := r.syncRecordExpiry(ctx, key, rec); err != nil {
				return err
			}
			continue
		}
		if err := revokeRecord(ctx, r.Client, r.Clock, rec, authv1alpha1.RevocationRotated); err != nil {
			return err
		}
	}
	return nil
}

func (r *ApiKeyReconciler) syncRecordExpiry(ctx context.Context, key *authv1alpha1.ApiKey, record *authv1alpha1.ApiKeyRecord) error {
	if equality.Semantic.DeepEqual(record.Spec.ExpiresAt, key.Spec.ExpiresAt) {
		return nil
	}
	base := record.DeepCopy()
	record.Spec.ExpiresAt = key.Spec.ExpiresAt
	if err := r.Client.Patch(ctx, record, client.MergeFrom(base)); err != nil {
		return fmt.Errorf("updating expiry of record %s: %w", record.Name, err)
	}
	return nil
}

// patchStatus writes the computed status and the Events its changes call for.
func (r *ApiKeyReconciler) patchStatus(ctx context.Context, key *authv1alpha1.ApiKey, status authv1alpha1.ApiKeyStatus) error {
	if equality.Semantic.DeepEqual(key.Status, status) {
		return nil
	}
	for _, e := range statusEvents(&key.Status, &status) {
		r.Recorder.Eventf(key, nil, e.eventType, e.reason, e.action, "%s", e.note)
	}
	base := key.DeepCopy()
	key.Status = status
	return client.IgnoreNotFound(r.Client.Status().Patch(ctx, key, client.MergeFrom(base)))
}

// secretChecks is the budget of this reconciler's periodic Secret checks,
// made on first use: tests reconcile without SetupWithManager.
func (r *ApiKeyReconciler) secretChecks() *secretChecks {
	r.checksOnce.Do(func() {
		var keys keysInUse // the walk, which reads them, runs only with the index
		if r.Index != nil {
			keys = r.Index
		}
		r.checks = newSecretChecks(r.Clock, r.SecretCheckInterval, r.SecretChecksPerSecond, keys)
	})
	return r.checks
}

// SetupWithManager registers the controller, fed by the key index's
// watches (apiKeyEvents): only a spec the status has not caught up with
// and a deletion bring a pass, so the controller's own status writes and
// label edits by others never make it loop.
func (r *ApiKeyReconciler) SetupWithManager(mgr ctrl.Manager, maxConcurrent int) error {
	if r.Index == nil {
		return errors.New("the ApiKey controller needs the key index (Index)")
	}
	passes := &apiKeyEvents{newIndexSource(r.Index, r.catchUp)}
	r.Index.FeedKeysTo(passes)
	r.Index.FeedRecordsTo(createdEvents{&r.created})
	return ctrl.NewControllerManagedBy(mgr).
		Named("apikey").
		WatchesRawSource(passes).
		WithOptions(controller.Options{MaxConcurrentReconciles: maxConcurrent, CacheSyncTimeout: SyncTimeout, NewQueue: newCompactingQueue(mgr.GetLogger())}).
		Complete(r)
}

// servingWait is how long catchUp waits for the replica to serve: a
// leader that cannot serve still queues what is due.
const servingWait = time.Minute

// catchUpPage is how many ApiKeys one list call of catchUp reads.
const catchUpPage = 500

// catchUp is what a new leader does once the index has synced: it starts
// the walk that brings keys to their periodic Secret checks
// (secretChecks.walk), and reads every ApiKey once, a page at a time and
// keeping none, to queue the passes the last leader's queue held (dueIn):
// a key with nothing due, most of them, costs nothing more. The list
// waits until the replica serves, for up to servingWait: decoding every
// ApiKey whole took 40 % of a restarted replica's core at 10,000 keys
// (a CPU profile of its first 8 s under make bench-load), beside the
// index's lists and the fencing catch-up that answering keys waits for.
func (r *ApiKeyReconciler) catchUp(ctx context.Context, s *indexSource) error {
	r.walkOnce.Do(func() {
		go r.secretChecks().walk(ctx, func(key types.NamespacedName) { s.addLow(reconcile.Request{NamespacedName: key}) })
	})
	serving := func(context.Context) (bool, error) { return r.Index.Serving(), nil }
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, servingWait, true, serving); ctx.Err() != nil {
		return err
	}
	now := r.Clock.Now()
	list := &authv1alpha1.ApiKeyList{}
	for cont := ""; ; {
		list.Items = nil
		if err := r.APIReader.List(ctx, list, client.Limit(catchUpPage), client.Continue(cont)); err != nil {
			return fmt.Errorf("listing ApiKeys: %w", err)
		}
		for i := range list.Items {
			if d := dueIn(&list.Items[i], r.ExpiryWarning, now); d >= 0 {
				s.addLowAfter(requestFor(&list.Items[i]), d)
			}
		}
		if cont = list.Continue; cont == "" {
			return nil
		}
	}
}
