package reliability

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	admissionv1 "k8s.io/api/admission/v1"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/testenv"
)

// admissionSpec is the admission-port half of a fence flood: forged
// reviews sent at Rate a second, each on a new connection (one presenting
// no client certificate cannot keep one).
type admissionSpec struct {
	Address string `json:"address"`
	Rate    int    `json:"rate"`
	Request []byte `json:"request"`
}

// admissionReport counts what the admission port did with them.
type admissionReport struct {
	Attempts int64         `json:"attempts"`
	Refused  int64         `json:"refused"`
	Answered map[int]int64 `json:"answered"`
}

func (r *admissionReport) add(o admissionReport) {
	if r.Answered == nil {
		r.Answered = map[int]int64{}
	}
	r.Attempts += o.Attempts
	r.Refused += o.Refused
	for s, n := range o.Answered {
		r.Answered[s] += n
	}
}

// fenceFlood sends forged reviews pipelined to the verification port
// (flood) and, at the same time, one per connection to the admission port.
func fenceFlood(spec floodSpec) (floodReport, error) {
	a := spec.Admission
	var rep admissionReport
	rep.Answered = map[int]int64{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	end := time.Now().Add(spec.Duration)
	// A few workers, each paced, so that one slow handshake does not
	// hold the rest.
	const workers = 8
	interval := time.Second * workers / time.Duration(a.Rate)
	for w := range workers {
		wg.Go(func() {
			next := time.Now().Add(interval * time.Duration(w) / workers)
			for next.Before(end) {
				time.Sleep(time.Until(next))
				next = next.Add(interval)
				status, err := forgeOnce(a)
				mu.Lock()
				rep.Attempts++
				if err != nil {
					rep.Refused++
				} else {
					rep.Answered[status]++
				}
				mu.Unlock()
			}
		})
	}
	r, err := flood(spec)
	wg.Wait()
	r.Admission = rep
	return r, err
}

// forgeOnce sends one forged review to the admission port on a new
// connection, as a client without kube-apiserver's certificate.
func forgeOnce(a *admissionSpec) (int, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", a.Address, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}) //nolint:gosec // the flooder plays an attacker
	if err != nil {
		return 0, err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(a.Request); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// connectionSpec is a connection flood: PerAddress connections from each
// of the loopback addresses From, each sending a /tokenreview body a byte
// every half second, as slowloris does.
type connectionSpec struct {
	Address    string   `json:"address"`
	From       []string `json:"from"`
	PerAddress int      `json:"perAddress"`
}

// connectionReport counts the connections: Opened got through the TLS
// handshake, Refused did not (closed at accept), and Cut were closed by
// the server before the flood ended.
type connectionReport struct {
	Attempts int64 `json:"attempts"`
	Opened   int64 `json:"opened"`
	Refused  int64 `json:"refused"`
	Cut      int64 `json:"cut"`
}

func (r *connectionReport) add(o connectionReport) {
	r.Attempts += o.Attempts
	r.Opened += o.Opened
	r.Refused += o.Refused
	r.Cut += o.Cut
}

// connectionFlood opens every connection (answering "flooding" once all
// are tried), trickles their bodies, and holds them until the flood ends.
func connectionFlood(spec floodSpec) floodReport {
	cs := spec.Connections
	start := time.Now()
	end := start.Add(spec.Duration)
	var opened, refused, cut atomic.Int64
	var trickling sync.WaitGroup
	dials := make(chan string)
	var dialers sync.WaitGroup
	for range 16 {
		dialers.Go(func() {
			for from := range dials {
				d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
				c, err := tls.DialWithDialer(d, "tcp", cs.Address, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}) //nolint:gosec // the flooder plays an attacker
				if err == nil {
					_, err = fmt.Fprintf(c, "POST /tokenreview HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 65536\r\n\r\n{", cs.Address)
				}
				if err != nil {
					refused.Add(1)
					if c != nil {
						_ = c.Close()
					}
					continue
				}
				opened.Add(1)
				trickling.Go(func() {
					defer func() { _ = c.Close() }()
					// The server closes a cut connection; a read sees it.
					closed := make(chan struct{})
					go func() { _, _ = io.Copy(io.Discard, c); close(closed) }()
					tick := time.NewTicker(500 * time.Millisecond)
					defer tick.Stop()
					for {
						select {
						case <-closed:
							if time.Now().Before(end) {
								cut.Add(1)
							}
							return
						case <-tick.C:
						}
						if !time.Now().Before(end) {
							return
						}
						if _, err := c.Write([]byte(" ")); err != nil {
							cut.Add(1)
							return
						}
					}
				})
			}
		})
	}
	for range cs.PerAddress {
		for _, from := range cs.From {
			dials <- from
		}
	}
	close(dials)
	dialers.Wait()
	fmt.Println("flooding")
	time.Sleep(time.Until(end))
	trickling.Wait()
	n := int64(cs.PerAddress * len(cs.From))
	return floodReport{Elapsed: time.Since(start), Connections: connectionReport{
		Attempts: n, Opened: opened.Load(), Refused: refused.Load(), Cut: cut.Load(),
	}}
}

// splitCPUs gives CPU 0 to the servers (the operator's process or
// processes, and this one, whose valid client measures them) and CPU 1 to
// the control plane, and returns the CPU for the flooder: an attacker's
// work is not the server's. On one CPU everything shares it.
func splitCPUs(t *testing.T, servers ...int) (floodCPU int) {
	t.Helper()
	all := runtime.NumCPU()
	if all < 2 {
		return 0
	}
	cpus := make([]int, all)
	for i := range cpus {
		cpus[i] = i
	}
	var plane []int
	for _, pid := range testenv.ChildrenOf(os.Getpid()) {
		if !slices.Contains(servers, pid) {
			plane = append(plane, pid)
		}
	}
	for _, pid := range append([]int{os.Getpid()}, servers...) {
		NewWithT(t).Expect(pinProcess(pid, 0)).To(Succeed())
	}
	for _, pid := range plane {
		NewWithT(t).Expect(pinProcess(pid, 1)).To(Succeed())
	}
	procs := runtime.GOMAXPROCS(1)
	t.Cleanup(func() {
		for _, pid := range append(append([]int{os.Getpid()}, servers...), plane...) {
			_ = pinProcess(pid, cpus...)
		}
		runtime.GOMAXPROCS(procs)
	})
	return 1
}

// managerServing runs the manager binary on the ports the control plane's
// webhook configurations point at, and mints a key it verifies.
func managerServing(t *testing.T, name string) (*testenv.Process, *authv1alpha1.ApiKey, string) {
	t.Helper()
	manager := managerInsteadOfOperator(t)
	// One P, as in its Deployment (a 500m CPU limit, which Go reads), and
	// on the one CPU splitCPUs gives it: more Ps than CPUs would measure the
	// kernel's time slices, not the server.
	p := manager.Start(t, []string{"GOMAXPROCS=1"}, append(lk.ServingFlags(), "--leader-elect=false")...)
	p.WaitReady(t, time.Minute)
	key, raw := mintUntil(t, env.Namespace(t), name, func(raw string) error {
		if status, err := authorizePort(lk.WebhookPort(), raw); err != nil || status != http.StatusOK {
			return fmt.Errorf("%d %v", status, err)
		}
		return nil
	})
	return p, key, raw
}

// rounds measures the valid client quiet and flooded in alternating
// rounds (ABBA), and returns each round's p99 per side, and the failures.
func rounds(t *testing.T, pairs int, round time.Duration, raw string, flooded func(measure func())) (quiet, loaded []time.Duration, failures int) {
	t.Helper()
	valid := newClient(4)
	measure := func(into *[]time.Duration) func() {
		return func() {
			lat, failed := validLatencies(valid, raw, round)
			failures += failed
			if len(lat) > 0 {
				slices.Sort(lat)
				*into = append(*into, lat[len(lat)*99/100])
			}
		}
	}
	for i := range pairs {
		if i%2 == 0 {
			measure(&quiet)()
			flooded(measure(&loaded))
		} else {
			flooded(measure(&loaded))
			measure(&quiet)()
		}
	}
	return quiet, loaded, failures
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2].Round(time.Microsecond)
}

// TestFenceFlood (case 13): 10,000 forged fence attempts a second — a
// DELETE and a revoked:true review of a live key, from a client without
// kube-apiserver's certificate — against the manager binary: 9,500 a
// second pipelined to the verification port, 500 a second, one per
// connection, to the admission port. The forged key is the one the valid
// client uses: had one fence landed, its requests would fail.
func TestFenceFlood(t *testing.T) {
	slow(t)
	p, key, raw := managerServing(t, "victim")
	g := NewWithT(t)
	ops := []admissionv1.Operation{admissionv1.Delete, admissionv1.Update}
	requests := make([][]byte, 0, len(ops))
	for _, op := range ops {
		review, err := testenv.ForgedAdmissionReview(key, op)
		g.Expect(err).NotTo(HaveOccurred())
		requests = append(requests, fmt.Appendf(nil, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
			testenv.AdmissionPath, len(review), review))
	}
	f, err := startFlooder(splitCPUs(t, p.Cmd.Process.Pid))
	g.Expect(err).NotTo(HaveOccurred())
	defer f.stop()

	const verifyRate, admitRate, conns, pairs, round, lead, tail = 9_500, 500, 8, 20, 2 * time.Second, 500 * time.Millisecond, 250 * time.Millisecond
	var flood floodReport
	quiet, loaded, failures := rounds(t, pairs, round, raw, func(measure func()) {
		g.Expect(f.start(floodSpec{
			Endpoint: lk.Endpoint, Rate: verifyRate, Conns: conns, Duration: lead + round + tail, Requests: requests,
			Admission: &admissionSpec{Address: fmt.Sprintf("127.0.0.1:%d", lk.AdmissionPort()), Rate: admitRate, Request: requests[0]},
		})).To(Succeed())
		time.Sleep(lead)
		measure()
		r, err := f.wait()
		g.Expect(err).NotTo(HaveOccurred())
		flood.add(r)
	})
	g.Expect(p.Cmd.ProcessState).To(BeNil(), "the manager is still running")
	g.Expect(failures).To(BeZero(), "no forged fence landed: the forged key always authenticated")
	g.Expect(authorizePort(lk.WebhookPort(), raw)).To(Equal(http.StatusOK))
	g.Expect(flood.Answered[http.StatusOK]).To(BeZero(), "the verification port never admitted a review")
	g.Expect(flood.Admission.Answered).To(BeEmpty(), "the admission port never answered a client without kube-apiserver's certificate")
	secs := flood.Elapsed.Seconds()
	record(t, "13 fence flood: forged admission reviews", fmt.Sprintf(
		"%d forged reviews/s from another process: to the verification port %d/s pipelined over %d connections, which got %.0f/s out before they filled (each %d held 1 s: %d answered), and to the admission port %d/s, a connection each, %.0f/s tried (%d of %d refused at accept or the TLS handshake, 0 answered): 0 fences landed, 0 valid requests failed; valid client p99 median %v quiet, %v flooded over %d alternating %v rounds each",
		verifyRate+admitRate, verifyRate, conns, float64(flood.Sent)/secs, http.StatusNotFound, flood.answered(),
		admitRate, float64(flood.Admission.Attempts)/secs, flood.Admission.Refused, flood.Admission.Attempts,
		median(quiet), median(loaded), pairs, round))
}

// TestConnectionFlood (case 14): connections with slowly trickled
// /tokenreview bodies, from one loopback address and from 32, against the
// manager binary: the caps refuse the excess at accept, ReadTimeout cuts
// the rest, and the manager's memory stays bounded. The valid client keeps
// the keep-alive connections it opened before; it is measured, as is the
// manager's resident memory during each flood.
func TestConnectionFlood(t *testing.T) {
	slow(t)
	p, _, raw := managerServing(t, "valid")
	g := NewWithT(t)
	f, err := startFlooder(splitCPUs(t, p.Cmd.Process.Pid))
	g.Expect(err).NotTo(HaveOccurred())
	defer f.stop()

	many := make([]string, 32)
	for i := range many {
		many[i] = fmt.Sprintf("127.0.0.%d", 10+i)
	}
	shapes := []struct {
		name       string
		from       []string
		perAddress int
	}{{"one address", []string{"127.0.0.2"}, 200}, {"32 addresses", many, 48}}
	const pairs, round, hold = 4, 2 * time.Second, 12 * time.Second
	rssBefore := p.RSS(t)
	figures := make([]string, 0, len(shapes))
	for _, shape := range shapes {
		var flood floodReport
		var rss int64
		quiet, loaded, failures := rounds(t, pairs, round, raw, func(measure func()) {
			g.Expect(f.start(floodSpec{Duration: hold, Connections: &connectionSpec{
				Address: fmt.Sprintf("127.0.0.1:%d", lk.WebhookPort()), From: shape.from, PerAddress: shape.perAddress,
			}})).To(Succeed())
			measure()
			rss = max(rss, p.RSS(t))
			r, err := f.wait()
			g.Expect(err).NotTo(HaveOccurred())
			flood.add(r)
		})
		g.Expect(p.Cmd.ProcessState).To(BeNil(), "the manager is still running")
		g.Expect(rss).To(BeNumerically("<", 512<<20), "the manager stays under its container limit")
		c := flood.Connections
		figures = append(figures, fmt.Sprintf(
			"%s × %d connections: %d of %d opened, %d refused at accept, %d cut by the server before the flood's %v end; manager RSS %d MiB before, at most %d during; valid p99 median %v quiet, %v flooded (%d valid requests failed)",
			shape.name, shape.perAddress, c.Opened/pairs, c.Attempts/pairs, c.Refused/pairs, c.Cut/pairs, hold,
			rssBefore>>20, rss>>20, median(quiet), median(loaded), failures))
	}
	g.Expect(authorizePort(lk.WebhookPort(), raw)).To(Equal(http.StatusOK))
	record(t, "14 connection flood: slow bodies", fmt.Sprintf("per flood round, %s; %s", figures[0], figures[1]))
}
