package integration

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/certs"
	"github.com/latchkey-dev/latchkey/internal/testenv"
)

var sizingKeys = flag.String("sizing-keys", "1000,10000", "The key counts BenchmarkSizing mints in turn")

const (
	// sizingSample is how many keys are rotated, and how many others are
	// verified in a loop, at each count.
	sizingSample = 50
	// sizingLastUsedInterval is the manager's --last-used-interval: short,
	// so that a flush comes round soon; the writes per key per interval do
	// not depend on it.
	sizingLastUsedInterval = 10 * time.Second
	// etcdDefaultQuota is etcd's --quota-backend-bytes default, 2 GiB.
	etcdDefaultQuota = 2 << 30
)

// BenchmarkSizing measures what a Latchkey install costs the cluster per
// key, for docs/sizing.md: it mints keys through the API — ApiKeys created
// by the benchmark, minted by the tree's manager binary — on a control
// plane of its own (no admission webhook, as BenchmarkManagerMemory) up to
// each of -sizing-keys, and prints FIGURE lines for etcd's bytes per key
// and what its default quota holds, kube-apiserver's requests per mint,
// per rotation and per last-use interval, the manager's resident memory
// per key and kube-apiserver's own.
//
//	go test -run '^$' -bench Sizing -benchtime 1x -timeout 60m ./test/integration/ -args -sizing-keys 1000,10000
func BenchmarkSizing(b *testing.B) {
	counts, own := keysAndControlPlane(b, *sizingKeys)
	s := newSizing(b, own)
	for i := range memoryNamespaces {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("memory-%d", i)}}
		if err := own.Client.Create(context.Background(), ns); err != nil {
			b.Fatal(err)
		}
	}
	for range b.N {
		s.run(counts)
	}
}

// sizing is the control plane and manager BenchmarkSizing measures.
type sizing struct {
	b   *testing.B
	env *testenv.Env
	bin *testenv.ManagerBinary
	// api reads kube-apiserver's non-resource paths as the admin.
	api       rest.Interface
	apiserver *testenv.Process
	etcd      string
	https     *http.Client

	manager                  measured
	webhookPort, metricsPort int
}

func newSizing(b *testing.B, e *testenv.Env) *sizing {
	s := &sizing{b: b, env: e, bin: e.BuildManager(b), etcd: e.Environment.ControlPlane.Etcd.URL.String()}
	// Unthrottled: the benchmark's reads must not wait behind its own limit.
	cfg := rest.CopyConfig(e.Config)
	cfg.QPS, cfg.Burst = -1, 0
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	s.api = dc.RESTClient()
	s.apiserver = ownAPIServer(b, e)
	ca, err := os.ReadFile(filepath.Join(s.bin.CertDir, certs.CAFile))
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	s.https = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: 8,
	}}
	return s
}

// ownAPIServer is this control plane's kube-apiserver, a child of this
// process; the package's TestMain runs another, on another port.
func ownAPIServer(b *testing.B, e *testenv.Env) *testenv.Process {
	port := "--secure-port=" + e.Environment.ControlPlane.APIServer.Port
	for _, pid := range testenv.ChildrenOf(os.Getpid()) {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !slices.Contains(strings.Split(string(cmdline), "\x00"), port) {
			continue
		}
		p, err := os.FindProcess(pid)
		if err != nil {
			b.Fatal(err)
		}
		// A Process only to read its RSS: it was not started by Start.
		return &testenv.Process{Cmd: &exec.Cmd{Process: p}}
	}
	b.Fatalf("no kube-apiserver child with %s", port)
	return nil
}

// run measures at each count in turn, the keys of one count kept for the next.
func (s *sizing) run(counts []int) {
	s.start()
	settle()
	managerAtZero, apiserverAtZero := s.manager.RSS(s.b), s.apiserver.RSS(s.b)
	s.figure("0 keys: manager resident memory %.1f MiB, kube-apiserver resident memory %.1f MiB", mib(managerAtZero), mib(apiserverAtZero))
	prev := 0
	atZero := s.etcdSize(true)
	for _, n := range counts {
		minted := n - prev
		etcdBefore := s.etcdSize(true)
		requests := s.requests()
		start := time.Now()
		createKeys(s.b, s.env, prev, n)
		waitMinted(s.b, s.env, n)
		took := time.Since(start)
		time.Sleep(5 * time.Second) // writes that follow the phase
		s.perKey(fmt.Sprintf("%d keys: API requests per mint (%d minted in %s, %.1f keys/s; GET and LIST include the benchmark's own polling)",
			n, minted, took.Round(time.Second), float64(minted)/took.Seconds()), s.since(requests), minted)

		settle()
		mintingRSS := s.manager.RSS(s.b)
		s.etcdFigures(n, minted, atZero, etcdBefore)
		s.objectSizes(n, prev)

		s.manager.Kill()
		s.start()
		settle()
		freshRSS, apiserverRSS := s.manager.RSS(s.b), s.apiserver.RSS(s.b)
		s.figure("%d keys: manager resident memory %.1f MiB after minting (%.0f bytes per key above 0 keys), "+
			"%.1f MiB restarted and settled (%.0f bytes per key above 0 keys)", n,
			mib(mintingRSS), float64(mintingRSS-managerAtZero)/float64(n), mib(freshRSS), float64(freshRSS-managerAtZero)/float64(n))
		s.figure("%d keys: kube-apiserver resident memory %.1f MiB (%.1f MiB at 0 keys, %.0f bytes per key above it)", n,
			mib(apiserverRSS), mib(apiserverAtZero), float64(apiserverRSS-apiserverAtZero)/float64(n))
		s.b.ReportMetric(mib(freshRSS), fmt.Sprintf("MiB-manager-at-%d-keys", n))

		s.rotate(n, keyIndices(prev, 0))
		s.lastUse(n, keyIndices(prev, sizingSample))
		prev = n
	}
}

// keyIndices are sizingSample keys of the count that starts at from, skip on.
func keyIndices(from, skip int) []int {
	out := make([]int, sizingSample)
	for i := range out {
		out[i] = from + skip + i
	}
	return out
}

func keyName(i int) types.NamespacedName {
	return types.NamespacedName{Namespace: fmt.Sprintf("memory-%d", i%memoryNamespaces), Name: fmt.Sprintf("key-%07d", i)}
}

// start runs the manager that mints (and verifies), replacing none: the
// caller kills the previous one.
func (s *sizing) start() {
	s.webhookPort, s.metricsPort = testenv.FreePort(s.b), testenv.FreePort(s.b)
	s.manager = startMeasured(s.b, s.bin, "--max-concurrent-reconciles=32",
		"--webhook-port", strconv.Itoa(s.webhookPort), "--last-used-interval", sizingLastUsedInterval.String(),
		// Plain HTTP on loopback: secure metrics would have kube-apiserver
		// review a token for every read, requests that would be counted.
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", s.metricsPort), "--metrics-secure=false")
	s.manager.WaitReady(s.b, 10*time.Minute)
}

// figure prints a FIGURE line to stdout at once: a benchmark's log keeps
// only its first ten lines, and a figure must survive a later failure.
func (s *sizing) figure(format string, args ...any) {
	fmt.Printf("FIGURE "+format+" [load average %s, %s]\n", append(args, loadAverage(), time.Now().UTC().Format(time.DateTime))...)
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// loadAverage is /proc/loadavg's 1-minute figure, said beside each figure
// so that a busy machine shows.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Fields(string(b))[0]
}

// etcdSizes are etcd's own database gauges.
type etcdSizes struct{ inUse, total float64 }

// etcdSize reads etcd's database size once history is compacted away and
// the database defragmented, so that what is left is the live objects;
// without events, deleted first, when steady: kube-apiserver deletes them
// after its --event-ttl (1h) anyway.
func (s *sizing) etcdSize(steady bool) etcdSizes {
	ctx := context.Background()
	if steady {
		for i := range memoryNamespaces {
			if err := s.env.Client.DeleteAllOf(ctx, &eventsv1.Event{}, client.InNamespace(fmt.Sprintf("memory-%d", i))); err != nil {
				s.b.Fatal(err)
			}
		}
	}
	var head struct {
		Header struct {
			Revision json.Number `json:"revision"`
		} `json:"header"`
	}
	// etcd's gRPC gateway on its client URL: no etcd client module needed.
	s.etcdCall("/v3/kv/range", map[string]any{"key": base64.StdEncoding.EncodeToString([]byte("/registry/")), "limit": 1, "keys_only": true}, &head)
	s.etcdCall("/v3/kv/compaction", map[string]any{"revision": head.Header.Revision, "physical": true}, nil)
	s.etcdCall("/v3/maintenance/defragment", map[string]any{}, nil)
	families := scrape(s.b, s.etcd+"/metrics", httpGet(s.etcd+"/metrics"))
	inUse, ok := sum(families, "etcd_mvcc_db_total_size_in_use_in_bytes")
	total, ok2 := sum(families, "etcd_mvcc_db_total_size_in_bytes")
	if !ok || !ok2 {
		s.b.Fatal("etcd's metrics have no database size")
	}
	return etcdSizes{inUse: inUse, total: total}
}

// etcdCall posts req to etcd's gateway and decodes its answer into out.
// A revision compacted already (kube-apiserver compacts every 5 minutes)
// is no failure.
func (s *sizing) etcdCall(path string, req, out any) {
	body, err := json.Marshal(req)
	if err != nil {
		s.b.Fatal(err)
	}
	resp, err := http.Post(s.etcd+path, "application/json", bytes.NewReader(body)) //nolint:gosec // etcd's loopback URL
	if err != nil {
		s.b.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	answer, _ := io.ReadAll(resp.Body)
	switch {
	case resp.StatusCode != http.StatusOK && strings.Contains(string(answer), "compacted"):
	case resp.StatusCode != http.StatusOK:
		s.b.Fatalf("etcd %s: %s: %s", path, resp.Status, answer)
	case out != nil:
		if err := json.Unmarshal(answer, out); err != nil {
			s.b.Fatalf("etcd %s: %v", path, err)
		}
	}
}

// sum is the named gauge or counter of families, summed over its labels,
// and whether there is one.
func sum(families map[string]*dto.MetricFamily, name string) (float64, bool) {
	f := families[name]
	if f == nil {
		return 0, false
	}
	v := 0.0
	for _, m := range f.GetMetric() {
		v += m.GetGauge().GetValue() + m.GetCounter().GetValue()
	}
	return v, true
}

// scrape parses the Prometheus text get reads from where.
func scrape(b *testing.B, where string, get func() ([]byte, error)) map[string]*dto.MetricFamily {
	raw, err := get()
	if err != nil {
		b.Fatalf("%s: %v", where, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		b.Fatalf("%s: %v", where, err)
	}
	return families
}

// httpGet reads url over plain HTTP.
func httpGet(url string) func() ([]byte, error) {
	return func() ([]byte, error) {
		resp, err := http.Get(url) //nolint:gosec // the control plane's loopback URLs
		if err != nil {
			return nil, err
		}
		defer func() { _ = resp.Body.Close() }()
		return io.ReadAll(resp.Body)
	}
}

// etcdFigures prints etcd's bytes per key minted, with and without the
// events minting left, and the keys its default quota holds.
func (s *sizing) etcdFigures(n, minted int, atZero, before etcdSizes) {
	withEvents := s.etcdSize(false)
	events := s.events()
	steady := s.etcdSize(true)
	perKey := (steady.inUse - before.inUse) / float64(minted)
	s.figure("%d keys: etcd in use %.1f MiB before minting, %.1f MiB after with minting's %d events (%.0f bytes per key minted), "+
		"%.1f MiB without them (%.0f bytes per key minted); database file %.1f MiB; all after compaction and defragmentation",
		n, before.inUse/(1<<20), withEvents.inUse/(1<<20), events, (withEvents.inUse-before.inUse)/float64(minted),
		steady.inUse/(1<<20), perKey, steady.total/(1<<20))
	s.figure("%d keys: etcd's default quota (--quota-backend-bytes 2 GiB) holds about %.0f keys at %.0f bytes per key, "+
		"less the %.1f MiB in use at 0 keys (arithmetic, not measured)", n, (etcdDefaultQuota-atZero.inUse)/perKey, perKey, atZero.inUse/(1<<20))
}

// events counts the events in the keys' namespaces.
func (s *sizing) events() int {
	total := 0
	for i := range memoryNamespaces {
		var list eventsv1.EventList
		if err := s.env.Client.List(context.Background(), &list, client.InNamespace(fmt.Sprintf("memory-%d", i))); err != nil {
			s.b.Fatal(err)
		}
		total += len(list.Items)
	}
	return total
}

// objectSizes prints the mean size of a key's three objects as the API
// serves them back: JSON (CRDs have no protobuf), and the Secret as
// protobuf too, the form kube-apiserver stores built-in types in.
func (s *sizing) objectSizes(n, from int) {
	ctx := context.Background()
	const sample = 10
	var keyJSON, recordJSON, secretJSON, secretProto int
	for i := from + 2*sizingSample; i < from+2*sizingSample+sample; i++ {
		name := keyName(i)
		key := &authv1alpha1.ApiKey{}
		if err := s.env.Client.Get(ctx, name, key); err != nil {
			s.b.Fatal(err)
		}
		var records authv1alpha1.ApiKeyRecordList
		if err := s.env.Client.List(ctx, &records, client.MatchingLabels{authv1alpha1.LabelKeyUID: string(key.UID)}); err != nil {
			s.b.Fatal(err)
		}
		if len(records.Items) != 1 {
			s.b.Fatalf("%s has %d records", name, len(records.Items))
		}
		group := "/apis/" + authv1alpha1.GroupVersion.String()
		keyJSON += s.size(group+"/namespaces/"+name.Namespace+"/apikeys/"+name.Name, "application/json")
		recordJSON += s.size(group+"/apikeyrecords/"+records.Items[0].Name, "application/json")
		secret := "/api/v1/namespaces/" + name.Namespace + "/secrets/" + key.SecretName()
		secretJSON += s.size(secret, "application/json")
		secretProto += s.size(secret, "application/vnd.kubernetes.protobuf")
	}
	s.figure("%d keys: objects as read back, mean of %d keys: ApiKey %d bytes JSON, ApiKeyRecord %d bytes JSON, "+
		"Secret %d bytes JSON (%d bytes protobuf, as stored); ApiKey + record JSON + Secret protobuf = %d bytes",
		n, sample, keyJSON/sample, recordJSON/sample, secretJSON/sample, secretProto/sample, (keyJSON+recordJSON+secretProto)/sample)
}

// size is the length of what kube-apiserver answers at path in the given
// type; the body, which for a Secret holds a key, is never shown.
func (s *sizing) size(path, accept string) int {
	body, err := s.api.Get().AbsPath(path).SetHeader("Accept", accept).DoRaw(context.Background())
	if err != nil {
		s.b.Fatalf("GET %s: %v", path, err)
	}
	return len(body)
}

// requestCounts are kube-apiserver's apiserver_request_total by verb and
// resource (with its subresource).
type requestCounts map[string]float64

func (s *sizing) requests() requestCounts {
	families := scrape(s.b, "kube-apiserver /metrics", func() ([]byte, error) {
		return s.api.Get().AbsPath("/metrics").DoRaw(context.Background())
	})
	counts := requestCounts{}
	for _, m := range families["apiserver_request_total"].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["resource"] == "" {
			continue
		}
		what := labels["verb"] + " " + labels["resource"]
		if labels["subresource"] != "" {
			what += "/" + labels["subresource"]
		}
		counts[what] += m.GetCounter().GetValue()
	}
	return counts
}

// since is what was requested after before.
func (s *sizing) since(before requestCounts) requestCounts {
	delta := requestCounts{}
	for what, n := range s.requests() {
		if d := n - before[what]; d > 0 {
			delta[what] = d
		}
	}
	return delta
}

func isWrite(what string) bool {
	verb, _, _ := strings.Cut(what, " ")
	return verb == "POST" || verb == "PUT" || verb == "PATCH" || verb == "DELETE" || verb == "APPLY"
}

// perKey prints requests divided by keys, writes first, leaving out what
// is below 0.005 per key (kube-apiserver's own watches, for one).
func (s *sizing) perKey(what string, requests requestCounts, keys int) {
	var writes, reads []string
	total := 0.0
	for _, k := range slices.Sorted(maps.Keys(requests)) {
		perKey := requests[k] / float64(keys)
		if isWrite(k) {
			total += requests[k]
		}
		switch {
		case perKey < 0.005:
		case isWrite(k):
			writes = append(writes, fmt.Sprintf("%s %.2f", k, perKey))
		default:
			reads = append(reads, fmt.Sprintf("%s %.2f", k, perKey))
		}
	}
	s.figure("%s: %.2f writes per key (%s); reads per key (%s)", what, total/float64(keys), strings.Join(writes, ", "), strings.Join(reads, ", "))
}

// rotate requests the rotation of the keys at indices, waits until each
// has its new key, and prints kube-apiserver's requests per rotation.
func (s *sizing) rotate(n int, indices []int) {
	ctx := context.Background()
	before := s.requests()
	at := metav1.NewTime(time.Now().Truncate(time.Second).Add(time.Second))
	patch := fmt.Appendf(nil, `{"spec":{"rotation":{"requestedAt":%q}}}`, at.UTC().Format(time.RFC3339))
	for _, i := range indices {
		key := &authv1alpha1.ApiKey{}
		key.Namespace, key.Name = keyName(i).Namespace, keyName(i).Name
		if err := s.env.Client.Patch(ctx, key, client.RawPatch(types.MergePatchType, patch)); err != nil {
			s.b.Fatal(err)
		}
	}
	start := time.Now()
	for _, i := range indices {
		for {
			key := s.env.WaitForPhase(s.b, keyName(i).Namespace, keyName(i).Name, authv1alpha1.PhaseActive)
			if key.Status.Rotation > 0 {
				break
			}
			if time.Since(start) > 5*time.Minute {
				s.b.Fatalf("%s was not rotated", keyName(i))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	time.Sleep(5 * time.Second) // writes that follow the new key
	s.perKey(fmt.Sprintf("%d keys: API requests per rotation (%d keys, spec.rotation.requestedAt; the PATCH of apikeys is the benchmark's request, "+
		"GETs include its polling)", n, len(indices)), s.since(before), len(indices))
}

// lastUse verifies the keys at indices in a loop, each about once a second,
// and prints kube-apiserver's requests between the ends of two last-use
// flushes: one interval's writes.
func (s *sizing) lastUse(n int, indices []int) {
	raws := make([]string, len(indices))
	for j, i := range indices {
		key := &authv1alpha1.ApiKey{}
		if err := s.env.Client.Get(context.Background(), keyName(i), key); err != nil {
			s.b.Fatal(err)
		}
		raws[j] = s.env.RawKey(s.b, key)
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			for _, raw := range raws {
				if code := s.authorize(raw); code != http.StatusOK {
					s.b.Errorf("/authorize answered %d", code)
				}
			}
			select {
			case <-quit:
				return
			case <-time.After(time.Second):
			}
		}
	})
	defer func() { close(quit); wg.Wait() }()
	first := s.afterFlush(len(raws))
	start := time.Now()
	second := s.afterFlush(len(raws))
	took := time.Since(start)
	delta := requestCounts{}
	for what, v := range second {
		if d := v - first[what]; d > 0 {
			delta[what] = d
		}
	}
	s.perKey(fmt.Sprintf("%d keys: API requests per key in use per last-use interval (%d keys verified about once a second, "+
		"--last-used-interval %s, %s between two flushes; ledgers are one per namespace: %d namespaces)",
		n, len(indices), sizingLastUsedInterval, took.Round(100*time.Millisecond), memoryNamespaces), delta, len(indices))
}

// afterFlush waits until the manager has finished a flush that wrote the
// last use of all keys (its own latchkey_last_used_writes_total rose by
// keys: a flush writes each key once), and returns kube-apiserver's counts
// read before the next flush began. The manager's metrics, cheap to read,
// time the flush; kube-apiserver's, slow to read under load, count it.
func (s *sizing) afterFlush(keys int) requestCounts {
	last, risen := s.lastUseWrites(), 0.0
	for deadline := time.Now().Add(5 * sizingLastUsedInterval); time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		now := s.lastUseWrites()
		switch {
		case now > last:
			risen += now - last
		case risen > 0 && risen < float64(keys):
			risen = 0 // the first flush, of the keys used before it only
		}
		last = now
		if risen < float64(keys) {
			continue
		}
		counts := s.requests()
		if s.lastUseWrites() == now {
			return counts
		}
		last, risen = s.lastUseWrites(), 0 // the next flush began: take the one after
	}
	s.b.Fatal("no flush of every key's last use within five intervals")
	return nil
}

// lastUseWrites is the manager's latchkey_last_used_writes_total, summed
// over its results.
func (s *sizing) lastUseWrites() float64 {
	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", s.metricsPort)
	v, _ := sum(scrape(s.b, url, httpGet(url)), "latchkey_last_used_writes_total")
	return v
}

// authorize verifies raw at the manager's /authorize.
func (s *sizing) authorize(raw string) int {
	req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d/authorize", s.webhookPort), nil)
	req.Header.Set("Authorization", "Bearer "+raw)
	resp, err := s.https.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}
