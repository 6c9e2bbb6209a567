#!/usr/bin/env bash
# Produces envtest's control-plane binaries (kube-apiserver, etcd, kubectl) in
# the setup-envtest layout and prints the directory, for KUBEBUILDER_ASSETS.
#
# The binaries are built from the Go module proxy, because the usual download
# (GitHub/GCS) is unreachable behind many proxies. They are cached outside the
# clone, keyed by version, so every clone on the machine shares one build.
#
#   LATCHKEY_ENVTEST_DIR  overrides the cache root
#   ENVTEST_TRY_DOWNLOAD  set to 1 to try setup-envtest's download first
set -euo pipefail

K8S_VERSION=1.37.0
ETCD_VERSION=3.6.16
SETUP_ENVTEST_VERSION=v0.25.1

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
os="$(go env GOOS)"
arch="$(go env GOARCH)"
root="${LATCHKEY_ENVTEST_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/latchkey/envtest}"
dir="$root/k8s/${K8S_VERSION}-${os}-${arch}"
stamp="kube-apiserver=v${K8S_VERSION} kubectl=v${K8S_VERSION} etcd=v${ETCD_VERSION}"

log() { echo "envtest: $*" >&2; }

complete() {
	[[ -x "$dir/kube-apiserver" && -x "$dir/etcd" && -x "$dir/kubectl" ]] &&
		[[ "$(cat "$dir/VERSIONS" 2>/dev/null)" == "$stamp" ]]
}

try_download() {
	local tmp
	tmp="$(mktemp -d)"
	log "trying setup-envtest ${SETUP_ENVTEST_VERSION} download"
	if GOBIN="$tmp" go install "sigs.k8s.io/controller-runtime/tools/setup-envtest@${SETUP_ENVTEST_VERSION}" >&2 2>&1 &&
		timeout 60 "$tmp/setup-envtest" use "$K8S_VERSION" --bin-dir "$tmp/assets" -p path >"$tmp/path" 2>/dev/null; then
		local got
		got="$(cat "$tmp/path")"
		# setup-envtest ships whatever etcd it packaged; accept it only if it is ours.
		if "$got/etcd" --version 2>/dev/null | grep -q "etcd Version: ${ETCD_VERSION}$"; then
			mkdir -p "$dir"
			cp "$got/kube-apiserver" "$got/etcd" "$got/kubectl" "$dir/"
			echo "$stamp" >"$dir/VERSIONS"
			rm -rf "$tmp"
			return 0
		fi
	fi
	rm -rf "$tmp"
	log "download unavailable; building from the Go module proxy"
	return 1
}

build() {
	local staging="$dir.partial"
	rm -rf "$staging"
	mkdir -p "$staging"
	local start=$SECONDS
	log "building kube-apiserver v${K8S_VERSION}, kubectl v${K8S_VERSION} and etcd v${ETCD_VERSION} (the first build takes 5 to 12 minutes on 2 cores; later ones reuse the Go build cache)"
	(cd "$here/envtest/kubernetes" &&
		CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$staging/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver &&
		log "kube-apiserver built after $((SECONDS - start))s" &&
		CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$staging/kubectl" k8s.io/kubernetes/cmd/kubectl &&
		log "kubectl built after $((SECONDS - start))s")
	(cd "$here/envtest/etcd" &&
		CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$staging/etcd" go.etcd.io/etcd/server/v3 &&
		log "etcd built after $((SECONDS - start))s")
	echo "$stamp" >"$staging/VERSIONS"
	# Swap in whole, so an interrupted build never leaves a half-filled directory.
	rm -rf "$dir"
	mv "$staging" "$dir"
	log "done in $((SECONDS - start))s"
}

if ! complete; then
	mkdir -p "$(dirname "$dir")"
	exec 9>"$root/.lock"
	flock 9
	if ! complete; then
		if [[ "${ENVTEST_TRY_DOWNLOAD:-0}" != 1 ]] || ! try_download; then
			build
		fi
	fi
fi
echo "$dir"
