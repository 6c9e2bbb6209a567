package latchkey_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/keys"
	"github.com/latchkey-dev/latchkey/internal/testenv/inprocess"
	"github.com/latchkey-dev/latchkey/pkg/latchkey"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// secretVolume lays a Secret's data out as kubelet's atomic writer does:
// each version in a timestamped directory (..2026_12_01_22_43_07.123456),
// ..data a symlink to the newest, and each data key a symlink into
// ..data. An update writes the new directory, renames a new ..data
// symlink over the old one, and removes the old directory.
type secretVolume struct {
	t       *testing.T
	dir     string
	current string
}

func (v *secretVolume) write(data map[string][]byte) {
	v.t.Helper()
	ts, err := os.MkdirTemp(v.dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		v.t.Fatal(err)
	}
	for name, b := range data {
		if err := os.WriteFile(filepath.Join(ts, name), b, 0o644); err != nil {
			v.t.Fatal(err)
		}
	}
	tmp := filepath.Join(v.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		v.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(v.dir, "..data")); err != nil {
		v.t.Fatal(err)
	}
	for name := range data {
		link := filepath.Join(v.dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				v.t.Fatal(err)
			}
		}
	}
	if v.current != "" {
		if err := os.RemoveAll(v.current); err != nil {
			v.t.Fatal(err)
		}
	}
	v.current = ts
}

// reports records, by key hint, the executions reports Latchkey answered
// and how: it wraps the client's transport, so it sees what was really sent.
type reports struct {
	next http.RoundTripper
	mu   sync.Mutex
	seen []string // "hint status"
}

func (r *reports) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.next.RoundTrip(req)
	if err == nil && req.URL.Path == protocol.PathExecutions {
		key, _ := protocol.BearerToken(req.Header.Get("Authorization"))
		r.mu.Lock()
		r.seen = append(r.seen, fmt.Sprintf("%s %d", keys.Hint(key), resp.StatusCode))
		r.mu.Unlock()
	}
	return resp, err
}

func (r *reports) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.seen...)
}

// until calls the service until a report with the key whose hint is given
// has been answered.
func (r *reports) until(t *testing.T, call func(), hint string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		call()
		for _, s := range r.all() {
			if strings.HasPrefix(s, hint+" ") {
				return
			}
		}
	}
	t.Fatalf("no report with %s; reports: %v", hint, r.all())
}

// A key file kubelet replaces is read again with no restart: reports go
// out with the new key once the volume's ..data has been swapped.
func TestKeyFileFollowsASecretVolume(t *testing.T) {
	standIn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == protocol.PathAuthorize {
			w.Header().Set(protocol.HeaderTenant, "t")
		}
	}))
	defer standIn.Close()
	first, second := "lk_first-key-of-the-service", "lk_second-key-of-the-service"
	vol := &secretVolume{t: t, dir: t.TempDir()}
	vol.write(map[string][]byte{"api-key": []byte(first), "tenant": []byte("t")})
	t.Setenv(latchkey.EnvAPIKeyFile, filepath.Join(vol.dir, "api-key"))
	t.Setenv(latchkey.EnvAPIKey, "lk_ignored-when-a-file-is-named")

	var logsMu sync.Mutex
	var logs strings.Builder
	rec := &reports{next: http.DefaultTransport}
	lk, err := latchkey.New(latchkey.Config{
		Endpoint: standIn.URL, HTTPClient: &http.Client{Transport: rec}, FlushInterval: 10 * time.Millisecond,
		Logf: func(format string, args ...any) {
			logsMu.Lock()
			defer logsMu.Unlock()
			fmt.Fprintf(&logs, format+"\n", args...)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lk.Close(context.Background()) }()
	svc := httptest.NewServer(lk.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})))
	defer svc.Close()
	call := func() {
		req, _ := http.NewRequest(http.MethodGet, svc.URL, nil)
		req.Header.Set("Authorization", protocol.Bearer("lk_a-caller"))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_ = resp.Body.Close()
		}
	}

	rec.until(t, call, keys.Hint(first))
	vol.write(map[string][]byte{"api-key": []byte(second), "tenant": []byte("t")})
	rec.until(t, call, keys.Hint(second))
	seen := rec.all()
	for i, s := range seen {
		if strings.HasPrefix(s, keys.Hint(second)) {
			for _, later := range seen[i:] {
				if !strings.HasPrefix(later, keys.Hint(second)) {
					t.Fatalf("a report went back to another key after the new one: %v", seen)
				}
			}
			break
		}
	}

	// A volume whose ..data leads nowhere for a moment keeps the key read
	// last, and says so without the key.
	if err := os.Remove(filepath.Join(vol.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	before := len(rec.all())
	for len(rec.all()) == before {
		call()
		time.Sleep(20 * time.Millisecond)
	}
	if got := rec.all()[before]; !strings.HasPrefix(got, keys.Hint(second)) {
		t.Fatalf("with the file gone, a report went with %s", got)
	}
	logsMu.Lock()
	logged := logs.String()
	logsMu.Unlock()
	if !strings.Contains(logged, "reading the API key file") || strings.Contains(logged, second) || strings.Contains(logged, first) {
		t.Fatalf("logged %q", strings.NewReplacer(first, "<first>", second, "<second>").Replace(logged))
	}
}

func TestKeyFileErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := latchkey.New(latchkey.Config{Endpoint: "https://x", APIKeyFile: filepath.Join(dir, "none")}); err == nil || !strings.Contains(err.Error(), "reading the API key file") {
		t.Fatalf("a missing key file: %v", err)
	}
	empty := filepath.Join(dir, "empty")
	_ = os.WriteFile(empty, []byte("\n"), 0o600)
	if _, err := latchkey.New(latchkey.Config{Endpoint: "https://x", APIKeyFile: empty}); err == nil || !strings.Contains(err.Error(), "holds no key") {
		t.Fatalf("an empty key file: %v", err)
	}
	if _, err := latchkey.New(latchkey.Config{Endpoint: "https://x", APIKeyFile: empty, APIKey: "lk_x"}); err == nil || !strings.Contains(err.Error(), "exclusive") {
		t.Fatalf("a key and a key file: %v", err)
	}
}

// The key file follows a real rotation: the Secret Latchkey writes, laid
// out as kubelet mounts it, before and after a rotation (the kubelet is not
// available here), with every report accepted by the real Latchkey while
// the previous key is in its grace period.
func TestKeyFileFollowsARotation(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a control plane and the operator")
	}
	ctx := context.Background()
	env, err := inprocess.Start(ctx, inprocess.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = env.Stop() }()
	ns := env.Namespace(t)
	_, caller := env.Mint(t, ns, "caller", authv1alpha1.ApiKeySpec{})
	reporter, first := env.Mint(t, ns, "reporter", authv1alpha1.ApiKeySpec{})
	secretData := func() map[string][]byte {
		s := &corev1.Secret{}
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: reporter.SecretName()}, s); err != nil {
			t.Fatal(err)
		}
		return s.Data
	}
	vol := &secretVolume{t: t, dir: t.TempDir()}
	vol.write(secretData())

	next := env.HTTPClient.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	rec := &reports{next: next}
	lk, err := latchkey.New(latchkey.Config{
		Endpoint: env.Endpoint, HTTPClient: &http.Client{Transport: rec, Timeout: 5 * time.Second},
		APIKeyFile: filepath.Join(vol.dir, authv1alpha1.SecretKeyAPIKey), FlushInterval: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lk.Close(ctx) }()
	svc := httptest.NewServer(lk.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})))
	defer svc.Close()
	call := func() {
		req, _ := http.NewRequest(http.MethodGet, svc.URL, nil)
		req.Header.Set("Authorization", protocol.Bearer(caller))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("the service answered %d", resp.StatusCode)
		}
	}
	rec.until(t, call, keys.Hint(first))

	base := reporter.DeepCopy()
	at := metav1.NewTime(time.Now().Truncate(time.Second).Add(time.Second))
	reporter.Spec.Rotation = &authv1alpha1.RotationSpec{RequestedAt: &at}
	if err := env.Client.Patch(ctx, reporter, client.MergeFrom(base)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); reporter.Status.Rotation < 1 || reporter.Status.ObservedGeneration != reporter.Generation ||
		reporter.Status.Phase != authv1alpha1.PhaseActive; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not rotated: rotation %d, phase %s", reporter.Status.Rotation, reporter.Status.Phase)
		}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(reporter), reporter); err != nil {
			t.Fatal(err)
		}
	}
	data := secretData()
	second := string(data[authv1alpha1.SecretKeyAPIKey])
	if second == first || keys.Hint(second) != reporter.Status.KeyHint {
		t.Fatalf("after the rotation the Secret holds %s, the status names %s", keys.Hint(second), reporter.Status.KeyHint)
	}
	// The operator's index learns of the new key from its watch, a moment
	// after the status: kubelet's minute covers that in a cluster.
	for deadline := time.Now().Add(10 * time.Second); env.Verifies(second) != nil; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the new key is never accepted")
		}
	}
	vol.write(data)
	rec.until(t, call, keys.Hint(second))
	for _, s := range rec.all() {
		if !strings.HasSuffix(s, " 200") {
			t.Fatalf("a report was refused: %v", rec.all())
		}
	}
}
