package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/client-go/discovery"
)

// clockTicks is USER_HZ, the unit of /proc's CPU times, on every Linux
// this runs on.
const clockTicks = 100

// procField is a "Name:" line of /proc/pid/status.
func procField(pid int, name string) string {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// rss is a process's resident memory in bytes.
func rss(pid int) int64 {
	kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(procField(pid, "VmRSS"), "kB")), 10, 64)
	if err != nil {
		return 0
	}
	return kb << 10
}

// gomaxprocs is the GOMAXPROCS a process was started with, or what the Go
// runtime then chose.
func gomaxprocs(pid int) string {
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err == nil {
		for v := range bytes.SplitSeq(env, []byte{0}) {
			if s, ok := strings.CutPrefix(string(v), "GOMAXPROCS="); ok {
				return s
			}
		}
	}
	return "unset (Go default: the CPUs of its affinity, " + procField(pid, "Cpus_allowed_list") + ")"
}

// cpuTicks is the CPU time a process has used, in clock ticks.
func cpuTicks(pid int) int64 {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// pid (comm) state ppid … utime stime: fields 14 and 15, counting from
	// 1, and comm may hold spaces.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

// busyTicks is the CPU time all processes have used (user, nice, system),
// in clock ticks.
func busyTicks() int64 {
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(strings.SplitN(string(stat), "\n", 2)[0])
	var sum int64
	for _, v := range f[1:4] {
		n, _ := strconv.ParseInt(v, 10, 64)
		sum += n
	}
	return sum
}

// loadAverage is the 1-minute load average.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	v, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return v
}

// heap reads the manager's go_memstats heap gauges from its metrics
// endpoint.
func (b *bench) heap() (inuse, alloc float64, err error) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", b.metricsPort)) //nolint:gosec // loopback metrics
	if err != nil {
		return 0, 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for s.Scan() {
		name, value, ok := strings.Cut(s.Text(), " ")
		switch {
		case !ok:
		case name == "go_memstats_heap_inuse_bytes":
			inuse, _ = strconv.ParseFloat(value, 64)
		case name == "go_memstats_heap_alloc_bytes":
			alloc, _ = strconv.ParseFloat(value, 64)
		}
	}
	return inuse, alloc, s.Err()
}

// requestCounts reads kube-apiserver's own apiserver_request_total, summed
// by verb and resource (with its subresource).
func (b *bench) requestCounts(ctx context.Context) (map[string]float64, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(b.cp.Config)
	if err != nil {
		return nil, err
	}
	raw, err := dc.RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	counts := map[string]float64{}
	family := families["apiserver_request_total"]
	if family == nil {
		return nil, fmt.Errorf("no apiserver_request_total in kube-apiserver's metrics")
	}
	for _, m := range family.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		what := labels["verb"] + " " + labels["resource"]
		if labels["subresource"] != "" {
			what += "/" + labels["subresource"]
		}
		counts[what] += m.GetCounter().GetValue()
	}
	return counts, nil
}

// idleTraffic is kube-apiserver's request rate and the processes' CPU
// while nothing loads the manager.
type idleTraffic struct {
	total, secretGets float64
	top               []rate
	cpu               map[string]float64
}

type rate struct {
	what string
	perS float64
}

// watchIdle measures kube-apiserver's requests and each process's CPU over
// the idle window.
func (b *bench) watchIdle(ctx context.Context) (idleTraffic, error) {
	ticks := b.cpuByProcess()
	before, err := b.requestCounts(ctx)
	if err != nil {
		return idleTraffic{}, err
	}
	start := time.Now()
	time.Sleep(b.o.idle)
	t := idleTraffic{}
	if t.top, err = b.requestsSince(ctx, before, time.Since(start).Seconds()); err != nil {
		return idleTraffic{}, err
	}
	t.cpu = b.coresSince(ticks, time.Since(start))
	for _, r := range t.top {
		t.total += r.perS
		if r.what == "GET secrets" {
			t.secretGets = r.perS
		}
	}
	return t, nil
}

// requestsSince is kube-apiserver's requests since it counted before, by
// verb and resource, each divided by per (seconds, or keys), most first.
func (b *bench) requestsSince(ctx context.Context, before map[string]float64, per float64) ([]rate, error) {
	after, err := b.requestCounts(ctx)
	if err != nil {
		return nil, err
	}
	var rates []rate
	for what, n := range after {
		if d := (n - before[what]) / per; d > 0 {
			rates = append(rates, rate{what, d})
		}
	}
	sort.Slice(rates, func(i, j int) bool { return rates[i].perS > rates[j].perS })
	return rates, nil
}

// cpuByProcess is the CPU time each of the benchmark's processes has
// used, in clock ticks.
func (b *bench) cpuByProcess() map[string]int64 {
	ticks := map[string]int64{}
	for name, pid := range b.pids() {
		ticks[name] = cpuTicks(pid)
	}
	return ticks
}

// coresSince is how many cores each process used on average over the
// elapsed time since cpuByProcess said before.
func (b *bench) coresSince(before map[string]int64, elapsed time.Duration) map[string]float64 {
	cores := map[string]float64{}
	for name, t := range b.cpuByProcess() {
		if t0, ok := before[name]; ok {
			cores[name] = float64(t-t0) / clockTicks / elapsed.Seconds()
		}
	}
	return cores
}

// pids are the processes on the machine that are the benchmark's own.
func (b *bench) pids() map[string]int {
	pids := map[string]int{"benchload": os.Getpid()}
	for name, pid := range b.plane {
		pids[name] = pid
	}
	if b.manager != nil && b.manager.Process != nil {
		pids["manager"] = b.manager.Process.Pid
	}
	if b.ceiling != nil && b.ceiling.Process != nil {
		pids["ceiling"] = b.ceiling.Process.Pid
	}
	return pids
}
