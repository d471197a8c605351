"""The demo's supervision: what it writes for a person to source holds passwords, so only they read it."""

from __future__ import annotations

import stat
from pathlib import Path

from vitrine.local.supervision import DEMO_MODERATOR, DemoEnvironment, prepare_database, write_environment


def test_the_demo_environment_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    (tmp_path / "demo.env").write_text("old")
    (tmp_path / "demo.env").chmod(0o644)  # left by an older demo
    demo = DemoEnvironment(env={"VITRINE_FLOWER_PASSWORD": "s3cret", "VITRINE_MODEL": "m"}, pids=[1])

    write_environment(demo, tmp_path)

    written = tmp_path / "demo.env"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert "export VITRINE_FLOWER_PASSWORD='s3cret'" in written.read_text()


def test_the_demo_database_is_new_each_run_unless_kept(service_env: dict[str, str]) -> None:
    from sqlalchemy.engine import make_url

    from common.db import Database, drop_database
    from common.moderation.accounts import authenticate
    from common.schema import Listing
    from vitrine.local.services import create_scratch_database

    url = create_scratch_database(service_env["VITRINE_DATABASE_URL"], "vitrine_demo_test")
    name = make_url(url).database
    demo = DemoEnvironment(
        env={**service_env, "VITRINE_DATABASE_URL": url}, moderator_password="first password"
    )
    try:
        prepare_database(demo, keep=False)
        database = Database(url)
        with database.transaction() as session:
            session.add(
                Listing(external_id="old", image_url="https://x.example/a.jpg", status="queued", attempts=0)
            )
        database.dispose()
        # --keep continues the data; a new password is made for the run either way.
        demo.moderator_password = "second password"
        prepare_database(demo, keep=True)
        database = Database(url)
        with database.transaction() as session:
            assert session.query(Listing).count() == 1
            assert authenticate(session, DEMO_MODERATOR, "second password") is not None
            assert authenticate(session, DEMO_MODERATOR, "first password") is None
        database.dispose()
        prepare_database(demo, keep=False)
        database = Database(url)
        with database.transaction() as session:
            assert session.query(Listing).count() == 0
            assert authenticate(session, DEMO_MODERATOR, "second password") is not None
        database.dispose()
        assert make_url(url).database == name
    finally:
        drop_database(url)
