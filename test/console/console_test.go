// Package console_test runs `kubectl latchkey console` against the real
// operator and clicks through its pages in Debian's chromium, driven by
// playwright-core (console.spec.js), and checks its guards with plain HTTP.
package console_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	. "github.com/onsi/gomega"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/operator"
	"github.com/latchkey-dev/latchkey/internal/plugin"
	"github.com/latchkey-dev/latchkey/internal/testenv"
	"github.com/latchkey-dev/latchkey/internal/testenv/inprocess"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

var lk *inprocess.Latchkey

func TestMain(m *testing.M) {
	inprocess.Main(m, inprocess.Options{Tune: func(o *operator.Options) {
		// Last use is written within a second, so that the list shows it.
		o.LastUsedInterval = time.Second
	}}, func(l *inprocess.Latchkey) { lk = l })
}

// syncBuffer is a command's output, read while the command runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// console is one run of `kubectl latchkey console`.
type console struct {
	url string
	// started is when the command was started.
	started time.Time
	out     *syncBuffer
}

// startConsole runs the console command as the user cfg authenticates,
// in namespace ns, until the test ends, and returns the link it printed.
func startConsole(t *testing.T, cfg *rest.Config, ns string) *console {
	t.Helper()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := lk.WriteAdminKubeconfig(kubeconfig); err != nil {
		t.Fatal(err)
	}
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig, flags.Namespace = &kubeconfig, &ns
	out := &syncBuffer{}
	o := &plugin.Options{
		Streams: genericiooptions.IOStreams{In: strings.NewReader(""), Out: out, ErrOut: out},
		Flags:   flags, Clock: clock.RealClock{},
		NewClient: func() (client.Client, error) { return client.New(cfg, client.Options{Scheme: lk.Scheme}) },
	}
	logger := funcr.New(func(prefix, args string) { fmt.Fprintln(out, prefix, args) }, funcr.Options{Verbosity: 1})
	ctx, cancel := context.WithCancel(log.IntoContext(context.Background(), logger))
	c := &console{started: time.Now(), out: out}
	cmd := plugin.NewConsole(o)
	cmd.SetArgs([]string{"--no-browser"})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the console ended with %v", err)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for c.url == "" {
		if i := strings.Index(out.String(), "http://"); i >= 0 {
			c.url = strings.Fields(out.String()[i:])[0]
		} else if time.Now().After(deadline) {
			t.Fatalf("the console printed no link: %s", out.String())
		} else {
			time.Sleep(10 * time.Millisecond)
		}
	}
	return c
}

// browser finds node, chromium and playwright-core, skipping the test
// when they are missing unless CI is set.
func browser(t *testing.T) (node string) {
	t.Helper()
	missing := func(what string) {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing: .ci/run installs it", what)
		}
		t.Skipf("%s is missing: apt-get install chromium nodejs npm; npm ci --prefix test/console", what)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node")
	}
	if _, err := os.Stat("/usr/bin/chromium"); err != nil {
		missing("/usr/bin/chromium")
	}
	if _, err := os.Stat(filepath.Join("node_modules", "playwright-core")); err != nil {
		missing("playwright-core")
	}
	return node
}

// authorize is /authorize's answer to raw, for a route that requires
// scope when it is set.
func authorize(raw, scope string) (int, error) {
	req, _ := http.NewRequest(http.MethodGet, lk.Endpoint+"/authorize", nil)
	req.Header.Set("Authorization", "Bearer "+raw)
	if scope != "" {
		req.Header.Set(protocol.HeaderScopeRequired, scope)
	}
	resp, err := lk.HTTPClient.Do(req)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// report posts executions to /v1/executions with raw.
func report(t *testing.T, raw string, b protocol.Batch) {
	t.Helper()
	body, _ := json.Marshal(b)
	req, _ := http.NewRequest(http.MethodPost, lk.Endpoint+"/v1/executions", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+raw)
	req.Header.Set("Content-Type", "application/json")
	resp, err := lk.HTTPClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("reporting executions: %d %s", resp.StatusCode, b)
	}
}

// viewerConfig is the user viewer, as the API server sees it.
func viewerConfig() *rest.Config {
	cfg := rest.CopyConfig(lk.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "viewer"}
	return cfg
}

// grantViewer gives the user viewer a Role in ns that allows get and list only.
func grantViewer(t *testing.T, ns string) {
	t.Helper()
	ctx := context.Background()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "latchkey-viewer"},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{authv1alpha1.GroupVersion.Group}, Resources: []string{"apikeys", "usages"}, Verbs: []string{"get", "list"},
		}},
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "latchkey-viewer"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "viewer"}},
	}
	for _, obj := range []client.Object{role, binding} {
		if err := lk.Client.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
}

// TestConsoleInABrowser clicks through both pages as an admin and as a
// viewer, against the operator, and writes the README's screenshots.
func TestConsoleInABrowser(t *testing.T) {
	node := browser(t)
	g := NewWithT(t)
	ctx := context.Background()
	ns, empty := lk.Namespace(t), lk.Namespace(t)
	expires := metav1.NewTime(time.Now().Add(90 * 24 * time.Hour).Truncate(time.Second))
	_, reporter := lk.Mint(t, ns, "reporter", authv1alpha1.ApiKeySpec{Description: "Usage reporter", ExpiresAt: &expires})
	lk.Mint(t, ns, "other", authv1alpha1.ApiKeySpec{Description: "Partner integration", Scopes: []string{"orders:read", "orders:write"}})

	// Today: 3 succeeded, 1 failed, 1 in flight; yesterday: 2 succeeded.
	now := time.Now().UTC()
	execution := func(id string, s protocol.State, start time.Time, d time.Duration) protocol.Execution {
		e := protocol.Execution{ID: id, State: s, StartedAt: start}
		if s.Terminal() {
			f := start.Add(d)
			e.FinishedAt = &f
		}
		return e
	}
	today := now.Add(-time.Minute)
	yesterday := now.Add(-24 * time.Hour)
	report(t, reporter, protocol.Batch{IdempotencyKey: "console-1", Executions: []protocol.Execution{
		execution("a", protocol.Succeeded, today, time.Second), execution("b", protocol.Succeeded, today, 2*time.Second),
		execution("c", protocol.Succeeded, today, 3*time.Second), execution("d", protocol.Failed, today, 4*time.Second),
		execution("e", protocol.Running, today, 0),
		execution("f", protocol.Succeeded, yesterday, time.Second), execution("g", protocol.Succeeded, yesterday, time.Second),
	}})
	var usage authv1alpha1.Usage
	g.Eventually(func(g Gomega) {
		g.Expect(lk.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: authv1alpha1.UsageName}, &usage)).To(Succeed())
		g.Expect(usage.Status.Executions).To(BeEquivalentTo(7))
	}).WithTimeout(20 * time.Second).Should(Succeed())

	shots := filepath.Join(testenv.RepoRoot(), "docs", "images")
	g.Expect(os.MkdirAll(shots, 0o755)).To(Succeed())
	script := exec.Command(node, "console.spec.js")
	script.Env = append(os.Environ(), "CONSOLE_SCREENSHOTS="+shots)
	var stderr syncBuffer
	script.Stderr = &stderr
	toScript, _ := script.StdinPipe()
	fromScript, _ := script.StdoutPipe()
	g.Expect(script.Start()).To(Succeed())
	defer func() { _ = script.Process.Kill() }()

	var admin *console
	var raws []string
	var interactive, loaded time.Duration
	answers := json.NewEncoder(toScript)
	lines := bufio.NewScanner(fromScript)
	for lines.Scan() {
		var q struct {
			Ask, Key, Scope, Name, Tooltip, Focused, Notice string
			Cards                                           map[string]string
			// Loaded is how long the page took to load, in milliseconds.
			Loaded int64
		}
		if err := json.Unmarshal(lines.Bytes(), &q); err != nil {
			t.Fatalf("the script wrote %q", lines.Text())
		}
		a := map[string]any{}
		switch q.Ask {
		case "start-admin":
			admin = startConsole(t, lk.Config, ns)
			a["url"], a["empty"] = admin.url, empty
		case "interactive":
			interactive, loaded = time.Since(admin.started), time.Duration(q.Loaded)*time.Millisecond
		case "authorize":
			raws = append(raws, q.Key)
			status, err := authorize(q.Key, q.Scope)
			g.Expect(err).NotTo(HaveOccurred())
			a["status"] = status
		case "revoke":
			key := &authv1alpha1.ApiKey{}
			g.Expect(lk.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: q.Name}, key)).To(Succeed())
			base := key.DeepCopy()
			key.Spec.Revoked = true
			g.Expect(lk.Client.Patch(ctx, key, client.MergeFrom(base))).To(Succeed())
		case "usage-cards":
			g.Expect(q.Cards).To(Equal(map[string]string{
				"executions": "7", "success": usage.Status.SuccessRate + "%", "duration": usage.Status.AverageDurationSeconds + "s",
				"keys": "1", "window": "last 30 days",
			}))
			a["date"] = now.Format(time.DateOnly)
		case "tooltip":
			want := now.Format(time.DateOnly) + " · 5 executions · 3 succeeded · 1 failed · 1 in flight"
			g.Expect(q.Tooltip).To(Equal(want), "the tooltip on hover")
			g.Expect(q.Focused).To(Equal(want), "the tooltip on focus")
		case "start-viewer":
			grantViewer(t, ns)
			a["url"] = startConsole(t, viewerConfig(), ns).url
		case "viewer-notice":
			g.Expect(q.Notice).To(ContainSubstring("can view the API keys of " + ns + " but not create or change them"))
		case "start-viewer-elsewhere":
			a["url"] = startConsole(t, viewerConfig(), lk.Namespace(t)).url
		case "refusal":
			g.Expect(q.Notice).To(ContainSubstring(`Kubernetes refused this (your role does not allow it): apikeys.auth.latchkey.dev is forbidden: User "viewer" cannot list resource "apikeys"`))
		case "done":
		default:
			t.Fatalf("the script asked %q", q.Ask)
		}
		g.Expect(answers.Encode(a)).To(Succeed())
	}
	err := script.Wait()
	for _, raw := range raws {
		if strings.Contains(stderr.String(), raw) {
			t.Fatal("the browser script's output holds a raw key")
		}
	}
	t.Log(stderr.String())
	g.Expect(err).NotTo(HaveOccurred(), "the browser script failed")
	g.Expect(raws).To(HaveLen(6), "the script checked the created key before and after revoking it, the rotated key, and the scoped key three times")
	t.Logf("kubectl latchkey console to an interactive API Keys page (Create key and the rows shown): %s, of which loading the page in the browser %s",
		interactive.Round(time.Millisecond), loaded)

	for _, raw := range raws {
		if strings.Contains(admin.out.String(), raw) {
			t.Error("the console's output or logs hold a raw key")
		}
	}
	g.Expect(admin.out.String()).To(ContainSubstring(`"path"="/api/namespaces/`+ns+`/apikeys"`), "the console logs its requests")
	for _, p := range []string{"console-keys.png", "console-usage.png"} {
		st, err := os.Stat(filepath.Join(shots, p))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(st.ModTime()).To(BeTemporally(">", admin.started))
	}
}

// TestConsoleGuards checks what the console refuses: a request without
// the token's cookie, a wrong token, a foreign Host (DNS rebinding), a
// change from another site or with no Origin.
func TestConsoleGuards(t *testing.T) {
	g := NewWithT(t)
	ns := lk.Namespace(t)
	c := startConsole(t, lk.Config, ns)
	u, err := url.Parse(c.url)
	g.Expect(err).NotTo(HaveOccurred())
	base := "http://" + u.Host
	plain := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(method, path string, header map[string]string) *http.Response {
		req, err := http.NewRequest(method, base+path, strings.NewReader(`{"name":"from-elsewhere"}`))
		g.Expect(err).NotTo(HaveOccurred())
		for k, v := range header {
			if k == "Host" {
				req.Host = v
			} else {
				req.Header.Set(k, v)
			}
		}
		resp, err := plain.Do(req)
		g.Expect(err).NotTo(HaveOccurred())
		_ = resp.Body.Close()
		return resp
	}

	resp := do(http.MethodGet, "/?token="+u.Query().Get("token"), nil)
	g.Expect(resp.StatusCode).To(Equal(http.StatusSeeOther))
	g.Expect(resp.Header.Get("Location")).To(Equal("/"), "the token leaves the address bar")
	cookies := resp.Cookies()
	g.Expect(cookies).To(HaveLen(1))
	g.Expect(cookies[0].HttpOnly).To(BeTrue())
	g.Expect(cookies[0].SameSite).To(Equal(http.SameSiteStrictMode))
	cookie := cookies[0].Name + "=" + cookies[0].Value

	resp = do(http.MethodGet, "/", map[string]string{"Cookie": cookie})
	g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
	csp := resp.Header.Get("Content-Security-Policy")
	g.Expect(csp).To(ContainSubstring("default-src 'self'"))
	g.Expect(csp).To(ContainSubstring("script-src 'self'"))
	g.Expect(csp).NotTo(ContainSubstring("unsafe"))

	origin := map[string]string{"Cookie": cookie, "Origin": base, "Content-Type": "application/json"}
	for name, tc := range map[string]struct {
		method, path string
		header       map[string]string
		status       int
	}{
		"no token":        {http.MethodGet, "/api/session", nil, http.StatusUnauthorized},
		"no token, page":  {http.MethodGet, "/", nil, http.StatusUnauthorized},
		"a wrong token":   {http.MethodGet, "/?token=guessed", nil, http.StatusUnauthorized},
		"a wrong cookie":  {http.MethodGet, "/api/session", map[string]string{"Cookie": "latchkey_console=guessed"}, http.StatusUnauthorized},
		"a foreign Host":  {http.MethodGet, "/api/session", map[string]string{"Cookie": cookie, "Host": "attacker.example:" + u.Port()}, http.StatusMisdirectedRequest},
		"cross-site POST": {http.MethodPost, "/api/namespaces/" + ns + "/apikeys", map[string]string{"Cookie": cookie, "Origin": "http://attacker.example"}, http.StatusForbidden},
		"POST, no Origin": {http.MethodPost, "/api/namespaces/" + ns + "/apikeys", map[string]string{"Cookie": cookie}, http.StatusForbidden},
		"cross-site fetch": {http.MethodPost, "/api/namespaces/" + ns + "/apikeys/x/revoke",
			map[string]string{"Cookie": cookie, "Origin": base, "Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		"the page's own": {http.MethodGet, "/api/session", origin, http.StatusOK},
	} {
		g.Expect(do(tc.method, tc.path, tc.header).StatusCode).To(Equal(tc.status), name)
	}
	var keys authv1alpha1.ApiKeyList
	g.Expect(lk.Client.List(context.Background(), &keys, client.InNamespace(ns))).To(Succeed())
	g.Expect(keys.Items).To(BeEmpty(), "a refused request created a key")
}
