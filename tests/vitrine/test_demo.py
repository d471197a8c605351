"""The demo's supervision: what it writes for a person to source holds passwords, so only they read it."""

from __future__ import annotations

import stat
from pathlib import Path

from vitrine.demo import DemoEnvironment, write_environment


def test_the_demo_environment_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    (tmp_path / "demo.env").write_text("old")
    (tmp_path / "demo.env").chmod(0o644)  # left by an older demo
    demo = DemoEnvironment(env={"VITRINE_FLOWER_PASSWORD": "s3cret", "VITRINE_MODEL": "m"}, pids=[1])

    write_environment(demo, tmp_path)

    written = tmp_path / "demo.env"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert "export VITRINE_FLOWER_PASSWORD='s3cret'" in written.read_text()
