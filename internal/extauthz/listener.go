package extauthz

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/latchkey-dev/latchkey/internal/certs"
)

// DefaultBindAddress is where the manager serves Check.
const DefaultBindAddress = ":9001"

// Bounds of the listener. Envoy keeps a few connections and multiplexes
// every check over them, so streams per connection are many; a client
// that pings more often than every 10 s is cut off.
const (
	MaxConcurrentStreams = 1024
	minPingInterval      = 10 * time.Second
	shutdownGrace        = 10 * time.Second
	readyPoll            = 50 * time.Millisecond
)

// Listener serves a Server, and gRPC health checking, on one address: a
// manager Runnable on every replica.
type Listener struct {
	// Address is host:port; port 0 takes a free one (Addr says which).
	Address string
	Server  *Server
	// Insecure serves plaintext (h2c), for a mesh whose sidecars already
	// encrypt; otherwise TLS with the webhook server's certificate.
	Insecure bool
	// TLSOpts adjust the TLS configuration as the webhook server's do; one
	// may set GetCertificate (a certwatcher or the certs Rotator). Without
	// it the certificate is read from CertDir (default controller-runtime's)
	// and watched.
	TLSOpts []func(*tls.Config)
	CertDir string
	// Ready says whether answers are to be trusted (the key index has
	// synced); until then health checks answer NOT_SERVING.
	Ready func() bool

	mu   sync.Mutex
	addr net.Addr
}

// NeedLeaderElection is false: every replica serves.
func (*Listener) NeedLeaderElection() bool { return false }

// Addr is the address the listener took, nil until it has.
func (l *Listener) Addr() net.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.addr
}

// Start serves until ctx ends, then lets calls in flight finish.
func (l *Listener) Start(ctx context.Context) error {
	logger := log.FromContext(ctx).WithName("ext-authz")
	opts := []grpc.ServerOption{
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: minPingInterval, PermitWithoutStream: true}),
	}
	if !l.Insecure {
		cfg, err := l.tls(ctx)
		if err != nil {
			return err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
	}
	srv := grpc.NewServer(opts...)
	authv3.RegisterAuthorizationServer(srv, l.Server)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	hs.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(srv, hs)

	nl, err := net.Listen("tcp", l.Address)
	if err != nil {
		return fmt.Errorf("the ext_authz listener: %w", err)
	}
	l.mu.Lock()
	l.addr = nl.Addr()
	l.mu.Unlock()
	logger.Info("Serving Envoy ext_authz over gRPC", "address", nl.Addr().String(), "tls", !l.Insecure)
	go l.serving(ctx, hs)

	errs := make(chan error, 1)
	go func() { errs <- srv.Serve(nl) }()
	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
	}
	hs.Shutdown()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(shutdownGrace):
		srv.Stop()
	}
	if err := <-errs; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// serving turns health to SERVING once answers are to be trusted.
func (l *Listener) serving(ctx context.Context, hs *health.Server) {
	t := time.NewTicker(readyPoll)
	defer t.Stop()
	for l.Ready != nil && !l.Ready() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
}

// tls is the webhook server's TLS, HTTP/2 only whatever the webhook
// server's settings: gRPC is HTTP/2.
func (l *Listener) tls(ctx context.Context) (*tls.Config, error) {
	cfg, err := certs.ServingConfig(ctx, l.TLSOpts, l.CertDir)
	if err != nil {
		return nil, fmt.Errorf("the ext_authz listener: %w", err)
	}
	cfg.NextProtos = []string{"h2"}
	return cfg, nil
}
