# The two commands of the README: `make demo` (run) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Sample photos and offline weights when this checkout sits next to them.
SAMPLES ?= ../shared/data/flipkart
OFFLINE_WEIGHTS ?= ../shared/weights/efficientnet_lite0.safetensors
IMAGES ?= $(SAMPLES)/images
LABELS ?= $(SAMPLES)/labels.csv
LIMIT ?=
# The labels file's listing-title column (the Flipkart sample's product names); empty: no titles.
TITLES ?= product_name
COVERAGE_FLOOR ?= 68

.PHONY: install browser tools test test-unit test-faults test-deploy images lock lint demo stop bench evaluate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) browser tools

# The README's API examples are run by a test as written: they use curl and jq.
tools:
	@command -v curl >/dev/null && command -v jq >/dev/null || { \
	  echo "installing Debian's curl and jq for the README's API examples"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y --no-install-recommends curl jq; }

# The review app's browser test drives Debian's chromium; a browser is never downloaded.
browser:
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium for the review app's browser test"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y --no-install-recommends chromium; }

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The unit tier alone (no services, no weights, no photos): seconds, for the edit-test loop.
test-unit: install
	$(BIN)/pytest -q -p no:cacheprovider tests/unit

# Coverage of the code the tests run in this process (worker subprocesses are not counted).
test: lint
	$(BIN)/pytest -m "not faults and not deploy" --cov=common --cov=workers --cov=vitrine --cov=review --cov-report=term:skip-covered \
	  --cov-fail-under=$(COVERAGE_FLOOR)

# Faults injected into real processes (a kill -9 storm, a stopped Postgres, a cut S3 connection, a
# Redis restart, a photo that kills its worker, two beats): about 17 minutes with the storm's
# short form (STORM=3 cases); `make test-faults STORM=20` runs the whole storm (docs/reliability.md).
STORM ?= 3
STORM_SEED ?= 2026
test-faults: install
	STORM=$(STORM) STORM_SEED=$(STORM_SEED) $(BIN)/pytest -m faults -s -p no:cacheprovider tests/faults

# compose.yaml on a real Docker engine (installed and started when missing), with images built
# here without a registry, driven from outside: listings through the API, a moderator in
# chromium, a worker restarted mid-run (docs/operations.md). About 10 minutes the first time on a
# machine, 5 once the engine holds the base images and layers.
test-deploy: install
	deploy/test-deploy.sh

# The role images for compose.yaml: the wheelhouse from the lock files, then vitrine-slim and
# vitrine-ml (BASE_IMAGE: the Python base, by default the official python image).
BASE_IMAGE ?= python:3.11.11-slim-bookworm
images:
	PIP="$(PYTHON) -m pip" deploy/wheelhouse.sh
	for role in slim ml; do \
	  DOCKER_BUILDKIT=1 docker build --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg LOCK=$$role \
	    -t vitrine-$$role:$$($(PYTHON) -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])") . ; \
	done

# The hashed lock files of the images, from pyproject.toml's pins.
lock:
	$(PYTHON) deploy/lock.py

# Without configured weights and without the hub, fall back to the offline backbone.
demo: install
	@if [ -z "$$VITRINE_WEIGHTS" ] && [ -f "$(OFFLINE_WEIGHTS)" ]; then \
	  echo "demo: no VITRINE_WEIGHTS set; using the offline efficientnet_lite0 backbone ($(OFFLINE_WEIGHTS))"; \
	  export VITRINE_MODEL=efficientnet_lite0 VITRINE_WEIGHTS="$(OFFLINE_WEIGHTS)"; \
	  $(BIN)/vitrine demo --images "$(IMAGES)" --labels "$(LABELS)" $(if $(TITLES),--title-column $(TITLES)) $(if $(LIMIT),--limit $(LIMIT)); \
	else \
	  $(BIN)/vitrine demo --images "$(IMAGES)" --labels "$(LABELS)" $(if $(TITLES),--title-column $(TITLES)) $(if $(LIMIT),--limit $(LIMIT)); \
	fi

stop: install
	$(BIN)/vitrine demo --stop

bench: install
	$(BIN)/vitrine bench embed --model convnext_base --n 64 --batch-size 16 --images "$(IMAGES)"

evaluate: install
	$(BIN)/vitrine evaluate --images "$(IMAGES)" --labels "$(LABELS)" $(if $(TITLES),--title-column $(TITLES)) \
	  --model efficientnet_lite0="$(OFFLINE_WEIGHTS)" --cache out/evaluate/cache --out out/evaluate

clean:
	rm -rf $(VENV) .vitrine out
