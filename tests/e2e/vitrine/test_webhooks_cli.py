"""`vitrine webhooks ...`: subscribe a receiver, list, pause, read the delivery log, remove."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from typer.testing import CliRunner

from common.db import Database
from common.moderation.decisions import decide
from common.schema import ReviewLease
from common.settings import Settings
from common.webhooks.sender import Sender
from common.webhooks.signing import verify
from tests.fixtures.review import add_flagged
from vitrine.cli import CommandState, app, register
from vitrine.local.receiver import WebhookReceiver

register()
runner = CliRunner()


def _run(settings: Settings, *args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args), obj=CommandState(settings))
    assert result.exit_code == code, result.output
    return result.output


def test_webhooks_from_the_command_line(db: Database, settings: Settings, clean_db: None) -> None:
    with WebhookReceiver() as receiver:
        refused = _run(settings, "webhooks", "add", receiver.url, code=2)
        assert "receiver refused" in refused and "non-public address" in refused
        assert "unknown event" in _run(
            settings, "webhooks", "add", "https://x.example", "--events", "x", code=2
        )
        allowed = settings.replace(webhook_private_hosts=[f"127.0.0.1:{receiver.port}"])
        output = _run(allowed, "webhooks", "add", receiver.url, "--events", "reviewed,needs_review")
        secret = output.strip().splitlines()[-1]
        assert secret.startswith("whsec_")
        listed = _run(allowed, "webhooks", "list")
        assert receiver.url in listed and "reviewed, needs_review" in listed and "active" in listed
        assert secret not in listed

        (listing_id,) = add_flagged(db, [("cli-1", 0.4)])
        with db.transaction() as session:
            expires = datetime.now(UTC) + timedelta(minutes=5)
            session.add(ReviewLease(listing_id=listing_id, moderator="alice", expires_at=expires))
            session.flush()
            decide(session, "alice", "cli-1", "accept")
        assert "pending" in _run(allowed, "webhooks", "deliveries", "--status", "pending")
        sender = Sender(allowed)
        try:
            assert sender.drain(db).delivered == 1
        finally:
            sender.close()
        (got,) = receiver.delivered()
        assert verify(secret, got.headers["Vitrine-Signature"], got.body)

        (line,) = _run(allowed, "webhooks", "deliveries", "--json").strip().splitlines()
        logged = json.loads(line)
        assert (logged["external_id"], logged["event"], logged["status"]) == (
            "cli-1",
            "listing.reviewed",
            "delivered",
        )
        assert logged["attempts"] == 1 and logged["last_status"] == 200
        assert "cli-1" in _run(allowed, "webhooks", "deliveries", "--status", "delivered", "--limit", "5")
        _run(allowed, "webhooks", "deliveries", "--status", "lost", code=2)

        hook_id = str(logged["subscription_id"])
        _run(allowed, "webhooks", "pause", hook_id)
        assert "paused" in _run(allowed, "webhooks", "list", "--source", "default")
        _run(allowed, "webhooks", "resume", hook_id)
        _run(allowed, "webhooks", "remove", hook_id)
        assert receiver.url not in _run(allowed, "webhooks", "list")
        assert "no subscription" in _run(allowed, "webhooks", "remove", hook_id, code=2)
        assert _run(allowed, "webhooks", "deliveries", "--json").strip() == ""
