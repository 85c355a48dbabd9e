"""What several test files share: the repository's path, the CLI run as a user runs it, and fixtures.

Test files import the plain helpers (``from conftest import REPO, run_cli``: ``tests/`` has no
``__init__.py``, so pytest puts it on ``sys.path``); fixtures are found by name as usual.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

#: the repository root (tests/..)
REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: int = 300, cwd: str | Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    """``python -m falcon ARGS`` in a fresh interpreter, its output captured as text."""
    return subprocess.run([sys.executable, "-m", "falcon", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, **kwargs)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny convs on a shared 2-core machine: two OpenMP threads only add waiting for each other.
    Use per module: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def resnet18_state():
    """A randomly initialized (seed 0) torchvision resnet18's state_dict, 1000 classes."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=1000).state_dict()


@pytest.fixture
def isolated_app(tmp_path, monkeypatch):
    """For AppTest files: fresh Streamlit caches (they are shared across AppTest instances in one process) and an
    empty results store. Use per module: ``pytestmark = pytest.mark.usefixtures("isolated_app")``."""
    import streamlit as st

    monkeypatch.setenv("FALCON_RESULTS_DB", str(tmp_path / "results.sqlite"))
    st.cache_data.clear()
    yield
    st.cache_data.clear()


@pytest.fixture(autouse=True)
def _own_measure_lock(tmp_path, monkeypatch):
    """Each test its own machine-wide measurement lock (falcon.machinelock), so that a job a test leaves running
    cannot hold the next test's queue; the test of the lock itself sets one path for both sides."""
    monkeypatch.setenv("FALCON_MEASURE_LOCK", str(tmp_path / "measure.lock"))
    monkeypatch.setenv("FALCON_EXPERIMENT_LOCK", str(tmp_path / "experiment.lock"))
