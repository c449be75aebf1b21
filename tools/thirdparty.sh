#!/usr/bin/env bash
# The source of the real OpenFaaS runtime (of-watchdog and the gateway) that the integration tests
# build, at pinned commits. Two ways to get it, checked in this order:
#   1. THIRDPARTY=<folder>: an offline mirror holding the two archives named below (made with
#      `git archive --format=tar.gz <commit>`);
#   2. otherwise git fetches the public repositories at the pinned commits into .cache/thirdparty/
#      (ignored) and archives them there, once.
# Either way the archive's embedded commit id (`git get-tar-commit-id`) must be the pinned one.
#
#   tools/thirdparty.sh fetch          make sure both archives are there (fails at once, naming
#                                      both ways, when neither is possible)
#   tools/thirdparty.sh archive NAME   print the path of NAME's checked archive
set -euo pipefail
cd "$(dirname "$0")/.."

# name, public repository, pinned commit, archive file name
PINS=(
  "of-watchdog https://github.com/openfaas/of-watchdog 5d4cadcaf595f3d3d213e08cdd38a310c5bb3066 of-watchdog-5d4cadc.tar.gz"
  "faas https://github.com/openfaas/faas b1ef4b49b70b96c7e6bf06493e55c2a782c60163 faas-b1ef4b49.tar.gz"
)
CACHE=.cache/thirdparty
# A fetch that cannot reach the repository gives up rather than hanging a test run.
FETCH_TIMEOUT=${THIRDPARTY_FETCH_TIMEOUT:-120}

fail() {
  cat >&2 <<EOF
thirdparty: $1
The integration tests build the real OpenFaaS of-watchdog and gateway from source at pinned
commits. Provide that source in one of two ways:
  - THIRDPARTY=<folder>: an offline mirror holding $(listed 4 " and ")
    (\`git archive --format=tar.gz <commit>\` of each), e.g. THIRDPARTY=/path/to/mirror make test;
  - or network access for git to fetch the pinned commits from
    $(listed 2 " and ") into $CACHE/.
EOF
  exit 1
}
# Field N of every pin, joined by SEP: listed N SEP
listed() {
  local field=$1 sep=$2 p out=""
  for p in "${PINS[@]}"; do
    set -- $p
    out="$out${out:+$sep}${!field}"
  done
  echo "$out"
}

pin() {
  local p
  for p in "${PINS[@]}"; do
    set -- $p
    [ "$1" = "$NAME" ] && { REPO=$2 COMMIT=$3 FILE=$4; return; }
  done
  echo "thirdparty: unknown source '$NAME' (known: of-watchdog, faas)" >&2
  exit 2
}

commit_of() { gzip -dc "$1" 2>/dev/null | git get-tar-commit-id 2>/dev/null || true; }

# Prints the checked archive of NAME, fetching it first when there is no mirror.
resolve() {
  pin
  local archive
  if [ -n "${THIRDPARTY:-}" ]; then
    archive="$THIRDPARTY/$FILE"
    [ -f "$archive" ] || fail "THIRDPARTY=$THIRDPARTY has no $FILE."
  else
    archive="$CACHE/$FILE"
    [ "$(commit_of "$archive")" = "$COMMIT" ] || fetch_one "$archive"
  fi
  local got
  got=$(commit_of "$archive")
  [ "$got" = "$COMMIT" ] ||
    fail "$archive is not $NAME at the pinned commit $COMMIT (its commit id: ${got:-none})."
  echo "$archive"
}

fetch_one() {
  local archive=$1 repo_dir="$CACHE/$NAME.git"
  mkdir -p "$CACHE"
  [ -d "$repo_dir" ] || git init --quiet --bare "$repo_dir"
  echo "thirdparty: fetching $NAME at $COMMIT from $REPO" >&2
  timeout "$FETCH_TIMEOUT" git -C "$repo_dir" fetch --quiet --depth 1 "$REPO" "$COMMIT" ||
    fail "git could not fetch $NAME at $COMMIT from $REPO, and THIRDPARTY is not set."
  [ "$(git -C "$repo_dir" rev-parse FETCH_HEAD)" = "$COMMIT" ] ||
    fail "$REPO gave $(git -C "$repo_dir" rev-parse FETCH_HEAD) for $COMMIT."
  git -C "$repo_dir" archive --format=tar.gz -o "$PWD/$archive.tmp" "$COMMIT"
  mv "$archive.tmp" "$archive"
}

case "${1:-}" in
  fetch)
    for p in "${PINS[@]}"; do
      set -- $p
      NAME=$1 resolve >/dev/null
    done
    ;;
  archive)
    [ $# -eq 2 ] || { echo "usage: $0 archive NAME" >&2; exit 2; }
    NAME=$2 resolve
    ;;
  *)
    echo "usage: $0 fetch | archive NAME" >&2
    exit 2
    ;;
esac
