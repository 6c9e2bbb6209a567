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
	"errors"
	"net/netip"
	"slices"
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

// Options say what Check tells Envoy to do with a key; where it reads
// keys from is the endpoints.Server's Keys.
type Options struct {
	// KeepCredential leaves the key in the request Envoy passes upstream.
	KeepCredential bool
}

// Envoy lower-cases header names, in what it sends and in what it is told.
var (
	headerAuthorization  = "authorization"
	headerTenant         = strings.ToLower(protocol.HeaderTenant)
	headerKey            = strings.ToLower(protocol.HeaderKey)
	headerTenantRequired = strings.ToLower(protocol.HeaderTenantRequired)
	headerScopes         = strings.ToLower(protocol.HeaderScopes)
	headerScopeRequired  = strings.ToLower(protocol.HeaderScopeRequired)
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
	// remove[i] lists the header that carries the key when it came in
	// place i alone (0: authorization, 1+i: key header i), and
	// withBearer[i] authorization and key header i: built once, since
	// these are every usual request's.
	remove, withBearer [][]string
	query              []string

	refused                          map[error]*authv3.CheckResponse
	forbidden, malformed, notServing *authv3.CheckResponse
	limited, global                  []*authv3.CheckResponse
}

var _ authv3.AuthorizationServer = &Server{}

// New serves e's verification as Check.
func New(e *endpoints.Server, o Options) *Server {
	s := &Server{e: e, keep: o.KeepCredential, keyHeaders: e.Keys.Headers()}
	s.remove = append(s.remove, []string{headerAuthorization})
	for _, h := range s.keyHeaders {
		s.remove = append(s.remove, []string{h})
		s.withBearer = append(s.withBearer, []string{headerAuthorization, h})
	}
	if q := e.Keys.QueryParam(); q != "" {
		s.query = []string{q}
	}
	s.refused = map[error]*authv3.CheckResponse{}
	for _, err := range []error{endpoints.ErrNoKey, verifier.ErrMalformed, verifier.ErrUnknown, verifier.ErrRevoked, verifier.ErrExpired,
		verifier.ErrSuspended, verifier.ErrRotated} {
		s.refused[err] = denied(codes.Unauthenticated, typev3.StatusCode_Unauthorized, err.Error(),
			header("www-authenticate", protocol.Challenge(err.Error())))
	}
	s.forbidden = denied(codes.PermissionDenied, typev3.StatusCode_Forbidden, "key is not a key of the tenant this route requires")
	s.malformed = denied(codes.InvalidArgument, typev3.StatusCode_BadRequest, endpoints.ErrTwoKeys.Error())
	s.notServing = denied(codes.Unavailable, typev3.StatusCode_ServiceUnavailable, verifier.ErrNotServing.Error(), header("retry-after", "1"))
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
	headers := requestHeaders(attrs.GetRequest().GetHttp())
	token, found, err := s.e.Keys.Key(func(i int) string {
		if i == 0 {
			return headers[headerAuthorization]
		}
		return headers[s.keyHeaders[i-1]]
	}, endpoints.QueryOf(attrs.GetRequest().GetHttp().GetPath()))
	if err != nil {
		s.e.Metrics.Verified(Endpoint, "bad_request")
		if errors.Is(err, endpoints.ErrTwoKeys) {
			return s.malformed, nil
		}
		return denied(codes.InvalidArgument, typev3.StatusCode_BadRequest, err.Error()), nil
	}
	ext := attrs.GetContextExtensions()
	want := endpoints.Want{
		Tenants: [2]string{ext[protocol.ContextExtensionTenantRequired], headers[headerTenantRequired]},
		Scopes:  [2]string{ext[protocol.ContextExtensionScopesRequired], headers[headerScopeRequired]},
	}
	d := s.e.Check(Endpoint, token, client(ctx, attrs), want)
	switch d.Verdict {
	case endpoints.Allowed:
		return s.allowed(d.Identity, found), nil
	case endpoints.Forbidden:
		return s.forbidden, nil
	case endpoints.InsufficientScope:
		return denied(codes.PermissionDenied, typev3.StatusCode_Forbidden, "key lacks scope "+strconv.Quote(d.Missing),
			header("www-authenticate", protocol.InsufficientScope(want.ScopeList()))), nil
	case endpoints.Limited:
		return s.tooMany(d.RetryAfter, false), nil
	case endpoints.LimitedGlobal:
		return s.tooMany(d.RetryAfter, true), nil
	case endpoints.Unavailable:
		return s.notServing, nil
	default:
		if r, ok := s.refused[d.Err]; ok {
			return r, nil
		}
		return s.refused[verifier.ErrMalformed], nil
	}
}

// requestHeaders are the request's headers as Envoy sends them: in
// headers, or, when Envoy is set to encode_raw_headers, in header_map, whose
// repeated names are joined with commas as Envoy joins them in headers.
func requestHeaders(h *authv3.AttributeContext_HttpRequest) map[string]string {
	if m := h.GetHeaderMap().GetHeaders(); len(h.GetHeaders()) == 0 && len(m) > 0 {
		headers := make(map[string]string, len(m))
		for _, hv := range m {
			v := hv.GetValue()
			if raw := hv.GetRawValue(); len(raw) > 0 {
				v = string(raw)
			}
			name := strings.ToLower(hv.GetKey())
			if prev, ok := headers[name]; ok {
				v = prev + "," + v
			}
			headers[name] = v
		}
		return headers
	}
	return h.GetHeaders()
}

// from lists the headers the key came in, and whether it came in the
// query too.
func (s *Server) from(found endpoints.Found) (headers []string, query bool) {
	n := len(s.keyHeaders)
	query = found.Has(1 + n)
	found &^= 1 << (1 + n)
	for i := range 1 + n {
		switch found {
		case 1 << i:
			return s.remove[i], query
		case 1 | 1<<i:
			return s.withBearer[i-1], query
		}
	}
	// The same key in several key headers: rare enough to build.
	for i := range 1 + n {
		if found.Has(i) {
			headers = append(headers, s.remove[i][0])
		}
	}
	return headers, query
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
func (s *Server) allowed(id verifier.Identity, found endpoints.Found) *authv3.CheckResponse {
	key := id.Tenant + "/" + id.KeyName
	ok := &authv3.OkHttpResponse{Headers: []*corev3.HeaderValueOption{header(headerTenant, id.Tenant), header(headerKey, key)}}
	if !s.keep {
		var inQuery bool
		ok.HeadersToRemove, inQuery = s.from(found)
		if inQuery {
			ok.QueryParametersToRemove = s.query
		}
	}
	if id.ScopeList != "" {
		ok.Headers = append(ok.Headers, header(headerScopes, id.ScopeList))
	} else {
		// Envoy drops a header option with an empty value rather than
		// overwrite: a key without scopes has a client's header removed.
		ok.HeadersToRemove = append(slices.Clip(ok.HeadersToRemove), headerScopes)
	}
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok},
		DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			protocol.MetadataTenant: structpb.NewStringValue(id.Tenant),
			protocol.MetadataKey:    structpb.NewStringValue(key),
			protocol.MetadataScopes: structpb.NewStringValue(id.ScopeList),
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
