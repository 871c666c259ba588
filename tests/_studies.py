"""What the study tests (tests/test_experiments_e*.py) share: where the study scripts and the shared data are, the
skip marker for a study whose data is absent, the study module imported from its file, and the environment and
``--help`` run of a study as a subprocess."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "jobs" / "experiments"
SHARED_DATA = REPO / ".." / "shared" / "data"
HC18 = SHARED_DATA / "hc18"
BRAIN = SHARED_DATA / "brain_labels"


def needs(folder: Path, what: str, study: str) -> pytest.MarkDecorator:
    """Skip unless ``folder`` exists, naming the study and where it reads its data."""
    return pytest.mark.skipif(not folder.is_dir(), reason=f"no {what} at {folder.parent.resolve()} (the shared "
                              f"data folder of the workplace; {study} reads it there and never copies it)")


def load_study(name: str) -> ModuleType:
    """The study script ``jobs/experiments/<name>.py`` as a module (its folder on ``sys.path``, as when it runs)."""
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def study_env() -> dict[str, str]:
    """A study subprocess's environment: no Ray auth, no progress bars, and no tracking URI leaked from the tests."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "NAKT_PROGRESS": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def study_help(script: Path) -> subprocess.CompletedProcess:
    """``python <script> --help`` (returns at once: the study imports nothing heavy before parsing)."""
    return subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60,
                          env=study_env())
