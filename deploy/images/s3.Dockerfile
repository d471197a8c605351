# Stand-in for MinIO: moto's standalone S3 server (the S3 endpoint of every other test), from the
# wheelhouse and deploy/requirements/s3.lock. In-memory: its objects last as long as the container.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN python3 -m venv /opt/venv
COPY deploy/requirements/s3.lock /tmp/requirements.lock
RUN --mount=type=bind,source=.cache/wheels,target=/wheels \
    /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels --require-hashes --no-deps \
        -r /tmp/requirements.lock \
    && /opt/venv/bin/pip check
RUN useradd --uid 10002 --user-group s3
USER s3
EXPOSE 9000
ENTRYPOINT ["tini", "--", "/opt/venv/bin/moto_server", "-H", "0.0.0.0", "-p", "9000"]
