#!/usr/bin/env bash
# Puts the real Istio data the conformance tests read into .cache/istio/ (see tools/istio-data.lock):
#   ISTIO_DATA=<dir>  an offline mirror holding the files under their local names (CI: .ci/run sets it)
#   otherwise         each file from https://github.com/istio/istio at its pinned commit
# Every file is checked against its sha256; a missing or different file stops everything here,
# with the two ways to get it named. Nothing is skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."
lock=tools/istio-data.lock
dest=.cache/istio
mkdir -p "$dest"

how="set ISTIO_DATA=<dir> to an offline mirror of the files in $lock (under their local names), or let \`make istio-data\` fetch them from github.com/istio/istio by pinned commit (needs network)"

sum() { sha256sum "$1" | cut -d' ' -f1; }

tmp=
trap 'rm -f "$tmp"' EXIT
while read -r name sha commit path; do
  if [[ -f $dest/$name && $(sum "$dest/$name") == "$sha" ]]; then
    continue
  fi
  tmp=$(mktemp "$dest/.$name.XXXXXX")
  if [[ -n ${ISTIO_DATA:-} ]]; then
    if [[ ! -f $ISTIO_DATA/$name ]]; then
      echo "istio-data: $ISTIO_DATA/$name does not exist (ISTIO_DATA must hold $name, istio/istio $path at $commit); $how" >&2
      exit 1
    fi
    cp "$ISTIO_DATA/$name" "$tmp"
    from="$ISTIO_DATA/$name"
  else
    url="https://github.com/istio/istio/raw/$commit/$path"
    if ! curl -fsSL --connect-timeout 10 -o "$tmp" "$url"; then
      echo "istio-data: could not fetch $url; $how" >&2
      exit 1
    fi
    from=$url
  fi
  got=$(sum "$tmp")
  if [[ $got != "$sha" ]]; then
    echo "istio-data: $from has sha256 $got, $lock pins $sha for $name; refusing it" >&2
    exit 1
  fi
  chmod 0644 "$tmp"
  mv "$tmp" "$dest/$name"
  tmp=
  echo "istio-data: $dest/$name from $from (sha256 $sha)"
done < <(grep -v -e '^#' -e '^[[:space:]]*$' "$lock")
