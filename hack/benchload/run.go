package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/latchkey-dev/latchkey/internal/keys"
)

// step is what was measured at one key count.
type step struct {
	keys                    int
	mint                    time.Duration
	minted                  int
	rssMinted, rssSettled   int64
	heapMinted, heapSettled [2]float64
	idle                    idleTraffic
	loadBefore              float64
	cells                   []*cell
	ready, serving          time.Duration
	rssRestarted            int64
	heapRestarted           [2]float64
	mintCPU                 map[string]float64
	mintRequests            []rate
}

func run(o *options) error {
	if _, err := exec.LookPath("wrk"); err != nil {
		return fmt.Errorf("no wrk: apt-get install wrk (make bench-load does)")
	}
	dir, err := os.MkdirTemp("", "benchload-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	b := &bench{o: o, dir: dir}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		b.stop()
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}()
	defer b.stop()
	if err := b.measure(context.Background()); err != nil {
		tail(b.managerLog(), 20)
		return err
	}
	return nil
}

// measure runs everything and prints the report.
func (b *bench) measure(ctx context.Context) error {
	o := b.o
	fmt.Fprintln(os.Stderr, "starting etcd and kube-apiserver")
	if err := b.startControlPlane(); err != nil {
		return err
	}
	// This process on the load generator's CPU, out of the servers' way.
	if err := pin(os.Getpid(), clientCPU); err != nil {
		return err
	}
	if err := b.createNamespaces(ctx); err != nil {
		return err
	}
	if err := b.startManager(); err != nil {
		return err
	}
	if err := b.waitReady(); err != nil {
		return fmt.Errorf("the manager did not become ready: %w", err)
	}
	time.Sleep(o.settle)
	rss0 := rss(b.manager.Process.Pid)
	idle0 := loadAverage()
	wrongFile := filepath.Join(b.dir, "wrong-keys")
	if err := writeWrongKeys(wrongFile, 1000); err != nil {
		return err
	}
	keysFile := filepath.Join(b.dir, "keys")
	var steps []*step
	var procs string
	prev := 0
	for _, n := range o.keys {
		s := &step{keys: n, minted: n - prev}
		steps = append(steps, s)
		fmt.Fprintf(os.Stderr, "minting %d keys (to %d) through the API\n", n-prev, n)
		before := b.cpuByProcess()
		requests, err := b.requestCounts(ctx)
		if err != nil {
			return err
		}
		if s.mint, err = b.mint(ctx, prev, n); err != nil {
			return err
		}
		s.mintCPU = b.coresSince(before, s.mint)
		if s.mintRequests, err = b.requestsSince(ctx, requests, float64(n-prev)); err != nil {
			return err
		}
		prev = n
		first, err := b.writeKeys(ctx, keysFile, n)
		if err != nil {
			return err
		}
		pid := b.manager.Process.Pid
		s.rssMinted = rss(pid)
		s.heapMinted = b.heapOrZero()
		fmt.Fprintf(os.Stderr, "minted in %s; watching kube-apiserver idle for %s\n", s.mint.Round(time.Millisecond), o.idle)
		if s.idle, err = b.watchIdle(ctx); err != nil {
			return err
		}
		if settle := max(o.settle, o.settleMinted); settle > o.idle {
			time.Sleep(settle - o.idle)
		}
		s.rssSettled = rss(pid)
		s.heapSettled = b.heapOrZero()
		if s.loadBefore, err = b.waitQuiet(); err != nil {
			return err
		}
		// The load generator and the control plane share one CPU during the
		// rounds: the servers measured have the other to themselves.
		if err := b.pin(clientCPU); err != nil {
			return err
		}
		if err := b.startCeiling(keysFile); err != nil {
			return err
		}
		procs = b.processTable()
		if s.cells, err = b.loadRounds(n, keysFile, wrongFile); err != nil {
			return err
		}
		b.stopCeiling()
		if err := b.pin(allCPUs()); err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "restarting the manager")
		b.killManager()
		start := time.Now()
		if err := b.startManager(); err != nil {
			return err
		}
		if err := b.waitReady(); err != nil {
			return fmt.Errorf("the restarted manager did not become ready: %w", err)
		}
		s.ready = time.Since(start)
		if err := b.waitAuthorized(first); err != nil {
			return fmt.Errorf("the restarted manager did not authorize a key: %w", err)
		}
		s.serving = time.Since(start)
		time.Sleep(o.settle)
		s.rssRestarted = rss(b.manager.Process.Pid)
		s.heapRestarted = b.heapOrZero()
		// A long run's figures so far survive its interruption.
		if o.out != "" {
			if err := os.WriteFile(o.out, []byte(b.report(steps, rss0, idle0, procs)), 0o600); err != nil {
				return err
			}
		}
	}
	fmt.Print(b.report(steps, rss0, idle0, procs))
	return nil
}

// pin puts every thread of the control plane's processes on cpus.
func (b *bench) pin(cpus string) error {
	for _, pid := range b.plane {
		if err := pin(pid, cpus); err != nil {
			return err
		}
	}
	return nil
}

func pin(pid int, cpus string) error {
	if out, err := exec.Command("taskset", "-a", "-cp", cpus, strconv.Itoa(pid)).CombinedOutput(); err != nil {
		return fmt.Errorf("pinning %d to CPUs %s: %w: %s", pid, cpus, err, out)
	}
	return nil
}

// allCPUs is every CPU, as taskset names them.
func allCPUs() string { return fmt.Sprintf("0-%d", runtime.NumCPU()-1) }

func (b *bench) heapOrZero() [2]float64 {
	inuse, alloc, err := b.heap()
	if err != nil {
		fmt.Fprintln(os.Stderr, "reading the manager's metrics:", err)
	}
	return [2]float64{inuse, alloc}
}

// waitQuiet waits up to two minutes for the load average to fall below
// -max-load (minting and the previous rounds raise it), and refuses to go
// on if it does not, unless -force.
func (b *bench) waitQuiet() (float64, error) {
	if b.o.force {
		return loadAverage(), nil
	}
	var l float64
	err := poll(2*time.Minute, 5*time.Second, func() bool {
		l = loadAverage()
		return l <= b.o.maxLoad
	})
	if err != nil {
		return l, fmt.Errorf("%w: 1-minute load average %.2f > %.2f (-max-load); rerun when it is idle, or with -force", errBusy, l, b.o.maxLoad)
	}
	return l, nil
}

// writeWrongKeys writes n well-formed keys nobody minted: the manager
// must look each up, as it would a leaked or guessed one.
func writeWrongKeys(file string, n int) error {
	var sb strings.Builder
	for range n {
		k, err := keys.Generate(rand.Reader, keys.Prefixed)
		if err != nil {
			return err
		}
		sb.WriteString(k + "\n")
	}
	return os.WriteFile(file, []byte(sb.String()), 0o600)
}

// tail prints the last n lines of the manager's log, which holds no key.
func tail(file string, n int) {
	f, err := os.Open(file) //nolint:gosec // our own log
	if err != nil {
		return
	}
	defer func() { _ = f.Close() }()
	var lines []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for s.Scan() {
		if lines = append(lines, s.Text()); len(lines) > n {
			lines = lines[1:]
		}
	}
	fmt.Fprintln(os.Stderr, "the manager's last log lines:")
	for _, l := range lines {
		fmt.Fprintln(os.Stderr, "  "+l)
	}
}
