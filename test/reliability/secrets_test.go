package reliability

import (
	"context"
	"fmt"
	"sync"
	"testing"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestUnrelatedSecrets (case 8): 5,000 unrelated 32 KiB Secrets in other
// namespaces leave the manager's memory alone, since it caches no Secret.
// The real manager binary is measured before and after.
func TestUnrelatedSecrets(t *testing.T) {
	slow(t)
	manager := env.BuildManager(t)
	before := manager.ReadyRSS(t)

	ctx := context.Background()
	namespaces := []string{env.Namespace(t), env.Namespace(t), env.Namespace(t), env.Namespace(t), env.Namespace(t)}
	payload := make([]byte, 32<<10)
	work := make(chan int)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range work {
				s := &corev1.Secret{
					ObjectMeta: metav1.ObjectMeta{Namespace: namespaces[i%len(namespaces)], Name: fmt.Sprintf("unrelated-%d", i)},
					Data:       map[string][]byte{"blob": payload},
				}
				if err := env.Client.Create(ctx, s); err != nil {
					t.Error(err)
				}
			}
		})
	}
	for i := range 5000 {
		work <- i
	}
	close(work)
	wg.Wait()

	after := manager.ReadyRSS(t)
	change := float64(after-before) / float64(before)
	NewWithT(t).Expect(change).To(BeNumerically("<", 0.10))
	record(t, "08 5,000 unrelated 32 KiB Secrets", fmt.Sprintf("manager RSS %.1f MiB before, %.1f MiB after (%+.1f%%, goal under 10%%)",
		float64(before)/(1<<20), float64(after)/(1<<20), 100*change))
}
