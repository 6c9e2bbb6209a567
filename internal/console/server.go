// Package console serves the API Keys and Usage pages of `kubectl latchkey
// console` on a loopback address. It acts with the user's own client, so
// the API server's RBAC decides what the page may show and do, and it
// guards itself against the other pages in the same browser and the other
// users of the same machine: a per-run token exchanged for a cookie, Host
// and Origin checks, and a Content-Security-Policy with no inline script.
package console

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"runtime"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"

	authv1alpha1 "github.com/latchkey-dev/latchkey/api/v1alpha1"
)

//go:embed static
var static embed.FS

// Actions are the changes the page asks for, done as `kubectl latchkey`
// does them, so that the console and the terminal behave alike.
type Actions interface {
	// Create creates key, waits until it is delivered and returns its raw key.
	Create(ctx context.Context, c client.Client, key *authv1alpha1.ApiKey) (string, error)
	// Revoke revokes key for good.
	Revoke(ctx context.Context, c client.Client, key *authv1alpha1.ApiKey) error
	// Rotate replaces key's raw key and returns the new one.
	Rotate(ctx context.Context, c client.Client, key *authv1alpha1.ApiKey) (string, error)
	// Suspend suspends key (suspend) or resumes it, and waits for the phase.
	Suspend(ctx context.Context, c client.Client, key *authv1alpha1.ApiKey, suspend bool) error
	// ExpiresIn is how soon a key that works expires ("3d") when that
	// deserves a warning, "" otherwise.
	ExpiresIn(key *authv1alpha1.ApiKey, now time.Time) string
}

// Config is what a console serves with.
type Config struct {
	// Client acts as the user: every read and write goes through it.
	Client  client.Client
	Actions Actions
	// Namespace is the namespace the page opens on.
	Namespace string
	Clock     clock.PassiveClock
	// Log receives one line per request, never a key or the token.
	Log logr.Logger
}

// cookieName carries this run's token once the URL has handed it over.
const cookieName = "latchkey_console"

// Server is one run of the console.
type Server struct {
	cfg   Config
	token string
	// hosts are the Host headers the server answers: its own address, by
	// IP and as localhost. Any other name is a DNS rebinding attempt.
	hosts map[string]bool
	url   string
	ln    net.Listener
	srv   *http.Server
}

// Listen binds address, which must be a loopback address, and prepares a
// console there with a fresh token.
func Listen(address string, cfg Config) (*Server, error) {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("--address %q: %w", address, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("--address %q: the console acts with your credentials, so it listens on a loopback address only (such as 127.0.0.1:8080)", address)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", address)
	if err != nil {
		return nil, err
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ip := ln.Addr().(*net.TCPAddr).IP.String()
	s := &Server{
		cfg:   cfg,
		token: base64.RawURLEncoding.EncodeToString(b),
		hosts: map[string]bool{net.JoinHostPort(ip, port): true, net.JoinHostPort("localhost", port): true},
		ln:    ln,
	}
	s.url = "http://" + net.JoinHostPort(ip, port) + "/?token=" + s.token
	s.srv = &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

// URL is the address to open: it carries the token, which the first visit
// trades for a cookie.
func (s *Server) URL() string { return s.url }

// Serve answers until ctx ends.
func (s *Server) Serve(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- s.srv.Serve(s.ln) }()
	go s.warm()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.srv.Shutdown(shut); err != nil {
			return err
		}
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
}

// warm resolves the kinds the page reads while the browser opens: the
// client discovers each API group on first use, which would otherwise
// delay the first page by the round trips to the API server.
func (s *Server) warm() {
	for _, gvk := range []schema.GroupVersionKind{
		authv1alpha1.GroupVersion.WithKind("ApiKey"), authv1alpha1.GroupVersion.WithKind("Usage"),
		corev1.SchemeGroupVersion.WithKind("Namespace"), authorizationv1.SchemeGroupVersion.WithKind("SelfSubjectAccessReview"),
	} {
		_, _ = s.cfg.Client.RESTMapper().RESTMapping(gvk.GroupKind(), gvk.Version)
	}
}

// Handler is the console's routes behind its guards.
func (s *Server) Handler() http.Handler {
	assets, _ := fs.Sub(static, "static")
	files := http.FileServerFS(assets)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.page)
	mux.Handle("GET /assets/", http.StripPrefix("/assets/", files))
	mux.HandleFunc("GET /api/session", s.session)
	mux.HandleFunc("GET /api/namespaces/{ns}/apikeys", s.listKeys)
	mux.HandleFunc("POST /api/namespaces/{ns}/apikeys", s.createKey)
	mux.HandleFunc("POST /api/namespaces/{ns}/apikeys/{name}/{action}", s.changeKey)
	mux.HandleFunc("GET /api/namespaces/{ns}/usage", s.usage)
	return s.guard(mux)
}

// guard refuses what does not come from the page this run served: a Host
// other than the server's own (DNS rebinding), an Origin of another site
// (cross-site requests) and anything without the token's cookie, which it
// sets when the URL brings the token.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		defer func() {
			// The path only: the query may carry the token.
			s.cfg.Log.V(1).Info("request", "method", r.Method, "path", r.URL.Path, "status", rec.status, "took", time.Since(start))
		}()
		h := rec.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		if !s.hosts[r.Host] {
			refuse(rec, http.StatusMisdirectedRequest, "this console answers only at the address kubectl latchkey console printed")
			return
		}
		if origin := r.Header.Get("Origin"); origin != "" && origin != "http://"+r.Host {
			refuse(rec, http.StatusForbidden, "cross-site request refused")
			return
		}
		if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" || (site == "same-site" && r.Method != http.MethodGet) {
			refuse(rec, http.StatusForbidden, "cross-site request refused")
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Header.Get("Origin") == "" {
			refuse(rec, http.StatusForbidden, "a change must come from the console's page (no Origin header)")
			return
		}
		if t := r.URL.Query().Get("token"); t != "" && r.URL.Path == "/" && r.Method == http.MethodGet {
			if !s.tokenIs(t) {
				refuse(rec, http.StatusUnauthorized, "this link is not the one kubectl latchkey console printed for this run")
				return
			}
			http.SetCookie(rec, &http.Cookie{Name: cookieName, Value: s.token, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
			h.Set("Cache-Control", "no-store")
			// The token leaves the address bar and the history.
			http.Redirect(rec, r, "/", http.StatusSeeOther)
			return
		}
		if c, err := r.Cookie(cookieName); err != nil || !s.tokenIs(c.Value) {
			refuse(rec, http.StatusUnauthorized, "open the link kubectl latchkey console printed: it carries this run's token")
			return
		}
		next.ServeHTTP(rec, r)
	})
}

func (s *Server) tokenIs(t string) bool {
	return subtle.ConstantTimeCompare([]byte(t), []byte(s.token)) == 1
}

func (s *Server) page(w http.ResponseWriter, _ *http.Request) {
	b, err := static.ReadFile("static/index.html")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(b)
}

// refuse answers a refused request in text, which a browser shows as is.
func refuse(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, "Latchkey console: %s.\n", msg)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}

// OpenBrowser asks the desktop to open u, and does not wait for it.
func OpenBrowser(u string) error {
	if _, err := url.Parse(u); err != nil {
		return err
	}
	var cmd *exec.Cmd
	switch runtime.GOOS {
	case "darwin":
		cmd = exec.Command("open", u)
	case "windows":
		cmd = exec.Command("rundll32", "url.dll,FileProtocolHandler", u)
	default:
		cmd = exec.Command("xdg-open", u)
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	go func() { _ = cmd.Wait() }()
	return nil
}
