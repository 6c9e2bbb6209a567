package integration

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/testenv"
)

var (
	memoryManagers = flag.String("memory-managers", "",
		"More manager binaries for BenchmarkManagerMemory to measure beside the tree's, as name=path,…")
	memoryProfiles = flag.String("memory-profiles", "",
		"A directory where BenchmarkManagerMemory writes each manager's heap profile")
	memoryKeys = flag.String("memory-keys", "0,1000,10000,100000", "The key counts BenchmarkManagerMemory mints in turn")
)

// memoryNamespaces is how many tenants the keys are spread over.
const memoryNamespaces = 10

// BenchmarkManagerMemory mints keys through the API — ApiKeys created by
// the benchmark, minted by the tree's manager binary — on a control plane of
// its own (no admission webhook, so that creating keys is not what is
// measured), up to each of -memory-keys. At each count it reads the minting
// manager's resident memory once it has settled, then starts each manager
// binary afresh (the tree's and -memory-managers) and prints how long it
// took to be ready (its index synced) and its resident memory once
// settled, with the memory per key above the same manager with no keys.
//
//	go test -run '^$' -bench ManagerMemory -benchtime 1x -timeout 3h ./test/integration/ \
//		-args -memory-managers before=/tmp/manager-before -memory-profiles /tmp/profiles
func BenchmarkManagerMemory(b *testing.B) {
	counts, own := keysAndControlPlane(b, *memoryKeys)
	tree := own.BuildManager(b)
	others := strings.FieldsFunc(*memoryManagers, func(r rune) bool { return r == ',' })
	bins := make([]namedManager, 0, 1+len(others))
	bins = append(bins, namedManager{"tree", tree})
	for _, f := range others {
		name, path, ok := strings.Cut(f, "=")
		if !ok {
			b.Fatalf("-memory-managers: %q is not name=path", f)
		}
		m := *tree
		m.Path = path
		bins = append(bins, namedManager{name, &m})
	}
	ctx := context.Background()
	for i := range memoryNamespaces {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("memory-%d", i)}}
		if err := own.Client.Create(ctx, ns); err != nil {
			b.Fatal(err)
		}
	}
	atZero := map[string]int64{}
	for range b.N {
		created := 0
		for _, n := range counts {
			// More reconciles at once than the default: a mint waits on the
			// API server, not on the manager's CPU.
			minter := startMeasured(b, tree, "--max-concurrent-reconciles=32")
			minter.WaitReady(b, 10*time.Minute)
			createKeys(b, own, created, n)
			created = n
			start := time.Now()
			waitMinted(b, own, n)
			mint := time.Since(start)
			settle()
			b.Logf("FIGURE %d keys: minted in %s; the minting manager's resident memory %.1f MiB",
				n, mint.Round(time.Second), float64(minter.RSS(b))/(1<<20))
			profile(b, minter.pprof, fmt.Sprintf("minting-%d", n))
			minter.Kill()
			for _, m := range bins {
				p := startMeasured(b, m.bin)
				start := time.Now()
				p.WaitReady(b, 10*time.Minute)
				ready := time.Since(start)
				settle()
				rss := p.RSS(b)
				profile(b, p.pprof, fmt.Sprintf("%s-%d", m.name, n))
				p.Kill()
				if n == 0 {
					atZero[m.name] = rss
				}
				perKey := ""
				if base, ok := atZero[m.name]; ok && n > 0 {
					perKey = fmt.Sprintf(", %.0f bytes per key above no keys", float64(rss-base)/float64(n))
				}
				b.Logf("FIGURE %d keys, manager %s: ready %.1fs after start, resident memory %.1f MiB%s",
					n, m.name, ready.Seconds(), float64(rss)/(1<<20), perKey)
				b.ReportMetric(float64(rss)/(1<<20), fmt.Sprintf("MiB-%s-at-%d-keys", m.name, n))
			}
		}
	}
}

type namedManager struct {
	name string
	bin  *testenv.ManagerBinary
}

type measured struct {
	*testenv.Process
	pprof int
}

// startMeasured runs a manager with webhooks off, its profiling endpoints
// on, and the API budget a mint of many keys needs (the default holds
// minting to a few keys a second).
func startMeasured(b *testing.B, m *testenv.ManagerBinary, args ...string) measured {
	pprof := testenv.FreePort(b)
	p := m.Start(b, []string{"ENABLE_WEBHOOKS=false"}, append([]string{
		"--webhook-port", strconv.Itoa(testenv.FreePort(b)),
		"--admission-port", strconv.Itoa(testenv.FreePort(b)), "--webhook-cert-path", m.CertDir,
		"--kube-api-qps=1000", "--kube-api-burst=2000", fmt.Sprintf("--pprof-bind-address=127.0.0.1:%d", pprof),
		// One name across restarts, as a pod's: a restart takes its own
		// lease back instead of waiting out a stranger's (docs/replicas.md).
		"--replica-name=measured",
	}, args...)...)
	return measured{p, pprof}
}

// settle leaves a manager alone long enough that start-up reconciles and
// their garbage are behind it.
func settle() { time.Sleep(45 * time.Second) }

// profile writes the manager's heap profile into -memory-profiles.
func profile(b *testing.B, port int, name string) {
	if *memoryProfiles == "" {
		return
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/heap?gc=1", port))
	if err != nil {
		b.Logf("heap profile %s: %v", name, err)
		return
	}
	defer func() { _ = resp.Body.Close() }()
	f, err := os.Create(filepath.Join(*memoryProfiles, name+".pb.gz"))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	if _, err := io.Copy(f, resp.Body); err != nil {
		b.Fatal(err)
	}
}

// createKeys creates ApiKeys from index from to to, spread over the
// namespaces, as users would.
func createKeys(b *testing.B, e *testenv.Env, from, to int) {
	ctx := context.Background()
	work := make(chan int)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := range work {
				key := &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{
					Namespace: fmt.Sprintf("memory-%d", i%memoryNamespaces), Name: fmt.Sprintf("key-%07d", i),
				}}
				if err := e.Client.Create(ctx, key); err != nil {
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

// waitMinted waits until n keys are Active.
func waitMinted(b *testing.B, e *testenv.Env, n int) {
	for deadline := time.Now().Add(2 * time.Hour); ; time.Sleep(10 * time.Second) {
		var list authv1alpha1.ApiKeyList
		if err := e.Client.List(context.Background(), &list); err != nil {
			b.Fatal(err)
		}
		active := 0
		for i := range list.Items {
			if list.Items[i].Status.Phase == authv1alpha1.PhaseActive {
				active++
			}
		}
		if active >= n {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d keys are Active", active, n)
		}
	}
}

// ints reads a comma-separated list of integers.
func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("%q: want integers: %w", s, err)
		}
		out = append(out, n)
	}
	return out, nil
}

// keysAndControlPlane parses a benchmark's comma-separated key counts and
// starts a control plane of its own (no webhooks), stopped when it ends.
func keysAndControlPlane(b *testing.B, list string) ([]int, *testenv.Env) {
	b.Helper()
	counts, err := ints(list)
	if err != nil {
		b.Fatal(err)
	}
	own, err := testenv.Start(testenv.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = own.Stop() })
	return counts, own
}
