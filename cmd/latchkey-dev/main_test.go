package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/latchkey-dev/latchkey/internal/testenv"
)

// TestDevTour builds and starts latchkey-dev as `make dev` does, drives the
// printed tour with the real kubectl and HTTP calls, checks a second
// instance says one is running, and stops it with Ctrl-C (SIGINT): it must
// exit cleanly and leave none of its processes behind.
func TestDevTour(t *testing.T) {
	assets, err := testenv.Assets()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "latchkey-dev")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	dir := t.TempDir()
	dev := exec.Command(bin, "--dir", dir, "--assets", assets)
	stdout, _ := dev.StdoutPipe()
	dev.Stderr = os.Stderr
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = dev.Process.Kill() }()
	lines := bufio.NewScanner(stdout)
	var printed strings.Builder
	for lines.Scan() {
		printed.WriteString(lines.Text() + "\n")
		if strings.HasPrefix(lines.Text(), "Press Ctrl-C") {
			break
		}
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	for _, want := range []string{"Latchkey is running", "kubeconfig", "kubectl wait", "curl", "/authorize", "/whoami", "revoked"} {
		if !strings.Contains(printed.String(), want) {
			t.Fatalf("the tour lacks %q:\n%s", want, printed.String())
		}
	}

	kubectlCmd := func(args ...string) *exec.Cmd {
		return exec.Command(filepath.Join(assets, "kubectl"), append([]string{"--kubeconfig", filepath.Join(dir, "kubeconfig")}, args...)...)
	}
	kubectl := func(args ...string) string {
		out, err := kubectlCmd(args...).CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	kubectl("apply", "-n", "default", "-f", filepath.Join(testenv.RepoRoot(), "config", "samples", "auth_v1alpha1_apikey.yaml"))
	kubectl("wait", "-n", "default", "--for=condition=Ready", "apikey/ci-pipeline", "--timeout=60s")
	var key string
	if out, err := kubectlCmd("get", "secret", "ci-pipeline", "-n", "default", "-o", "jsonpath={.data.api-key}").Output(); err == nil {
		b, _ := base64.StdEncoding.DecodeString(string(out))
		key = string(b)
	}
	if key == "" {
		t.Fatal("no key was delivered")
	}
	if out := kubectl("get", "apikeys", "-n", "default"); !strings.Contains(out, "LAST USED") {
		t.Fatalf("kubectl get apikeys:\n%s", out)
	}

	endpoint, _ := os.ReadFile(filepath.Join(dir, "endpoint"))
	ca, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	call := func(path string) (int, string) {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, strings.TrimSpace(string(endpoint))+path, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if status, _ := call("/authorize"); status != http.StatusOK {
		t.Fatalf("/authorize: %d", status)
	}
	if status, body := call("/whoami"); status != http.StatusOK || !strings.Contains(body, `"keyName":"ci-pipeline"`) {
		t.Fatalf("/whoami: %d %s", status, body)
	}
	kubectl("patch", "apikey", "ci-pipeline", "-n", "default", "--type", "merge", "-p", `{"spec":{"revoked":true}}`)
	if status, _ := call("/whoami"); status != http.StatusUnauthorized {
		t.Fatalf("/whoami after revocation: %d", status)
	}

	out, err := exec.Command(bin, "--dir", dir, "--assets", assets).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "already running (pid "+strconv.Itoa(dev.Process.Pid)+")") {
		t.Fatalf("a second instance: %v\n%s", err, out)
	}

	children := testenv.ChildrenOf(dev.Process.Pid)
	if len(children) < 2 {
		t.Fatalf("expected etcd and kube-apiserver as children, found %v", children)
	}
	if err := dev.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if err := dev.Wait(); err != nil {
		t.Fatalf("latchkey-dev did not exit cleanly: %v", err)
	}
	for _, pid := range children {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
			t.Errorf("process %d outlived latchkey-dev", pid)
		}
	}
}
