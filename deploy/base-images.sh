#!/usr/bin/env bash
# Base images built from Debian's own packages, for hosts that cannot reach a container registry:
# debootstrap a minimal bookworm once, add each role's packages in a copy of it, `docker import`.
# Each image is tagged with a digest of this script, so a later run reuses what it finds and a
# change of the package lists builds new ones. Needs root (debootstrap, chroot).
#
#   deploy/base-images.sh            # prints the tag, e.g. vitrine-base/bookworm:3f2a9c1e0b7d
set -euo pipefail

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
TAG=$(sha256sum "$0" | cut -c1-12)
REPO=vitrine-base/$SUITE
WORK=${BASE_WORK:-/var/tmp/vitrine-base}

# role → packages beyond minbase. python: the app images (Debian's python3 is 3.11, the
# project's Python); postgres and redis: stand-ins for the official images with their contract.
declare -A PACKAGES=(
  [python]="python3 python3-venv ca-certificates tini libglib2.0-0"
  [postgres]="postgresql-15 tini"
  [redis]="redis-server tini"
)

log() { echo "base-images: $*" >&2; }

missing=()
for role in "${!PACKAGES[@]}"; do
  docker image inspect "$REPO:$role-$TAG" >/dev/null 2>&1 || missing+=("$role")
done
if [ ${#missing[@]} -eq 0 ]; then
  log "reusing $REPO:{python,postgres,redis}-$TAG"
  echo "$TAG"
  exit 0
fi

command -v debootstrap >/dev/null || apt-get install -y --no-install-recommends debootstrap >&2
mkdir -p "$WORK"
root="$WORK/minbase"
if [ ! -f "$root/.complete" ]; then
  rm -rf "$root"
  log "debootstrap --variant=minbase $SUITE"
  debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >&2
  # The security and update suites too, so the images carry the fixed packages.
  cat > "$root/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES
  touch "$root/.complete"
fi

for role in "${missing[@]}"; do
  dir="$WORK/$role"
  rm -rf "$dir"
  cp -a "$root" "$dir"
  rm -f "$dir/.complete"
  cp /etc/resolv.conf "$dir/etc/resolv.conf"
  log "$role: apt-get install ${PACKAGES[$role]}"
  # Services are never started inside the chroot.
  printf '#!/bin/sh\nexit 101\n' > "$dir/usr/sbin/policy-rc.d"
  chmod +x "$dir/usr/sbin/policy-rc.d"
  chroot "$dir" /bin/sh -c "apt-get update -qq && apt-get upgrade -y -qq && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${PACKAGES[$role]} && \
    apt-get clean && rm -rf /var/lib/apt/lists/*" >&2
  rm -f "$dir/usr/sbin/policy-rc.d" "$dir/etc/resolv.conf"
  tar -C "$dir" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' - "$REPO:$role-$TAG" >&2
  rm -rf "$dir"
  log "built $REPO:$role-$TAG"
done
echo "$TAG"
