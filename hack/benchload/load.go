package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The loads.
const (
	loadAuthorize   = "authorize"
	loadTokenReview = "tokenreview"
	loadWrongKey    = "wrongkey"
)

// wrkResult is what load.lua's done() prints.
type wrkResult struct {
	Requests   int64            `json:"requests"`
	DurationUS int64            `json:"duration_us"`
	P50US      float64          `json:"p50_us"`
	P99US      float64          `json:"p99_us"`
	Errors     map[string]int64 `json:"errors"`
	Statuses   map[string]int64 `json:"statuses"`
}

func (r wrkResult) rps() float64 { return float64(r.Requests) / (float64(r.DurationUS) / 1e6) }

// errBusy says a round shared the machine with something else.
var errBusy = errors.New("the machine is busy")

// runWrk loads a server for one round with wrk on clientCPU, and says how
// many cores other processes used meanwhile.
func (b *bench) runWrk(port int, mode, keysFile string, conns int) (wrkResult, float64, error) {
	url := "https://127.0.0.1:" + strconv.Itoa(port)
	if mode == loadTokenReview {
		url += "/tokenreview"
	} else {
		url += "/authorize"
	}
	cmd := exec.Command("taskset", "-c", clientCPU, "wrk", "-t1", "-c", strconv.Itoa(conns),
		"-d", b.o.duration.String(), "--latency", "-s", b.o.lua, url)
	cmd.Env = append(os.Environ(), "BENCHLOAD_MODE="+mode, "BENCHLOAD_KEYS="+keysFile)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	ours := func() int64 {
		var sum int64
		for _, pid := range b.pids() {
			sum += cpuTicks(pid)
		}
		return sum
	}
	busy0, ours0, start := busyTicks(), ours(), time.Now()
	err := cmd.Run()
	secs := time.Since(start).Seconds()
	wrkTicks := (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds() * clockTicks
	foreign := (float64(busyTicks()-busy0-(ours()-ours0)) - wrkTicks) / clockTicks / secs
	if err != nil {
		return wrkResult{}, foreign, fmt.Errorf("wrk: %w: %s", err, stderr.String())
	}
	for line := range strings.SplitSeq(stdout.String(), "\n") {
		if j, ok := strings.CutPrefix(line, "BENCHLOAD "); ok {
			var r wrkResult
			if err := json.Unmarshal([]byte(j), &r); err != nil {
				return wrkResult{}, foreign, fmt.Errorf("reading wrk's result %q: %w", j, err)
			}
			return r, foreign, nil
		}
	}
	return wrkResult{}, foreign, fmt.Errorf("no result from wrk: %s", stdout.String())
}

// cell is one row of the load table: its rounds on each server.
type cell struct {
	keys, conns      int
	load             string
	manager, ceiling []wrkResult
	busyRounds       int
}

// side is one server in a round.
type side struct {
	port int
	into *[]wrkResult
}

// loadRounds runs every load at every connection count, alternating the
// ceiling and the manager round by round (ABBA), the valid loads first:
// the wrong-key load spends the failure budget of the client's address.
func (b *bench) loadRounds(n int, keysFile, wrongFile string) ([]*cell, error) {
	var cells []*cell
	for _, load := range []string{loadAuthorize, loadTokenReview, loadWrongKey} {
		file := keysFile
		if load == loadWrongKey {
			file = wrongFile
		}
		for _, conns := range b.o.conns {
			c := &cell{keys: n, conns: conns, load: load}
			cells = append(cells, c)
			sides := []side{{b.ceilingPort, &c.ceiling}, {b.cp.WebhookPort(), &c.manager}}
			if load == loadTokenReview {
				// The ceiling has no TokenReview: its /authorize is the bound.
				sides = sides[1:]
			}
			for r := range b.o.rounds {
				order := slices.Clone(sides)
				if r%2 == 1 {
					slices.Reverse(order)
				}
				for _, s := range order {
					res, foreign, err := b.runWrk(s.port, load, file, conns)
					if err != nil {
						return nil, err
					}
					if foreign > b.o.maxForeign {
						if !b.o.force {
							return nil, fmt.Errorf("%w: other processes used %.2f cores during a round (-max-foreign-cpu %.2f); rerun when it is idle, or with -force", errBusy, foreign, b.o.maxForeign)
						}
						c.busyRounds++
					}
					*s.into = append(*s.into, res)
					fmt.Fprintf(os.Stderr, "  %d keys, %d conns, %s on :%d: %.0f req/s, p99 %.2f ms, foreign CPU %.2f\n",
						n, conns, load, s.port, res.rps(), res.P99US/1000, foreign)
				}
			}
		}
	}
	return cells, nil
}

// median of f over rs.
func median(rs []wrkResult, f func(wrkResult) float64) float64 {
	if len(rs) == 0 {
		return 0
	}
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// statusMix sums the statuses and errors of rs, as "429: 97%, 401: 3%".
func statusMix(rs []wrkResult) string {
	counts := map[string]int64{}
	var total int64
	for _, r := range rs {
		for s, n := range r.Statuses {
			counts[s] += n
			total += n
		}
		for e, n := range r.Errors {
			if n > 0 && e != "status" {
				counts[e+" errors"] += n
			}
		}
	}
	if total == 0 {
		return ""
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return int(counts[b] - counts[a]) })
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		if strings.HasSuffix(k, "errors") {
			parts = append(parts, fmt.Sprintf("%s %d", k, counts[k]))
		} else {
			parts = append(parts, fmt.Sprintf("%s: %.1f%%", k, 100*float64(counts[k])/float64(total)))
		}
	}
	return strings.Join(parts, ", ")
}
