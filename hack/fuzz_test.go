// Package hack_test tests the scripts in hack/ that `make` runs.
package hack_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The endings of `go test -fuzz` runs as Go 1.26 prints them.
const (
	progress = "fuzz: elapsed: 3s, execs: 72358 (24114/sec), new interesting: 0 (total: 35)\n"
	raced    = progress + "--- FAIL: FuzzX (3.08s)\n    context deadline exceeded\nFAIL\nexit status 1\nFAIL\texample.com/p\t3.084s\n"
	crashed  = progress + "--- FAIL: FuzzX (0.10s)\n    --- FAIL: FuzzX (0.00s)\n        testing.go:1: panic: boom\n" +
		"    Failing input written to testdata/fuzz/FuzzX/0123abcd\n    To re-run:\n    go test -run=FuzzX/0123abcd\n" +
		"    context deadline exceeded\nFAIL\nexit status 1\nFAIL\texample.com/p\t0.2s\n"
	hung = progress + "--- FAIL: FuzzX (3.50s)\n    fuzzing process hung or terminated unexpectedly: exit status 2\n    context deadline exceeded\n" +
		"FAIL\nexit status 1\nFAIL\texample.com/p\t3.5s\n"
	passed = progress + "PASS\nok  \texample.com/p\t3.1s\n"
)

func TestFuzzScript(t *testing.T) {
	for _, tc := range []struct {
		name   string
		output string
		rc     string
		pass   bool
		want   []string
		absent []string
	}{
		{"a run that finishes cleanly passes with its last progress line", passed, "0", true,
			[]string{"== FuzzX (./p, 3s)", "execs: 72358", "ok  \texample.com/p"}, []string{"75804"}},
		{"a run failed only by Go's own fuzztime deadline passes, saying so", raced, "1", true,
			[]string{"execs: 72358", "go.dev/issue/75804"}, []string{"FAIL"}},
		{"a crasher fails even when the deadline is reported too", crashed, "1", false,
			[]string{"Failing input written to", "FAIL"}, []string{"75804"}},
		{"a hung worker fails even when the deadline is reported too", hung, "1", false,
			[]string{"hung or terminated", "FAIL"}, []string{"75804"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := t.TempDir()
			fake := "#!/bin/sh\ncat \"$FAKE_GO_OUTPUT\"\nexit $FAKE_GO_RC\n"
			if err := os.WriteFile(filepath.Join(bin, "go"), []byte(fake), 0o755); err != nil {
				t.Fatal(err)
			}
			outFile := filepath.Join(bin, "output")
			if err := os.WriteFile(outFile, []byte(tc.output), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("bash", "fuzz.sh", "./p:FuzzX")
			cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"),
				"FAKE_GO_OUTPUT="+outFile, "FAKE_GO_RC="+tc.rc, "FUZZTIME=3s")
			out, err := cmd.CombinedOutput()
			if got := err == nil; got != tc.pass {
				t.Errorf("passed = %v, want %v; output:\n%s", got, tc.pass, out)
			}
			for _, s := range tc.want {
				if !strings.Contains(string(out), s) {
					t.Errorf("output lacks %q:\n%s", s, out)
				}
			}
			for _, s := range tc.absent {
				if strings.Contains(string(out), s) {
					t.Errorf("output has %q:\n%s", s, out)
				}
			}
		})
	}
}
