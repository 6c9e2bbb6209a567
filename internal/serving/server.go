// Package serving is Latchkey's webhook server: controller-runtime's
// webhook.Server, so that ctrl.NewWebhookManagedBy registers admission
// webhooks as usual, but on two listeners with every bound explicit.
//
// The verification listener serves /tokenreview, /authorize, /whoami and
// /v1/executions to proxies and reviewers. The admission listener serves
// only the admission webhooks, and only to kube-apiserver when a client CA
// is given: an admission review fences keys, so no one else may send one.
//
// Memory is bounded by the connection caps: a connection's worst case is
// about 150 KiB (two TLS record buffers of 16 KiB, 8 KiB of bufio, the
// header limit, a grown goroutine stack, and the largest body read before
// a key is checked, /tokenreview's 64 KiB), so the verification listener's
// 1,024 connections come to about 150 MiB. The admission listener's 64, at
// its 1 MiB body limit, come to about 64 MiB more. Both together stay far
// below the manager's 512 MiB limit beside its key index.
package serving

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/latchkey-dev/latchkey/internal/certs"
	"github.com/latchkey-dev/latchkey/internal/metrics"
)

// Ports the manager listens on by default.
const (
	DefaultVerificationPort = 9443
	DefaultAdmissionPort    = 9444
)

// Limits bound what one listener's clients can hold.
type Limits struct {
	// ReadHeaderTimeout bounds the TLS handshake and the request headers;
	// ReadTimeout the whole request, body included; WriteTimeout the
	// handler and its answer; IdleTimeout a keep-alive connection between
	// requests.
	ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	MaxHeaderBytes                                            int
	// MaxBodyBytes bounds a request body where no handler does (0: the
	// handlers' own limits).
	MaxBodyBytes int64
	// MaxConnsPerAddress and MaxConns cap the connections open at once from
	// one address (IPv6: one /64) and in all.
	MaxConnsPerAddress, MaxConns int
	// NewConnsPerAddressPerSecond and NewConnsPerAddressBurst bound how fast
	// one address opens connections (0: no bound). Clients keep theirs
	// alive; one that opens a connection per attempt — a forger without a
	// client certificate must — costs the server a TLS handshake each.
	NewConnsPerAddressPerSecond float64
	NewConnsPerAddressBurst     int
	// UnknownPathHold delays the 404 for a path nothing serves, as the
	// failure limiter holds a 429, so that pipelining misdirected requests
	// (forged admission reviews sent to the verification port) gains one
	// answer a second per connection; at most MaxHeldUnknown are held at
	// once, past which the connection is closed after its answer.
	UnknownPathHold time.Duration
	MaxHeldUnknown  int
}

// The verification listener's defaults. WriteTimeout leaves room for a
// held 429 (at most endpoints.DefaultMaxHold) and an execution report's
// write to the API server. A client has DefaultMaxConnsPerAddress
// connections: twice the failure limiter's held refusals per address
// (endpoints.DefaultMaxHeldPerAddress), so that an address whose refusals
// are all held still has as many for its valid requests.
const (
	DefaultReadHeaderTimeout  = 5 * time.Second
	DefaultReadTimeout        = 10 * time.Second
	DefaultWriteTimeout       = 20 * time.Second
	DefaultIdleTimeout        = 60 * time.Second
	DefaultMaxHeaderBytes     = 16 << 10
	DefaultMaxConnsPerAddress = 64
	DefaultMaxConns           = 1024
	DefaultUnknownPathHold    = time.Second
	DefaultMaxHeldUnknown     = 256
)

// The admission listener's: kube-apiserver waits 5 s for the webhook
// (timeoutSeconds), and sends an ApiKey, old and new, well under 1 MiB
// (annotations are capped at 256 KiB). A few kube-apiservers call it, on
// connections they keep: one that opens 20 a second is a forger without a
// client certificate, whose every attempt would cost a TLS handshake. The
// verification listener has no such bound: clients without keep-alive
// (nginx's auth_request by default) open one per request. kube-apiserver
// calls webhooks over HTTP/1.1, one connection per call in flight, and
// keeps up to 25 idle: 20 ApiKey writes at once (a GitOps sync) need 20
// connections from its one address, so an address may hold 48 — and a
// forger that opens that many and never finishes a handshake still leaves
// kube-apiserver 80 of the 128.
const (
	DefaultAdmissionMaxBodyBytes                = 1 << 20
	DefaultAdmissionMaxConns                    = 128
	DefaultAdmissionMaxConnsPerAddress          = 48
	DefaultAdmissionNewConnsPerAddressPerSecond = 20
	DefaultAdmissionNewConnsPerAddressBurst     = 100
)

// DefaultLimits are the verification listener's.
func DefaultLimits() Limits {
	return Limits{
		ReadHeaderTimeout: DefaultReadHeaderTimeout, ReadTimeout: DefaultReadTimeout,
		WriteTimeout: DefaultWriteTimeout, IdleTimeout: DefaultIdleTimeout,
		MaxHeaderBytes:     DefaultMaxHeaderBytes,
		MaxConnsPerAddress: DefaultMaxConnsPerAddress, MaxConns: DefaultMaxConns,
		UnknownPathHold: DefaultUnknownPathHold, MaxHeldUnknown: DefaultMaxHeldUnknown,
	}
}

// DefaultAdmissionLimits are the admission listener's.
func DefaultAdmissionLimits() Limits {
	l := DefaultLimits()
	l.ReadTimeout, l.WriteTimeout = DefaultReadTimeout, DefaultReadTimeout
	l.MaxBodyBytes = DefaultAdmissionMaxBodyBytes
	l.MaxConnsPerAddress, l.MaxConns = DefaultAdmissionMaxConnsPerAddress, DefaultAdmissionMaxConns
	l.NewConnsPerAddressPerSecond = DefaultAdmissionNewConnsPerAddressPerSecond
	l.NewConnsPerAddressBurst = DefaultAdmissionNewConnsPerAddressBurst
	return l
}

// Options configure a Server.
type Options struct {
	// Host both listeners bind to; empty means every interface.
	Host string
	// VerificationPort and AdmissionPort are the listeners' ports; 0 means
	// the defaults. The admission listener opens only if an admission
	// webhook is registered.
	VerificationPort, AdmissionPort int
	// TLSOpts adjust both listeners' TLS configuration; one of them may
	// set GetCertificate (a certwatcher or the certs Rotator). Without it
	// the certificate is read from CertDir (tls.crt, tls.key; by default
	// controller-runtime's directory) and watched.
	TLSOpts []func(*tls.Config)
	CertDir string
	// AdmissionClientCA is a PEM file: the admission listener requires a
	// client certificate it signed, as kube-apiserver presents when its
	// AdmissionConfiguration names a kubeconfig for the webhook. Empty
	// serves admission to anyone who can reach it (a warning is logged).
	AdmissionClientCA string
	// AdmissionClientNames, if any, are the only client certificate names
	// (common name or DNS SAN) admitted.
	AdmissionClientNames []string
	// Verification and Admission bound each listener; zero values are
	// replaced by DefaultLimits and DefaultAdmissionLimits.
	Verification, Admission Limits
	// UncappedAddresses (trusted proxies, which carry many clients'
	// requests) count towards the verification listener's total only.
	UncappedAddresses []netip.Prefix
}

// IsAdmissionPath says whether controller-runtime serves an admission (or
// conversion) webhook at path: its builder names them so.
func IsAdmissionPath(path string) bool {
	return strings.HasPrefix(path, "/validate-") || strings.HasPrefix(path, "/mutate-") || path == "/convert"
}

// Server is a webhook.Server on two listeners.
type Server struct {
	o Options

	verification, admission *http.ServeMux
	// subtrees are the verification listener's paths that end in a slash,
	// served for every path under them as it was sent: http.ServeMux would
	// redirect one it does not find clean (a "//" or a "..", which Envoy's
	// HTTP ext_authz passes on from the original request) instead.
	subtrees []subtree

	mu        sync.Mutex
	hasHooks  bool
	started   bool
	listeners map[string]*limitListener
	metrics   *metrics.Metrics
}

var _ webhook.Server = &Server{}

// Listener names, as metrics label them.
const (
	listenerVerification = "verification"
	listenerAdmission    = "admission"
)

// New returns a Server; nothing listens until Start.
func New(o Options) *Server {
	if o.VerificationPort == 0 {
		o.VerificationPort = DefaultVerificationPort
	}
	if o.AdmissionPort == 0 {
		o.AdmissionPort = DefaultAdmissionPort
	}
	if o.CertDir == "" {
		o.CertDir = filepath.Join(os.TempDir(), "k8s-webhook-server", "serving-certs")
	}
	if o.Verification == (Limits{}) {
		o.Verification = DefaultLimits()
	}
	if o.Admission == (Limits{}) {
		o.Admission = DefaultAdmissionLimits()
	}
	s := &Server{
		o:            o,
		verification: http.NewServeMux(),
		admission:    http.NewServeMux(),
		listeners:    map[string]*limitListener{},
	}
	return s
}

// UseMetrics counts refused connections in m and has it read the open
// ones; it must be called before Start.
func (s *Server) UseMetrics(m *metrics.Metrics) {
	s.mu.Lock()
	s.metrics = m
	s.mu.Unlock()
	for _, name := range []string{listenerVerification, listenerAdmission} {
		m.ReadConnections(name, func() int {
			s.mu.Lock()
			l := s.listeners[name]
			s.mu.Unlock()
			if l == nil {
				return 0
			}
			return l.Open()
		})
	}
}

// NeedLeaderElection is false: every replica serves.
func (*Server) NeedLeaderElection() bool { return false }

// Register serves hook at path: on the admission listener if path is an
// admission webhook's, on the verification listener otherwise.
func (s *Server) Register(path string, hook http.Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A path registered twice panics in its mux, as controller-runtime's own server does.
	if IsAdmissionPath(path) {
		s.hasHooks = true
		s.admission.Handle(path, hook)
		return
	}
	s.verification.Handle(path, hook)
	if len(path) > 1 && strings.HasSuffix(path, "/") {
		s.subtrees = append(s.subtrees, subtree{path, hook})
	}
}

// A subtree is a path prefix and what serves it.
type subtree struct {
	prefix string
	h      http.Handler
}

// servingSubtrees serves a request under one of subtrees as it was sent,
// and any other through next.
func servingSubtrees(next http.Handler, subtrees []subtree) http.Handler {
	if len(subtrees) == 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, st := range subtrees {
			if strings.HasPrefix(r.URL.Path, st.prefix) {
				st.h.ServeHTTP(w, r)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// WebhookMux is the verification listener's mux. Handlers added to it
// directly are served unauthenticated: admission webhooks go through
// Register.
func (s *Server) WebhookMux() *http.ServeMux { return s.verification }

// StartedChecker passes once the listeners are open.
func (s *Server) StartedChecker() healthz.Checker {
	return func(*http.Request) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.started {
			return errors.New("the webhook server has not started yet")
		}
		return nil
	}
}

// Start opens the listeners and serves until ctx ends.
func (s *Server) Start(ctx context.Context) error {
	logger := log.FromContext(ctx).WithName("serving")
	base, err := s.baseTLS(ctx, logger)
	if err != nil {
		return err
	}
	list, err := s.toServe(base, logger)
	if err != nil {
		return err
	}
	open, err := s.listen(ctx, logger, list)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.started = true
	s.mu.Unlock()
	return serve(ctx, logger, open)
}

// baseTLS is both listeners' TLS configuration. Without a GetCertificate
// from TLSOpts it watches CertDir, so that a renewed certificate is served
// without a restart.
func (s *Server) baseTLS(ctx context.Context, logger logr.Logger) (*tls.Config, error) {
	base := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	for _, op := range s.o.TLSOpts {
		op(base)
	}
	if base.GetCertificate != nil {
		return base, nil
	}
	w, err := certwatcher.New(filepath.Join(s.o.CertDir, certs.CertFile), filepath.Join(s.o.CertDir, certs.KeyFile))
	if err != nil {
		return nil, err
	}
	base.GetCertificate = w.GetCertificate
	go func() {
		if err := w.Start(ctx); err != nil {
			logger.Error(err, "Certificate watcher failed")
		}
	}()
	return base, nil
}

// served is what one listener serves, and how.
type served struct {
	name   string
	port   int
	tls    *tls.Config
	limits Limits
	mux    *http.ServeMux
	exempt []netip.Prefix
	// subtrees are served before the mux (Server.subtrees).
	subtrees []subtree
}

// toServe lists the listeners to open: the admission listener only when an
// admission webhook is registered, as Options promise.
func (s *Server) toServe(base *tls.Config, logger logr.Logger) ([]served, error) {
	s.mu.Lock()
	hasHooks, subtrees := s.hasHooks, slices.Clone(s.subtrees)
	s.mu.Unlock()
	verification := served{listenerVerification, s.o.VerificationPort, base, s.o.Verification, s.verification, s.o.UncappedAddresses, subtrees}
	if !hasHooks {
		return []served{verification}, nil
	}
	admissionTLS, err := s.admissionTLS(base)
	if err != nil {
		return nil, err
	}
	if admissionTLS.ClientCAs == nil {
		logger.Info("WARNING: the admission webhook is served to any client, unauthenticated: anyone who can reach " +
			"its port can fence keys for --fence-ttl. Give kube-apiserver a client certificate for it " +
			"(AdmissionConfiguration) and set --admission-client-ca, or at least keep the shipped NetworkPolicy.")
	}
	return []served{verification, {listenerAdmission, s.o.AdmissionPort, admissionTLS, s.o.Admission, s.admission, nil, nil}}, nil
}

// opened is a listener and the server that serves it.
type opened struct {
	srv *http.Server
	l   net.Listener
}

// listen opens every listener, or none: one that fails closes those
// already open rather than leave their ports bound with no server.
func (s *Server) listen(ctx context.Context, logger logr.Logger, list []served) ([]opened, error) {
	open := make([]opened, 0, len(list))
	for _, sv := range list {
		tcp, err := net.Listen("tcp", net.JoinHostPort(s.o.Host, strconv.Itoa(sv.port)))
		if err != nil {
			for _, o := range open {
				_ = o.l.Close()
			}
			return nil, fmt.Errorf("the %s listener: %w", sv.name, err)
		}
		s.mu.Lock()
		m := s.metrics
		limited := newLimitListener(tcp, sv.limits, sv.exempt, func(reason string) { m.ConnectionRefused(sv.name, reason) })
		s.listeners[sv.name] = limited
		s.mu.Unlock()
		open = append(open, opened{srv: newHTTPServer(ctx, logger, sv), l: tls.NewListener(limited, sv.tls)})
		logger.Info("Serving", "listener", sv.name, "host", s.o.Host, "port", sv.port)
	}
	return open, nil
}

// newHTTPServer serves sv's mux within sv's limits.
func newHTTPServer(ctx context.Context, logger logr.Logger, sv served) *http.Server {
	var handler http.Handler = sv.mux
	if sv.limits.UnknownPathHold > 0 {
		handler = holdUnknown(sv.mux, sv.limits.UnknownPathHold, sv.limits.MaxHeldUnknown)
	}
	handler = servingSubtrees(handler, sv.subtrees)
	if sv.limits.MaxBodyBytes > 0 {
		handler = limitBody(handler, sv.limits.MaxBodyBytes)
	}
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: sv.limits.ReadHeaderTimeout,
		ReadTimeout:       sv.limits.ReadTimeout,
		WriteTimeout:      sv.limits.WriteTimeout,
		IdleTimeout:       sv.limits.IdleTimeout,
		MaxHeaderBytes:    sv.limits.MaxHeaderBytes,
		// A flood of bad handshakes would otherwise write a line each
		// to stderr.
		ErrorLog:    stdlog.New(logWriter{logger.WithValues("listener", sv.name).V(1)}, "", 0),
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
}

// serve runs every server until ctx ends or one fails, then shuts them all
// down, so that the failure Start returns leaves no listener serving.
func serve(ctx context.Context, logger logr.Logger, open []opened) error {
	errs := make(chan error, len(open))
	for _, o := range open {
		go func() {
			if err := o.srv.Serve(o.l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs <- err
				return
			}
			errs <- nil
		}()
	}
	var failed error
	select {
	case <-ctx.Done():
	case failed = <-errs:
	}
	shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for _, o := range open {
		if err := o.srv.Shutdown(shutdown); err != nil {
			logger.Error(err, "Shutting down a listener")
		}
	}
	return failed
}

// admissionTLS is base, requiring kube-apiserver's client certificate
// when a client CA is given.
func (s *Server) admissionTLS(base *tls.Config) (*tls.Config, error) {
	cfg := base.Clone()
	if s.o.AdmissionClientCA == "" {
		return cfg, nil
	}
	pem, err := os.ReadFile(s.o.AdmissionClientCA)
	if err != nil {
		return nil, fmt.Errorf("reading --admission-client-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--admission-client-ca %s holds no PEM certificate", s.o.AdmissionClientCA)
	}
	cfg.ClientCAs = pool
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	if names := s.o.AdmissionClientNames; len(names) > 0 {
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			leaf := cs.PeerCertificates[0]
			if slices.Contains(names, leaf.Subject.CommonName) || slices.ContainsFunc(leaf.DNSNames, func(n string) bool { return slices.Contains(names, n) }) {
				return nil
			}
			return fmt.Errorf("client certificate %q is not one of --admission-client-names", leaf.Subject.CommonName)
		}
	}
	return cfg, nil
}

// holdUnknown answers a path mux does not serve with 404 after hold, at
// most maxHeld at once; past that, or when the client goes, at once and
// closing the connection.
func holdUnknown(mux *http.ServeMux, hold time.Duration, maxHeld int) http.Handler {
	held := make(chan struct{}, maxHeld)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// One route match a request: the handler found is the one served.
		if h, pattern := mux.Handler(r); pattern != "" {
			h.ServeHTTP(w, r)
			return
		}
		select {
		case held <- struct{}{}:
			t := time.NewTimer(hold)
			select {
			case <-t.C:
			case <-r.Context().Done():
			}
			t.Stop()
			<-held
		default:
			w.Header().Set("Connection", "close")
		}
		http.NotFound(w, r)
	})
}

// limitBody bounds request bodies to n bytes. A request without one (every
// forward-auth check) is served as it is, without a reader to allocate.
func limitBody(h http.Handler, n int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != http.NoBody {
			r.Body = http.MaxBytesReader(w, r.Body, n)
		}
		h.ServeHTTP(w, r)
	})
}

// logWriter hands net/http's error lines to a logr.Logger.
type logWriter struct{ logr.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.Info(strings.TrimSpace(string(p)))
	return len(p), nil
}
