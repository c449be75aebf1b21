#!/usr/bin/env bash
# Builds the release bundle: one folder an operator applies as it is.
#
#   target/release-bundle/faas-mesh-filter-<version>/
#     faas_mesh_filter.wasm                    the module
#     oci/                                     its OCI image layout (what `skopeo copy oci:...` pushes)
#     faas-mesh-filter-<version>-oci.tar.gz    the same layout as one archive
#     manifests/                               envoyfilter.yaml + wasm-configmap.yaml (module mounted
#                                              per function), envoyfilter-remote.yaml + module-server.yaml
#                                              (module fetched by sha256, no per-function edit),
#                                              wasmplugin.yaml (pinned by digest), observability.yaml,
#                                              stack.yml, and config.json, the configuration they carry
#     native/linux-amd64/libfaas_mesh_filter_native.so   the native build (an Envoy dynamic module,
#     native/linux-arm64/libfaas_mesh_filter_native.so   glibc), for Envoy 1.40.0; the manifests
#                                              envoyfilter-native-<arch>.yaml fetch it by sha256 from
#                                              module-server-native.yaml (no per-function edit; with
#                                              proxyconfig-native.yaml's writable TMPDIR), and
#                                              envoyfilter-native.yaml loads it by name
#     bin/faas-mesh-check-linux-amd64          the static configuration checker (musl, static)
#     bin/faas-mesh-check-linux-arm64
#     BUILD-INFO                               what it was built from, and with
#     SHA256SUMS                               over every other file
#   target/release-bundle/faas-mesh-filter-<version>.tar.gz (+ .sha256): the folder as one archive
#
# Reproducible: the same sources, Cargo.lock and toolchain give the same bytes, wherever the
# checkout is and whenever it is built (paths remapped, archives with fixed times, owners, modes
# and order, gzip without a timestamp). `make release-repro` builds it twice and compares.
#
# Called by `make release` with VERSION, IMAGE, CONFIG, OUT, TOOLCHAIN (the pinned Rust toolchain,
# with the wasm32-wasip1, musl and gnu targets; `make release-setup` installs them and Debian's
# aarch64 cross linker), SOURCE_DATE_EPOCH, GIT_COMMIT.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${VERSION:?VERSION=x.y.z is required}"
: "${IMAGE:?IMAGE (registry/repository, no tag) is required}"
CONFIG=${CONFIG:-envoyfilter/config.json}
OUT=${OUT:-target/release-bundle}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
GIT_COMMIT=${GIT_COMMIT:-unknown}
TOOLCHAIN=${TOOLCHAIN:?TOOLCHAIN (the pinned Rust toolchain) is required}
cargo() { command cargo "+$TOOLCHAIN" "$@"; }
rustc() { command rustc "+$TOOLCHAIN" "$@"; }
if ! [[ $VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]]; then
  echo "release: VERSION must look like 1.2.3 or 1.2.3-rc.1, got '$VERSION'" >&2
  exit 2
fi

root=$(pwd -P)
cargo_home=${CARGO_HOME:-$HOME/.cargo}
# The release builds in a target directory of its own: its flags differ from `make build`, and
# sharing one would rebuild everything each time the two alternate.
export CARGO_TARGET_DIR=$root/target/release-build
# No absolute path of this machine ends up in a binary (panic locations, debug strings).
export RUSTFLAGS="--remap-path-prefix=$root=/build --remap-path-prefix=$cargo_home=/cargo"
export SOURCE_DATE_EPOCH CARGO_INCREMENTAL=0
# The checker reports the release's version.
export FAAS_MESH_VERSION=$VERSION
# Static musl binaries for both architectures, linked by the toolchain's own lld: no C
# cross-toolchain to install.
lld=$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/rust-lld
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=$lld
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=$lld

cargo build --quiet --locked --release --target wasm32-wasip1 -p faas-mesh-filter
# The filter crate is also a cdylib, which static musl targets cannot build; only its rlib is
# needed here, so cargo's warning about dropping the cdylib is filtered out, nothing else.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! cargo build --quiet --locked --release -p faas-mesh-tools --bin faas-mesh-check \
  --target x86_64-unknown-linux-musl --target aarch64-unknown-linux-musl 2> "$log"; then
  cat "$log" >&2
  exit 1
fi
grep -v -e 'dropping unsupported crate type `cdylib`' -e '^$' "$log" >&2 || true
cargo build --quiet --locked --release -p faas-mesh-tools --bin faas-mesh-render --bin faas-mesh-oci
# The native module: glibc shared objects. Its release profile (the workspace's) aborts on panic
# and strips; its linker version script exports only Envoy's hooks. rustc links x86_64 with its own
# lld, which takes that script beside rustc's own; GNU ld refuses two ("anonymous version tag
# cannot be combined"), so arm64 is linked by the same lld too, through Debian's cross gcc (which
# brings the arm64 C runtime and glibc).
gcc_ld=$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/gcc-ld
aarch64_linker=$CARGO_TARGET_DIR/aarch64-linux-gnu-gcc-lld
mkdir -p "$CARGO_TARGET_DIR"
printf '#!/bin/sh\nexec aarch64-linux-gnu-gcc -fuse-ld=lld -B%s "$@"\n' "$gcc_ld" > "$aarch64_linker"
chmod 0755 "$aarch64_linker"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=$aarch64_linker
native_lib=libfaas_mesh_filter_native.so
cargo build --quiet --locked --release -p faas-mesh-filter-native --lib \
  --target x86_64-unknown-linux-gnu --target aarch64-unknown-linux-gnu

name=faas-mesh-filter-$VERSION
dir=$OUT/$name
rm -rf "$dir" "$OUT/$name.tar.gz" "$OUT/$name.tar.gz.sha256"
mkdir -p "$dir/bin" "$dir/manifests" "$dir/native/linux-amd64" "$dir/native/linux-arm64"

cp "$CARGO_TARGET_DIR/wasm32-wasip1/release/faas_mesh_filter.wasm" "$dir/"
"$CARGO_TARGET_DIR/release/faas-mesh-oci" --wasm "$dir/faas_mesh_filter.wasm" --tag "$VERSION" \
  --out "$dir/oci" >/dev/null
cp "$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/$native_lib" "$dir/native/linux-amd64/"
cp "$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/$native_lib" "$dir/native/linux-arm64/"
# Each native module is for its machine, and exports Envoy's hooks and nothing else (the
# proxy-wasm SDK's proxy_on_* entry points, which come with the core, stay local).
check_native() { # <file> <readelf machine>
  local so=$1 machine=$2 exported others
  readelf -h "$so" | grep -q "Machine: *$machine\$" ||
    { echo "release: $so is not for $machine: $(readelf -h "$so" | grep Machine)" >&2; exit 1; }
  exported=$(readelf --dyn-syms -W "$so" | awk '$5 == "GLOBAL" && $7 != "UND" {print $8}' | sort -u)
  others=$(grep -v '^envoy_dynamic_module_on_' <<< "$exported" || true)
  if [ -z "$exported" ] || [ -n "$others" ]; then
    echo "release: $so must export envoy_dynamic_module_on_* only; it exports: ${others:-nothing}" >&2
    exit 1
  fi
}
check_native "$dir/native/linux-amd64/$native_lib" "Advanced Micro Devices X86-64"
check_native "$dir/native/linux-arm64/$native_lib" "AArch64"
# The newest glibc symbol version each one needs: the oldest sidecar libc it runs with. Packed
# relative relocations (DT_RELR, native/build.rs) need GLIBC_ABI_DT_RELR, which glibc 2.36 added.
glibc_needed() {
  readelf -V -W "$1" | grep -o 'GLIBC_[0-9.]*\|GLIBC_ABI_DT_RELR' \
    | sed 's/^GLIBC_ABI_DT_RELR$/GLIBC_2.36/' | sort -u -V | tail -n 1
}
"$CARGO_TARGET_DIR/release/faas-mesh-render" --config "$CONFIG" --wasm "$dir/faas_mesh_filter.wasm" \
  --image "$IMAGE:$VERSION" --version "$VERSION" \
  --native-amd64 "$dir/native/linux-amd64/$native_lib" --native-arm64 "$dir/native/linux-arm64/$native_lib" \
  --out "$dir/manifests" >/dev/null
cp "$CONFIG" "$dir/manifests/config.json"
cp "$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/faas-mesh-check" "$dir/bin/faas-mesh-check-linux-amd64"
cp "$CARGO_TARGET_DIR/aarch64-unknown-linux-musl/release/faas-mesh-check" "$dir/bin/faas-mesh-check-linux-arm64"

digest=$(sed -n 's/.*"digest":"\(sha256:[0-9a-f]*\)".*/\1/p' "$dir/oci/index.json")
cat > "$dir/BUILD-INFO" <<EOF
name: faas-mesh-filter
version: $VERSION
image: $IMAGE:$VERSION
image digest: $digest
source commit: $GIT_COMMIT
source date (SOURCE_DATE_EPOCH): $SOURCE_DATE_EPOCH
configuration of the manifests: $(basename "$CONFIG") (manifests/config.json)
toolchain: $(rustc -V)
targets: wasm32-wasip1 (module), x86_64-unknown-linux-gnu and aarch64-unknown-linux-gnu (native module), x86_64-unknown-linux-musl and aarch64-unknown-linux-musl (checker)
native module: built and tested for Envoy 1.40.0; needs $(glibc_needed "$dir/native/linux-amd64/$native_lib") (amd64), $(glibc_needed "$dir/native/linux-arm64/$native_lib") (arm64) or newer
native linkers (their C runtime objects are in the .so): amd64 $(cc --version | head -n 1), arm64 $(aarch64-linux-gnu-gcc --version | head -n 1); $(dpkg-query -W -f '${Package} ${Version}, ' libc6-dev libc6-dev-arm64-cross 2>/dev/null | sed 's/, $//')
rebuild: git checkout $GIT_COMMIT && make release VERSION=$VERSION IMAGE=$IMAGE SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH RELEASE_TOOLCHAIN=$TOOLCHAIN
EOF

# Modes do not depend on the umask of the machine that built it.
find "$dir" -type d -exec chmod 0755 {} +
find "$dir" -type f -exec chmod 0644 {} +
chmod 0755 "$dir"/bin/*

# A tar that depends on nothing but the files: sorted names, fixed time, owner and modes.
deterministic_tar() { # <directory> <output.tar.gz> <entries...>
  local from=$1 output=$2
  shift 2
  tar --sort=name --format=gnu --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
    --mode='u+rw,go+r,go-w' -C "$from" -cf - "$@" | gzip -9 -n > "$output"
}
deterministic_tar "$dir/oci" "$dir/$name-oci.tar.gz" oci-layout index.json blobs

(cd "$dir" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort | xargs sha256sum > SHA256SUMS)
chmod 0644 "$dir/SHA256SUMS"

deterministic_tar "$OUT" "$OUT/$name.tar.gz" "$name"
(cd "$OUT" && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")

echo "release $VERSION: $dir ($(wc -l < "$dir/SHA256SUMS") files), image digest $digest"
echo "  $OUT/$name.tar.gz sha256 $(cut -d' ' -f1 "$OUT/$name.tar.gz.sha256")"
