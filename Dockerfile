# Vitrine's role images, from one Dockerfile (no `# syntax=` line: the builder's own Dockerfile
# frontend is used, so building fetches nothing from a registry):
#   slim (LOCK=slim): no torch; the review app, beat, Flower, the exporter, the refit worker and
#                     the migrations
#   ml   (LOCK=ml):   torch and the vision stack; the embed and explain workers
# `make images` builds both (it makes the wheelhouse first); by hand:
#   deploy/wheelhouse.sh
#   DOCKER_BUILDKIT=1 docker build --build-arg LOCK=slim -t vitrine-slim:0.1.0 .
#   DOCKER_BUILDKIT=1 docker build --build-arg LOCK=ml -t vitrine-ml:0.1.0 .
# Python packages come only from the wheelhouse in .cache/wheels, checked against the hashes of
# deploy/requirements/$LOCK.lock; the build never reaches a package index.

# A pinned Python 3.11 on Debian bookworm: the official image, or one built from Debian's
# packages by deploy/base-images.sh where no registry can be reached.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm

FROM ${BASE_IMAGE} AS deps
ARG LOCK=slim
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The dependencies alone, from the lock file alone: this stage (for ml: large, torch with its
# CUDA libraries) is rebuilt only when the lock changes. The wheelhouse is mounted, not copied:
# it stays out of every layer.
COPY deploy/requirements/${LOCK}.lock /tmp/requirements.lock
RUN --mount=type=bind,source=.cache/wheels,target=/wheels \
    pip install --no-index --find-links /wheels --require-hashes --no-deps -r /tmp/requirements.lock \
    && pip check


FROM ${BASE_IMAGE} AS runtime
ARG LOCK=slim
ARG BAKE_WEIGHTS=0
ARG MODEL=convnext_base.fb_in22k_ft_in1k
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/home/vitrine/.cache/huggingface \
    VITRINE_MODEL=${MODEL}
LABEL org.opencontainers.image.title="vitrine-${LOCK}"

RUN useradd --create-home --uid 10001 --user-group vitrine \
    && mkdir -p /home/vitrine/.cache/huggingface /var/lib/vitrine \
    && chown -R vitrine:vitrine /home/vitrine/.cache /var/lib/vitrine

# Its own layer, before anything that changes with the code.
COPY --from=deps /opt/venv /opt/venv

# Before the source: baked weights survive code changes. A named volume mounted on HF_HOME
# starts as a copy of this directory, so baked weights and the cache volume work together.
RUN if [ "$BAKE_WEIGHTS" = "1" ] && [ "$LOCK" = "ml" ]; then \
        su vitrine -c "python -c 'import sys, timm; timm.create_model(sys.argv[1], pretrained=True)' $MODEL"; \
    fi

# Editable install: alembic.ini and migrations/ are found next to the code, under /app. Named
# one by one: the wheelhouse in the build context must not end up in a layer. Only this small
# layer changes with the code.
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY common ./common
COPY workers ./workers
COPY review ./review
COPY vitrine ./vitrine
COPY migrations ./migrations
RUN pip install --no-index --no-deps --no-build-isolation -e . && rm -rf /app/build
USER vitrine

CMD ["vitrine", "--help"]
