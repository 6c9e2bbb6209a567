// Package extauthz serves Envoy's external authorization over gRPC
// (envoy.service.auth.v3.Authorization/Check), as Istio (CUSTOM with
// envoyExtAuthzGrpc), Envoy Gateway (SecurityPolicy extAuth), Kuadrant and
// Gateway API's ExternalAuth filter call it: the same answers as
// /authorize, decided by endpoints.Server.Check, with the caller's
// identity in headers and dynamic metadata and the key removed before the
// upstream sees it.
package extauthz

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/latchkey-dev/latchkey/internal/endpoints"
	"github.com/latchkey-dev/latchkey/internal/verifier"
	"github.com/latchkey-dev/latchkey/pkg/protocol"
)

// Endpoint labels the verification metrics of Check.
const Endpoint = "ext_authz"

// DefaultKeyHeaders are the headers a key is read from when Authorization
// holds no bearer key.
var DefaultKeyHeaders = []string{strings.ToLower(protocol.HeaderAPIKey)}

// Options say where Check reads keys and what it tells Envoy to do with them.
type Options struct {
	// KeyHeaders are read for a key, in order, after "authorization:
	// Bearer"; nil means DefaultKeyHeaders.
	KeyHeaders []string
	// KeepCredential leaves the key in the request Envoy passes upstream.
	KeepCredential bool
}

// Envoy lower-cases header names, in what it sends and in what it is told.
var (
	headerAuthorization  = "authorization"
	headerTenant         = strings.ToLower(protocol.HeaderTenant)
	headerKey            = strings.ToLower(protocol.HeaderKey)
	headerTenantRequired = strings.ToLower(protocol.HeaderTenantRequired)
)

// maxRetryAfter bounds the 429 answers built once; a longer wait (a
// limiter configured with a very slow refill) is built per answer.
const maxRetryAfter = 60

// Server is the Authorization service. Its refusals are built once and
// shared: gRPC only reads a response while it marshals it.
type Server struct {
	authv3.UnimplementedAuthorizationServer

	e          *endpoints.Server
	keyHeaders []string
	keep       bool
	// remove[i] lists the headers that carry the key: authorization
	// alone (i = 0), key header i-1 alone, or authorization and key
	// header i-1 (i > len(keyHeaders)).
	remove [][]string

	refused              map[error]*authv3.CheckResponse
	forbidden, malformed *authv3.CheckResponse
	limited, global      []*authv3.CheckResponse
}

var _ authv3.AuthorizationServer = &Server{}

// New serves e's verification as Check.
func New(e *endpoints.Server, o Options) *Server {
	s := &Server{e: e, keep: o.KeepCredential, keyHeaders: DefaultKeyHeaders}
	if o.KeyHeaders != nil {
		s.keyHeaders = make([]string, len(o.KeyHeaders))
		for i, h := range o.KeyHeaders {
			s.keyHeaders[i] = strings.ToLower(h)
		}
	}
	s.remove = append(s.remove, []string{headerAuthorization})
	for _, h := range s.keyHeaders {
		s.remove = append(s.remove, []string{h})
	}
	for _, h := range s.keyHeaders {
		s.remove = append(s.remove, []string{headerAuthorization, h})
	}
	s.refused = map[error]*authv3.CheckResponse{}
	for _, err := range []error{endpoints.ErrNoKey, verifier.ErrMalformed, verifier.ErrUnknown, verifier.ErrRevoked, verifier.ErrExpired} {
		s.refused[err] = denied(codes.Unauthenticated, typev3.StatusCode_Unauthorized, err.Error(),
			header("www-authenticate", protocol.Challenge(err.Error())))
	}
	s.forbidden = denied(codes.PermissionDenied, typev3.StatusCode_Forbidden, "key is not a key of the tenant this route requires")
	s.malformed = denied(codes.InvalidArgument, typev3.StatusCode_BadRequest, "two different keys in one request")
	for secs := range maxRetryAfter + 1 {
		s.limited = append(s.limited, tooMany(secs, false))
		s.global = append(s.global, tooMany(secs, true))
	}
	return s
}

// Check answers Envoy: OK with the key's identity, or a denial with the
// HTTP answer Envoy is to give the client.
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := s.e.Clock.Now()
	defer func() { s.e.Metrics.Answered(Endpoint, s.e.Clock.Since(start)) }()
	attrs := req.GetAttributes()
	headers := attrs.GetRequest().GetHttp().GetHeaders()
	token, from, ok := s.key(headers)
	if !ok {
		s.e.Metrics.Verified(Endpoint, "bad_request")
		return s.malformed, nil
	}
	d := s.e.Check(Endpoint, token, client(ctx, attrs),
		attrs.GetContextExtensions()[protocol.ContextExtensionTenantRequired], headers[headerTenantRequired])
	switch d.Verdict {
	case endpoints.Allowed:
		return s.allowed(d.Identity, from), nil
	case endpoints.Forbidden:
		return s.forbidden, nil
	case endpoints.Limited:
		return s.tooMany(d.RetryAfter, false), nil
	case endpoints.LimitedGlobal:
		return s.tooMany(d.RetryAfter, true), nil
	default:
		if r, ok := s.refused[d.Err]; ok {
			return r, nil
		}
		return s.refused[verifier.ErrMalformed], nil
	}
}

// key reads the presented key: a bearer key in authorization, else the
// first key header that has a value. It names the headers that carry it,
// and is not ok when two carry different keys: which one a proxy or
// upstream would read is not for Latchkey to guess.
func (s *Server) key(h map[string]string) (token string, from []string, ok bool) {
	if bearer, isBearer := protocol.BearerToken(h[headerAuthorization]); isBearer {
		token, from = bearer, s.remove[0]
	}
	found := -1
	for i, name := range s.keyHeaders {
		v := h[name]
		switch {
		case v == "":
		case token == "":
			token, from, found = v, s.remove[1+i], i
		case v != token:
			return "", nil, false
		case found >= 0:
			// The same key twice in key headers: rare enough to build.
			from = append(append([]string{}, from...), name)
		default:
			from, found = s.remove[1+len(s.keyHeaders)+i], i
		}
	}
	return token, from, true
}

// client is who is charged for a refusal: the address Envoy names, else
// Envoy itself. Envoy is a trusted proxy: it carries everyone's requests,
// so its answers are never held.
func client(ctx context.Context, attrs *authv3.AttributeContext) netip.Addr {
	if a, err := netip.ParseAddr(attrs.GetSource().GetAddress().GetSocketAddress().GetAddress()); err == nil {
		return a.Unmap()
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		if ap, err := netip.ParseAddrPort(p.Addr.String()); err == nil {
			return ap.Addr().Unmap()
		}
	}
	return netip.Addr{}
}

// allowed is OK with the key's identity in headers that replace any the
// client sent, and in dynamic metadata, and the key's headers removed.
func (s *Server) allowed(id verifier.Identity, from []string) *authv3.CheckResponse {
	key := id.Tenant + "/" + id.KeyName
	ok := &authv3.OkHttpResponse{Headers: []*corev3.HeaderValueOption{header(headerTenant, id.Tenant), header(headerKey, key)}}
	if !s.keep {
		ok.HeadersToRemove = from
	}
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok},
		DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			protocol.MetadataTenant: structpb.NewStringValue(id.Tenant),
			protocol.MetadataKey:    structpb.NewStringValue(key),
		}},
	}
}

// tooMany is the 429 for a wait.
func (s *Server) tooMany(wait time.Duration, global bool) *authv3.CheckResponse {
	secs := int(wait/time.Second) + 1
	switch {
	case secs > maxRetryAfter:
		return tooMany(secs, global)
	case global:
		return s.global[secs]
	default:
		return s.limited[secs]
	}
}

func tooMany(secs int, global bool) *authv3.CheckResponse {
	body := "too many failed attempts from this address; retry later"
	if global {
		body = "too many failed attempts from all addresses; retry later"
	}
	return denied(codes.PermissionDenied, typev3.StatusCode_TooManyRequests, body, header("retry-after", strconv.Itoa(secs)))
}

func denied(code codes.Code, status typev3.StatusCode, body string, headers ...*corev3.HeaderValueOption) *authv3.CheckResponse {
	headers = append(headers, header("content-type", "text/plain; charset=utf-8"))
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code), Message: body},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: status},
			Headers: headers,
			Body:    body + "\n",
		}},
	}
}

// header sets name to value, replacing any value the request had.
func header(name, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: name, Value: value},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}
