"""The `loupe train|val|export` verbs: arguments reach the packages, bad input fails with a clear message."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from loupe.cli import app


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("LOUPE_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_verbs_are_registered(runner):
    out = runner.invoke(app, ["train", "--help"])
    assert out.exit_code == 0 and "classifier" in out.output and "detector" in out.output
    for verb in ("val", "calibrate", "export"):
        assert runner.invoke(app, [verb, "--help"]).exit_code == 0


def test_train_with_the_other_task_recipe_names_the_fix(runner, tmp_path):
    (tmp_path / "ds").mkdir()
    out = runner.invoke(
        app, ["train", "classifier", "--data", str(tmp_path / "ds"), "--config", "train_detector"]
    )
    assert out.exit_code == 2
    assert "is a detector recipe" in out.output and "train_classifier.yaml" in out.output


def test_train_on_a_missing_dataset_fails_clearly(runner, tmp_path):
    out = runner.invoke(app, ["train", "detector", "--data", str(tmp_path / "nope"), "--no-track"])
    assert out.exit_code == 2 and "does not exist" in out.output


def test_val_calibrate_and_export_with_unknown_model_ref_say_what_refs_work(runner, tmp_path):
    (tmp_path / "ds").mkdir()
    out = runner.invoke(
        app, ["val", "--model", "no/such/bundle", "--data", str(tmp_path / "ds"), "--no-track"]
    )
    assert out.exit_code == 2
    assert "'no/such/bundle' not found" in out.output and "models:/loupe-classifier@champion" in out.output
    out = runner.invoke(app, ["export", "--model", "no/such/bundle", "--format", "onnx"])
    assert out.exit_code == 2 and "models:/loupe-classifier@champion" in out.output
    out = runner.invoke(
        app, ["calibrate", "--model", "no/such/bundle", "--data", str(tmp_path / "ds"), "--out", "cal"]
    )
    assert out.exit_code == 2 and "'no/such/bundle' not found" in out.output
    assert not (tmp_path / "cal").exists()


def test_val_against_a_detector_without_a_detector_to_judge_names_the_flag(runner, tmp_path):
    (tmp_path / "ds").mkdir()
    out = runner.invoke(
        app,
        ["val", "--model", "default", "--against-detector", "default", "--data", str(tmp_path / "ds")],
    )
    assert out.exit_code == 2 and "give the one to judge with --detector" in out.output


def test_val_writes_the_photo_by_photo_table_it_printed_the_misses_of(runner, tmp_path, po):
    import csv
    import json

    out = runner.invoke(
        app, ["val", "--model", "default", "--data", str(po), "--photos", "eval/photos.csv", "--no-track"]
    )
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader((tmp_path / "eval" / "photos.csv").open(encoding="utf-8")))
    images = json.loads((po / "annotations.json").read_text())["images"]
    assert [r["photo"] for r in rows] == [im["file_name"] for im in images]
    assert all(0.0 <= float(r[f]) <= 1.0 for r in rows for f in ("stitching", "logo", "label"))
    # every defect is either flagged or missed, never both; the terminal lists each miss
    misses = [(r["photo"], f) for r in rows for f in r["missed"].split(";") if f]
    for r in rows:
        for family in r["defects"].split(";"):
            if family:
                assert (family in r["flagged"].split(";")) != (family in r["missed"].split(";"))
    for photo, family in misses:
        assert any(line.split()[:2] == [photo, family] for line in out.output.splitlines())
    assert ("missed defects" in out.output) == bool(misses)


def test_champion_registers_a_folder_and_moves_the_alias_between_versions(runner, tmp_path):
    import mlflow

    from models.refs import DEFAULT_DIR, default_tracking_uri, resolve_model_ref

    shipped = str(DEFAULT_DIR / "classifier")
    first = runner.invoke(app, ["champion", shipped])
    assert first.exit_code == 0, first.output
    assert "loupe-classifier version 1 is @champion" in first.output.splitlines()
    second = runner.invoke(app, ["champion", shipped])
    assert "loupe-classifier version 2 is @champion (was version 1)" in second.output.splitlines()
    back = runner.invoke(app, ["champion", "models:/loupe-classifier/1"])
    assert back.output.splitlines() == ["loupe-classifier version 1 is @champion (was version 2)"]
    client = mlflow.MlflowClient(default_tracking_uri())
    assert str(client.get_model_version_by_alias("loupe-classifier", "champion").version) == "1"
    # what triage's `classifier: models:/loupe-classifier@champion` loads is that version's bundle
    folder = resolve_model_ref("models:/loupe-classifier@champion", "classifier")
    assert folder.relative_to(tmp_path / "data" / "model-cache").parts[:2] == ("loupe-classifier", "1")
    assert (folder / "bundle.json").read_bytes() == (DEFAULT_DIR / "classifier" / "bundle.json").read_bytes()


def test_champion_of_the_wrong_kind_or_a_missing_version_names_the_fix(runner):
    from models.refs import DEFAULT_DIR

    out = runner.invoke(app, ["champion", str(DEFAULT_DIR / "detector")])
    assert out.exit_code == 2 and "is a detector, not a classifier: pass --task detector" in out.output
    out = runner.invoke(app, ["champion", "models:/loupe-classifier/9"])
    assert out.exit_code == 2 and "not found in the MLflow registry" in out.output
