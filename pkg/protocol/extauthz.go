package protocol

// Envoy's ext_authz (envoy.service.auth.v3.Authorization/Check), as the
// manager serves it over gRPC.
const (
	// ContextExtensionTenantRequired is the context extension (Envoy's
	// per-route check_settings.context_extensions) that pins a route to a
	// tenant, as HeaderTenantRequired does for a request.
	ContextExtensionTenantRequired = "latchkey.dev/tenant-required"
	// MetadataNamespace is where Envoy files a Check's dynamic metadata:
	// the ext_authz filter's own name, which rate limit descriptors and
	// access logs (%DYNAMIC_METADATA(envoy.filters.http.ext_authz:tenant)%)
	// read it from.
	MetadataNamespace = "envoy.filters.http.ext_authz"
	// MetadataTenant and MetadataKey hold an allowed key's tenant and its
	// "namespace/name", as HeaderTenant and HeaderKey do.
	MetadataTenant = "tenant"
	MetadataKey    = "key"
	// HeaderAPIKey is where gateways commonly carry a key besides
	// Authorization: Bearer.
	HeaderAPIKey = "X-API-Key"
)
