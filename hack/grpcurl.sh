#!/usr/bin/env bash
# Builds grpcurl, pinned, from the Go module proxy and prints its path, for
# the tests that call Latchkey's gRPC ext_authz as a client nobody here
# wrote (cached as cached-tool.sh says).
set -euo pipefail

GRPCURL_VERSION=v1.9.3

# shellcheck source=hack/cached-tool.sh
source "$(dirname "$0")/cached-tool.sh"

# Outside this module, so that its go.mod neither pins nor is changed by
# grpcurl's dependencies.
build() {
	(cd "$1" && GOFLAGS=-mod=mod GOBIN="$1" CGO_ENABLED=0 \
		go install -trimpath -ldflags '-s -w' "github.com/fullstorydev/grpcurl/cmd/grpcurl@${GRPCURL_VERSION}" >&2)
}

cached_tool grpcurl "$GRPCURL_VERSION" build
