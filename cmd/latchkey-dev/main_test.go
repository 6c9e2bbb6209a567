package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/latchkey-dev/latchkey/internal/testenv"
	"github.com/latchkey-dev/latchkey/pkg/devenv/controlplane"
)

// rawKey finds Prefixed keys in what a test prints, which must never show one.
var rawKey = regexp.MustCompile(`lk_[0-9A-Za-z]{20,}`)

func redact(s string) string { return rawKey.ReplaceAllString(s, "lk_…(redacted)") }

// TestDevTour builds and starts latchkey-dev as `make dev` does, runs every
// line of the tour it prints in one bash session (the real kubectl, the
// plugin, curl) and checks what each prints, checks a second instance says
// one is running, and stops it with Ctrl-C (SIGINT): it must exit cleanly
// and leave none of its processes behind.
func TestDevTour(t *testing.T) {
	assets, err := testenv.Assets()
	if err != nil {
		t.Fatal(err)
	}
	binDir := t.TempDir()
	bin := filepath.Join(binDir, "latchkey-dev")
	for pkg, out := range map[string]string{".": bin, "../kubectl-latchkey": filepath.Join(binDir, "kubectl-latchkey")} {
		if out, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	dir := t.TempDir()
	dev := exec.Command(bin, "--dir", dir, "--assets", assets, "--plugin-dir", binDir)
	stdout, _ := dev.StdoutPipe()
	dev.Stderr = os.Stderr
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = dev.Process.Kill() }()
	lines := bufio.NewScanner(stdout)
	var printed strings.Builder
	var tourLines []string
	inTour := false
	for lines.Scan() {
		line := lines.Text()
		printed.WriteString(line + "\n")
		switch {
		case strings.HasPrefix(line, "Try it"):
			inTour = true
		case inTour && strings.HasPrefix(line, "  "):
			tourLines = append(tourLines, strings.TrimPrefix(line, "  "))
		case strings.HasPrefix(line, "Press Ctrl-C"):
			inTour = false
		}
		if strings.HasPrefix(line, "Press Ctrl-C") {
			break
		}
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	if strings.Contains(printed.String(), "log.SetLogger") {
		t.Fatalf("controller-runtime warned that no logger was set:\n%s", printed.String())
	}

	// What each line of the tour must print, in order: a new line of the
	// tour needs an entry here.
	want := []string{
		"",                                     // export
		"apikey.auth.latchkey.dev/ci-pipeline", // kubectl apply
		"condition met",                        // kubectl wait
		"Created API key default/laptop",       // kubectl latchkey create
		"Active keys: 2",                       // kubectl latchkey list
		"",                                     // KEY=…
		"X-Latchkey-Tenant: default",           // curl /authorize
		"127.0.0.1:",                           // the gRPC ext_authz address
		"ci-pipeline",                          // kubectl latchkey whoami
		"latchkey:default:ci-pipeline",         // kubectl auth whoami, as the key
		"Revoked",                              // kubectl latchkey revoke
		"401",                                  // curl /authorize again
		"Executions",                           // kubectl latchkey usage
		"Minted key",                           // the operator's log
	}
	if len(tourLines) != len(want) {
		t.Fatalf("the tour has %d lines, the test knows %d:\n%s", len(tourLines), len(want), strings.Join(tourLines, "\n"))
	}
	var script strings.Builder
	for i, line := range tourLines {
		fmt.Fprintf(&script, "echo '@@LINE %d'\n%s 2>&1\necho \"@@EXIT $?\"\n", i, line)
	}
	run := exec.Command("bash", "-c", script.String())
	run.Dir = testenv.RepoRoot()
	out, err := run.CombinedOutput()
	if err != nil {
		t.Fatalf("running the tour: %v\n%s", err, redact(string(out)))
	}
	outputs := strings.Split(string(out), "@@LINE ")[1:]
	if len(outputs) != len(tourLines) {
		t.Fatalf("the tour stopped early:\n%s", redact(string(out)))
	}
	for i, o := range outputs {
		o = strings.TrimPrefix(o, strconv.Itoa(i)+"\n")
		body, exit, _ := strings.Cut(o, "@@EXIT ")
		if strings.TrimSpace(exit) != "0" || !strings.Contains(body, want[i]) {
			t.Errorf("tour line %d, %q: exit %s, want %q in:\n%s", i, tourLines[i], strings.TrimSpace(exit), want[i], redact(body))
		}
	}

	// The README shows the same tour, for the default directories.
	readme, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defaults := tour(controlplane.Files{
		Kubeconfig: "bin/dev/kubeconfig", KeyKubeconfig: "bin/dev/key-kubeconfig", CA: "bin/dev/ca.crt", Endpoint: "bin/dev/endpoint",
		ExtAuthzEndpoint: "bin/dev/ext-authz-endpoint",
	}, "$(make -s envtest)", "bin", "bin/dev/manager.log")
	var block []string
	for _, line := range strings.Split(defaults, "\n") {
		if strings.HasPrefix(line, "  ") {
			block = append(block, strings.TrimPrefix(line, "  "))
		}
	}
	if !strings.Contains(string(readme), "```sh\n"+strings.Join(block, "\n")+"\n```") {
		t.Errorf("README.md's tour differs from the one make dev prints; it should read:\n%s", strings.Join(block, "\n"))
	}

	out, err = exec.Command(bin, "--dir", dir, "--assets", assets).CombinedOutput()
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
