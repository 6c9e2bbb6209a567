#!/usr/bin/env bash
# Builds Traefik, pinned, from the Go module proxy and prints its path, for
# the tests that put Traefik's forwardAuth in front of a service as a
# client nobody here wrote (cached as cached-tool.sh says).
set -euo pipefail

# v3.6: v3.7's dependencies include modules the Go module proxy refuses
# here (Traefik's go-http-auth fork of 2026 and a dozen of lego v5's DNS
# providers' SDKs), so v3.7 cannot be built from it.
TRAEFIK_VERSION=v3.6.12
module=github.com/traefik/traefik/v3

# shellcheck source=hack/cached-tool.sh
source "$(dirname "$0")/cached-tool.sh"

build() {
	local staging=$1 gomod
	mkdir -p "$staging/src/ext"
	# Traefik's go.mod has replace directives, which `go install pkg@version`
	# refuses, so it is built as the dependency of a module of our own,
	# outside this one (whose go.mod neither pins nor is changed by Traefik's
	# dependencies), that repeats Traefik's replaces and excludes.
	gomod=$(cd "$staging/src" && GOFLAGS=-mod=mod go mod download -json "${module}@${TRAEFIK_VERSION}" |
		sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
	{
		printf 'module latchkey.dev/tools/traefik\n\ngo %s\n\nrequire %s %s\n\n' \
			"$(sed -n 's/^go //p' "$gomod")" "$module" "$TRAEFIK_VERSION"
		awk '/^(replace|exclude) \($/ { block = 1 } block || /^(replace|exclude) / { print } /^\)$/ { block = 0 }' "$gomod"
	} >"$staging/src/go.mod"
	# The one local replace names a nested module that the module zip
	# leaves out: Traefik's extension point for its commercial builds,
	# empty structs in the open-source one.
	if grep -q '=> ./pkg/config/dynamic/ext$' "$staging/src/go.mod"; then
		sed -i 's|=> ./pkg/config/dynamic/ext$|=> ./ext|' "$staging/src/go.mod"
		printf 'module github.com/traefik/traefik/dynamic/ext\n\ngo 1.24.0\n' >"$staging/src/ext/go.mod"
		printf 'package ext\n\n// HTTP is a dynamic.HTTP extension.\ntype HTTP struct{}\n\n// Router is a dynamic.Router extension.\ntype Router struct{}\n' \
			>"$staging/src/ext/ext.go"
	fi
	(cd "$staging/src" && GOFLAGS=-mod=mod CGO_ENABLED=0 \
		go build -trimpath -ldflags "-s -w -X ${module}/pkg/version.Version=${TRAEFIK_VERSION}" \
		-o "$staging/traefik" "${module}/cmd/traefik" >&2)
	rm -rf "$staging/src"
}

cached_tool traefik "$TRAEFIK_VERSION" build
