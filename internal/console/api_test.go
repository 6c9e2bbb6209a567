package console

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
	"github.com/latchkey-dev/latchkey/internal/scheme"
)

// fakeActions records what the page asked for: the names created and the
// scopes they were created with.
type fakeActions struct {
	created []string
	scopes  [][]string
}

func (f *fakeActions) Create(_ context.Context, _ client.Client, key *authv1alpha1.ApiKey) (string, error) {
	f.created = append(f.created, key.Name)
	f.scopes = append(f.scopes, key.Spec.Scopes)
	key.Status.KeyHint = "lk_abcde…wxyz"
	return "lk_abcdefghijklmnopqrstuvwxyz", nil
}

func (f *fakeActions) Revoke(context.Context, client.Client, *authv1alpha1.ApiKey) error { return nil }

func (f *fakeActions) Rotate(context.Context, client.Client, *authv1alpha1.ApiKey) (string, error) {
	return "", errors.New("not in this test")
}

func (f *fakeActions) Suspend(context.Context, client.Client, *authv1alpha1.ApiKey, bool) error {
	return nil
}

func (f *fakeActions) ExpiresIn(*authv1alpha1.ApiKey, time.Time) string { return "" }

// serve starts a console on c that allows the verbs in allowed, and
// returns a function that sends the page's requests to it.
func serve(t *testing.T, c client.Client, allowed ...string) (*fakeActions, func(method, path, body string) (*httptest.ResponseRecorder, map[string]any)) {
	t.Helper()
	wrapped := interceptor.NewClient(c.(client.WithWatch), interceptor.Funcs{
		Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
			if r, ok := obj.(*authorizationv1.SelfSubjectAccessReview); ok {
				a := r.Spec.ResourceAttributes
				r.Status.Allowed = strings.Contains(" "+strings.Join(allowed, " ")+" ", " "+a.Verb+"/"+a.Resource+" ")
				return nil
			}
			return c.Create(ctx, obj, opts...)
		},
	})
	actions := &fakeActions{}
	s, err := Listen("127.0.0.1:0", Config{Client: wrapped, Actions: actions, Namespace: "team"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.ln.Close() })
	u, _ := url.Parse(s.URL())
	h := s.Handler()
	return actions, func(method, path, body string) (*httptest.ResponseRecorder, map[string]any) {
		req := httptest.NewRequest(method, "http://"+u.Host+path, strings.NewReader(body))
		req.Header.Set("Origin", "http://"+u.Host)
		req.AddCookie(&http.Cookie{Name: cookieName, Value: s.token})
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var v map[string]any
		_ = json.Unmarshal(rec.Body.Bytes(), &v)
		return rec, v
	}
}

func TestListOffersWhatRBACAllows(t *testing.T) {
	now := metav1.Now()
	c := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(
		&authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "live", CreationTimestamp: now},
			Status: authv1alpha1.ApiKeyStatus{Phase: authv1alpha1.PhaseActive, KeyHint: "lk_live1…abcd"}},
		&authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "gone", CreationTimestamp: now},
			Spec: authv1alpha1.ApiKeySpec{Revoked: true}, Status: authv1alpha1.ApiKeyStatus{Phase: authv1alpha1.PhaseActive}},
	).Build()
	for _, tc := range []struct {
		allowed             []string
		create, change      bool
		liveActions, notice string
	}{
		{[]string{"create/apikeys", "get/secrets", "patch/apikeys"}, true, true, "rotate suspend scopes revoke", ""},
		{[]string{"create/apikeys", "patch/apikeys"}, false, true, "rotate suspend scopes revoke", "You cannot create API keys"},
		{nil, false, false, "", "You can view the API keys of team but not create or change them"},
	} {
		_, do := serve(t, c, tc.allowed...)
		rec, v := do(http.MethodGet, "/api/namespaces/team/apikeys", "")
		if rec.Code != http.StatusOK {
			t.Fatalf("%v: %d %s", tc.allowed, rec.Code, rec.Body)
		}
		if v["canCreate"] != tc.create || v["canChange"] != tc.change || v["active"] != 1.0 {
			t.Errorf("%v: canCreate %v canChange %v active %v", tc.allowed, v["canCreate"], v["canChange"], v["active"])
		}
		if notice, _ := v["notice"].(string); !strings.HasPrefix(notice, tc.notice) || (tc.notice == "") != (notice == "") {
			t.Errorf("%v: notice %q", tc.allowed, notice)
		}
		for _, k := range v["keys"].([]any) {
			row := k.(map[string]any)
			offered := row["actions"].([]any)
			actions := make([]string, 0, len(offered))
			for _, a := range offered {
				actions = append(actions, a.(string))
			}
			want := tc.liveActions
			if row["name"] == "gone" {
				want = ""
				if row["status"] != "Revoked" {
					t.Errorf("a revoked key shows %v", row["status"])
				}
			}
			if got := strings.Join(actions, " "); got != want {
				t.Errorf("%v: %s offers %q, want %q", tc.allowed, row["name"], got, want)
			}
		}
	}
}

func TestCreateShowsTheKeyOnceAndChecksTheName(t *testing.T) {
	actions, do := serve(t, fake.NewClientBuilder().WithScheme(scheme.New()).Build())
	for _, name := range []string{"", "Not_A_Name", strings.Repeat("a", 64)} {
		rec, _ := do(http.MethodPost, "/api/namespaces/team/apikeys", `{"name":"`+name+`"}`)
		if rec.Code != http.StatusBadRequest {
			t.Errorf("name %q: %d", name, rec.Code)
		}
	}
	if len(actions.created) != 0 {
		t.Fatalf("invalid names were created: %v", actions.created)
	}
	rec, v := do(http.MethodPost, "/api/namespaces/team/apikeys", `{"name":"ci","description":"CI"}`)
	if rec.Code != http.StatusCreated || v["key"] == "" || v["keyHint"] != "lk_abcde…wxyz" {
		t.Fatalf("create: %d %v", rec.Code, v["keyHint"])
	}
	if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
		t.Errorf("the answer carrying the key has Cache-Control %q", cc)
	}
}

func TestScopesAreCheckedAndReplaced(t *testing.T) {
	c := fake.NewClientBuilder().WithScheme(scheme.New()).WithObjects(
		&authv1alpha1.ApiKey{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "live"},
			Spec: authv1alpha1.ApiKeySpec{Scopes: []string{"orders:read"}}},
	).Build()
	actions, do := serve(t, c)
	for body, reason := range map[string]string{
		`["Orders"]`:                          `the scope "Orders" is not a scope name`,
		`["orders:"]`:                         `the scope "orders:" is not a scope name`,
		`[""]`:                                `the scope "" is not a scope name`,
		`["a","a"]`:                           `the scope "a" is listed twice`,
		`["` + strings.Repeat("a", 64) + `"]`: "is longer than 63 characters",
		`["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"]`: "a key has at most 16 scopes",
	} {
		for what, send := range map[string]func() (*httptest.ResponseRecorder, map[string]any){
			"create": func() (*httptest.ResponseRecorder, map[string]any) {
				return do(http.MethodPost, "/api/namespaces/team/apikeys", `{"name":"ci","scopes":`+body+`}`)
			},
			"change": func() (*httptest.ResponseRecorder, map[string]any) {
				return do(http.MethodPost, "/api/namespaces/team/apikeys/live/scopes", `{"scopes":`+body+`}`)
			},
		} {
			rec, v := send()
			if msg, _ := v["message"].(string); rec.Code != http.StatusBadRequest || !strings.Contains(msg, reason) {
				t.Errorf("%s with scopes %s: %d %q, want 400 saying %q", what, body, rec.Code, msg, reason)
			}
		}
	}
	if len(actions.created) != 0 {
		t.Fatalf("keys with invalid scopes were created: %v", actions.created)
	}
	scopesOf := func() []string {
		key := &authv1alpha1.ApiKey{}
		if err := c.Get(context.Background(), client.ObjectKey{Namespace: "team", Name: "live"}, key); err != nil {
			t.Fatal(err)
		}
		return key.Spec.Scopes
	}
	if got := scopesOf(); strings.Join(got, ",") != "orders:read" {
		t.Fatalf("a refused change changed the scopes to %v", got)
	}
	for _, want := range []string{"orders:read,orders:write", "orders:read", ""} {
		list, _ := json.Marshal(strings.FieldsFunc(want, func(r rune) bool { return r == ',' }))
		rec, _ := do(http.MethodPost, "/api/namespaces/team/apikeys/live/scopes", `{"scopes":`+string(list)+`}`)
		if rec.Code != http.StatusOK {
			t.Fatalf("scopes %s: %d %s", list, rec.Code, rec.Body)
		}
		if got := strings.Join(scopesOf(), ","); got != want {
			t.Errorf("after %s the key has scopes %q", list, got)
		}
	}
	if rec, _ := do(http.MethodPost, "/api/namespaces/team/apikeys", `{"name":"ci","scopes":["orders:read"]}`); rec.Code != http.StatusCreated {
		t.Errorf("create with a valid scope: %d %s", rec.Code, rec.Body)
	}
	if len(actions.scopes) != 1 || strings.Join(actions.scopes[0], ",") != "orders:read" {
		t.Errorf("the key was created with scopes %v", actions.scopes)
	}
}

func TestRefusalsAreReadable(t *testing.T) {
	forbidden := apierrors.NewForbidden(schema.GroupResource{Group: authv1alpha1.GroupVersion.Group, Resource: "apikeys"}, "",
		errors.New(`User "viewer" cannot list resource "apikeys"`))
	c := interceptor.NewClient(fake.NewClientBuilder().WithScheme(scheme.New()).Build(), interceptor.Funcs{
		List: func(context.Context, client.WithWatch, client.ObjectList, ...client.ListOption) error {
			return forbidden
		},
	})
	_, do := serve(t, c)
	rec, v := do(http.MethodGet, "/api/namespaces/team/apikeys", "")
	msg, _ := v["message"].(string)
	if rec.Code != http.StatusForbidden || !strings.HasPrefix(msg, "listing the API keys of team: Kubernetes refused this (your role does not allow it): ") ||
		!strings.Contains(msg, `User "viewer" cannot list resource "apikeys"`) {
		t.Errorf("a refusal reads %d %q", rec.Code, msg)
	}
}

func TestListenOnlyOnLoopback(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", "192.0.2.1:0", "[::]:0", "example.com:0", "nonsense"} {
		if s, err := Listen(addr, Config{}); err == nil {
			_ = s.ln.Close()
			t.Errorf("Listen(%q) served", addr)
		}
	}
}
