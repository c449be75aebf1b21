#!/usr/bin/env bash
# Reproducibility check of the release: builds it a second time from a fresh copy of the sources
# in another directory (its own cargo target directory, nothing shared but the toolchain and the
# crates cache) and compares with the bundle `make release` just built here. Any byte that differs
# fails, with the files that differ.
#
# Called by `make release-repro` with VERSION, IMAGE, CONFIG, OUT, TOOLCHAIN, SOURCE_DATE_EPOCH,
# GIT_COMMIT.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${VERSION:?}" "${OUT:?}"
name=faas-mesh-filter-$VERSION
here=$OUT/$name
test -f "$here/SHA256SUMS" || { echo "release-repro: no $here: run make release first" >&2; exit 1; }

copy=$(mktemp -d "${TMPDIR:-/tmp}/faas-mesh-repro.XXXXXX")
trap 'rm -rf "$copy"' EXIT
# The sources as a fresh clone would have them: tracked files, plus new ones not ignored.
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do
    if [ -f "$f" ] && [ ! -L "$f" ]; then printf '%s\0' "$f"; fi
  done | xargs -0 cp --parents -t "$copy"
echo "release-repro: building $VERSION again in $copy"
(cd "$copy" && tools/release.sh >/dev/null)

there=$copy/$OUT/$name
if cmp -s "$here/SHA256SUMS" "$there/SHA256SUMS" &&
   cmp -s "$OUT/$name.tar.gz" "$copy/$OUT/$name.tar.gz"; then
  echo "release-repro: identical ($(wc -l < "$here/SHA256SUMS") files; bundle sha256 $(cut -d' ' -f1 "$OUT/$name.tar.gz.sha256"))"
else
  echo "release-repro: the second build differs:" >&2
  diff "$here/SHA256SUMS" "$there/SHA256SUMS" >&2 || true
  cmp "$OUT/$name.tar.gz" "$copy/$OUT/$name.tar.gz" >&2 || true
  exit 1
fi
