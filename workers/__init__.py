"""Celery workers: the app (`workers.app`) and one thin module per queue.

Adding a queue:
1. name it and its task in `common/delivery/queues.py` (`QUEUES`, a `*_TASK` name, a route);
2. write the work as a plain function in `common/` that takes the settings and the database it
   needs, testable without Celery;
3. add `workers/<queue>.py` with a task that decodes the message, calls that function and
   records the result (batched queues use a class from `workers/batching.py`), and list the
   module in `include` in `workers/app.py`;
4. give compose.yaml a service running `vitrine worker <queue>`.
"""
