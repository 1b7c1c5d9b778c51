"""Shared test settings.

Tests run two at a time (pytest -n 2) on a 2-core machine: one thread per test process keeps
torch and OpenCV from oversubscribing the cores.
"""

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


# The tiny training runs' PO and data folder (tests/test_training.py, tests/test_cuda.py); a module
# that defines its own ``po`` or ``data_dir`` uses that one.
@pytest.fixture(scope="module")
def po(tmp_path_factory):
    from datasets.synth import generate_po

    out = tmp_path_factory.mktemp("po")
    generate_po(out, 12, seed=5, size=(400, 300), workers=1)
    return out


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LOUPE_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # anything MLflow writes to the CWD would show up here
    return tmp_path / "data"
