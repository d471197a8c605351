# syntax=docker/dockerfile:1.7
# Vitrine: one image for every process (workers, beat, Flower, exporter, migrations).
#   docker build -t vitrine .                        # weights from the hf-cache volume at run time
#   docker build -t vitrine --build-arg BAKE_WEIGHTS=1 .   # weights baked into the image

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app

# Dependencies first, from the exact pins in pyproject.toml, so that code changes reuse this
# (large: torch with its CUDA libraries) layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Editable install: alembic.ini and migrations/ are found next to the code, at the same path
# (/app) in the runtime stage. .dockerignore keeps tests, docs and local state out.
COPY . ./
RUN pip install --no-deps -e .


FROM ${PYTHON_IMAGE} AS runtime
ARG BAKE_WEIGHTS=0
ARG MODEL=convnext_base.fb_in22k_ft_in1k
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/home/vitrine/.cache/huggingface \
    VITRINE_MODEL=${MODEL}

RUN useradd --create-home --uid 10001 --user-group vitrine \
    && mkdir -p /home/vitrine/.cache/huggingface /var/lib/vitrine \
    && chown -R vitrine:vitrine /home/vitrine/.cache /var/lib/vitrine

COPY --from=builder /opt/venv /opt/venv
USER vitrine

# Before the source: baked weights survive code changes. A named volume mounted on HF_HOME
# starts as a copy of this directory, so baked weights and the cache volume work together.
RUN if [ "$BAKE_WEIGHTS" = "1" ]; then \
        python -c "import sys, timm; timm.create_model(sys.argv[1], pretrained=True)" "$MODEL"; \
    fi

WORKDIR /app
COPY --from=builder /app /app

CMD ["vitrine", "--help"]
