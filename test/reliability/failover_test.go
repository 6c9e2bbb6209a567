package reliability

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// TestLeaderFailover (case 3): two managers with leader election; the
// leader is killed; the other takes over reconciling within the lease
// duration, and serves verification throughout.
func TestLeaderFailover(t *testing.T) {
	slow(t)
	g := NewWithT(t)
	ctx := context.Background()
	manager := env.BuildManager(t)
	lk.StopOperator()
	// Registered before any manager process starts, so it runs after their
	// cleanups have killed them and freed the webhook port.
	t.Cleanup(func() {
		if err := lk.RestartOperator(context.Background()); err != nil {
			t.Errorf("restarting the operator: %v", err)
		}
	})

	const leaseNS = "latchkey-leases"
	_ = env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: leaseNS}})
	podEnv := []string{"POD_NAMESPACE=" + leaseNS}
	flags := func(port int) []string {
		return []string{"--leader-elect", "--webhook-port", strconv.Itoa(port), "--webhook-cert-path", lk.WebhookCertDir}
	}
	// The leader-to-be starts first, on a port of its own; the survivor serves
	// the admission webhook's port, so keys can be created after the kill.
	otherPort := freePort(t)
	leader := manager.Start(t, podEnv, flags(otherPort)...)
	leader.WaitReady(t, time.Minute)
	lease := &coordinationv1.Lease{}
	g.Eventually(func() error {
		return env.Client.Get(ctx, types.NamespacedName{Namespace: leaseNS, Name: "latchkey.auth.latchkey.dev"}, lease)
	}).WithTimeout(30 * time.Second).Should(Succeed())
	leaderID := *lease.Spec.HolderIdentity
	survivor := manager.Start(t, podEnv, flags(lk.WebhookPort())...)
	survivor.WaitReady(t, time.Minute)

	ns := env.Namespace(t)
	usableOn := func(ports ...int) func(string) error {
		return func(raw string) error {
			for _, port := range ports {
				if status, err := authorizeAt(port, raw); err != nil || status != http.StatusOK {
					return fmt.Errorf("port %d: %d %v", port, status, err)
				}
			}
			return nil
		}
	}
	_, raw := mintUntil(t, ns, "before", usableOn(otherPort, lk.WebhookPort()))
	// Both replicas verify, whoever leads.
	for _, port := range []int{otherPort, lk.WebhookPort()} {
		g.Expect(authorizeAt(port, raw)).To(Equal(http.StatusOK))
	}

	var calls, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			calls.Add(1)
			if status, err := authorizeAt(lk.WebhookPort(), raw); err != nil || status != http.StatusOK {
				failed.Add(1)
			}
			time.Sleep(5 * time.Millisecond)
		}
	})

	leader.Kill()
	killed := time.Now()
	var takeover time.Duration
	g.Eventually(func(g Gomega) {
		g.Expect(env.Client.Get(ctx, types.NamespacedName{Namespace: leaseNS, Name: "latchkey.auth.latchkey.dev"}, lease)).To(Succeed())
		g.Expect(*lease.Spec.HolderIdentity).NotTo(Equal(leaderID))
		takeover = time.Since(killed)
	}).WithTimeout(60 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
	_, _ = mintUntil(t, ns, "after", usableOn(lk.WebhookPort()))
	minting := time.Since(killed)
	close(stop)
	wg.Wait()

	g.Expect(failed.Load()).To(BeZero())
	g.Expect(takeover).To(BeNumerically("<", 20*time.Second), "within the 15s lease and a retry")
	record(t, "03 leader killed", fmt.Sprintf("takeover %.1fs after SIGKILL (lease 15s); a new key Active %.1fs after; %d of %d verifications on the survivor failed",
		takeover.Seconds(), minting.Seconds(), failed.Load(), calls.Load()))
}

// authorizeAt calls /authorize on a manager's webhook port.
func authorizeAt(port int, raw string) (int, error) {
	tr := lk.HTTPClient.Transport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: tr.TLSClientConfig.RootCAs, MinVersion: tls.VersionTLS12}
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d/authorize", port), nil)
	req.Header.Set("Authorization", "Bearer "+raw)
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}
