package main

import (
	"cmp"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"time"
)

// processTable says where every process runs and with how many Ps.
func (b *bench) processTable() string {
	var sb strings.Builder
	sb.WriteString("| process | CPUs | GOMAXPROCS |\n| --- | --- | --- |\n")
	pids := b.pids()
	names := make([]string, 0, len(pids))
	for name := range pids {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		pid := pids[name]
		procs := gomaxprocs(pid)
		if name == "benchload" {
			procs = fmt.Sprint(runtime.GOMAXPROCS(0))
		}
		fmt.Fprintf(&sb, "| %s | %s | %s |\n", name, procField(pid, "Cpus_allowed_list"), procs)
	}
	fmt.Fprintf(&sb, "| wrk (-t1, --latency) | %s (taskset -c %s) | n/a (C, one thread) |\n", clientCPU, clientCPU)
	return sb.String()
}

func mib(v float64) string { return fmt.Sprintf("%.1f MiB", v/(1<<20)) }

func ms(us float64) string { return fmt.Sprintf("%.2f ms", us/1000) }

// report is the whole report, in markdown.
func (b *bench) report(steps []*step, rss0 int64, idle0 float64, procs string) string {
	o := b.o
	var sb strings.Builder
	fmt.Fprintf(&sb, "## Latchkey from outside (make bench-load)\n\n")
	fmt.Fprintf(&sb, "%d CPUs; wrk rounds of %s, medians of %d, alternating ceiling and manager; "+
		"keys minted through the API over %d namespaces; manager flags: --kube-api-qps %s --kube-api-burst %s %s; kube-apiserver's --feature-gates: %s.\n"+
		"1-minute load average before the first mint (control plane and manager idle, 0 keys): %.2f.\n"+
		"The manager and the ceiling run on CPU %s; wrk, this program, etcd and kube-apiserver on CPU %s during the rounds "+
		"(etcd and kube-apiserver on every CPU while minting). CPUs and Ps during the rounds:\n\n",
		runtime.NumCPU(), o.duration, o.rounds, o.namespaces, o.kubeAPIQPS, o.kubeAPIBurst, strings.Join(o.managerArgs, " "),
		cmp.Or(o.featureGates, "its defaults"), idle0, serverCPU, clientCPU)
	sb.WriteString(procs)
	sb.WriteString("\n| keys | conns | load | manager req/s | ceiling req/s | ratio | p50 | p99 | ceiling p50 | ceiling p99 | p99 ratio | statuses |\n")
	sb.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	busy := 0
	for _, s := range steps {
		ceilings := map[int]*cell{}
		for _, c := range s.cells {
			if c.load == loadAuthorize {
				ceilings[c.conns] = c
			}
		}
		for _, c := range s.cells {
			busy += c.busyRounds
			rps := median(c.manager, wrkResult.rps)
			p50 := median(c.manager, func(r wrkResult) float64 { return r.P50US })
			p99 := median(c.manager, func(r wrkResult) float64 { return r.P99US })
			ref := c.ceiling
			if len(ref) == 0 {
				ref = ceilings[c.conns].ceiling
			}
			crps := median(ref, wrkResult.rps)
			cp50 := median(ref, func(r wrkResult) float64 { return r.P50US })
			cp99 := median(ref, func(r wrkResult) float64 { return r.P99US })
			load := c.load
			if len(c.ceiling) == 0 {
				load += " (vs ceiling /authorize)"
			}
			mark := ""
			if c.busyRounds > 0 {
				mark = fmt.Sprintf(" (%d busy rounds)", c.busyRounds)
			}
			fmt.Fprintf(&sb, "| %d | %d | %s%s | %.0f | %.0f | %.2f | %s | %s | %s | %s | %.2f | %s |\n",
				c.keys, c.conns, load, mark, rps, crps, rps/crps, ms(p50), ms(p99), ms(cp50), ms(cp99), p99/cp99, statusMix(c.manager))
		}
	}
	if busy > 0 {
		fmt.Fprintf(&sb, "\n**%d rounds ran while other processes used more than %.2f cores (-force): these figures are not comparable.**\n", busy, o.maxForeign)
	}
	fmt.Fprintf(&sb, "\nManager memory (VmRSS; heap in use / allocated from go_memstats), read %s after the start, %s after minting, %s after the restart. At 0 keys: RSS %s.\n\n",
		b.o.settle, max(b.o.settle, b.o.settleMinted, b.o.idle), b.o.settle, mib(float64(rss0)))
	sb.WriteString("| keys | minted | mint time | keys/s | RSS minted | heap minted | RSS settled | heap settled | RSS/key settled | restart: ready | first 200 | RSS restarted | heap restarted | RSS/key restarted |\n")
	sb.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, s := range steps {
		perKey := func(v int64) string { return fmt.Sprintf("%.0f B", float64(v-rss0)/float64(s.keys)) }
		fmt.Fprintf(&sb, "| %d | %d | %s | %.0f | %s | %s / %s | %s | %s / %s | %s | %s | %s | %s | %s / %s | %s |\n",
			s.keys, s.minted, s.mint.Round(time.Millisecond), float64(s.minted)/s.mint.Seconds(),
			mib(float64(s.rssMinted)), mib(s.heapMinted[0]), mib(s.heapMinted[1]), mib(float64(s.rssSettled)), mib(s.heapSettled[0]), mib(s.heapSettled[1]), perKey(s.rssSettled),
			s.ready.Round(time.Millisecond), s.serving.Round(time.Millisecond),
			mib(float64(s.rssRestarted)), mib(s.heapRestarted[0]), mib(s.heapRestarted[1]), perKey(s.rssRestarted))
	}
	sb.WriteString("\nWhile minting: each process's CPU (cores, average) and kube-apiserver's requests per minted key " +
		"(the benchmark's own creates and its polls for Active among them).\n\n| keys | CPU | requests per key |\n| --- | --- | --- |\n")
	for _, s := range steps {
		fmt.Fprintf(&sb, "| %d | %s | %s |\n", s.keys, cores(s.mintCPU), topRates(s.mintRequests, 8))
	}
	fmt.Fprintf(&sb, "\nIdle API traffic: kube-apiserver's apiserver_request_total over %s with no load, right after minting "+
		"(checks on a period longer than the window since the last mint are not in it), and each process's CPU then.\n\n", o.idle)
	sb.WriteString("| keys | requests/s | Secret GETs/s | top verb resource (/s) | CPU (cores) | load average before the rounds |\n| --- | --- | --- | --- | --- | --- |\n")
	for _, s := range steps {
		fmt.Fprintf(&sb, "| %d | %.2f | %.2f | %s | %s | %.2f |\n", s.keys, s.idle.total, s.idle.secretGets,
			topRates(s.idle.top, 5), cores(s.idle.cpu), s.loadBefore)
	}
	return sb.String()
}

// cores lists each process's cores, by name.
func cores(byName map[string]float64) string {
	names := make([]string, 0, len(byName))
	for name := range byName {
		names = append(names, name)
	}
	slices.Sort(names)
	parts := make([]string, 0, len(names))
	for _, name := range names {
		parts = append(parts, fmt.Sprintf("%s %.3f", name, byName[name]))
	}
	return strings.Join(parts, ", ")
}

// topRates lists the first n rates.
func topRates(rates []rate, n int) string {
	parts := make([]string, 0, n)
	for _, r := range rates[:min(n, len(rates))] {
		parts = append(parts, fmt.Sprintf("%s %.2f", r.what, r.perS))
	}
	return strings.Join(parts, ", ")
}
