package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/certs"
	"github.com/latchkey-dev/latchkey/internal/keys"
	"github.com/latchkey-dev/latchkey/internal/testenv"
)

// BenchmarkManagerMemory starts the real manager binary against the test
// API server holding 0, 10,000 and 100,000 key records and prints its
// resident memory once its index has synced (/readyz).
//
//	go test -run '^$' -bench ManagerMemory -benchtime 1x -timeout 30m ./test/integration/
func BenchmarkManagerMemory(b *testing.B) {
	dir := b.TempDir()
	manager := filepath.Join(dir, "manager")
	build := exec.Command("go", "build", "-o", manager, "./cmd")
	build.Dir = testenv.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("building the manager: %v\n%s", err, out)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := env.WriteAdminKubeconfig(kubeconfig); err != nil {
		b.Fatal(err)
	}
	certDir := filepath.Join(dir, "certs")
	if _, err := certs.WriteLocal(certDir); err != nil {
		b.Fatal(err)
	}

	created := 0
	for range b.N {
		for _, n := range []int{0, 10_000, 100_000} {
			createRecords(b, created, n)
			created = n
			rss := managerRSS(b, manager, kubeconfig, certDir)
			b.Logf("FIGURE manager resident memory with %d key records: %.1f MiB", n, float64(rss)/(1<<20))
			b.ReportMetric(float64(rss)/(1<<20), fmt.Sprintf("MiB-at-%d-records", n))
		}
	}
}

// createRecords creates revoked records from index from to to: revoked and
// within retention, so no controller writes to them, and the verifier
// indexes them all the same.
func createRecords(b *testing.B, from, to int) {
	ctx := context.Background()
	ns := fmt.Sprintf("memory-%d", time.Now().UnixNano())
	at := metav1.Now()
	work := make(chan int)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := range work {
				hash := keys.Hash(fmt.Sprintf("%s-%d", ns, i))
				rec := &authv1alpha1.ApiKeyRecord{
					ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("mem-%d", i)},
					Spec: authv1alpha1.ApiKeyRecordSpec{
						Hash: hash, Tenant: ns, KeyName: fmt.Sprintf("key-%d", i), KeyUID: fmt.Sprintf("uid-%d", i),
						Hint: "lk_abcde…wxyz", Format: authv1alpha1.FormatPrefixed,
						Revoked: true, RevokedAt: &at, RevocationReason: authv1alpha1.RevocationDeleted,
					},
				}
				if err := env.Client.Create(ctx, rec); err != nil {
					b.Error(err)
				}
			}
		})
	}
	for i := from; i < to; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
}

// managerRSS runs the manager until it is ready and returns its VmRSS.
func managerRSS(b *testing.B, manager, kubeconfig, certDir string) int64 {
	probe, webhook := freePort(b), freePort(b)
	cmd := exec.Command(manager,
		"--kubeconfig", kubeconfig, "--metrics-bind-address=0",
		"--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", probe),
		"--webhook-port", strconv.Itoa(webhook), "--webhook-cert-path", certDir)
	cmd.Env = append(os.Environ(), "ENABLE_WEBHOOKS=false")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", probe))
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("the manager did not become ready")
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(3 * time.Second) // let start-up garbage be collected
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

func freePort(b *testing.B) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}
