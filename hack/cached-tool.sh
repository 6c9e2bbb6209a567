# Sourced by the scripts that build a tool the tests use as a client nobody
# here wrote (grpcurl.sh, traefik.sh): the tool is built once, pinned, from
# the Go module proxy, and cached outside the clone, keyed by version, so
# that every clone on the machine shares one build; concurrent callers wait
# on a lock for the first one's build.
#
#   LATCHKEY_TOOLS_DIR  overrides the cache root

# cached_tool NAME VERSION BUILD prints the path of NAME's binary, running
# `BUILD STAGING` to build it into STAGING/NAME when it is not cached yet.
cached_tool() {
	local name=$1 version=$2 build=$3
	local root="${LATCHKEY_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/latchkey/tools}"
	local dir
	dir="$root/${name}-${version}-$(go env GOOS)-$(go env GOARCH)"
	if [[ ! -x "$dir/$name" ]]; then
		mkdir -p "$root"
		exec 9>"$root/.${name}.lock"
		flock 9
		if [[ ! -x "$dir/$name" ]]; then
			echo "${name}: building ${version} from the Go module proxy" >&2
			rm -rf "$dir.partial"
			mkdir -p "$dir.partial"
			"$build" "$dir.partial"
			rm -rf "$dir"
			mv "$dir.partial" "$dir"
		fi
	fi
	echo "$dir/$name"
}
