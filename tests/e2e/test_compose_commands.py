"""compose.yaml and .env.example against the code: real commands, known settings, the services needed.

No Docker engine runs here, so each service's command is checked by running it with `--help`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import ENV_PREFIX
from tests.helpers import services

VITRINE = Path(sys.executable).parent / "vitrine"


def app_commands() -> list[tuple[str, list[str]]]:
    found = []
    for name, service in services().items():
        command = service.get("command")
        if isinstance(command, list) and command and command[0] in ("vitrine", "celery"):
            found.append((name, command))
    return found


@pytest.mark.parametrize(("service", "command"), app_commands(), ids=[n for n, _ in app_commands()])
def test_service_command_is_a_real_invocation(service: str, command: list[str], tmp_path: Path) -> None:
    # --help after the full command line: click rejects unknown commands and options before
    # it prints the help, so this checks every word of the command, without running it.
    if command[0] == "vitrine":
        argv = [str(VITRINE), *command[1:], "--help"]
    else:
        argv = [sys.executable, "-m", "celery", *command[1:], "--help"]
    env = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{service}: {' '.join(command)}\n{result.stdout}\n{result.stderr}"
    assert "Usage" in result.stdout
