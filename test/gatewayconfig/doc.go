// Package gatewayconfig holds the test that decodes every Envoy, Istio,
// Envoy Gateway and Gateway API configuration README.md shows into its
// own project's published types, strictly, and checks that each points
// where Latchkey serves: Envoy cannot be installed on the machines Latchkey
// is tested on, so this is what keeps a documented configuration from
// being silently wrong.
package gatewayconfig
