"""The demo's environment: every variable it hands its processes is a setting they accept."""

from __future__ import annotations

from vitrine.local.supervision import DemoEnvironment, configure_processes


def test_the_demo_environment_holds_only_settings() -> None:
    demo = DemoEnvironment()
    configure_processes(demo)
    # Each process reads it with the strict loader: an unknown VITRINE_ variable stops start-up.
    settings = demo.settings
    assert settings.ops.flower_password is not None
    assert all(key.startswith("VITRINE_") for key in demo.env)
