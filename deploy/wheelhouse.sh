#!/usr/bin/env bash
# The wheelhouse the image builds install from: every file of deploy/requirements/*.lock,
# downloaded on this host (Debian bookworm's CPython 3.11 on x86-64: the images' own platform) (pip checks each against its hash) into .cache/wheels. It is made
# again only when a lock file changes (their digest is kept in .cache/wheels/.locks).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-python3 -m pip}
WHEELS=.cache/wheels
digest=$(cat deploy/requirements/*.lock | sha256sum | cut -c1-16)
if [ -f "$WHEELS/.locks" ] && [ "$(cat "$WHEELS/.locks")" = "$digest" ]; then
  echo "wheelhouse: reusing $WHEELS (locks $digest)" >&2
  exit 0
fi
# Files already there are checked against the locks and kept; stale ones are never installed.
mkdir -p "$WHEELS"
for lock in deploy/requirements/*.lock; do
  echo "wheelhouse: $lock" >&2
  $PIP download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --require-hashes \
    -d "$WHEELS" -r "$lock"
done
echo "$digest" > "$WHEELS/.locks"
du -sh "$WHEELS" >&2
