"""The slim image has no torch: beat, Flower, the exporter, the refit worker, the review app and
the CLI must start without it. Checked in a fresh interpreter where importing torch, timm,
torchvision or cv2 fails, as it does there."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT

BLOCK = """
import importlib.abc, sys
ML = {"torch", "timm", "torchvision", "cv2", "safetensors"}
class NoML(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ML:
            raise ModuleNotFoundError(f"No module named {name!r} (the slim image)")
        return None
sys.meta_path.insert(0, NoML())
"""

# What the slim roles import: the Celery app with the modules it includes (beat and Flower load
# them), the CLI's commands, the review app, the exporter.
IMPORTS = """
import workers.app
workers.app.app.loader.import_default_modules()
import vitrine.cli, review.app, common.ops.metrics, common.ops.status, common.jobs.refit
print(sorted(m for m in sys.modules if m.split(".")[0] in ML))
"""


def test_slim_roles_import_nothing_of_the_ml_stack() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BLOCK + IMPORTS], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
