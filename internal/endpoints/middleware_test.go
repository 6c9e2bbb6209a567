package endpoints

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/latchkey-dev/latchkey/pkg/latchkey"
)

// TestMiddlewareChargesItsCallers puts pkg/latchkey's middleware, listed in
// --trusted-proxies, in front of a service: a caller's wrong keys spend that
// caller's budget, not the service's, and its 429 reaches the caller with
// Retry-After.
func TestMiddlewareChargesItsCallers(t *testing.T) {
	lim := NewFailureLimiter(1, 2, []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")})
	r := newRig(t, &Server{Limiter: lim})
	lk, err := latchkey.New(latchkey.Config{Endpoint: r.srv.URL, HTTPClient: r.client})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lk.Close(context.Background()) })
	svc := httptest.NewServer(lk.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})))
	t.Cleanup(svc.Close)

	// Callers on other loopback addresses, so that each has its own budget.
	from := func(ip string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	}
	call := func(c *http.Client, key string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, svc.URL, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		return resp
	}
	guesser, bystander := from("127.0.0.2"), from("127.0.0.3")
	for i, want := range []int{http.StatusUnauthorized, http.StatusUnauthorized, http.StatusTooManyRequests} {
		resp := call(guesser, r.revoked)
		if resp.StatusCode != want {
			t.Fatalf("wrong key %d: %d, want %d", i, resp.StatusCode, want)
		}
		if want == http.StatusTooManyRequests && resp.Header.Get("Retry-After") == "" {
			t.Fatal("429 without Retry-After")
		}
	}
	if got := call(bystander, r.revoked).StatusCode; got != http.StatusUnauthorized {
		t.Fatalf("another caller's wrong key: %d, want 401 from its own budget", got)
	}
	if got := call(guesser, r.active).StatusCode; got != http.StatusOK {
		t.Fatalf("the limited caller's valid key: %d", got)
	}
}
