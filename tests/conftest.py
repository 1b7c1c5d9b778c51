"""Shared test settings.

Tests run two at a time (pytest -n 2) on a 2-core machine: one thread per test process keeps
torch and OpenCV from oversubscribing the cores.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
