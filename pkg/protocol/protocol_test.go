package protocol

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"
)

func TestBearerToken(t *testing.T) {
	key := "lk_" + strings.Repeat("a", 43) + "b1C2d3"
	for _, tt := range []struct {
		name, header, want string
		ok                 bool
	}{
		{"a prefixed key", "Bearer " + key, key, true},
		{"a hex key", "Bearer " + strings.Repeat("0f", 32), strings.Repeat("0f", 32), true},
		{"the scheme in any case", "bEaReR " + key, key, true},
		{"a token with b64token's punctuation and padding", "Bearer a-._~+/b==", "a-._~+/b==", true},
		{"a token of the longest length", "Bearer " + strings.Repeat("a", MaxTokenLength), strings.Repeat("a", MaxTokenLength), true},
		{"no header", "", "", false},
		{"the scheme alone", "Bearer", "", false},
		{"the scheme and a space", "Bearer ", "", false},
		{"two spaces after the scheme", "Bearer  " + key, "", false},
		{"a tab after the scheme", "Bearer\t" + key, "", false},
		{"no space after the scheme", "Bearer" + key, "", false},
		{"another scheme", "Basic " + key, "", false},
		{"a scheme that starts like bearer", "Bearerx " + key, "", false},
		{"a space inside the token", "Bearer lk_a b", "", false},
		{"a trailing space", "Bearer " + key + " ", "", false},
		{"a quoted token", `Bearer "` + key + `"`, "", false},
		{"a comma-separated second credential", "Bearer " + key + ",x", "", false},
		{"padding alone", "Bearer ==", "", false},
		{"padding inside the token", "Bearer a=b", "", false},
		{"a token one byte too long", "Bearer " + strings.Repeat("a", MaxTokenLength+1), "", false},
		{"a control character", "Bearer lk_\x00", "", false},
		{"a non-ASCII character", "Bearer lk_é", "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := BearerToken(tt.header)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("BearerToken(%q) = %q, %v; want %q, %v", tt.header, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestBearerRoundTrips(t *testing.T) {
	key := "lk_abc123"
	if got, ok := BearerToken(Bearer(key)); !ok || got != key {
		t.Fatalf("BearerToken(Bearer(%q)) = %q, %v", key, got, ok)
	}
}

func FuzzBearerToken(f *testing.F) {
	f.Add("Bearer lk_abc")
	f.Add("bearer  x")
	f.Add("Basic abc")
	f.Add("Bearer a==")
	f.Add("")
	f.Fuzz(func(t *testing.T, header string) {
		token, ok := BearerToken(header)
		if !ok {
			return
		}
		if token == "" || len(token) > MaxTokenLength || strings.ContainsAny(token, " \t\r\n\",") ||
			!strings.EqualFold(header[:len(scheme)], scheme) || header[len(scheme):] != token {
			t.Fatalf("BearerToken(%q) = %q", header, token)
		}
		if again, ok := BearerToken(Bearer(token)); !ok || again != token {
			t.Fatalf("Bearer(%q) does not read back", token)
		}
	})
}

func TestChallenge(t *testing.T) {
	if got := Challenge(""); got != `Bearer error="invalid_token"` {
		t.Fatal(got)
	}
	if got := Challenge("key is revoked"); got != `Bearer error="invalid_token", error_description="key is revoked"` {
		t.Fatal(got)
	}
}

func TestUsername(t *testing.T) {
	u := Username("payments", "ci")
	if u != "latchkey:payments:ci" {
		t.Fatalf("Username = %q", u)
	}
	if tenant, name, ok := ParseUsername(u); !ok || tenant != "payments" || name != "ci" {
		t.Fatalf("ParseUsername(%q) = %q, %q, %v", u, tenant, name, ok)
	}
	for _, bad := range []string{"", "latchkey:", "latchkey:payments", "latchkey::ci", "latchkey:payments:", "latchkey:a:b:c", "system:serviceaccount:ns:sa"} {
		if tenant, name, ok := ParseUsername(bad); ok {
			t.Errorf("ParseUsername(%q) = %q, %q, true", bad, tenant, name)
		}
	}
	if g := TenantGroup("payments"); g != "latchkey:tenant:payments" {
		t.Fatalf("TenantGroup = %q", g)
	}
}

// TestShapes pins the JSON every client and the server exchange: a renamed
// field here is a broken client there.
func TestShapes(t *testing.T) {
	at := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	later := at.Add(time.Second)
	for _, tt := range []struct {
		name string
		v    any
		want string
	}{
		{"whoami of a key that never expires", WhoAmI{Tenant: "t", KeyName: "k", KeyHint: "lk_a…b", CreatedAt: at},
			`{"tenant":"t","keyName":"k","keyHint":"lk_a…b","createdAt":"2026-11-22T10:00:00Z"}`},
		{"whoami of a key that expires", WhoAmI{Tenant: "t", KeyName: "k", KeyHint: "h", CreatedAt: at, ExpiresAt: &later},
			`{"tenant":"t","keyName":"k","keyHint":"h","createdAt":"2026-11-22T10:00:00Z","expiresAt":"2026-11-22T10:00:01Z"}`},
		{"a batch", Batch{IdempotencyKey: "i", Executions: []Execution{
			{ID: "a", State: Running, StartedAt: at},
			{ID: "b", State: Succeeded, StartedAt: at, FinishedAt: &later},
		}}, `{"idempotencyKey":"i","executions":[{"id":"a","state":"running","startedAt":"2026-11-22T10:00:00Z"},` +
			`{"id":"b","state":"succeeded","startedAt":"2026-11-22T10:00:00Z","finishedAt":"2026-11-22T10:00:01Z"}]}`},
		{"an acknowledgement", ExecutionsResponse{Applied: true, Executions: 2}, `{"applied":true,"executions":2}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.v)
			if err != nil || string(b) != tt.want {
				t.Fatalf("got %s (%v)\nwant %s", b, err, tt.want)
			}
		})
	}
}

func TestStates(t *testing.T) {
	for s, terminal := range map[State]bool{Running: false, Paused: false, Succeeded: true, Failed: true, Cancelled: true, Compensating: true} {
		if !s.Valid() || s.Terminal() != terminal {
			t.Errorf("%s: valid %v, terminal %v", s, s.Valid(), s.Terminal())
		}
	}
	for _, s := range []State{"", "done", "Succeeded"} {
		if s.Valid() {
			t.Errorf("%q is valid", s)
		}
	}
}

// TestTheREADMENamesTheProtocol keeps the README's reference to the
// protocol (what proxies and services are configured with) in step with it.
func TestTheREADMENamesTheProtocol(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		PathTokenReview, PathAuthorize, PathWhoAmI, PathExecutions,
		HeaderTenant, HeaderKey, HeaderTenantRequired, HeaderClientAddress,
		Username("<namespace>", "<name>"), GroupAuthenticated, TenantGroup("<namespace>"), ExtraKeyHint,
		Challenge(""), "`Authorization: " + Bearer("<key>") + "`",
	} {
		if !strings.Contains(string(readme), s) {
			t.Errorf("the README does not name %s", s)
		}
	}
}
