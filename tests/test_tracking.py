"""MLflow store location and model references, against a real SQLite store in tmp_path."""

from __future__ import annotations

import json

import pytest

from models.refs import ModelRefError, resolve_model_ref


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LOUPE_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "data"


def test_default_store_is_sqlite_under_the_data_folder(data_dir, monkeypatch):
    from training.tracking import tracking_uri

    assert tracking_uri() == f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri() == "http://mlflow.example:5000"


def test_resolve_bundle_folder_and_errors_name_the_ref_and_the_fix(tmp_path, data_dir):
    bundle = tmp_path / "runs" / "x" / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "bundle.json").write_text(json.dumps({}))
    assert resolve_model_ref(str(bundle), "classifier") == bundle
    assert resolve_model_ref(str(tmp_path / "runs" / "x"), "classifier") == bundle  # the run folder works too

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelRefError, match=r"'.*empty' is not a model bundle folder.*bundle\.json"):
        resolve_model_ref(str(empty), "classifier")
    with pytest.raises(ModelRefError, match=r"'nowhere/model' not found: use 'default', a bundle folder"):
        resolve_model_ref("nowhere/model", "classifier")
    with pytest.raises(ModelRefError, match=r"not a registry URI: write 'models:/<name>@<alias>'"):
        resolve_model_ref("models:/loupe-classifier", "classifier")
    with pytest.raises(ModelRefError, match="task must be one of"):
        resolve_model_ref("default", "segmenter")


def test_unregistered_model_in_a_real_store_says_how_to_register(data_dir):
    from training.tracking import ensure_experiment

    ensure_experiment("loupe-classifier")  # creates the SQLite store
    with pytest.raises(ModelRefError, match=r"not found in the MLflow registry .*--register --champion"):
        resolve_model_ref("models:/loupe-classifier@champion", "classifier")
    with pytest.raises(ModelRefError, match=r"'models:/loupe-detector/3' not found"):
        resolve_model_ref("models:/loupe-detector/3", "detector")
    assert (data_dir / "mlflow.db").is_file()
    assert (data_dir / "mlartifacts").is_dir()


def test_tracked_run_logs_config_metrics_and_restores_environment(data_dir, tmp_path):
    import os

    import mlflow

    from training.tracking import log_metrics, tracked_run

    config_file = tmp_path / "recipe.yaml"
    config_file.write_text("lr: 0.01\n")
    with tracked_run(
        "loupe-test", "r1", {"lr": 0.01, "cache": {"crops_per_box": 3}}, config_file, data_version="abc123"
    ) as run:
        log_metrics({"train/loss": 1.0, "val/auroc": float("nan")}, step=1)
        log_metrics({"train/loss": 0.5}, step=2)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    uri = f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"
    client = mlflow.MlflowClient(uri)
    got = client.get_run(run.info.run_id)
    assert got.data.params == {"lr": "0.01", "cache.crops_per_box": "3", "data_version": "abc123"}
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1.0, 0.5]
    assert "val/auroc" not in got.data.metrics  # NaN (undefined metric) is not logged
    assert [a.path for a in client.list_artifacts(run.info.run_id, "config")] == ["config/recipe.yaml"]
    assert got.info.artifact_uri.startswith((data_dir / "mlartifacts").resolve().as_uri())
    assert not (tmp_path / "mlruns").exists()


def test_val_metrics_by_product_log_whatever_the_product_is_called(data_dir, tmp_path):
    import mlflow
    import numpy as np

    from training.evaluate import PhotoRun, photo_report
    from training.tracking import log_metrics, tracked_run

    # An imported dataset's product names are free text: MLflow refuses quotes and brackets, and a
    # slash would read as a path.
    groups = [{"product": "Men's tee (navy)/XL"}] * 2 + [{"product": "bag"}] * 2
    scores = np.array([[0.9, 0, 0], [0.1, 0, 0], [0.8, 0, 0], [0.2, 0, 0]])
    labels = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]], bool)
    run = PhotoRun(["stitching", "logo", "label"], [1, 2, 3, 4], scores, labels, groups=groups)
    report = photo_report(run, {}, {f: {"flag": 0.5} for f in run.families})
    config_file = tmp_path / "recipe.yaml"
    config_file.write_text("lr: 0.01\n")
    with tracked_run("loupe-test", "r1", {"lr": 0.01}, config_file, data_version="abc") as active:
        log_metrics(report["flat"])
    uri = f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"
    metrics = mlflow.MlflowClient(uri).get_run(active.info.run_id).data.metrics
    assert metrics["val/product/Men_s_tee__navy__XL/stitching/auroc"] == 1.0
    assert metrics["val/product/bag/stitching/auroc"] == 1.0


def test_two_trainings_starting_together_share_one_fresh_store(data_dir):
    """Two processes creating the same new SQLite store at once: both get the one experiment."""
    import subprocess
    import sys
    import time

    start = time.time() + 8  # both processes import mlflow first, then race for the store together
    code = (
        "import time, sys; from training.tracking import ensure_experiment; import mlflow; "
        f"time.sleep(max(0, {start} - time.time())); print(ensure_experiment('loupe-race'))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-2000:]
    ids = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(ids) == 1
    assert (data_dir / "mlflow.db").exists()


def test_the_mlflow_model_wrapper_imports_without_mlflows_type_hint_warning():
    # MLflow warns on an untyped predict when the class is defined, past any warnings filter of
    # ours: every `loupe train` printed it. Run in a fresh interpreter, where the class is new.
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import models.mlflow_pyfunc"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "type hint" not in done.stderr.lower(), done.stderr
