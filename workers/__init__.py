"""Celery workers: one module per queue, each task a thin wrapper over a function in `common/`."""
