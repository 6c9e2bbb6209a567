package reliability

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/latchkey-dev/latchkey/internal/keys"
)

// The flood comes from another process, as it would from another machine:
// the test binary runs again as the flooder when floodEnv names the CPU to
// pin it to, so that its work is not the server's. It reads one floodSpec a
// line on stdin, answers "flooding" once its connections are open, and a
// floodReport when the flood is over.
const floodEnv = "LATCHKEY_FLOODER_CPU"

// floodSpec is one flood.
type floodSpec struct {
	Endpoint string        `json:"endpoint"`
	Rate     int           `json:"rate"`
	Conns    int           `json:"conns"`
	Duration time.Duration `json:"duration"`
	// Requests are sent in turn instead of wrong keys at /authorize.
	Requests [][]byte `json:"requests,omitempty"`
	// Admission, when set, is what a fence flood also sends to the
	// admission port (admissionFlood).
	Admission *admissionSpec `json:"admission,omitempty"`
	// Connections, when set, makes this a connection flood instead
	// (connectionFlood).
	Connections *connectionSpec `json:"connections,omitempty"`
}

// floodReport is what a flood did: requests sent and answers by status;
// sent requests not answered by the end were still waiting.
type floodReport struct {
	Sent     int64         `json:"sent"`
	Answered map[int]int64 `json:"answered"`
	Errors   int64         `json:"errors"`
	Elapsed  time.Duration `json:"elapsed"`
	// Admission and Connections report those floods.
	Admission   admissionReport  `json:"admission"`
	Connections connectionReport `json:"connections"`
}

func (r floodReport) answered() (n int64) {
	for _, c := range r.Answered {
		n += c
	}
	return n
}

func (r *floodReport) add(o floodReport) {
	if r.Answered == nil {
		r.Answered = map[int]int64{}
	}
	r.Sent += o.Sent
	r.Errors += o.Errors
	r.Elapsed += o.Elapsed
	r.Admission.add(o.Admission)
	r.Connections.add(o.Connections)
	for s, n := range o.Answered {
		r.Answered[s] += n
	}
}

// flooder is the flooding child process.
type flooder struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines *bufio.Scanner
}

// startFlooder starts the child, pinned to cpu.
func startFlooder(cpu int) (*flooder, error) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), floodEnv+"="+strconv.Itoa(cpu))
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &flooder{cmd: cmd, in: in, lines: bufio.NewScanner(out)}, nil
}

// start begins a flood and returns once its connections are open.
func (f *flooder) start(spec floodSpec) error {
	b, _ := json.Marshal(spec)
	if _, err := fmt.Fprintf(f.in, "%s\n", b); err != nil {
		return err
	}
	if !f.lines.Scan() || f.lines.Text() != "flooding" {
		return fmt.Errorf("the flooder did not start: %q %v", f.lines.Text(), f.lines.Err())
	}
	return nil
}

// wait returns the flood's report once its duration is over.
func (f *flooder) wait() (floodReport, error) {
	var r floodReport
	if !f.lines.Scan() {
		return r, fmt.Errorf("the flooder reported nothing: %v", f.lines.Err())
	}
	return r, json.Unmarshal(f.lines.Bytes(), &r)
}

func (f *flooder) stop() {
	_ = f.in.Close()
	_ = f.cmd.Wait()
}

// runFlooder is the child process.
func runFlooder(cpu string) int {
	if n, err := strconv.Atoi(cpu); err == nil && pinProcess(os.Getpid(), n) == nil {
		runtime.GOMAXPROCS(1)
	}
	specs := bufio.NewScanner(os.Stdin)
	for specs.Scan() {
		var spec floodSpec
		if err := json.Unmarshal(specs.Bytes(), &spec); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		var r floodReport
		var err error
		switch {
		case spec.Connections != nil:
			r = connectionFlood(spec)
		case spec.Admission != nil:
			r, err = fenceFlood(spec)
		default:
			r, err = flood(spec)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		b, _ := json.Marshal(r)
		fmt.Println(string(b))
	}
	return 0
}

// flood sends spec.Rate requests a second with random well-formed wrong
// keys, pipelined over spec.Conns keep-alive connections, for spec.Duration.
func flood(spec floodSpec) (floodReport, error) {
	u, err := url.Parse(spec.Endpoint)
	if err != nil {
		return floodReport{}, err
	}
	requests := spec.Requests
	if len(requests) == 0 {
		requests = make([][]byte, 1000)
		for i := range requests {
			wrong, err := keys.Generate(rand.Reader, keys.Prefixed)
			if err != nil {
				return floodReport{}, err
			}
			requests[i] = fmt.Appendf(nil, "GET /authorize HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n", u.Host, wrong)
		}
	}
	conns := make([]*tls.Conn, spec.Conns)
	defer func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	for i := range conns {
		// An attacker does not check certificates.
		if conns[i], err = tls.Dial("tcp", u.Host, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}); err != nil { //nolint:gosec // the flooder plays an attacker
			return floodReport{}, err
		}
	}

	var (
		sent, errs atomic.Int64
		mu         sync.Mutex
		answered   = map[int]int64{}
		wg         sync.WaitGroup
	)
	// At most this many requests wait on a connection: past it the flood
	// waits for answers rather than queueing without bound.
	const window = 256
	fmt.Println("flooding")
	start := time.Now()
	end := start.Add(spec.Duration)
	perConn := float64(spec.Rate) / float64(spec.Conns)
	for i, c := range conns {
		// Answers still owed at the end are not waited for.
		_ = c.SetReadDeadline(end)
		inflight := make(chan struct{}, window)
		wg.Go(func() {
			br := bufio.NewReaderSize(c, 32<<10)
			counts := map[int]int64{}
			defer func() {
				mu.Lock()
				for s, n := range counts {
					answered[s] += n
				}
				mu.Unlock()
			}()
			for range inflight {
				resp, err := http.ReadResponse(br, nil)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
				}
				if err != nil {
					if time.Now().Before(end) {
						errs.Add(1)
					}
					return
				}
				counts[resp.StatusCode]++
			}
		})
		wg.Go(func() {
			defer close(inflight)
			bw := bufio.NewWriterSize(c, 32<<10)
			stop := time.NewTimer(time.Until(end))
			defer stop.Stop()
			next := time.NewTimer(0)
			defer next.Stop()
			for n := 0; ; {
				select {
				case <-next.C:
				case <-stop.C:
					return
				}
				for due := int(time.Since(start).Seconds() * perConn); n < due; n++ {
					select {
					case inflight <- struct{}{}:
					default:
						// The window is full: send what is written and
						// wait for an answer, as a flood keeping its
						// connection busy would.
						if bw.Flush() != nil {
							return
						}
						select {
						case inflight <- struct{}{}:
						case <-stop.C:
							return
						}
					}
					_, _ = bw.Write(requests[(i+n*len(conns))%len(requests)])
					sent.Add(1)
				}
				if err := bw.Flush(); err != nil {
					errs.Add(1)
					return
				}
				// Sleep until the next request is due, in batches of at
				// least a millisecond.
				at := start.Add(time.Duration(float64(n+1) / perConn * float64(time.Second)))
				next.Reset(max(time.Until(at), time.Millisecond))
			}
		})
	}
	wg.Wait()
	return floodReport{Sent: sent.Load(), Answered: answered, Errors: errs.Load(), Elapsed: time.Since(start)}, nil
}

// pinProcess binds every thread of process pid to the given CPUs; threads
// started later inherit it.
func pinProcess(pid int, cpus ...int) error {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
			return err
		}
	}
	return nil
}
