// Command latchkey-dev runs a complete local Latchkey with no cluster (what
// `make dev` runs): etcd, kube-apiserver, the CRDs and admission webhook,
// and the operator with its auth endpoints on 127.0.0.1. It writes an admin
// kubeconfig, one with no credentials for keys, the endpoints' CA, their
// URL and the gRPC ext_authz address into --dir, logs the operator to
// --dir/manager.log, prints a tour, and runs until interrupted; then it
// stops everything it started.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap/zapcore"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/latchkey-dev/latchkey/pkg/devenv"
	"github.com/latchkey-dev/latchkey/pkg/devenv/controlplane"
)

func main() {
	dir := flag.String("dir", "bin/dev", "Where to write kubeconfig, key-kubeconfig, ca.crt, endpoint, ext-authz-endpoint and manager.log.")
	assets := flag.String("assets", os.Getenv("KUBEBUILDER_ASSETS"), "Directory of kube-apiserver, etcd and kubectl (make envtest prints it).")
	pluginDir := flag.String("plugin-dir", "bin", "Directory of kubectl-latchkey (make dev builds it), for the tour's PATH.")
	verbose := flag.Bool("v", false, "Show the operator's logs in this terminal too.")
	flag.Parse()
	if err := run(*dir, *assets, *pluginDir, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "latchkey-dev:", err)
		os.Exit(1)
	}
}

func run(dir, assets, pluginDir string, verbose bool) error {
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

	logPath := filepath.Join(dir, "manager.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer func() { _ = logFile.Close() }()
	var logTo io.Writer = logFile
	if verbose {
		logTo = io.MultiWriter(logFile, os.Stderr)
	}
	// The operator's own lines (minted, delivered, revoked), readable: and
	// set for controller-runtime as a whole, which otherwise warns with a
	// stack trace that its logger was never set.
	logger := zap.New(zap.WriteTo(logTo), zap.ConsoleEncoder(), zap.Level(zapcore.InfoLevel))
	ctrl.SetLogger(logger)

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
		for _, f := range []string{"kubeconfig", "key-kubeconfig", "endpoint", "ext-authz-endpoint"} {
			_ = os.Remove(filepath.Join(dir, f))
		}
		fmt.Println("Stopped.")
	}()
	files, err := lk.WriteFiles(dir)
	if err != nil {
		return err
	}
	fmt.Printf("Latchkey is running (ready in %.1fs).\n\n", time.Since(started).Seconds())
	fmt.Printf("  admin kubeconfig  %s\n  endpoints' CA     %s\n  endpoint URL      %s  (%s)\n  gRPC ext_authz    %s  (%s)\n  operator's log    %s\n\n",
		files.Kubeconfig, files.CA, files.Endpoint, lk.Endpoint, files.ExtAuthzEndpoint, lk.ExtAuthzAddress(), logPath)
	fmt.Print(tour(files, assets, pluginDir, logPath))
	fmt.Println("Press Ctrl-C to stop.")
	<-ctx.Done()
	return nil
}

// tour is what to try, one shell line each; the README shows it as
// written for the default directories, and TestDevTour runs every line.
func tour(f controlplane.Files, assets, pluginDir, logPath string) string {
	return strings.NewReplacer(
		"KUBECONFIG_FILE", shellPath(f.Kubeconfig), "KEY_KUBECONFIG", f.KeyKubeconfig, "PLUGIN_DIR", shellPath(pluginDir),
		"ASSETS", assets, "CA_FILE", f.CA, "ENDPOINT_FILE", f.Endpoint, "EXT_AUTHZ_FILE", f.ExtAuthzEndpoint, "LOG_FILE", logPath,
	).Replace(`Try it, in another terminal:

  export KUBECONFIG=KUBECONFIG_FILE PATH=PLUGIN_DIR:ASSETS:$PATH
  kubectl apply -n default -f config/samples/auth_v1alpha1_apikey.yaml
  kubectl wait -n default --for=condition=Ready apikey/ci-pipeline
  kubectl latchkey create laptop -n default --description "my laptop"   # prints the key once
  kubectl latchkey list -n default
  KEY=$(kubectl get secret ci-pipeline -n default -o jsonpath='{.data.api-key}' | base64 -d)
  curl -i --cacert CA_FILE -H "Authorization: Bearer $KEY" "$(cat ENDPOINT_FILE)/authorize"
  cat EXT_AUTHZ_FILE   # Envoy's gRPC ext_authz (host:port, TLS with CA_FILE)
  LATCHKEY_API_KEY=$KEY kubectl latchkey whoami
  kubectl --kubeconfig KEY_KUBECONFIG --token="$KEY" auth whoami   # keys are Kubernetes credentials too
  kubectl latchkey revoke ci-pipeline -n default --yes
  curl -i --cacert CA_FILE -H "Authorization: Bearer $KEY" "$(cat ENDPOINT_FILE)/authorize"   # 401
  kubectl latchkey usage -n default
  grep -E 'Minted|Revoked' LOG_FILE   # what the operator did

`)
}

// shellPath is p for a shell line that may run in another directory.
func shellPath(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return "$PWD/" + p
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
