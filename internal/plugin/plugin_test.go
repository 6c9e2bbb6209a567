package plugin

import (
	"bytes"
	"context"
	"encoding/pem"
	"flag"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/keys"
	"github.com/latchkey-dev/latchkey/internal/testenv/inprocess"
)

var (
	update = flag.Bool("update", false, "rewrite the golden files")
	lk     *inprocess.Latchkey
)

func TestMain(m *testing.M) {
	flag.Parse()
	inprocess.Main(m, inprocess.Options{}, func(l *inprocess.Latchkey) { lk = l })
}

// run runs the plugin with args in namespace ns at the clock's time, with stdin as input.
func run(t testing.TB, now time.Time, stdin string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	o := &Options{
		Streams:   genericiooptions.IOStreams{In: strings.NewReader(stdin), Out: &out, ErrOut: &errOut},
		Flags:     genericclioptions.NewConfigFlags(false),
		Clock:     clocktesting.NewFakeClock(now),
		Color:     ptr.To(false),
		NewClient: func() (client.Client, error) { return lk.Client, nil },
	}
	cmd := NewCommand(o)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	file := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(file, []byte(got), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run with -update to write it)", err)
	}
	if got != string(want) {
		t.Fatalf("output differs from %s:\n--- got\n%s--- want\n%s", file, got, want)
	}
}

// hints and dates set by the API server and the random key differ each run.
var (
	hintRE = regexp.MustCompile(`(lk_[0-9A-Za-z]{5}|[0-9a-f]{8})…[0-9A-Za-z]{4}`)
	dateRE = regexp.MustCompile(`\d{4}-\d{2}-\d{2}`)
)

func normalise(s string) string {
	return dateRE.ReplaceAllString(hintRE.ReplaceAllString(s, "<hint>"), "<date>")
}

func TestCreateListRevoke(t *testing.T) {
	ns := lk.Namespace(t)
	now := time.Now()
	out, err := run(t, now, "", "create", "ci", "--description", "GitHub Actions CI", "-n", ns)
	if err != nil {
		t.Fatal(err)
	}
	secret := &corev1.Secret{}
	if err := lk.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "ci"}, secret); err != nil {
		t.Fatal(err)
	}
	raw := string(secret.Data[authv1alpha1.SecretKeyAPIKey])
	if !strings.Contains(out, "\n  "+raw+"\n") || !strings.Contains(out, "Store it now") {
		t.Fatalf("create printed:\n%s", out)
	}

	if _, err := run(t, now, "", "create", "ci", "-n", ns); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("creating it twice: %v", err)
	}
	if _, err := run(t, now, "", "create", "x", "--format", "base64", "-n", ns); err == nil || !strings.Contains(err.Error(), "--format must be prefixed or hex") {
		t.Fatalf("a bad format: %v", err)
	}

	soon := metav1.NewTime(now.Add(time.Hour))
	for _, k := range []*authv1alpha1.ApiKey{
		{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "expiring"}, Spec: authv1alpha1.ApiKeySpec{ExpiresAt: &soon}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "used"}},
	} {
		if err := lk.Client.Create(context.Background(), k); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"expiring", "used"} {
		lk.WaitForPhase(t, ns, name, authv1alpha1.PhaseActive)
	}
	used := &authv1alpha1.ApiKey{}
	_ = lk.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "used"}, used)
	patch := client.RawPatch(types.MergePatchType, []byte(`{"status":{"lastUsedAt":"2026-11-20T09:30:00Z"}}`))
	if err := lk.Client.Status().Patch(context.Background(), used, patch); err != nil {
		t.Fatal(err)
	}

	if _, err := run(t, now, "n\n", "revoke", "ci", "-n", ns); err == nil || !strings.Contains(err.Error(), "pass --yes") {
		t.Fatalf("revoke without confirmation: %v", err)
	}
	out, err = run(t, now, "y\n", "revoke", "ci", "-n", ns)
	if err != nil || !strings.Contains(out, "Revoked "+ns+"/ci") {
		t.Fatalf("revoke: %v\n%s", err, out)
	}
	if _, err := run(t, now, "", "revoke", "nope", "-n", ns); err == nil || !strings.Contains(err.Error(), "no ApiKey \"nope\"") {
		t.Fatalf("revoking a missing key: %v", err)
	}

	// Two hours on, the expiring key shows Expired: the injected clock decides.
	out, err = run(t, now.Add(2*time.Hour), "", "list", "-n", ns)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "list.txt", normalise(out))
	out, err = run(t, now, "", "ls", "-A")
	if err != nil || !strings.Contains(out, "NAMESPACE") || !strings.Contains(out, ns) {
		t.Fatalf("list -A: %v\n%s", err, out)
	}
	out, err = run(t, now, "", "list", "-n", ns, "-o", "json")
	if err != nil || !strings.Contains(out, `"kind": "ApiKeyList"`) && !strings.Contains(out, `"items"`) {
		t.Fatalf("list -o json: %v\n%s", err, out)
	}
	if strings.Contains(out, raw) {
		t.Fatal("list printed a raw key")
	}
}

func TestWhoAmI(t *testing.T) {
	ns := lk.Namespace(t)
	if _, err := run(t, time.Now(), "", "create", "svc", "-n", ns); err != nil {
		t.Fatal(err)
	}
	secret := &corev1.Secret{}
	_ = lk.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "svc"}, secret)
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	_ = os.WriteFile(caFile, lk.WebhookCA, 0o600)

	t.Setenv("LATCHKEY_API_KEY", string(secret.Data[authv1alpha1.SecretKeyAPIKey]))
	out, err := run(t, time.Now(), "", "whoami", "--endpoint", lk.Endpoint, "--ca-file", caFile)
	if err != nil || !strings.Contains(out, "Tenant:   "+ns) || !strings.Contains(out, "Key:      svc") {
		t.Fatalf("whoami: %v\n%s", err, out)
	}
	t.Setenv("LATCHKEY_API_KEY", "lk_not-a-key")
	if _, err := run(t, time.Now(), "", "whoami", "--endpoint", lk.Endpoint, "--ca-file", caFile); err == nil || !strings.Contains(err.Error(), "was refused") {
		t.Fatalf("whoami with a wrong key: %v", err)
	}
	t.Setenv("LATCHKEY_API_KEY", "")
	if _, err := run(t, time.Now(), "", "whoami", "--endpoint", lk.Endpoint); err == nil || !strings.Contains(err.Error(), "set LATCHKEY_API_KEY") {
		t.Fatalf("whoami with no key: %v", err)
	}
}

// whoami run inside a checkout that names a server of its own in
// bin/dev/endpoint (what it used to read) sends that server nothing: with no
// endpoint given or named by the kubeconfig it refuses to guess.
func TestWhoAmIIgnoresTheCurrentDirectory(t *testing.T) {
	var got atomic.Int32
	planted := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Add(1)
		_, _ = w.Write([]byte(`{"tenant":"planted"}`))
	}))
	defer planted.Close()
	checkout := t.TempDir()
	if err := os.MkdirAll(filepath.Join(checkout, "bin", "dev"), 0o700); err != nil {
		t.Fatal(err)
	}
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: planted.Certificate().Raw})
	_ = os.WriteFile(filepath.Join(checkout, "bin", "dev", "endpoint"), []byte(planted.URL+"\n"), 0o600)
	_ = os.WriteFile(filepath.Join(checkout, "bin", "dev", "ca.crt"), ca, 0o600)
	t.Chdir(checkout)
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "none"))
	t.Setenv("LATCHKEY_ENDPOINT", "")
	t.Setenv("LATCHKEY_API_KEY", "lk_the-key-of-whoever-runs-it")

	out, err := run(t, time.Now(), "", "whoami")
	if err == nil || !strings.Contains(err.Error(), "no endpoint") {
		t.Fatalf("whoami in a checkout with bin/dev/endpoint: %v\n%s", err, out)
	}
	if n := got.Load(); n != 0 {
		t.Fatalf("the checkout's server received %d requests", n)
	}
}

// An endpoint that redirects never receives the key at the place it names.
func TestWhoAmIFollowsNoRedirect(t *testing.T) {
	var stolen atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/elsewhere" {
			stolen.Add(1)
			return
		}
		http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
	}))
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	_ = os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600)
	t.Setenv("LATCHKEY_API_KEY", "lk_the-key-of-whoever-runs-it")
	out, err := run(t, time.Now(), "", "whoami", "--endpoint", srv.URL, "--ca-file", caFile)
	if err == nil || !strings.Contains(err.Error(), "307") {
		t.Fatalf("whoami against a redirect: %v\n%s", err, out)
	}
	if n := stolen.Load(); n != 0 {
		t.Fatalf("the redirect's target received %d requests", n)
	}
}

// make dev's kubeconfig names the endpoints and their CA: whoami finds them
// there, with no flag.
func TestWhoAmIFromTheKubeconfig(t *testing.T) {
	ns := lk.Namespace(t)
	if _, err := run(t, time.Now(), "", "create", "svc", "-n", ns); err != nil {
		t.Fatal(err)
	}
	secret := &corev1.Secret{}
	_ = lk.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "svc"}, secret)
	files, err := lk.WriteFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	t.Setenv("LATCHKEY_ENDPOINT", "")
	t.Setenv("LATCHKEY_API_KEY", string(secret.Data[authv1alpha1.SecretKeyAPIKey]))
	out, err := run(t, time.Now(), "", "whoami", "--kubeconfig", files.Kubeconfig)
	if err != nil || !strings.Contains(out, "Tenant:   "+ns) || !strings.Contains(out, "Key:      svc") {
		t.Fatalf("whoami with make dev's kubeconfig: %v\n%s", err, out)
	}
}

func TestUsageChart(t *testing.T) {
	s := &authv1alpha1.UsageStatus{
		Executions: 57, Succeeded: 40, Failed: 12, InFlight: 5, SuccessRate: "76.9", AverageDurationSeconds: "2.350",
		Keys: authv1alpha1.UsageKeys{Active: 3, Revoked: 1},
		Days: []authv1alpha1.UsageDay{
			{Date: "2026-11-18", Total: 0},
			{Date: "2026-11-19", Total: 10, Succeeded: 9, Failed: 1},
			{Date: "2026-11-20", Total: 40, Succeeded: 28, Failed: 8, VerificationsAllowed: 90},
			{Date: "2026-11-21", Total: 1, Failed: 1},
			{Date: "2026-11-22", Total: 6, Succeeded: 3, Failed: 2},
		},
	}
	var out bytes.Buffer
	if err := printUsage(&out, "payments", s); err != nil {
		t.Fatal(err)
	}
	golden(t, "usage.txt", out.String())

	ns := lk.Namespace(t)
	if _, err := run(t, time.Now(), "", "usage", "-n", ns); err == nil || !strings.Contains(err.Error(), "no usage in "+ns) {
		t.Fatalf("usage with no keys: %v", err)
	}
	if _, err := run(t, time.Now(), "", "create", "k", "-n", ns); err != nil {
		t.Fatal(err)
	}
	var got string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if got, _ = run(t, time.Now(), "", "usage", "-n", ns, "-o", "json"); strings.Contains(got, `"active": 1`) {
			return
		}
	}
	t.Fatalf("usage -o json:\n%s", got)
}

func TestScan(t *testing.T) {
	dir := t.TempDir()
	key := "lk_" + strings.Repeat("0", 43)
	key += checksumOf(t, key)
	_ = os.WriteFile(filepath.Join(dir, "ok.txt"), []byte("nothing here\nlk_"+strings.Repeat("a", 49)+"\n"), 0o600)
	_ = os.MkdirAll(filepath.Join(dir, "deploy"), 0o700)
	_ = os.WriteFile(filepath.Join(dir, "deploy", ".env"), []byte("# config\n\nAPI_KEY="+key+"\n"), 0o600)

	out, err := run(t, time.Now(), "", "scan", dir)
	if err == nil || !strings.Contains(err.Error(), "found 1 Latchkey API key") {
		t.Fatalf("scan: %v", err)
	}
	want := filepath.Join(dir, "deploy", ".env") + ":3: Latchkey API key lk_00000…" + key[len(key)-4:] + "\n"
	if out != want {
		t.Fatalf("scan printed %q, want %q", out, want)
	}
	if strings.Contains(out, key) {
		t.Fatal("scan printed the key")
	}
	if _, err := run(t, time.Now(), "", "scan", filepath.Join(dir, "ok.txt")); err != nil {
		t.Fatalf("a clean file: %v", err)
	}
}

// checksumOf completes a Prefixed key body with its checksum, by asking
// Generate for the all-zero key.
func checksumOf(t *testing.T, prefixAndBody string) string {
	t.Helper()
	k, err := keys.Generate(bytes.NewReader(make([]byte, 32)), keys.Prefixed)
	if err != nil || k[:46] != prefixAndBody {
		t.Fatalf("%v %s", err, k)
	}
	return k[46:]
}

func TestEnable(t *testing.T) {
	ns := lk.Namespace(t)
	out, err := run(t, time.Now(), "", "enable", "-n", ns)
	if err != nil || !strings.Contains(out, "Latchkey may now deliver keys in "+ns) {
		t.Fatalf("enable: %v\n%s", err, out)
	}
	rb := &rbacv1.RoleBinding{}
	if err := lk.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: authv1alpha1.KeyDeliveryClusterRole}, rb); err != nil {
		t.Fatal(err)
	}
	want := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Namespace: "latchkey-system", Name: "latchkey-controller-manager"}
	if rb.RoleRef.Name != authv1alpha1.KeyDeliveryClusterRole || len(rb.Subjects) != 1 || rb.Subjects[0] != want {
		t.Fatalf("the RoleBinding binds %+v to %+v", rb.RoleRef, rb.Subjects)
	}
	if out, err := run(t, time.Now(), "", "enable", "-n", ns); err != nil || !strings.Contains(out, "already delivers keys") {
		t.Fatalf("enabling twice: %v\n%s", err, out)
	}
	if _, err := run(t, time.Now(), "", "enable", "-n", ns, "--service-account", "latchkey"); err == nil || !strings.Contains(err.Error(), "NAMESPACE:NAME") {
		t.Fatalf("a bad --service-account: %v", err)
	}
}
