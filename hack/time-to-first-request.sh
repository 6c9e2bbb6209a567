#!/usr/bin/env bash
# Measures the time from `git clone` to the first authenticated request
# against `make dev`, as a newcomer would go: clone, make dev, apply the
# sample, read the key, call /authorize. Prints the seconds and stops
# everything it started.
#
#   hack/time-to-first-request.sh [REPO]     (default: this clone)
set -euo pipefail
repo="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
work="$(mktemp -d)"
trap 'kill -INT "$dev" 2>/dev/null; wait "$dev" 2>/dev/null; rm -rf "$work"' EXIT

start=$(date +%s.%N)
git clone -q "$repo" "$work/latchkey"
cd "$work/latchkey"
make dev >"$work/dev.log" 2>&1 &
dev=$!
until [[ -s bin/dev/endpoint ]]; do
	kill -0 "$dev" 2>/dev/null || { cat "$work/dev.log"; exit 1; }
	sleep 0.2
done
export KUBECONFIG=$PWD/bin/dev/kubeconfig PATH="$(bash hack/envtest.sh 2>/dev/null):$PATH"
kubectl apply -n default -f config/samples/auth_v1alpha1_apikey.yaml >/dev/null
kubectl wait -n default --for=condition=Ready apikey/ci-pipeline --timeout=60s >/dev/null
KEY=$(kubectl get secret ci-pipeline -n default -o jsonpath='{.data.api-key}' | base64 -d)
status=$(curl -s -o /dev/null -w '%{http_code}' --cacert bin/dev/ca.crt -H "Authorization: Bearer $KEY" "$(cat bin/dev/endpoint)/authorize")
end=$(date +%s.%N)
[[ "$status" == 200 ]] || { echo "the first request got $status" >&2; exit 1; }
printf 'first authenticated request %.1f s after git clone\n' "$(echo "$end - $start" | bc)"
# make dev's child does the work; stop it through its lock's pid.
kill -INT "$(cat bin/dev/lock)" 2>/dev/null || true
