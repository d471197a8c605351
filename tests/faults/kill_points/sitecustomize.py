"""Fault injection for the kill -9 storm: a worker started with this folder on PYTHONPATH and
`VITRINE_TEST_KILL_AT=POINT:N` sends itself SIGKILL the N-th time it reaches POINT.

A kill from outside lands wherever the process happens to be; these points pin the moments
where delivery is most fragile, so that each is hit on purpose rather than by luck:

- `receive`: Redis has handed a message over (BRPOP popped it) and kombu has not yet recorded
  it as unacknowledged: the message exists only in this process, and dies with it.
- `forward`: in the middle of a batch (the backbone's forward pass, or Grad-CAM's).
- `commit`: the batch's transaction has committed and none of its messages is acknowledged.
- `ack`: some of a batch's messages are acknowledged, the rest are not.

The process announces the point on stderr (its log) before it dies, so the storm can print
where each kill landed. Nothing here runs unless the variable is set.
"""

import os
import signal
import sys
import threading

SPEC = os.environ.get("VITRINE_TEST_KILL_AT", "")
QUEUE = os.environ.get("VITRINE_TEST_KILL_QUEUE", "embed")


def _arm(point: str, nth: int):  # type: ignore[no-untyped-def]
    count = [0]
    lock = threading.Lock()

    def reached() -> None:
        with lock:
            count[0] += 1
            if count[0] != nth:
                return
        sys.stderr.write(f"[kill point] SIGKILL at {point} #{nth}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    return reached


def _install(point: str, nth: int) -> None:
    reached = _arm(point, nth)
    if point == "receive":
        from kombu.transport.virtual import base

        deliver = base.Transport._deliver

        def deliver_or_die(self, message, queue):  # type: ignore[no-untyped-def]
            if queue == QUEUE:
                reached()
            return deliver(self, message, queue)

        base.Transport._deliver = deliver_or_die
    elif point == "ack":
        from celery.worker.request import Request

        acknowledge = Request.acknowledge

        def acknowledge_or_die(self):  # type: ignore[no-untyped-def]
            reached()
            return acknowledge(self)

        Request.acknowledge = acknowledge_or_die
    elif point in ("forward", "commit") and QUEUE == "embed":
        import common.jobs.embed as embed

        if point == "forward":
            forward = embed.embed_prepared

            def forward_or_die(backbone, prepared):  # type: ignore[no-untyped-def]
                reached()
                return forward(backbone, prepared)

            embed.embed_prepared = forward_or_die
        else:
            write = embed.EmbedPipeline._write

            def write_then_die(self, *args, **kwargs):  # type: ignore[no-untyped-def]
                outcome = write(self, *args, **kwargs)
                reached()
                return outcome

            embed.EmbedPipeline._write = write_then_die
    elif point in ("forward", "commit") and QUEUE == "explain":
        import common.jobs.explain as explain

        if point == "forward":
            gradcam = explain.gradcam

            def gradcam_or_die(*args, **kwargs):  # type: ignore[no-untyped-def]
                reached()
                return gradcam(*args, **kwargs)

            explain.gradcam = gradcam_or_die
        else:
            record = explain._record

            def record_then_die(*args, **kwargs):  # type: ignore[no-untyped-def]
                outcome = record(*args, **kwargs)
                reached()
                return outcome

            explain._record = record_then_die
    else:
        raise SystemExit(f"unknown kill point {point!r} for queue {QUEUE!r}")


if SPEC:
    name, _, count = SPEC.partition(":")
    _install(name, int(count or 1))
