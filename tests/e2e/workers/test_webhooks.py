"""The webhooks worker as deployed: beat schedules the send, a worker on the `webhooks` queue posts
what moderators decided to a receiver on 127.0.0.1, with the production command lines."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.delivery.queues import WEBHOOK_QUEUE
from common.moderation.decisions import decide
from common.runtime import Runtime
from common.schema import ReviewLease
from common.settings import Settings
from common.webhooks.signing import verify
from common.webhooks.subscriptions import add_subscription
from tests.fixtures.review import add_flagged
from vitrine.local.receiver import WebhookReceiver
from vitrine.local.services import celery_worker

pytestmark = pytest.mark.slow


def test_beat_and_the_webhooks_worker_deliver_decisions(
    settings: Settings, runtime: Runtime, service_env: dict[str, str], clean_db: None, tmp_path: Path
) -> None:
    db = runtime.db
    names = [f"w-{i}" for i in range(5)]
    ids = add_flagged(db, [(name, 0.3) for name in names])
    with WebhookReceiver() as receiver:
        env = {
            **service_env,
            "VITRINE_WEBHOOK_INTERVAL": "0.5",
            "VITRINE_WEBHOOK_PRIVATE_HOSTS": f"127.0.0.1:{receiver.port}",
        }
        allowed = settings.replace(webhook_private_hosts=[f"127.0.0.1:{receiver.port}"])
        with db.transaction() as session:
            _, secret = add_subscription(session, "default", receiver.url, ["reviewed"], allowed)
        receiver.secret = secret  # anything not signed with it is answered 401
        beat_log = tmp_path / "beat.log"
        with open(beat_log, "wb") as log:
            beat = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers.app", "beat", "--schedule",
                 str(tmp_path / "celerybeat-schedule"), "--loglevel", "INFO"],
                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            with celery_worker([WEBHOOK_QUEUE], env, tmp_path / "worker.log", "webhooks-test@%h"):
                started = time.time()
                with db.transaction() as session:
                    for listing_id, name in zip(ids, names, strict=True):
                        expires = datetime.now(UTC) + timedelta(minutes=5)
                        session.add(ReviewLease(listing_id=listing_id, moderator="alice", expires_at=expires))
                        session.flush()
                        decide(session, "alice", name, "accept")
                deadline = time.monotonic() + 60
                while len(receiver.delivered()) < len(names) and time.monotonic() < deadline:
                    time.sleep(0.2)
        finally:
            beat.terminate()
            beat.wait(timeout=30)
    got = receiver.delivered()
    assert len(got) == len(names), (tmp_path / "worker.log").read_text()[-3000:] + beat_log.read_text()[
        -2000:
    ]
    assert sorted(g.payload["listing"]["external_id"] for g in got) == names
    assert all(verify(secret, g.headers["Vitrine-Signature"], g.body) for g in got)
    assert all(r.answered == 200 for r in receiver.received)
    # Beat's interval is half a second: the receipt follows the decision within seconds.
    assert max(g.at for g in got) - started < 20
