package protocol

// Envoy's ext_authz (envoy.service.auth.v3.Authorization/Check), as the
// manager serves it over gRPC.
const (
	// ContextExtensionTenantRequired is the context extension (Envoy's
	// per-route check_settings.context_extensions) that pins a route to a
	// tenant, as HeaderTenantRequired does for a request.
	ContextExtensionTenantRequired = "latchkey.dev/tenant-required"
	// ContextExtensionScopesRequired names scopes, comma-separated, that a
	// route requires, as HeaderScopeRequired does for a request.
	ContextExtensionScopesRequired = "latchkey.dev/scopes-required"
	// MetadataNamespace is where Envoy files a Check's dynamic metadata:
	// the ext_authz filter's own name, which rate limit descriptors and
	// access logs (%DYNAMIC_METADATA(envoy.filters.http.ext_authz:tenant)%)
	// read it from.
	MetadataNamespace = "envoy.filters.http.ext_authz"
	// MetadataTenant and MetadataKey hold an allowed key's tenant and its
	// "namespace/name", as HeaderTenant and HeaderKey do.
	MetadataTenant = "tenant"
	MetadataKey    = "key"
	// MetadataScopes holds an allowed key's scopes, comma-separated.
	MetadataScopes = "scopes"
	// HeaderAPIKey is where gateways commonly carry a key besides
	// Authorization: Bearer.
	HeaderAPIKey = "X-API-Key"
)
