// Command latchkey-dev runs a complete local Latchkey with no cluster (what
// `make dev` runs): etcd, kube-apiserver, the CRDs and admission webhook,
// and the operator with its auth endpoints on 127.0.0.1. It writes an admin
// kubeconfig, the endpoints' CA and their URL into --dir, prints a tour,
// and runs until interrupted; then it stops everything it started.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/latchkey-dev/latchkey/pkg/devenv"
)

func main() {
	dir := flag.String("dir", "bin/dev", "Where to write kubeconfig, ca.crt and endpoint.")
	assets := flag.String("assets", os.Getenv("KUBEBUILDER_ASSETS"), "Directory of kube-apiserver, etcd and kubectl (make envtest prints it).")
	verbose := flag.Bool("v", false, "Show the operator's logs.")
	flag.Parse()
	if err := run(*dir, *assets, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "latchkey-dev:", err)
		os.Exit(1)
	}
}

func run(dir, assets string, verbose bool) error {
	if assets == "" {
		return errors.New("no envtest binaries: run `make dev` (it builds them), or pass --assets")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	unlock, err := lock(dir)
	if err != nil {
		return err
	}
	defer unlock()

	logger := logr.Discard()
	if verbose {
		logger = zap.New(zap.UseDevMode(true))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	started := time.Now()
	fmt.Println("Starting etcd, kube-apiserver and the Latchkey operator…")
	lk, err := devenv.Start(ctx, devenv.Options{AssetsDir: assets, TokenWebhook: true, Logger: logger})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("\nStopping Latchkey, kube-apiserver and etcd…")
		if err := lk.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "latchkey-dev: stopping:", err)
		}
		for _, f := range []string{"kubeconfig", "endpoint"} {
			_ = os.Remove(filepath.Join(dir, f))
		}
		fmt.Println("Stopped.")
	}()
	files, err := lk.WriteFiles(dir)
	if err != nil {
		return err
	}
	fmt.Printf("Latchkey is running (ready in %.1fs).\n\n", time.Since(started).Seconds())
	fmt.Printf("  admin kubeconfig  %s\n  endpoints' CA     %s\n  endpoint URL      %s  (%s)\n\n", files.Kubeconfig, files.CA, files.Endpoint, lk.Endpoint)
	fmt.Print(tour(files, assets))
	fmt.Println("Press Ctrl-C to stop.")
	<-ctx.Done()
	return nil
}

func tour(f devenv.Files, assets string) string {
	return strings.NewReplacer("KUBECONFIG_FILE", f.Kubeconfig, "ASSETS", assets, "CA_FILE", f.CA, "ENDPOINT_FILE", f.Endpoint).Replace(`Try it, in another terminal:

  export KUBECONFIG=$PWD/KUBECONFIG_FILE PATH=ASSETS:$PATH
  kubectl apply -n default -f config/samples/auth_v1alpha1_apikey.yaml
  kubectl wait -n default --for=condition=Ready apikey/ci-pipeline
  kubectl get apikeys -n default
  KEY=$(kubectl get secret ci-pipeline -n default -o jsonpath='{.data.api-key}' | base64 -d)
  curl -i --cacert CA_FILE -H "Authorization: Bearer $KEY" "$(cat ENDPOINT_FILE)/authorize"
  curl --cacert CA_FILE -H "Authorization: Bearer $KEY" "$(cat ENDPOINT_FILE)/whoami"
  kubectl --token="$KEY" auth whoami          # keys work as Kubernetes credentials too
  kubectl patch apikey ci-pipeline -n default --type merge -p '{"spec":{"revoked":true}}'
  curl -i --cacert CA_FILE -H "Authorization: Bearer $KEY" "$(cat ENDPOINT_FILE)/whoami"   # 401

`)
}

// lock makes sure one latchkey-dev runs per directory, and says who does.
func lock(dir string) (func(), error) {
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		_ = f.Close()
		pid := strings.TrimSpace(string(b))
		return nil, fmt.Errorf("latchkey-dev is already running (pid %s) with its files in %s: use it, or stop it with Ctrl-C in its terminal (or kill %s)", pid, dir, pid)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteString(strconv.Itoa(os.Getpid()) + "\n")
	return func() {
		_ = f.Truncate(0)
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		_ = f.Close()
	}, nil
}
