// Package webhook embeds Latchkey's generated webhook configuration.
package webhook

import _ "embed" // for Manifests

// Manifests is manifests.yaml, as `make manifests` writes it.
//
//go:embed manifests.yaml
var Manifests []byte
