package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/usage"
	"github.com/latchkey-dev/latchkey/internal/verifier"
)

// UsageReconciler keeps one Usage per tenant namespace with an ApiKey, and
// summarises the tenant's ledger and keys into its status.
type UsageReconciler struct {
	Client client.Client
	// Index is the key index: its watch of ApiKeys brings the passes
	// (SetupWithManager), and it counts a tenant's keys.
	Index *verifier.Verifier
	Clock clock.PassiveClock
	// WriteInterval is the least time between two writes of a Usage's
	// status (default DefaultUsageWriteInterval) while its spec is
	// unchanged: minting a tenant's keys would otherwise rewrite the
	// Usage once per key, and each write is the API server decoding,
	// validating and storing the whole summary again.
	WriteInterval time.Duration
}

// DefaultUsageWriteInterval is UsageReconciler's WriteInterval by default:
// a summary is at most this far behind its keys and ledger.
const DefaultUsageWriteInterval = 2 * time.Second

// +kubebuilder:rbac:groups=auth.latchkey.dev,resources=usages,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=auth.latchkey.dev,resources=usages/status,verbs=get;patch
// +kubebuilder:rbac:groups=auth.latchkey.dev,resources=usageledgers,verbs=get;list;watch;create;update

// Reconcile summarises one tenant.
func (r *UsageReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	u := &authv1alpha1.Usage{}
	err := r.Client.Get(ctx, req.NamespacedName, u)
	if apierrors.IsNotFound(err) {
		if req.Name != authv1alpha1.UsageName {
			return ctrl.Result{}, nil
		}
		if u, err = r.create(ctx, req.Namespace); u == nil || err != nil {
			return ctrl.Result{}, err
		}
	} else if err != nil {
		return ctrl.Result{}, err
	}
	now := r.Clock.Now()
	if wait := r.writeWait(u, now); wait > 0 {
		// What woke it is summarised with whatever else comes meanwhile.
		return ctrl.Result{RequeueAfter: wait}, nil
	}

	l := &authv1alpha1.UsageLedger{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: u.Namespace, Name: authv1alpha1.UsageLedgerStateName}, l); client.IgnoreNotFound(err) != nil {
		return ctrl.Result{}, err
	}
	counts, _ := r.Index.CountKeys(u.Namespace, now)

	window := int(u.Spec.WindowDays)
	if window == 0 {
		window = 30
	}
	state, err := usage.Decode(l.Spec.State)
	if err != nil {
		return ctrl.Result{}, err
	}
	status := usage.Summarise(state, window, now)
	status.Keys = counts
	status.Conditions = u.Status.Conditions
	status.ObservedGeneration = u.Generation
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{
		Type: authv1alpha1.ConditionUpToDate, Status: metav1.ConditionTrue, Reason: authv1alpha1.ReasonSummarised,
		Message:            fmt.Sprintf("Summarises the %d UTC days up to %s", window, usage.Day(now)),
		ObservedGeneration: u.Generation,
	})
	status.UpdatedAt = u.Status.UpdatedAt
	if !equality.Semantic.DeepEqual(status, u.Status) {
		at := metav1.NewTime(now)
		status.UpdatedAt = &at
		// The whole status, zero counts included: a diff would leave a new
		// Usage's zeros unwritten and its columns blank.
		fields, err := toMap(status)
		if err != nil {
			return ctrl.Result{}, err
		}
		// Figures that no longer apply are removed, not left as they were.
		for _, k := range []string{"successRate", "averageDurationSeconds"} {
			if _, ok := fields[k]; !ok {
				fields[k] = nil
			}
		}
		patch, err := json.Marshal(map[string]any{"status": fields})
		if err != nil {
			return ctrl.Result{}, err
		}
		if err := r.Client.Status().Patch(ctx, u, client.RawPatch(types.MergePatchType, patch)); err != nil {
			return ctrl.Result{}, client.IgnoreNotFound(err)
		}
	}
	// The window rolls over at UTC midnight.
	midnight := now.UTC().Truncate(24 * time.Hour).Add(24 * time.Hour)
	return ctrl.Result{RequeueAfter: midnight.Sub(now) + time.Second}, nil
}

// writeWait is how long the last status write holds off the next: none
// for a spec the status has not summarised yet.
func (r *UsageReconciler) writeWait(u *authv1alpha1.Usage, now time.Time) time.Duration {
	interval := r.WriteInterval
	if interval <= 0 {
		interval = DefaultUsageWriteInterval
	}
	if u.Status.UpdatedAt == nil || u.Status.ObservedGeneration != u.Generation {
		return 0
	}
	// UpdatedAt is stored to the second, and may come from another
	// replica's clock: never wait longer than the interval.
	return min(interval, interval-now.Sub(u.Status.UpdatedAt.Time))
}

// create makes the tenant's Usage when the namespace has an ApiKey; it
// returns nil when it has none.
func (r *UsageReconciler) create(ctx context.Context, ns string) (*authv1alpha1.Usage, error) {
	if _, found := r.Index.CountKeys(ns, r.Clock.Now()); !found {
		return nil, nil
	}
	u := &authv1alpha1.Usage{ObjectMeta: metav1.ObjectMeta{
		Namespace: ns, Name: authv1alpha1.UsageName,
		Labels: map[string]string{authv1alpha1.LabelManagedBy: authv1alpha1.ManagedByValue},
	}}
	if err := r.Client.Create(ctx, u); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating Usage: %w", err)
	}
	return u, nil
}

// SetupWithManager registers the controller. ApiKeys (from the key
// index's watch) and ledger states of a namespace all lead to its one
// Usage; the controller's own status writes do not (they leave the
// generation alone). Each summary counts the tenant's keys in the index.
func (r *UsageReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Index == nil {
		return errors.New("the Usage controller needs the key index (Index)")
	}
	// A new leader summarises every tenant with keys: one whose Usage is
	// missing (its keys made while no leader ran) gets one.
	events := usageEvents{newIndexSource(r.Index, func(_ context.Context, s *indexSource) error {
		for _, ns := range r.Index.Namespaces() {
			s.addLow(usageOf(ns))
		}
		return nil
	})}
	r.Index.FeedKeysTo(events)
	toUsage := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, obj client.Object) []reconcile.Request {
		return []reconcile.Request{usageOf(obj.GetNamespace())}
	})
	return ctrl.NewControllerManagedBy(mgr).
		For(&authv1alpha1.Usage{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		WatchesRawSource(events.indexSource).
		Watches(&authv1alpha1.UsageLedger{}, toUsage, builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
			return o.GetName() == authv1alpha1.UsageLedgerStateName // batch-key segments change no summary
		}))).
		Named("usage").
		WithOptions(controller.Options{CacheSyncTimeout: SyncTimeout, NewQueue: newCompactingQueue(mgr.GetLogger())}).
		Complete(r)
}

func toMap(v any) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	m := map[string]any{}
	return m, json.Unmarshal(b, &m)
}
