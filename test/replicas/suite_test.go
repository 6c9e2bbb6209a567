// Package replicas holds Latchkey to its promise on every replica (issue 20,
// docs/replicas.md): three manager binaries on one control plane, one of
// them frozen, killed or cut off from its peers while keys are revoked, and
// no request that starts after the revoke call returned is accepted by any
// of them.
//
//	go test -v ./test/replicas/ | grep FIGURE
//	go test -run '^$' -bench RevokeLatency -benchtime 1x ./test/replicas/
package replicas

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/testenv"
	"github.com/latchkey-dev/latchkey/pkg/devenv/controlplane"
)

const (
	// leaseNS is the managers' POD_NAMESPACE: their serving Leases and the
	// leader election's.
	leaseNS = "latchkey-system"
	// servingLease and fenceTimeout are the defaults, given explicitly so
	// that the figures keep the settings they were measured with:
	// a revocation waits at most fenceTimeout + servingLease + servingLease/50.
	servingLease = 3 * time.Second
	fenceTimeout = 500 * time.Millisecond
	// hammers is how many goroutines call each replica with a key.
	hammers = 4
	// readyWithin is how long a replica may take to catch up and serve.
	readyWithin = time.Minute
)

var (
	env     *testenv.Env
	manager *testenv.ManagerBinary
	// replicas are the three managers every test starts from: replica 0
	// serves the admission port the webhook configuration points at, so it
	// gets every admission call and fences the others.
	replicas []*replica
	// closedPeer is a fence URL only replica 0 lists, on which nothing
	// listens (TestPeerPortClosed).
	closedPeer string
	// logDir holds every manager's output, logs its files.
	logDir string
	logs   []string

	mintedMu sync.Mutex
	minted   []string

	// dieWithTest makes a manager's process die with this one, where the
	// system can (orphans_linux_test.go).
	dieWithTest = func(*exec.Cmd) {}
)

// replica is one manager process and what it takes to (re)start it.
type replica struct {
	name                           string
	port, admissionPort, fencePort int
	flags                          []string
	proc                           *testenv.Process
	client                         *http.Client
	log                            *os.File
}

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

// run starts the control plane and the three replicas, runs the tests,
// stops everything, and fails the run if a manager logged a key.
func run(m *testing.M) (code int, err error) {
	if env, err = testenv.Start(testenv.Options{Webhooks: true}); err != nil {
		return 1, err
	}
	defer func() { _ = env.Stop() }()
	dir, err := os.MkdirTemp("", "latchkey-replicas-")
	if err != nil {
		return 1, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	if logDir, err = os.MkdirTemp("", "latchkey-replicas-logs-"); err != nil {
		return 1, err
	}
	defer func() {
		if code == 0 {
			_ = os.RemoveAll(logDir)
		} else {
			fmt.Fprintln(os.Stderr, "the managers' logs are kept in", logDir)
		}
	}()
	if manager, err = env.BuildManagerIn(dir); err != nil {
		return 1, err
	}
	if err := env.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: leaseNS}}); err != nil {
		return 1, err
	}
	defer func() {
		for _, r := range replicas {
			r.kill()
		}
	}()
	if err := startReplicas(); err != nil {
		return 1, err
	}
	code = m.Run()
	for _, r := range replicas {
		r.kill()
	}
	if leaks := keysInLogs(); len(leaks) > 0 {
		fmt.Fprintln(os.Stderr, "key material in the managers' logs:", leaks)
		code = 1
	}
	return code, nil
}

// startReplicas starts replica 0 alone, so that it leads (runs the
// controllers) and keeps leading — no test freezes or kills it — then the
// other two.
func startReplicas() error {
	ports := make([]int, 0, 4*3+1)
	for range cap(ports) {
		port, err := controlplane.FreePort()
		if err != nil {
			return err
		}
		ports = append(ports, port)
	}
	closedPeer = "https://127.0.0.1:" + strconv.Itoa(ports[12])
	replicas = make([]*replica, 3)
	for i := range replicas {
		replicas[i] = &replica{name: fmt.Sprintf("replica-%d", i), port: ports[i], admissionPort: ports[3+i], fencePort: ports[6+i]}
	}
	replicas[0].port, replicas[0].admissionPort = env.WebhookPort(), env.AdmissionPort()
	peers := fenceURLs(replicas)
	for i, r := range replicas {
		list := peers
		if i == 0 {
			list = append([]string{closedPeer}, peers...)
		}
		r.flags = replicaFlags(r, true, list)
	}
	if err := replicas[0].start(); err != nil {
		return err
	}
	if err := replicas[0].waitReady(2 * readyWithin); err != nil {
		return err
	}
	if err := waitForLeader(); err != nil {
		return err
	}
	for _, r := range replicas[1:] {
		if err := r.start(); err != nil {
			return err
		}
	}
	for _, r := range replicas[1:] {
		if err := r.waitReady(2 * readyWithin); err != nil {
			return err
		}
	}
	return nil
}

// replicaFlags are a replica's flags: its ports, name and peers, the
// protocol's timings, and failure budgets high enough that hammering a
// revoked key measures fencing, not the rate limiter.
func replicaFlags(r *replica, fenceEndpoint bool, peers []string) []string {
	fence := "0"
	if fenceEndpoint {
		fence = "127.0.0.1:" + strconv.Itoa(r.fencePort)
	}
	return append([]string{
		"--leader-elect", "--replica-name", r.name,
		"--serving-lease", servingLease.String(), "--fence-timeout", fenceTimeout.String(),
		"--fence-bind-address", fence, "--fence-peers", strings.Join(peers, ","),
		"--failed-auth-rate=1000", "--failed-auth-burst=1000",
	}, env.ServingFlagsOn(r.port, r.admissionPort)...)
}

// fenceURLs are the replicas' peer fence endpoints.
func fenceURLs(rs []*replica) []string {
	urls := make([]string, 0, len(rs))
	for _, r := range rs {
		urls = append(urls, r.fenceURL())
	}
	return urls
}

// waitForLeader waits until the leader election's Lease has a holder.
func waitForLeader() error {
	lease := &coordinationv1.Lease{}
	key := types.NamespacedName{Namespace: leaseNS, Name: "latchkey.auth.latchkey.dev"}
	for deadline := time.Now().Add(readyWithin); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if env.Client.Get(context.Background(), key, lease) == nil && lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "" {
			return nil
		}
	}
	return errors.New("replica-0 never took the leader election's Lease")
}

// start runs the replica's manager with its flags, its output appended to
// its log.
func (r *replica) start() error {
	if r.log == nil {
		f, err := os.Create(filepath.Join(logDir, r.name+".log"))
		if err != nil {
			return err
		}
		r.log = f
		logs = append(logs, f.Name())
	}
	p, err := manager.Command([]string{"POD_NAMESPACE=" + leaseNS}, r.flags...)
	if err != nil {
		return err
	}
	p.Cmd.Stdout, p.Cmd.Stderr = r.log, r.log
	dieWithTest(p.Cmd)
	if err := p.Cmd.Start(); err != nil {
		return err
	}
	r.proc = p
	if r.client == nil {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(env.WebhookCA)
		// Long enough for a request queued at a frozen replica to be
		// answered once it is thawed.
		r.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			MaxIdleConnsPerHost: 2 * hammers,
		}}
	}
	return nil
}

// kill stops the replica at once (SIGKILL, thawing it first does not
// matter: a stopped process dies of SIGKILL too).
func (r *replica) kill() {
	if r.proc != nil {
		r.proc.Kill()
	}
}

// stop shuts the replica down (SIGTERM) and waits until it has exited.
func (r *replica) stop() error {
	if err := r.proc.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- r.proc.Cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("%s, shut down: %w", r.name, err)
		}
		return nil
	case <-time.After(30 * time.Second):
		r.kill()
		return fmt.Errorf("%s did not exit within 30s of SIGTERM", r.name)
	}
}

// signal sends the replica's process sig (SIGSTOP, SIGCONT).
func (r *replica) signal(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	if err := r.proc.Cmd.Process.Signal(sig); err != nil {
		tb.Fatalf("%s: %v: %v", r.name, sig, err)
	}
}

// waitReady waits until the replica's /readyz answers 200.
func (r *replica) waitReady(timeout time.Duration) error {
	for deadline := time.Now().Add(timeout); !r.proc.Ready(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s was not ready within %v", r.name, timeout)
		}
	}
	return nil
}

func (r *replica) fenceURL() string { return "https://127.0.0.1:" + strconv.Itoa(r.fencePort) }

// authorize calls the replica's /authorize with raw as the bearer token.
func (r *replica) authorize(raw string) (int, error) {
	req, _ := http.NewRequest(http.MethodGet, "https://127.0.0.1:"+strconv.Itoa(r.port)+"/authorize", nil)
	req.Header.Set("Authorization", "Bearer "+raw)
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// usableOn accepts a key once every replica in rs accepts it.
func usableOn(rs []*replica) func(raw string) error {
	return func(raw string) error {
		for _, r := range rs {
			if status, err := r.authorize(raw); err != nil || status != http.StatusOK {
				return fmt.Errorf("%s answered %d (%v)", r.name, status, err)
			}
		}
		return nil
	}
}

// mint creates an ApiKey, waits until it is Active and every replica in
// rs accepts it, and returns it with its raw key, which it remembers for
// the scan of the managers' logs.
func mint(tb testing.TB, ns, name string, rs []*replica) (*authv1alpha1.ApiKey, string) {
	tb.Helper()
	key := &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	raw := env.Mint(tb, key, func(raw string) error {
		mintedMu.Lock()
		if !slices.Contains(minted, raw) {
			minted = append(minted, raw)
		}
		mintedMu.Unlock()
		return usableOn(rs)(raw)
	})
	return key, raw
}

// keysInLogs names the managers' logs that hold a key minted by the tests.
func keysInLogs() []string {
	places := map[string]string{}
	for _, file := range logs {
		b, err := os.ReadFile(file)
		if err != nil {
			return []string{fmt.Sprintf("%s: %v", file, err)}
		}
		places[file] = string(b)
	}
	mintedMu.Lock()
	defer mintedMu.Unlock()
	return testenv.KeyMaterial(minted, places)
}

// revoke and suspend take a key away through the API.
func revoke(tb testing.TB, key *authv1alpha1.ApiKey) {
	tb.Helper()
	NewWithT(tb).Expect(patchErr(key, revoked)).To(Succeed())
}

func suspend(tb testing.TB, key *authv1alpha1.ApiKey) {
	tb.Helper()
	NewWithT(tb).Expect(patchErr(key, func(k *authv1alpha1.ApiKey) { k.Spec.Suspended = true })).To(Succeed())
}

func revoked(k *authv1alpha1.ApiKey) { k.Spec.Revoked = true }

// patchErr changes key through the API; it may run on any goroutine.
func patchErr(key *authv1alpha1.ApiKey, change func(*authv1alpha1.ApiKey)) error {
	base := key.DeepCopy()
	change(key)
	return env.Client.Patch(context.Background(), key, client.MergeFrom(base))
}

// running restarts r if a failed test left it dead, so that the next test
// starts from every replica serving.
func running(tb testing.TB, r *replica) {
	tb.Helper()
	if r.proc.Cmd.ProcessState == nil {
		return
	}
	if err := r.start(); err != nil {
		tb.Error(err)
		return
	}
	if err := r.waitReady(readyWithin); err != nil {
		tb.Error(err)
	}
}

// servingLeaseGone waits until the replica's serving Lease has been
// deleted, as a replica shut down does.
func servingLeaseGone(tb testing.TB, name string) {
	tb.Helper()
	NewWithT(tb).Eventually(func() bool {
		err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: leaseNS, Name: "latchkey-replica-" + name}, &coordinationv1.Lease{})
		return apierrors.IsNotFound(err)
	}).WithTimeout(10*time.Second).Should(BeTrue(), "%s shut down, and its serving Lease is still there", name)
}

// attempt is one verification request and its answer (0: none).
type attempt struct {
	start, end time.Time
	status     int
}

func try(r *replica, raw string) attempt {
	a := attempt{start: time.Now()}
	a.status, _ = r.authorize(raw)
	a.end = time.Now()
	return a
}

// hammering is goroutines calling replicas with one key until stopped.
type hammering struct {
	quit chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	got  map[*replica][]attempt
}

// hammer has per goroutines call each replica in rs with raw.
func hammer(raw string, rs []*replica, per int) *hammering {
	h := &hammering{quit: make(chan struct{}), got: map[*replica][]attempt{}}
	for _, r := range rs {
		for range per {
			h.wg.Go(func() {
				for {
					select {
					case <-h.quit:
						return
					default:
					}
					h.add(r, try(r, raw))
				}
			})
		}
	}
	return h
}

func (h *hammering) add(r *replica, a attempt) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.got[r] = append(h.got[r], a)
}

// stop stops the goroutines, waits for their last answers, and returns
// every attempt by replica.
func (h *hammering) stop() map[*replica][]attempt {
	close(h.quit)
	h.wg.Wait()
	return h.got
}

// acceptedAfter fails tb for every replica that accepted a request which
// started after returned, and reports whether any did.
func acceptedAfter(tb testing.TB, what string, returned time.Time, got map[*replica][]attempt) bool {
	tb.Helper()
	failed := false
	for r, as := range got {
		n, first := 0, time.Duration(-1)
		for _, a := range as {
			if a.start.After(returned) && a.status == http.StatusOK {
				n++
				if d := a.start.Sub(returned); first < 0 || d < first {
					first = d
				}
			}
		}
		if n > 0 {
			tb.Errorf("%s: %s accepted %d requests that started after the %s returned, the first %v after", tb.Name(), r.name, n, what, first)
			failed = true
		}
	}
	return failed
}

// firstRefusal is when r first answered anything but 200, relative to
// returned (negative: before the call returned), and whether it did.
func firstRefusal(as []attempt, returned time.Time) (time.Duration, bool) {
	var first time.Time
	for _, a := range as {
		if a.status != 0 && a.status != http.StatusOK && (first.IsZero() || a.end.Before(first)) {
			first = a.end
		}
	}
	return first.Sub(returned), !first.IsZero()
}

// statuses counts answers by status (0: no answer).
func statuses(as []attempt) map[int]int {
	n := map[int]int{}
	for _, a := range as {
		n[a.status]++
	}
	return n
}

// spread formats the median, p99 and maximum of ds.
func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	q := func(p float64) time.Duration { return ds[int(p*float64(len(ds)-1))].Round(10 * time.Microsecond) }
	return fmt.Sprintf("median %v, p99 %v, max %v", q(0.5), q(0.99), ds[len(ds)-1].Round(10*time.Microsecond))
}
