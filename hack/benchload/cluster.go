package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/testenv"
	"github.com/latchkey-dev/latchkey/pkg/devenv/controlplane"
)

// The CPUs: the servers measured on one, everything else (the load
// generator, the control plane, this program) on the other.
const (
	serverCPU = "0"
	clientCPU = "1"
)

// bench is the running control plane, manager and ceiling.
type bench struct {
	o          *options
	dir        string
	cp         *controlplane.ControlPlane
	client     client.Client
	kubeconfig string
	// plane are the control plane's processes, by name.
	plane map[string]int

	manager                *exec.Cmd
	probePort, metricsPort int
	ceiling                *exec.Cmd
	ceilingPort            int

	https *http.Client
}

// startControlPlane starts etcd and kube-apiserver (on clientCPU, which
// they inherit from this process) with the admission webhook pointing at
// the manager, as in a cluster.
func (b *bench) startControlPlane() error {
	assets, err := testenv.Assets()
	if err != nil {
		return err
	}
	if b.cp, err = controlplane.Start(controlplane.Options{AssetsDir: assets, Webhooks: true, FeatureGates: b.o.featureGates}); err != nil {
		return err
	}
	b.plane = map[string]int{}
	for _, pid := range testenv.ChildrenOf(os.Getpid()) {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err == nil {
			b.plane[strings.TrimSpace(string(comm))] = pid
		}
	}
	// An unthrottled client: minting is limited by the manager, not by us.
	cfg := rest.CopyConfig(b.cp.Config)
	cfg.QPS, cfg.Burst = -1, 0
	if b.client, err = client.New(cfg, client.Options{Scheme: b.cp.Scheme}); err != nil {
		return err
	}
	b.kubeconfig = filepath.Join(b.dir, "kubeconfig")
	if err := b.cp.WriteAdminKubeconfig(b.kubeconfig); err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b.cp.WebhookCA)
	b.https = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}
	if b.probePort, err = controlplane.FreePort(); err != nil {
		return err
	}
	if b.metricsPort, err = controlplane.FreePort(); err != nil {
		return err
	}
	b.ceilingPort, err = controlplane.FreePort()
	return err
}

// managerFlags are the manager's flags besides the webhook ones.
func (b *bench) managerFlags() []string {
	return []string{
		"--kubeconfig", b.kubeconfig, "--leader-elect=false",
		"--health-probe-bind-address", "127.0.0.1:" + strconv.Itoa(b.probePort),
		// Plain HTTP on loopback: secure metrics would need a token
		// reviewed by kube-apiserver for every scrape.
		"--metrics-bind-address", "127.0.0.1:" + strconv.Itoa(b.metricsPort), "--metrics-secure=false",
		"--kube-api-qps", b.o.kubeAPIQPS, "--kube-api-burst", b.o.kubeAPIBurst,
		// One name across restarts, as a pod's: a restart takes its own
		// lease back instead of waiting out a stranger's (docs/replicas.md).
		"--replica-name=bench",
	}
}

// startManager runs the manager binary on serverCPU with one P, serving
// the ports the control plane's webhook configuration points at.
func (b *bench) startManager() error {
	args := append([]string{"-c", serverCPU, b.o.managerBin}, b.managerFlags()...)
	args = append(append(args, b.cp.ServingFlags()...), b.o.managerArgs...)
	log, err := os.OpenFile(b.managerLog(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	b.manager = exec.Command("taskset", args...)
	b.manager.Env = append(os.Environ(), "GOMAXPROCS=1")
	b.manager.Stdout, b.manager.Stderr = log, log
	err = b.manager.Start()
	_ = log.Close()
	return err
}

// managerLog is where the manager's output goes.
func (b *bench) managerLog() string {
	if b.o.managerLog != "" {
		return b.o.managerLog
	}
	return filepath.Join(b.dir, "manager.log")
}

// killManager stops the manager at once, as a crash or an eviction would.
func (b *bench) killManager() {
	if b.manager != nil && b.manager.ProcessState == nil {
		_ = b.manager.Process.Kill()
		_ = b.manager.Wait()
	}
}

// waitReady waits for the manager's /readyz to answer 200.
func (b *bench) waitReady() error {
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", b.probePort)
	return poll(b.o.readyWithin, 20*time.Millisecond, func() bool {
		resp, err := http.Get(url) //nolint:gosec // a loopback probe
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// waitAuthorized waits for the manager to answer 200 at /authorize for key.
func (b *bench) waitAuthorized(key string) error {
	return poll(b.o.readyWithin, 20*time.Millisecond, func() bool {
		status, err := b.authorize(b.cp.WebhookPort(), key)
		return err == nil && status == http.StatusOK
	})
}

func (b *bench) authorize(port int, key string) (int, error) {
	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d/authorize", port), nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := b.https.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// startCeiling runs the ceiling on serverCPU with one P, holding the keys
// of keysFile, on the manager's certificate.
func (b *bench) startCeiling(keysFile string) error {
	b.stopCeiling()
	b.ceiling = exec.Command("taskset", "-c", serverCPU, b.o.ceilingBin,
		"-addr", "127.0.0.1:"+strconv.Itoa(b.ceilingPort), "-cert-dir", b.cp.WebhookCertDir, "-keys", keysFile)
	b.ceiling.Env = append(os.Environ(), "GOMAXPROCS=1")
	b.ceiling.Stderr = os.Stderr
	out, err := b.ceiling.StdoutPipe()
	if err != nil {
		return err
	}
	if err := b.ceiling.Start(); err != nil {
		return err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready") {
		return fmt.Errorf("the ceiling did not start: %q %v", line, err)
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	return nil
}

func (b *bench) stopCeiling() {
	if b.ceiling != nil && b.ceiling.ProcessState == nil {
		_ = b.ceiling.Process.Kill()
		_ = b.ceiling.Wait()
	}
}

func (b *bench) stop() {
	b.stopCeiling()
	b.killManager()
	if b.cp != nil {
		if err := b.cp.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the control plane:", err)
		}
	}
}

func namespace(i int) string { return fmt.Sprintf("benchload-%d", i) }

// createNamespaces creates the tenants' namespaces.
func (b *bench) createNamespaces(ctx context.Context) error {
	for i := range b.o.namespaces {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace(i)}}
		if err := b.client.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	return nil
}

// mint creates ApiKeys from..to-1 as a user would and waits until they
// are all Active, returning how long that took.
func (b *bench) mint(ctx context.Context, from, to int) (time.Duration, error) {
	start := time.Now()
	jobs := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []error
	for range b.o.mintWorkers {
		wg.Go(func() {
			for i := range jobs {
				if err := b.createKey(ctx, i); err != nil {
					mu.Lock()
					failures = append(failures, err)
					mu.Unlock()
				}
			}
		})
	}
	for i := from; i < to; i++ {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if len(failures) > 0 {
		return 0, fmt.Errorf("%d ApiKeys not created, the first: %w", len(failures), failures[0])
	}
	// Each poll lists every key: at 100,000 keys that is work enough for
	// kube-apiserver to slow minting, so it is spaced with the count.
	var active, failed int
	err := poll(b.o.mintTimeout, time.Second+time.Duration(to)*time.Second/2000, func() bool {
		var err error
		if active, failed, err = b.countPhases(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "listing ApiKeys:", err)
			return false
		}
		return active+failed >= to
	})
	switch {
	case err != nil:
		return 0, fmt.Errorf("%d of %d keys Active after %s", active, to, b.o.mintTimeout)
	case failed > 0:
		return 0, fmt.Errorf("%d keys Failed", failed)
	}
	return time.Since(start), nil
}

// createKey creates ApiKey i, retrying what a busy API server refuses.
func (b *bench) createKey(ctx context.Context, i int) error {
	var err error
	for attempt := range 10 {
		key := &authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace(i % b.o.namespaces), Name: fmt.Sprintf("key-%07d", i),
		}}
		if err = b.client.Create(ctx, key); err == nil || apierrors.IsAlreadyExists(err) {
			return nil
		}
		time.Sleep(time.Duration(attempt+1) * 100 * time.Millisecond)
	}
	return err
}

// countPhases counts the benchmark's Active and Failed ApiKeys.
func (b *bench) countPhases(ctx context.Context) (active, failed int, err error) {
	for i := range b.o.namespaces {
		opts := &client.ListOptions{Namespace: namespace(i), Limit: 5000}
		for {
			var list authv1alpha1.ApiKeyList
			if err := b.client.List(ctx, &list, opts); err != nil {
				return 0, 0, err
			}
			for j := range list.Items {
				switch list.Items[j].Status.Phase {
				case authv1alpha1.PhaseActive:
					active++
				case authv1alpha1.PhaseFailed:
					failed++
				}
			}
			if opts.Continue = list.Continue; opts.Continue == "" {
				break
			}
		}
	}
	return active, failed, nil
}

// writeKeys writes every minted raw key, read from its Secret as a client
// of the key would, to a file only this user can read: wrk and the
// ceiling read them from there, never from a command line.
func (b *bench) writeKeys(ctx context.Context, file string, want int) (first string, err error) {
	f, err := os.OpenFile(file, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return "", err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	w := bufio.NewWriter(f)
	n := 0
	for i := range b.o.namespaces {
		opts := &client.ListOptions{Namespace: namespace(i), Limit: 2000}
		for {
			var list corev1.SecretList
			if err := b.client.List(ctx, &list, opts); err != nil {
				return "", err
			}
			for j := range list.Items {
				raw := list.Items[j].Data[authv1alpha1.SecretKeyAPIKey]
				if len(raw) == 0 {
					continue
				}
				if first == "" {
					first = string(raw)
				}
				_, _ = w.Write(raw)
				_ = w.WriteByte('\n')
				n++
			}
			if opts.Continue = list.Continue; opts.Continue == "" {
				break
			}
		}
	}
	if n != want {
		return "", fmt.Errorf("%d keys in Secrets, want %d", n, want)
	}
	return first, w.Flush()
}

// poll calls done every interval until it is true or timeout passes.
func poll(timeout, interval time.Duration, done func() bool) error {
	for deadline := time.Now().Add(timeout); !done(); time.Sleep(interval) {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
	}
	return nil
}
