package reliability

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/leaderelection"

	"github.com/latchkey-dev/latchkey/internal/testenv"
)

// TestLeaderFailover (case 3): two managers with leader election; the
// leader is killed; the other takes over reconciling once the lease has
// expired and within two of its polls, and serves verification throughout.
func TestLeaderFailover(t *testing.T) {
	slow(t)
	g := NewWithT(t)
	ctx := context.Background()
	manager := managerInsteadOfOperator(t)

	const leaseNS = "latchkey-leases"
	leaseKey := types.NamespacedName{Namespace: leaseNS, Name: "latchkey.auth.latchkey.dev"}
	_ = env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: leaseNS}})
	podEnv := []string{"POD_NAMESPACE=" + leaseNS}
	flags := func(port, admissionPort int) []string {
		return append([]string{"--leader-elect"}, lk.ServingFlagsOn(port, admissionPort)...)
	}
	// The leader-to-be starts first, on ports of its own; the survivor serves
	// the admission webhook's port, so keys can be created after the kill.
	otherPort := testenv.FreePort(t)
	leader := manager.Start(t, podEnv, flags(otherPort, testenv.FreePort(t))...)
	leader.WaitReady(t, time.Minute)
	lease := &coordinationv1.Lease{}
	g.Eventually(func() error {
		return env.Client.Get(ctx, leaseKey, lease)
	}).WithTimeout(30 * time.Second).Should(Succeed())
	leaderID := *lease.Spec.HolderIdentity
	survivor := manager.Start(t, podEnv, flags(lk.WebhookPort(), lk.AdmissionPort())...)
	survivor.WaitReady(t, time.Minute)

	ns := env.Namespace(t)
	usableOn := func(ports ...int) func(string) error {
		return func(raw string) error {
			for _, port := range ports {
				if status, err := authorizePort(port, raw); err != nil || status != http.StatusOK {
					return fmt.Errorf("port %d: %d %v", port, status, err)
				}
			}
			return nil
		}
	}
	_, raw := mintUntil(t, ns, "before", usableOn(otherPort, lk.WebhookPort()))
	// Both replicas verify, whoever leads.
	for _, port := range []int{otherPort, lk.WebhookPort()} {
		g.Expect(authorizePort(port, raw)).To(Equal(http.StatusOK))
	}

	stop := keepVerifying(func() (int, error) { return authorizePort(lk.WebhookPort(), raw) })

	leader.Kill()
	killed := time.Now()
	var takeover time.Duration
	// The dead leader's last renewal (one in flight at the kill may still
	// land) sets when its lease expires.
	var expires time.Time
	g.Eventually(func(g Gomega) {
		g.Expect(env.Client.Get(ctx, leaseKey, lease)).To(Succeed())
		if *lease.Spec.HolderIdentity == leaderID {
			expires = lease.Spec.RenewTime.Add(time.Duration(*lease.Spec.LeaseDurationSeconds) * time.Second)
		}
		g.Expect(*lease.Spec.HolderIdentity).NotTo(Equal(leaderID))
		takeover = time.Since(killed)
	}).WithTimeout(60 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
	afterExpiry := lease.Spec.AcquireTime.Sub(expires)
	_, _ = mintUntil(t, ns, "after", usableOn(lk.WebhookPort()))
	minting := time.Since(killed)
	calls, failed := stop()

	g.Expect(failed).To(BeZero())
	// Never two leaders: the survivor waits out the whole lease. It polls
	// every retry period (controller-runtime's default, 2s) stretched by up to
	// leaderelection.JitterFactor, may see the last renewal one poll late, and
	// notices the expiry on a later poll: two stretched polls at most, plus a
	// second for the API server to answer.
	const retryPeriod = 2 * time.Second
	bound := 2 * time.Duration(float64(retryPeriod)*(1+leaderelection.JitterFactor))
	g.Expect(afterExpiry).To(BeNumerically(">", 0), "the survivor took the lease before it expired")
	g.Expect(afterExpiry).To(BeNumerically("<", bound+time.Second), "two jittered retry periods after expiry")
	record(t, "03 leader killed", fmt.Sprintf("takeover %.1fs after SIGKILL: lease (%ds) taken %.1fs after it expired (bound %.1fs: two jittered %s retry periods); a new key Active %.1fs after the kill; %d of %d verifications on the survivor failed",
		takeover.Seconds(), *lease.Spec.LeaseDurationSeconds, afterExpiry.Seconds(), bound.Seconds(), retryPeriod, minting.Seconds(), failed, calls))
}

// authorizePort calls /authorize on a manager's webhook port.
func authorizePort(port int, raw string) (int, error) {
	tr := lk.HTTPClient.Transport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: tr.TLSClientConfig.RootCAs, MinVersion: tls.VersionTLS12}
	defer tr.CloseIdleConnections()
	return authorizeAt(&http.Client{Transport: tr, Timeout: 5 * time.Second}, fmt.Sprintf("https://127.0.0.1:%d", port), raw)
}
