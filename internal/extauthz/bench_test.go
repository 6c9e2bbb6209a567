package extauthz

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"k8s.io/utils/clock"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/latchkey-dev/latchkey/internal/certs"
	"github.com/latchkey-dev/latchkey/internal/endpoints"
	"github.com/latchkey-dev/latchkey/internal/metrics"
	"github.com/latchkey-dev/latchkey/internal/usage/activity"
	"github.com/latchkey-dev/latchkey/internal/verifier"
	"github.com/latchkey-dev/latchkey/internal/verifier/verifiertest"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// BenchmarkCheckLoad is a load run on 127.0.0.1: Check with 10,000 keys
// over one TLS connection carrying 8, then 32, concurrent streams, as
// Envoy multiplexes its checks, alternating round by round with a ceiling:
// a bare grpc-go Authorization server on the same TLS setup doing the same
// SHA-256 and map lookup and answering OK with the same two headers. It
// prints req/s, p50 and p99 for both and their ratios, as medians of the
// rounds.
//
//	go test -run '^$' -bench CheckLoad -benchtime 1x ./internal/extauthz/
func BenchmarkCheckLoad(b *testing.B) {
	const nKeys, rounds, roundTime = 10_000, 5, 2 * time.Second
	v, raws := verifiertest.Populated(b, nKeys)
	dir := b.TempDir()
	ca, err := certs.WriteLocal(dir)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctrllog.IntoContext(context.Background(), logr.Discard()))
	defer cancel()

	clk := clock.RealClock{}
	m := metrics.New(prometheus.NewRegistry())
	l := &Listener{Address: "127.0.0.1:0", CertDir: dir, Server: New(&endpoints.Server{
		Verifier: v, Clock: clk, Metrics: m,
		Activity: activity.New(nil, nil, clk, time.Hour, m),
		Limiter:  endpoints.NewFailureLimiter(10, 50, nil),
	}, Options{})}
	go func() { _ = l.Start(ctx) }()
	for l.Addr() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	ceiling := serveCeiling(b, dir, raws)
	defer ceiling.srv.Stop()

	for range b.N {
		for _, streams := range []int{8, 32} {
			c, lk := make([]roundResult, 0, rounds), make([]roundResult, 0, rounds)
			for range rounds {
				c = append(c, checkLoad(b, dial(b, ca, ceiling.addr), streams, raws, roundTime))
				lk = append(lk, checkLoad(b, dial(b, ca, l.Addr().String()), streams, raws, roundTime))
			}
			cm, lm := medians(c), medians(lk)
			b.Logf("FIGURE gRPC Check, %2d streams, 10,000 keys, median of %d rounds: ceiling %6.0f req/s p50 %v p99 %v | Latchkey %6.0f req/s p50 %v p99 %v | ratio req/s %.2f, p99 %.2f",
				streams, rounds, cm.rps, cm.p50, cm.p99, lm.rps, lm.p50, lm.p99, lm.rps/cm.rps, float64(lm.p99)/float64(cm.p99))
			b.ReportMetric(lm.rps/cm.rps, fmt.Sprintf("rps-ratio-%dstreams", streams))
			b.ReportMetric(float64(lm.p99)/float64(cm.p99), fmt.Sprintf("p99-ratio-%dstreams", streams))
		}
	}
}

// ceilingServer is the least an ext_authz server can do per check.
type ceilingServer struct {
	authv3.UnimplementedAuthorizationServer
	tenants map[[32]byte]verifier.Identity
	srv     *grpc.Server
	addr    string
}

func (c *ceilingServer) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	token, _ := strings.CutPrefix(req.GetAttributes().GetRequest().GetHttp().GetHeaders()["authorization"], "Bearer ")
	id, ok := c.tenants[sha256.Sum256([]byte(token))]
	if !ok {
		return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: 16}}, nil
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers: []*corev3.HeaderValueOption{header(headerTenant, id.Tenant), header(headerKey, id.Tenant+"/"+id.KeyName)},
		}},
	}, nil
}

func serveCeiling(b *testing.B, dir string, raws []string) *ceilingServer {
	creds, err := credentials.NewServerTLSFromFile(filepath.Join(dir, certs.CertFile), filepath.Join(dir, certs.KeyFile))
	if err != nil {
		b.Fatal(err)
	}
	c := &ceilingServer{tenants: make(map[[32]byte]verifier.Identity, len(raws)), srv: grpc.NewServer(grpc.Creds(creds))}
	for i, raw := range raws {
		c.tenants[sha256.Sum256([]byte(raw))] = verifier.Identity{Tenant: fmt.Sprintf("tenant-%d", i%10), KeyName: fmt.Sprintf("k%d", i)}
	}
	authv3.RegisterAuthorizationServer(c.srv, c)
	nl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	c.addr = nl.Addr().String()
	go func() { _ = c.srv.Serve(nl) }()
	return c
}

func dial(b *testing.B, ca []byte, addr string) *grpc.ClientConn {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})))
	if err != nil {
		b.Fatal(err)
	}
	return conn
}

type roundResult struct {
	rps      float64
	p50, p99 time.Duration
}

// checkLoad runs streams concurrent Checks of random keys on conn for d,
// then closes it, and measures.
func checkLoad(b *testing.B, conn *grpc.ClientConn, streams int, raws []string, d time.Duration) roundResult {
	defer func() { _ = conn.Close() }()
	client := authv3.NewAuthorizationClient(conn)
	// The connection's handshake is not the checks' to pay.
	if _, err := client.Check(context.Background(), checkFor(raws[0])); err != nil {
		b.Fatal(err)
	}
	reqs := make([]*authv3.CheckRequest, 1024)
	for i := range reqs {
		reqs[i] = checkFor(raws[rand.IntN(len(raws))])
	}
	lats := make([][]time.Duration, streams)
	var wg sync.WaitGroup
	start := time.Now()
	for s := range streams {
		wg.Go(func() {
			for i := s; time.Since(start) < d; i++ {
				t0 := time.Now()
				resp, err := client.Check(context.Background(), reqs[i%len(reqs)])
				if err != nil || resp.GetOkResponse() == nil {
					b.Errorf("a valid key: %v, %v", err, resp.GetStatus())
					return
				}
				lats[s] = append(lats[s], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	all := slices.Concat(lats...)
	if len(all) == 0 {
		return roundResult{}
	}
	slices.Sort(all)
	return roundResult{
		rps: float64(len(all)) / elapsed.Seconds(),
		p50: all[len(all)/2].Round(time.Microsecond),
		p99: all[len(all)*99/100].Round(time.Microsecond),
	}
}

func checkFor(raw string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{
		Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/api/things", Headers: map[string]string{
			"authorization": protocol.Bearer(raw), ":authority": "api.example", "user-agent": "bench",
		}},
	}}}
}

// medians are each figure's median over the rounds.
func medians(rs []roundResult) roundResult {
	of := func(f func(roundResult) float64) float64 {
		vs := make([]float64, 0, len(rs))
		for _, r := range rs {
			vs = append(vs, f(r))
		}
		slices.Sort(vs)
		return vs[len(vs)/2]
	}
	return roundResult{
		rps: of(func(r roundResult) float64 { return r.rps }),
		p50: time.Duration(of(func(r roundResult) float64 { return float64(r.p50) })),
		p99: time.Duration(of(func(r roundResult) float64 { return float64(r.p99) })),
	}
}
