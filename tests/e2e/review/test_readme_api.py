"""The README's curl examples of the HTTP API, run as written against the running app, so that
they cannot drift from what the app answers: every one must answer 2xx."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from common.db import Database
from tests.conftest import ROOT
from tests.e2e.review.test_browser import server  # noqa: F401  (fixture)
from tests.fixtures.review import Tokens, add_flagged

SECTION = "## Review app and HTTP API"


def readme_commands() -> list[str]:
    """Every `curl` command (and `ID=$(curl ...)`) of the section's sh blocks, whole."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", len(SECTION))]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL):
        pending = ""
        for line in block.splitlines():
            if not pending and not line.startswith(("curl ", "ID=$(curl ")):
                continue
            pending += line + "\n"
            # Whole once no quote is left open and no line continues.
            if pending.count("'") % 2 == 0 and not line.endswith("\\"):
                commands.append(pending.strip())
                pending = ""
    return commands


def test_the_readmes_api_examples_answer_as_documented(
    server: str,  # noqa: F811
    tokens: Tokens,
    db: Database,
    tmp_path: Path,
) -> None:
    assert shutil.which("curl") and shutil.which("jq"), "the README's examples need curl and jq"
    # What the moderators' examples claim: a confident suggestion that contradicts its seller.
    add_flagged(
        db, [("sku-9", 0.8)], category="Watches", reason="seller_disagrees", seller_category="Footwear"
    )
    commands = readme_commands()
    assert len(commands) >= 10, commands
    codes = tmp_path / "codes"
    script = ["set -u"]
    for command in commands:
        if command.startswith("ID="):
            script += [command, f'echo "ID $ID" >> {codes}']
        else:
            script.append(f"{command} -o /dev/null -w '%{{http_code}} ' >> {codes} && echo >> {codes}")
    env = {**os.environ, "APP": server, "INGEST": tokens.ingest, "REVIEW": tokens.alice}
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    answers = codes.read_text().splitlines()
    assert len(answers) == len(commands)
    for command, answer in zip(commands, answers, strict=True):
        if command.startswith("ID="):
            assert answer == "ID sku-9", (command, answer)
        else:
            assert answer.strip().isdigit() and 200 <= int(answer) < 300, (command, answer)
