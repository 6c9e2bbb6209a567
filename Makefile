# Image URL to use for building and deploying the manager.
IMG ?= latchkey/manager:dev

# Setting SHELL to bash allows bash commands to be executed by recipes.
SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec

GOBIN ?= $(shell go env GOPATH)/bin

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Display this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: controller-gen ## Generate CRDs, RBAC Role and webhook configurations from markers.
	"$(CONTROLLER_GEN)" rbac:roleName=manager-role crd webhook paths="./..." output:crd:artifacts:config=config/crd/bases

.PHONY: generate
generate: controller-gen ## Generate DeepCopy methods.
	"$(CONTROLLER_GEN)" object:headerFile="hack/boilerplate.go.txt" paths="./..."

.PHONY: fmt
fmt: ## Run go fmt.
	go fmt ./...

.PHONY: vet
vet: ## Run go vet.
	go vet ./...

# Generated and formatted files must be committed as the generators write
# them: regenerating may change no tracked file, nor add a generated one.
GENERATED = api config/crd config/rbac/role.yaml config/webhook/manifests.yaml dist/install.yaml
.PHONY: verify-generated
verify-generated:
	@before="$$(git diff | sha256sum)"; \
	$(MAKE) --no-print-directory manifests generate fmt build-installer >/dev/null; \
	after="$$(git diff | sha256sum)"; \
	untracked="$$(git ls-files --others --exclude-standard -- $(GENERATED))"; \
	if [ "$$before" != "$$after" ] || [ -n "$$untracked" ]; then \
		echo "Generated files were stale or new and have been rewritten; review and commit them:"; \
		git status --short; exit 1; \
	fi

.PHONY: test
test: verify-generated vet envtest test-clients ## Regenerate (failing if that changes tracked files), run all tests against a real API server, fuzz each parser briefly.
	KUBEBUILDER_ASSETS="$$(bash hack/envtest.sh)" go test ./... -coverprofile cover.out
	$(MAKE) --no-print-directory fuzz FUZZTIME=3s

.PHONY: bench
bench: envtest ## Run the benchmarks and load runs and print their figures (see README, Performance).
	go test -run '^$$' -bench . ./internal/keys/ ./internal/verifier/
	go test -run '^$$' -bench LoadAuthorize -benchtime 1x ./internal/endpoints/ | grep -E 'FIGURE|ok|FAIL'
	go test -run '^$$' -bench CheckLoad -benchtime 1x ./internal/extauthz/ | grep -E 'FIGURE|ok|FAIL'
	KUBEBUILDER_ASSETS="$$(bash hack/envtest.sh)" go test -run '^$$' -bench Rotate -benchtime 1x ./internal/plugin/ | grep -E 'FIGURE|ok|FAIL'
	KUBEBUILDER_ASSETS="$$(bash hack/envtest.sh)" go test -run '^$$' -bench Mint1000 -benchtime 1x ./internal/controller/
	KUBEBUILDER_ASSETS="$$(bash hack/envtest.sh)" go test -run 'TheLedgerAtItsMaximumSize' -bench ReportsAtTheCaps -benchtime 1x -v ./internal/usage/store/ | grep -E 'FIGURE|^ok|FAIL'
	KUBEBUILDER_ASSETS="$$(bash hack/envtest.sh)" go test -run 'RevocationIsImmediate|AreImmediate|RotationLatency|LastUseIsWritten|ConcurrentReporters' -v ./test/integration/ | grep -E 'FIGURE|^ok|FAIL'
	KUBEBUILDER_ASSETS="$$(bash hack/envtest.sh)" go test -run '^$$' -bench RevokeLatency -benchtime 1x ./test/replicas/ | grep -E 'FIGURE|^ok|FAIL'
	KUBEBUILDER_ASSETS="$$(bash hack/envtest.sh)" go test -run '^$$' -bench 'ExecutionsLoad|ManagerMemory' -benchtime 1x -timeout 60m ./test/integration/ \
		-args -memory-keys 0,1000,10000 | grep -E 'FIGURE|Benchmark|ok|FAIL'
	KUBEBUILDER_ASSETS="$$(bash hack/envtest.sh)" go test -run '^$$' -bench Sizing -benchtime 1x -timeout 60m ./test/integration/ \
		-args -sizing-keys 1000,10000 | grep -E 'FIGURE|Benchmark|ok|FAIL'

BENCH_LOAD_ARGS ?=
.PHONY: bench-load
bench-load: envtest ## Measure /authorize and /tokenreview from outside with wrk against the manager and a bare TLS ceiling, keys minted through the API (BENCH_LOAD_ARGS: -keys, -conns, -duration, -rounds, -force, -out).
	@command -v wrk >/dev/null || apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }
	go build -o bin/bench-load/manager ./cmd
	go build -o bin/bench-load/ceiling ./hack/benchload/ceiling
	go build -o bin/bench-load/benchload ./hack/benchload
	KUBEBUILDER_ASSETS="$$(bash hack/envtest.sh)" bin/bench-load/benchload -manager bin/bench-load/manager \
		-ceiling bin/bench-load/ceiling -lua hack/benchload/load.lua $(BENCH_LOAD_ARGS)

.PHONY: reliability
reliability: envtest ## Run every reliability case (faults, floods, leaks, privilege, fuzzing 5 minutes per parser) and print the table.
	@mkdir -p bin
	$(MAKE) --no-print-directory fuzz FUZZTIME=5m | tee bin/fuzz-report.txt
	$(MAKE) --no-print-directory fuzz-corpus
	LATCHKEY_FUZZ_REPORT="$(CURDIR)/bin/fuzz-report.txt" LATCHKEY_RELIABILITY=all KUBEBUILDER_ASSETS="$$(bash hack/envtest.sh)" \
		go test -count=1 -timeout 60m -v ./test/reliability/ | grep -E '^CASE|^[0-9]{2} |^ok|FAIL|panic'

FUZZ_TARGETS = ./internal/keys:FuzzParse ./internal/keys:FuzzGenerateRoundTrip \
	./internal/endpoints:FuzzDecodeTokenReview ./pkg/protocol:FuzzBearerToken \
	./internal/usage:FuzzDecodeAndApply

.PHONY: fuzz-corpus
fuzz-corpus: ## Copy the inputs the fuzzers found interesting into each package's testdata, to commit.
	@cache="$$(go env GOCACHE)/fuzz/github.com/latchkey-dev/latchkey"; \
	for target in $(FUZZ_TARGETS); do \
		pkg=$${target%%:*}; fn=$${target##*:}; \
		if [ -d "$$cache/$${pkg#./}/$$fn" ]; then \
			mkdir -p "$$pkg/testdata/fuzz/$$fn"; cp -n "$$cache/$${pkg#./}/$$fn"/* "$$pkg/testdata/fuzz/$$fn/"; \
			echo "$$pkg/testdata/fuzz/$$fn: $$(ls "$$pkg/testdata/fuzz/$$fn" | wc -l) inputs"; \
		fi; \
	done

FUZZTIME ?= 30s
FUZZJOBS ?= 2
.PHONY: fuzz
fuzz: ## Fuzz every parser reachable from the network for FUZZTIME each, FUZZJOBS targets at a time on one core each.
	@FUZZTIME=$(FUZZTIME) FUZZJOBS=$(FUZZJOBS) bash hack/fuzz.sh $(FUZZ_TARGETS)

.PHONY: lint
lint: golangci-lint ## Run golangci-lint.
	"$(GOLANGCI_LINT)" run

.PHONY: lint-fix
lint-fix: golangci-lint ## Run golangci-lint and fix what it can.
	"$(GOLANGCI_LINT)" run --fix

##@ Build

.PHONY: build
build: manifests generate fmt vet ## Build the manager and the kubectl plugin (bin/manager, bin/kubectl-latchkey).
	go build -o bin/manager cmd/main.go
	go build -o bin/kubectl-latchkey ./cmd/kubectl-latchkey

.PHONY: dev
dev: envtest ## Run a complete local Latchkey with no cluster (etcd, kube-apiserver, CRDs, webhooks, operator) and build the kubectl plugin; Ctrl-C stops it.
	go build -o bin/latchkey-dev ./cmd/latchkey-dev
	go build -o bin/kubectl-latchkey ./cmd/kubectl-latchkey
	@bin/latchkey-dev --assets "$$(bash hack/envtest.sh)"

.PHONY: run
run: manifests generate fmt vet ## Run the manager against the cluster of the current kubeconfig (webhooks off).
	ENABLE_WEBHOOKS=false go run ./cmd/main.go

.PHONY: docker-build
docker-build: ## Build the manager image.
	docker build -t ${IMG} .

.PHONY: docker-push
docker-push: ## Push the manager image.
	docker push ${IMG}

.PHONY: build-installer
build-installer: manifests generate kustomize ## Write dist/install.yaml: CRDs and everything needed to deploy.
	mkdir -p dist
	cd config/manager && "$(KUSTOMIZE)" edit set image controller=${IMG}
	"$(KUSTOMIZE)" build config/default > dist/install.yaml

##@ Deployment

ifndef ignore-not-found
  ignore-not-found = false
endif

.PHONY: install
install: manifests kustomize ## Install CRDs into the cluster of the current kubeconfig.
	"$(KUSTOMIZE)" build config/crd | "$(KUBECTL)" apply -f -

.PHONY: uninstall
uninstall: manifests kustomize ## Uninstall CRDs. ignore-not-found=true to ignore missing resources.
	"$(KUSTOMIZE)" build config/crd | "$(KUBECTL)" delete --ignore-not-found=$(ignore-not-found) -f -

.PHONY: deploy
deploy: manifests kustomize ## Deploy the manager to the cluster of the current kubeconfig.
	cd config/manager && "$(KUSTOMIZE)" edit set image controller=${IMG}
	"$(KUSTOMIZE)" build config/default | "$(KUBECTL)" apply -f -

.PHONY: undeploy
undeploy: kustomize ## Remove the manager from the cluster. ignore-not-found=true to ignore missing resources.
	"$(KUSTOMIZE)" build config/default | "$(KUBECTL)" delete --ignore-not-found=$(ignore-not-found) -f -

##@ Dependencies

LOCALBIN ?= $(shell pwd)/bin
$(LOCALBIN):
	mkdir -p "$(LOCALBIN)"

KUBECTL ?= kubectl
KUSTOMIZE ?= $(LOCALBIN)/kustomize
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen
GOLANGCI_LINT ?= $(LOCALBIN)/golangci-lint

KUSTOMIZE_VERSION ?= v5.8.2
CONTROLLER_TOOLS_VERSION ?= v0.23.0
GOLANGCI_LINT_VERSION ?= v2.15.0

.PHONY: envtest
envtest: ## Build (or reuse) kube-apiserver, etcd and kubectl for envtest and print their directory.
	@bash hack/envtest.sh

.PHONY: test-clients
test-clients: ## Build (or reuse) the real clients the tests drive: Traefik from the Go module proxy, and the console tests' playwright-core when npm is there.
	@bash hack/traefik.sh >/dev/null
	@if command -v npm >/dev/null; then npm ci --prefix test/console --no-audit --no-fund --loglevel=error >/dev/null; fi

.PHONY: kustomize
kustomize: $(KUSTOMIZE)
$(KUSTOMIZE): $(LOCALBIN)
	$(call go-install-tool,$(KUSTOMIZE),sigs.k8s.io/kustomize/kustomize/v5,$(KUSTOMIZE_VERSION))

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN)
$(CONTROLLER_GEN): $(LOCALBIN)
	$(call go-install-tool,$(CONTROLLER_GEN),sigs.k8s.io/controller-tools/cmd/controller-gen,$(CONTROLLER_TOOLS_VERSION))

.PHONY: golangci-lint
golangci-lint: $(GOLANGCI_LINT)
$(GOLANGCI_LINT): $(LOCALBIN)
	$(call go-install-tool,$(GOLANGCI_LINT),github.com/golangci/golangci-lint/v2/cmd/golangci-lint,$(GOLANGCI_LINT_VERSION))

# go-install-tool will 'go install' any package with custom target and name of binary, if it doesn't exist
# $1 - target path with name of binary
# $2 - package url which can be installed
# $3 - specific version of package
define go-install-tool
@[ -f "$(1)-$(3)" ] && [ "$$(readlink -- "$(1)" 2>/dev/null)" = "$$(realpath "$(1)-$(3)")" ] || { \
set -e; \
package=$(2)@$(3) ;\
echo "Downloading $${package}" ;\
rm -f "$(1)" ;\
GOBIN="$(LOCALBIN)" go install $${package} ;\
mv "$(LOCALBIN)/$$(basename "$(1)")" "$(1)-$(3)" ;\
} ;\
ln -sf "$$(realpath "$(1)-$(3)")" "$(1)"
endef
