// Package protocol is Latchkey's wire protocol, declared once for the
// server (the manager's endpoints) and its clients (pkg/latchkey and the
// kubectl plugin): the paths, the headers, the identity a TokenReview
// answers with, the JSON of /whoami and of execution reports, and the one
// reading of a bearer key. It imports the standard library only, so that a
// service can speak the protocol without Kubernetes' modules.
package protocol

import (
	"strings"
	"time"
)

// Paths of the endpoints on the manager's webhook server.
const (
	PathTokenReview = "/tokenreview"
	PathAuthorize   = "/authorize"
	PathWhoAmI      = "/whoami"
	PathExecutions  = "/v1/executions"
)

// Headers of forward-auth (/authorize).
const (
	// HeaderTenant and HeaderKey answer a 200 with the key's tenant and its
	// "namespace/name".
	HeaderTenant = "X-Latchkey-Tenant"
	HeaderKey    = "X-Latchkey-Key"
	// HeaderTenantRequired pins a tenant: a key of another answers 403.
	HeaderTenantRequired = "X-Latchkey-Tenant-Required"
	// HeaderScopes answers a 200 with the key's scopes, comma-separated.
	HeaderScopes = "X-Latchkey-Scopes"
	// HeaderScopeRequired names scopes, comma-separated, that a key must
	// all have: one that lacks any answers 403 with error="insufficient_scope".
	HeaderScopeRequired = "X-Latchkey-Scope-Required"
	// HeaderClientAddress is where a trusted proxy names its caller, so
	// that failures are charged to the caller rather than to the proxy.
	HeaderClientAddress = "X-Real-IP"
)

// Audience is what a service's TokenReview asks a key to be valid for:
// Latchkey's own (the manager's --token-audiences default). A review naming
// none asks for the Kubernetes API server's audience instead.
const Audience = "latchkey.dev"

// The identity of a key in an authenticated TokenReview.
const (
	// UsernamePrefix starts every key's username, "latchkey:<tenant>:<name>".
	UsernamePrefix = "latchkey:"
	// GroupAuthenticated holds every valid key.
	GroupAuthenticated = "latchkey:authenticated"
	// GroupTenantPrefix and the tenant name the tenant's group.
	GroupTenantPrefix = "latchkey:tenant:"
	// GroupScopePrefix and a scope name the group of the keys that have it,
	// so that RoleBindings can grant per scope.
	GroupScopePrefix = "latchkey:scope:"
	// ExtraKeyHint names the key's hint in the user's extra.
	ExtraKeyHint = "latchkey.dev/key-hint"
)

// Username is the TokenReview username of the key name in tenant.
func Username(tenant, name string) string { return UsernamePrefix + tenant + ":" + name }

// ParseUsername reads a key's tenant and name back from its username. Both
// are Kubernetes names, which hold no colon, so the reading is unambiguous.
func ParseUsername(username string) (tenant, name string, ok bool) {
	rest, ok := strings.CutPrefix(username, UsernamePrefix)
	if !ok {
		return "", "", false
	}
	tenant, name, ok = strings.Cut(rest, ":")
	if !ok || tenant == "" || name == "" || strings.Contains(name, ":") {
		return "", "", false
	}
	return tenant, name, true
}

// TenantGroup is the group of every key of tenant.
func TenantGroup(tenant string) string { return GroupTenantPrefix + tenant }

// ScopeGroup is the group of every key that has scope, of any tenant.
func ScopeGroup(scope string) string { return GroupScopePrefix + scope }

// TenantScopeGroup is the group of tenant's keys that have scope: what a
// RoleBinding grants to when the tenant matters, since any tenant may give
// its keys any scope. Tenants are Kubernetes names, which hold no colon, so
// no scope name makes another tenant's group.
func TenantScopeGroup(tenant, scope string) string {
	return GroupTenantPrefix + tenant + ":scope:" + scope
}

// InsufficientScope is the WWW-Authenticate header of a 403 for a key that
// lacks a scope the route requires (RFC 6750 §3.1), naming the scopes.
func InsufficientScope(required string) string {
	return `Bearer error="insufficient_scope", scope="` + strings.ReplaceAll(required, ",", " ") + `"`
}

// WhoAmI is /whoami's answer: what the presented key is.
type WhoAmI struct {
	Tenant    string     `json:"tenant"`
	KeyName   string     `json:"keyName"`
	KeyHint   string     `json:"keyHint"`
	CreatedAt time.Time  `json:"createdAt"`
	ExpiresAt *time.Time `json:"expiresAt,omitempty"`
	Scopes    []string   `json:"scopes,omitempty"`
}
