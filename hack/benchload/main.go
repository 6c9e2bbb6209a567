// Command benchload measures Latchkey as a user would, from outside: it
// starts a control plane and the real manager binary, mints keys through
// the API, and loads /authorize and /tokenreview with wrk pinned to one
// core against the manager and against a bare TLS handler (the ceiling)
// pinned to the other, in alternating rounds. It prints req/s, p50, p99,
// the ratio to the ceiling, the manager's memory per key, its time to be
// ready after a restart, and kube-apiserver's idle request rate, as
// markdown (make bench-load).
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// options are the flags.
type options struct {
	keys, conns              []int
	duration, idle, settle   time.Duration
	settleMinted             time.Duration
	rounds                   int
	force                    bool
	out                      string
	managerBin, ceilingBin   string
	lua                      string
	maxLoad, maxForeign      float64
	namespaces, mintWorkers  int
	kubeAPIQPS               string
	kubeAPIBurst             string
	managerArgs              []string
	featureGates             string
	mintTimeout, readyWithin time.Duration
	managerLog               string
}

func main() {
	o, err := parseFlags()
	if err == nil {
		err = run(o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-load:", err)
		os.Exit(1)
	}
}

func parseFlags() (*options, error) {
	o := &options{}
	keys := flag.String("keys", "1000,10000,100000", "Comma-separated key counts, minted in turn through the API.")
	conns := flag.String("conns", "8,32", "Comma-separated wrk connection counts.")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "Length of one wrk round.")
	flag.IntVar(&o.rounds, "rounds", 3, "Rounds per server and case; the table gives their medians.")
	flag.BoolVar(&o.force, "force", false, "Report even when the machine is busy (the report says so).")
	flag.StringVar(&o.out, "out", "", "Also write the report, as markdown, to this file, after each key count.")
	flag.DurationVar(&o.idle, "idle", 60*time.Second, "How long kube-apiserver's request counts are watched with no load, after each mint.")
	flag.DurationVar(&o.settle, "settle", 15*time.Second, "How long the manager is left alone before its settled memory is read.")
	flag.DurationVar(&o.settleMinted, "settle-minted", 0, "How long the manager is left alone after minting before its settled memory is read, "+
		"if longer than -settle: client-go keeps each Event it sent for 6–12 minutes (a series it may extend), so the memory of a mint lasts that long.")
	flag.StringVar(&o.managerBin, "manager", "bin/bench-load/manager", "The manager binary (go build ./cmd).")
	flag.StringVar(&o.ceilingBin, "ceiling", "bin/bench-load/ceiling", "The ceiling binary (go build ./hack/benchload/ceiling).")
	flag.StringVar(&o.lua, "lua", "hack/benchload/load.lua", "The wrk script.")
	// Idle, the benchmark's own processes add little to the load average:
	// with 100 and 1,000 keys kube-apiserver used 0.02–0.05 cores, etcd and
	// the manager under 0.01 each (the report's idle table). 1.5 leaves room for
	// that and a desktop's noise, not for a build or a test beside it.
	flag.Float64Var(&o.maxLoad, "max-load", 1.5, "Refuse to load when the 1-minute load average stays above this (after up to 2 minutes' wait).")
	flag.Float64Var(&o.maxForeign, "max-foreign-cpu", 0.2, "Refuse a round during which processes other than the benchmark's used more than this many cores.")
	flag.IntVar(&o.namespaces, "namespaces", 10, "Namespaces (tenants) the keys are spread over.")
	flag.IntVar(&o.mintWorkers, "mint-workers", 32, "ApiKeys created at once.")
	flag.StringVar(&o.kubeAPIQPS, "kube-api-qps", "1000", "The manager's --kube-api-qps: its default (50) would hold minting to ~15 keys/s.")
	flag.StringVar(&o.kubeAPIBurst, "kube-api-burst", "2000", "The manager's --kube-api-burst.")
	flag.StringVar(&o.featureGates, "apiserver-feature-gates", "DetectCacheInconsistency=false",
		"kube-apiserver's --feature-gates. Its cache consistency checker, on by default, lists every ApiKey, record and Secret from etcd "+
			"and hashes them periodically: a cost that grows with the keys and lands on the load generator's CPU during rounds.")
	managerArgs := flag.String("manager-args", "", "More flags for the manager, space-separated (e.g. --secret-check-interval=30s).")
	flag.StringVar(&o.managerLog, "manager-log", "", "Keep the manager's log in this file (by default it goes with the temporary directory).")
	flag.DurationVar(&o.mintTimeout, "mint-timeout", 60*time.Minute, "How long minting may take for one key count.")
	flag.DurationVar(&o.readyWithin, "ready-within", 10*time.Minute, "How long a (re)started manager may take to be ready.")
	flag.Parse()
	var err error
	if o.keys, err = ints(*keys); err != nil {
		return nil, fmt.Errorf("-keys: %w", err)
	}
	if o.conns, err = ints(*conns); err != nil {
		return nil, fmt.Errorf("-conns: %w", err)
	}
	o.managerArgs = strings.Fields(*managerArgs)
	if o.rounds < 1 || o.namespaces < 1 || o.mintWorkers < 1 {
		return nil, fmt.Errorf("-rounds, -namespaces and -mint-workers must be positive")
	}
	return o, nil
}

// ints reads a comma-separated list of positive, ascending integers.
func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 || (len(out) > 0 && n <= out[len(out)-1]) {
			return nil, fmt.Errorf("%q: want positive integers in ascending order", s)
		}
		out = append(out, n)
	}
	return out, nil
}
