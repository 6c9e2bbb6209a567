// Package crd embeds Latchkey's generated CustomResourceDefinitions (ApiKey,
// ApiKeyRecord, Usage and UsageLedger), so that a local Latchkey (pkg/devenv)
// can install them from any module.
package crd

import "embed"

// Bases holds bases/*.yaml, as `make manifests` writes them.
//
//go:embed bases/*.yaml
var Bases embed.FS
