package integration

import (
	"context"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/operator"
	"github.com/latchkey-dev/latchkey/internal/serving"
	"github.com/latchkey-dev/latchkey/internal/testenv"
)

// TestAReplicaThatOnlyServesCachesNoKeys runs a second operator that is
// not the leader (another holds its election's Lease): it answers keys
// from the key index's own watch, and its cache is never asked for an
// ApiKey or ApiKeyRecord informer, which would hold every one of them
// whole. Only the leader's controllers cache them.
func TestAReplicaThatOnlyServesCachesNoKeys(t *testing.T) {
	ns := env.Namespace(t)
	ctx := context.Background()
	election := "follower-" + ns
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: election},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity: ptr.To("the-leader"), LeaseDurationSeconds: ptr.To[int32](3600),
			AcquireTime: &metav1.MicroTime{Time: time.Now()}, RenewTime: &metav1.MicroTime{Time: time.Now()},
		},
	}
	NewWithT(t).Expect(env.Client.Create(ctx, lease)).To(Succeed())

	asked := &informersAsked{}
	var op *operator.Operator
	stop, err := env.StartManager(nil, ctrl.Options{
		LeaderElection: true, LeaderElectionID: election, LeaderElectionNamespace: ns,
		WebhookServer: serving.New(env.ServingOptionsOn(testenv.FreePort(t), testenv.FreePort(t))),
		NewCache: func(cfg *rest.Config, o cache.Options) (cache.Cache, error) {
			c, err := cache.New(cfg, o)
			return &recordingCache{Cache: c, asked: asked}, err
		},
	}, func(mgr ctrl.Manager) error {
		o := operator.DefaultOptions()
		o.Webhooks, o.ServingLease, o.ExtAuthzBindAddress, o.FenceBindAddress = false, 0, "0", "0"
		var err error
		op, err = operator.Setup(mgr, o)
		return err
	})
	NewWithT(t).Expect(err).NotTo(HaveOccurred())
	t.Cleanup(func() { _ = stop() })

	_, raw := mint(t, ns, "served-by-a-follower", authv1alpha1.ApiKeySpec{})
	NewWithT(t).Eventually(func() error {
		_, err := op.Verifier.Verify(raw)
		if err != nil {
			return fmt.Errorf("%w (the index synced: %v, with %d records)", err, op.Verifier.Synced(), op.Verifier.Size())
		}
		return nil
	}, 20*time.Second, 50*time.Millisecond).Should(Succeed())
	// Long enough for anything started late to have asked.
	time.Sleep(time.Second)
	for _, obj := range []client.Object{&authv1alpha1.ApiKey{}, &authv1alpha1.ApiKeyRecord{}} {
		if asked.has(obj) {
			t.Errorf("a replica that is not the leader asked its cache for a %T informer", obj)
		}
	}
}

// informersAsked are the types a cache was asked informers for.
type informersAsked struct {
	mu    sync.Mutex
	types map[reflect.Type]bool
}

func (a *informersAsked) add(obj client.Object) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.types == nil {
		a.types = map[reflect.Type]bool{}
	}
	a.types[reflect.TypeOf(obj)] = true
}

func (a *informersAsked) has(obj client.Object) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.types[reflect.TypeOf(obj)]
}

// recordingCache is a cache that notes every informer it is asked for,
// directly, through an index or through a read.
type recordingCache struct {
	cache.Cache
	asked *informersAsked
}

func (c *recordingCache) GetInformer(ctx context.Context, obj client.Object, opts ...cache.InformerGetOption) (cache.Informer, error) {
	c.asked.add(obj)
	return c.Cache.GetInformer(ctx, obj, opts...)
}

func (c *recordingCache) IndexField(ctx context.Context, obj client.Object, field string, extract client.IndexerFunc) error {
	c.asked.add(obj)
	return c.Cache.IndexField(ctx, obj, field, extract)
}

func (c *recordingCache) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	c.asked.add(obj)
	return c.Cache.Get(ctx, key, obj, opts...)
}

func (c *recordingCache) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	item, err := listItem(list)
	if err != nil {
		return err
	}
	c.asked.add(item)
	return c.Cache.List(ctx, list, opts...)
}

// listItem is an empty item of list's type.
func listItem(list client.ObjectList) (client.Object, error) {
	items := reflect.ValueOf(list).Elem().FieldByName("Items")
	if !items.IsValid() {
		return nil, fmt.Errorf("%T has no items", list)
	}
	obj, ok := reflect.New(items.Type().Elem()).Interface().(client.Object)
	if !ok {
		return nil, fmt.Errorf("%T's items are not objects", list)
	}
	return obj, nil
}
