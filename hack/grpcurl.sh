#!/usr/bin/env bash
# Builds grpcurl, pinned, from the Go module proxy and prints its path, for
# the tests that call Latchkey's gRPC ext_authz as a client nobody here
# wrote. It is cached outside the clone, keyed by version, so every clone
# on the machine shares one build.
#
#   LATCHKEY_TOOLS_DIR  overrides the cache root
set -euo pipefail

GRPCURL_VERSION=v1.9.3

root="${LATCHKEY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/latchkey/tools}"
dir="$root/grpcurl-${GRPCURL_VERSION}-$(go env GOOS)-$(go env GOARCH)"
bin="$dir/grpcurl"

if [[ ! -x "$bin" ]]; then
	mkdir -p "$root"
	exec 9>"$root/.grpcurl.lock"
	flock 9
	if [[ ! -x "$bin" ]]; then
		echo "grpcurl: building ${GRPCURL_VERSION} from the Go module proxy" >&2
		staging="$dir.partial"
		rm -rf "$staging"
		mkdir -p "$staging"
		# Outside this module, so that its go.mod neither pins nor is changed by grpcurl's dependencies.
		(cd "$staging" && GOFLAGS=-mod=mod GOBIN="$staging" CGO_ENABLED=0 \
			go install -trimpath -ldflags '-s -w' "github.com/fullstorydev/grpcurl/cmd/grpcurl@${GRPCURL_VERSION}" >&2)
		rm -rf "$dir"
		mv "$staging" "$dir"
	fi
fi
echo "$bin"
