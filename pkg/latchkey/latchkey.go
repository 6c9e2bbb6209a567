// Package latchkey lets a Go service authenticate its callers with
// Latchkey API keys and report the work it does for them as executions.
//
//	lk, err := latchkey.New(latchkey.Config{Endpoint: "https://latchkey-webhook-service.latchkey-system.svc"})
//	...
//	http.Handle("/api/", lk.Middleware(apiHandler))
//	defer lk.Close(context.Background())
//
// Every request must carry "Authorization: Bearer <key>". The middleware
// checks it with Latchkey (/authorize, or /tokenreview), puts the caller's
// tenant and key in the request context, and reports the request as an
// execution: 2xx, 3xx and 4xx answers as succeeded, 5xx as failed, a
// caller that went away as cancelled. Reports are batched in the
// background, retried with the same idempotency key, and held in a bounded
// buffer; they are sent with the key in the file LATCHKEY_API_KEY_FILE
// names (re-read when it changes, so a rotated key in a mounted Secret is
// picked up with no restart), or else in LATCHKEY_API_KEY.
package latchkey

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// Verification is how the middleware checks a key.
type Verification string

const (
	// Authorize uses Latchkey's forward-auth endpoint.
	Authorize Verification = "authorize"
	// TokenReview uses Latchkey's TokenReview endpoint.
	TokenReview Verification = "tokenreview"
)

// Config configures a Client. Only Endpoint is required.
type Config struct {
	// Endpoint is Latchkey's base URL, such as
	// https://latchkey-webhook-service.latchkey-system.svc.
	Endpoint string
	// HTTPClient calls Latchkey; it must trust Latchkey's certificate.
	HTTPClient *http.Client
	// Verification is Authorize (default) or TokenReview.
	Verification Verification
	// CacheTTL keeps positive answers this long (default 0: no cache). A
	// cached key keeps working for up to CacheTTL after it is revoked.
	CacheTTL time.Duration
	// APIKey reports executions. Without it or APIKeyFile, the
	// LATCHKEY_API_KEY_FILE environment variable names the file, else
	// LATCHKEY_API_KEY holds the key; without any, nothing is reported.
	APIKey string
	// APIKeyFile names a file holding the key that reports executions,
	// such as the api-key of a mounted Secret. It is checked for a new key
	// at most once a second, when a report is sent, so that a rotated key
	// is used without a restart: kubelet refreshes a mounted Secret (by
	// swapping its ..data symlink to a new directory) within about a
	// minute, where an environment variable from a secretKeyRef never
	// changes. If the file cannot be read, the last key read is kept.
	APIKeyFile string
	// BatchSize, FlushInterval and BufferSize shape reporting: up to
	// BatchSize executions per report, sent at least every FlushInterval,
	// with at most BufferSize waiting (more are dropped and counted).
	BatchSize     int
	FlushInterval time.Duration
	BufferSize    int
	// MaxAttempts bounds the tries of one report (default 8).
	MaxAttempts int
	// Logf receives reporting problems; default: discarded.
	Logf func(format string, args ...any)
}

// Caller is who a request's key belongs to.
type Caller struct {
	Tenant string
	Key    string // namespace/name of the ApiKey
}

type callerKey struct{}

// CallerFrom returns the caller the middleware authenticated.
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

// Client authenticates requests and reports executions.
type Client struct {
	cfg     Config
	reports chan protocol.Execution
	dropped atomic.Int64
	done    chan struct{}
	// closeMu guards closed and the closing of reports against enqueue.
	closeMu sync.RWMutex
	closed  bool

	mu    sync.Mutex
	cache map[[32]byte]cached

	// keyFile is Config.APIKeyFile's key, when there is one.
	keyFile *keyFile
}

type cached struct {
	caller  Caller
	expires time.Time
}

// New returns a Client and starts its reporter.
func New(cfg Config) (*Client, error) {
	if cfg.Endpoint == "" {
		return nil, errors.New("latchkey: Config.Endpoint is required")
	}
	cfg.Endpoint = strings.TrimRight(cfg.Endpoint, "/")
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 5 * time.Second}
	}
	if cfg.Verification == "" {
		cfg.Verification = Authorize
	}
	switch {
	case cfg.APIKey != "" && cfg.APIKeyFile != "":
		return nil, errors.New("latchkey: Config.APIKey and Config.APIKeyFile are exclusive: set one")
	case cfg.APIKey == "" && cfg.APIKeyFile == "":
		if cfg.APIKeyFile = os.Getenv(EnvAPIKeyFile); cfg.APIKeyFile == "" {
			cfg.APIKey = os.Getenv(EnvAPIKey)
		}
	}
	if cfg.BatchSize <= 0 || cfg.BatchSize > protocol.MaxBatchExecutions {
		cfg.BatchSize = 100
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = time.Second
	}
	if cfg.BufferSize <= 0 {
		cfg.BufferSize = 10000
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 8
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	c := &Client{cfg: cfg, reports: make(chan protocol.Execution, cfg.BufferSize), done: make(chan struct{}), cache: map[[32]byte]cached{}}
	if cfg.APIKeyFile != "" {
		c.keyFile = &keyFile{path: cfg.APIKeyFile}
		if _, err := c.keyFile.get(time.Now()); err != nil {
			return nil, err
		}
	}
	go c.report()
	return c, nil
}

// Dropped is how many executions were not reported because the buffer was full.
func (c *Client) Dropped() int64 { return c.dropped.Load() }

// Middleware authenticates each request and reports it as an execution.
func (c *Client) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, ok := protocol.BearerToken(r.Header.Get("Authorization"))
		if !ok {
			unauthorized(w)
			return
		}
		caller, err := c.verify(r.Context(), key, callerAddr(r))
		var limited *TooManyFailuresError
		switch {
		case errors.Is(err, ErrInvalidKey):
			unauthorized(w)
			return
		case errors.As(err, &limited):
			if limited.RetryAfter != "" {
				w.Header().Set("Retry-After", limited.RetryAfter)
			}
			http.Error(w, "too many failed attempts; retry later", http.StatusTooManyRequests)
			return
		case err != nil:
			// Fail closed: no answer from Latchkey is not a yes.
			http.Error(w, "cannot verify the API key right now", http.StatusServiceUnavailable)
			return
		}
		started := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), callerKey{}, caller)))
		finished := time.Now()
		state := protocol.Succeeded
		switch {
		case r.Context().Err() != nil:
			state = protocol.Cancelled
		case rec.status >= 500:
			state = protocol.Failed
		}
		c.enqueue(protocol.Execution{ID: newID(), State: state, StartedAt: started.UTC(), FinishedAt: ptr(finished.UTC())})
	})
}

// ErrInvalidKey means Latchkey refused the key.
var ErrInvalidKey = errors.New("latchkey: invalid API key")

// TooManyFailuresError means Latchkey would not verify a key: too many keys
// from the caller's address failed. It comes from Authorize verification only.
type TooManyFailuresError struct {
	// RetryAfter is Latchkey's Retry-After header: seconds to wait.
	RetryAfter string
}

func (e *TooManyFailuresError) Error() string {
	return "latchkey: too many failed attempts from this address; retry after " + e.RetryAfter + "s"
}

// Verify checks a key with Latchkey (or the positive cache).
func (c *Client) Verify(ctx context.Context, key string) (Caller, error) {
	return c.verify(ctx, key, "")
}

// verify is Verify on behalf of the caller at addr, which Authorize names
// to Latchkey in X-Real-IP: Latchkey charges failures to it rather than to
// this service when it lists the service in --trusted-proxies.
func (c *Client) verify(ctx context.Context, key, addr string) (Caller, error) {
	sum := sha256.Sum256([]byte(key))
	if c.cfg.CacheTTL > 0 {
		c.mu.Lock()
		e, ok := c.cache[sum]
		c.mu.Unlock()
		if ok && time.Now().Before(e.expires) {
			return e.caller, nil
		}
	}
	var caller Caller
	var err error
	if c.cfg.Verification == TokenReview {
		caller, err = c.tokenReview(ctx, key)
	} else {
		caller, err = c.authorize(ctx, key, addr)
	}
	if err == nil && c.cfg.CacheTTL > 0 {
		c.mu.Lock()
		if len(c.cache) > 10000 {
			clear(c.cache)
		}
		c.cache[sum] = cached{caller: caller, expires: time.Now().Add(c.cfg.CacheTTL)}
		c.mu.Unlock()
	}
	return caller, err
}

func (c *Client) authorize(ctx context.Context, key, addr string) (Caller, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.cfg.Endpoint+protocol.PathAuthorize, nil)
	if err != nil {
		return Caller{}, err
	}
	req.Header.Set("Authorization", protocol.Bearer(key))
	if addr != "" {
		req.Header.Set(protocol.HeaderClientAddress, addr)
	}
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return Caller{}, fmt.Errorf("latchkey: %w", err)
	}
	_ = resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return Caller{Tenant: resp.Header.Get(protocol.HeaderTenant), Key: resp.Header.Get(protocol.HeaderKey)}, nil
	case http.StatusUnauthorized, http.StatusForbidden:
		return Caller{}, ErrInvalidKey
	case http.StatusTooManyRequests:
		return Caller{}, &TooManyFailuresError{RetryAfter: resp.Header.Get("Retry-After")}
	default:
		return Caller{}, fmt.Errorf("latchkey: %s answered %d", protocol.PathAuthorize, resp.StatusCode)
	}
}

func (c *Client) tokenReview(ctx context.Context, key string) (Caller, error) {
	body, _ := json.Marshal(map[string]any{
		"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": map[string]any{"token": key, "audiences": []string{protocol.Audience}},
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.cfg.Endpoint+protocol.PathTokenReview, bytes.NewReader(body))
	if err != nil {
		return Caller{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return Caller{}, fmt.Errorf("latchkey: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return Caller{}, fmt.Errorf("latchkey: %s answered %d", protocol.PathTokenReview, resp.StatusCode)
	}
	var review struct {
		Status struct {
			Authenticated bool `json:"authenticated"`
			User          struct {
				Username string `json:"username"`
			} `json:"user"`
		} `json:"status"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&review); err != nil {
		return Caller{}, fmt.Errorf("latchkey: reading TokenReview: %w", err)
	}
	if !review.Status.Authenticated {
		return Caller{}, ErrInvalidKey
	}
	tenant, name, ok := protocol.ParseUsername(review.Status.User.Username)
	if !ok {
		return Caller{}, fmt.Errorf("latchkey: %s authenticated a user that is not a key's", protocol.PathTokenReview)
	}
	return Caller{Tenant: tenant, Key: tenant + "/" + name}, nil
}

func (c *Client) enqueue(e protocol.Execution) {
	if c.cfg.APIKey == "" && c.keyFile == nil {
		return
	}
	c.closeMu.RLock()
	defer c.closeMu.RUnlock()
	if c.closed {
		c.dropped.Add(1)
		return
	}
	select {
	case c.reports <- e:
	default:
		c.dropped.Add(1)
	}
}

// report batches executions and sends them until Close.
func (c *Client) report() {
	defer close(c.done)
	tick := time.NewTicker(c.cfg.FlushInterval)
	defer tick.Stop()
	var batch []protocol.Execution
	flush := func() {
		if len(batch) > 0 {
			c.send(batch)
			batch = nil
		}
	}
	for {
		select {
		case e, ok := <-c.reports:
			if !ok {
				flush()
				return
			}
			batch = append(batch, e)
			if len(batch) >= c.cfg.BatchSize {
				flush()
			}
		case <-tick.C:
			flush()
		}
	}
}

// send posts one batch, retrying with the same idempotency key until it is
// acknowledged, refused as invalid, or out of attempts.
func (c *Client) send(batch []protocol.Execution) {
	body, _ := json.Marshal(protocol.Batch{IdempotencyKey: newID(), Executions: batch})
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		status, err := c.post(body)
		switch {
		case err == nil && status == http.StatusOK:
			return
		case err == nil && (status == http.StatusBadRequest || status == http.StatusUnauthorized):
			c.cfg.Logf("latchkey: a report of %d executions was refused (%d); dropping it", len(batch), status)
			return
		case attempt >= c.cfg.MaxAttempts:
			c.cfg.Logf("latchkey: giving up on a report of %d executions after %d attempts (status %d, %v)", len(batch), attempt, status, err)
			return
		}
		time.Sleep(wait)
		wait = min(wait*2, 10*time.Second)
	}
}

func (c *Client) post(body []byte) (int, error) {
	req, err := http.NewRequest(http.MethodPost, c.cfg.Endpoint+protocol.PathExecutions, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", protocol.Bearer(c.apiKey()))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.StatusCode, nil
}

// apiKey is the key that reports executions: Config.APIKey, or the key
// file's newest.
func (c *Client) apiKey() string {
	if c.keyFile == nil {
		return c.cfg.APIKey
	}
	key, err := c.keyFile.get(time.Now())
	if err != nil {
		c.cfg.Logf("%v; reporting with the key read before", err)
	}
	return key
}

// Close stops taking executions and sends those waiting, until ctx ends.
func (c *Client) Close(ctx context.Context) error {
	c.closeMu.Lock()
	if !c.closed {
		c.closed = true
		close(c.reports)
	}
	c.closeMu.Unlock()
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

type statusRecorder struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.wroteHeader {
		s.status, s.wroteHeader = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// callerAddr is the address of the caller of this service.
func callerAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return ""
	}
	return host
}

func unauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", protocol.Challenge(""))
	http.Error(w, "a valid Latchkey API key is required", http.StatusUnauthorized)
}

func newID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func ptr[T any](v T) *T { return &v }
