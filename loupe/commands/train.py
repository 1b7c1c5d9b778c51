"""``loupe train classifier|detector``, ``loupe val``, ``loupe export``: thin wrappers over training/."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from loupe.apps import app

train_app = typer.Typer(
    help="Train the tile classifier or detector on a dataset; writes a model bundle and an MLflow run.",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")


class ExportFormat(StrEnum):
    onnx = "onnx"


def _passive_omp_threads() -> None:
    """Let OpenMP threads sleep instead of spin while waiting: with 2 threads on 2 shared cores a
    spinning thread starves its partner (measured: 18–146 s per classifier step vs 7–12 s passive,
    at load 4). Must run before torch is imported, which is why the commands call it first."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _train(
    task: str,
    config: str | None,
    data: Path,
    val_data: Path | None,
    from_ref: str | None,
    epochs: int | None,
    register: bool,
    champion: bool,
    resume: Path | None,
    out: Path | None,
    device: str | None,
    no_track: bool,
    threads: int | None = None,
    prep_from_recipe: bool = False,
    workers: int | None = None,
) -> None:
    _passive_omp_threads()
    from configs import ConfigError
    from models.errors import ModelFileError
    from models.refs import ModelRefError
    from training.config import load_train_config
    from training.engine import train

    given = {"device": device, "num_threads": threads, "loader_workers": workers}
    overrides = {k: v for k, v in given.items() if v is not None}
    try:
        cfg = load_train_config(config, task, overrides)
        result = train(
            task,
            cfg,
            data,
            val_data=val_data,
            from_ref=from_ref,
            register=register or champion,
            champion=champion,
            resume=resume,
            out=out,
            config_file=config,
            track=not no_track,
            epochs=epochs,
            prep_from_recipe=prep_from_recipe,
            log=typer.echo,
        )
    except (ConfigError, ModelRefError, ModelFileError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    m = result.metrics
    for key in sorted(k for k in m if k.startswith("val/") and not k.endswith("/threshold")):
        typer.echo(f"  {key} = {m[key]:.4f}")
    typer.echo(str(result.bundle_dir))


_CONFIG = typer.Option(None, "--config", help="recipe YAML (default configs/train_<task>.yaml)")
_DATA = typer.Option(..., "--data", help="dataset folder or label file (any format `loupe data` reads)")
_VAL = typer.Option(None, "--val-data", help="validation dataset (default: the manifest's val split)")
_FROM = typer.Option(None, "--from", help="fine-tune: 'default', a bundle folder or models:/name@alias")
_EPOCHS = typer.Option(None, "--epochs", min=1, help="override the recipe's epochs")
_REGISTER = typer.Option(False, "--register", help="register the model in the MLflow registry")
_CHAMPION = typer.Option(False, "--champion", help="register and set the alias @champion")
_RESUME = typer.Option(None, "--resume", help="run folder to continue from its last checkpoint")
_OUT = typer.Option(None, "--out", help="run folder (default $LOUPE_DATA/runs/<task>-<time>)")
_DEVICE = typer.Option(None, "--device", help="auto, cpu or cuda (default: the recipe's)")
_NO_TRACK = typer.Option(False, "--no-track", help="skip MLflow (no run, no registration)")
_THREADS = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: the recipe's, 2)")
_WORKERS = typer.Option(
    None, "--workers", min=0, help="batch-augmenting processes (default: 0 on the CPU, ≤ 8 on CUDA)"
)
_PREP_FROM_RECIPE = typer.Option(
    False,
    "--prep-from-recipe",
    help="with --from: train at the recipe's prep (working scale, pyramid levels), not the source model's",
)


def _register_train(task: str, summary: str) -> None:
    """``loupe train classifier`` and ``loupe train detector`` take the same options."""

    def command(
        data: Path = _DATA,
        config: str | None = _CONFIG,
        val_data: Path | None = _VAL,
        from_ref: str | None = _FROM,
        epochs: int | None = _EPOCHS,
        register: bool = _REGISTER,
        champion: bool = _CHAMPION,
        resume: Path | None = _RESUME,
        out: Path | None = _OUT,
        device: str | None = _DEVICE,
        no_track: bool = _NO_TRACK,
        threads: int | None = _THREADS,
        prep_from_recipe: bool = _PREP_FROM_RECIPE,
        workers: int | None = _WORKERS,
    ) -> None:
        _train(
            task, config, data, val_data, from_ref, epochs, register, champion, resume, out, device,
            no_track, threads, prep_from_recipe, workers,
        )  # fmt: skip

    command.__doc__ = summary
    train_app.command(task)(command)


_register_train(
    "classifier",
    "Train the tile classifier (3 family scores per tile); prints the bundle folder.\n\n"
    "Example: loupe train classifier --data data/train-synth --register --champion",
)
_register_train(
    "detector",
    "Train the tile detector (defect boxes per tile); prints the bundle folder.\n\n"
    "Example: loupe train detector --data buyer/ --from default --config configs/finetune_detector.yaml",
)


@app.command("val")
def val(
    model: str = typer.Option(
        ..., "--model", help="classifier: 'default', a bundle folder or models:/name@alias"
    ),
    data: Path = typer.Option(..., "--data", help="dataset to evaluate on (all of its photos)"),
    detector: str | None = typer.Option(None, "--detector", help="detector ref, for mAP as well"),
    split: str | None = typer.Option(None, "--split", help="only this manifest split (train/val/test)"),
    against: str | None = typer.Option(
        None,
        "--against",
        help="a baseline classifier (e.g. 'default') run on the same photos: each figure's difference "
        "with a 95 % paired-bootstrap interval",
    ),
    against_detector: str | None = typer.Option(
        None, "--against-detector", help="a baseline detector, likewise for mAP@0.5 (needs --detector)"
    ),
    photos: Path | None = typer.Option(
        None,
        "--photos",
        help="write the classifier's photo by photo table to this CSV: scores, what each photo holds, "
        "what was missed or flagged falsely",
    ),
    no_track: bool = typer.Option(False, "--no-track", help="do not log the evaluation to MLflow"),
) -> None:
    """Evaluate models on a dataset: per-family AUROC, AP, recall, false-flag rate (and detector mAP).

    Example, a fine-tune judged against the default on held-out photos of the buyer's own:
    loupe val --model models:/loupe-classifier/7 --against default --data buyer-test/
    """
    _passive_omp_threads()
    from models.errors import ModelFileError
    from models.refs import ModelRefError
    from training.evaluate import format_report, photo_rows_csv
    from training.validate import validate

    try:
        reports = validate(
            model, data, detector_ref=detector, split=split, track=not no_track, log=typer.echo,
            against=against, against_detector=against_detector,
        )  # fmt: skip
    except (ModelRefError, ModelFileError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    for name, report in reports.items():
        typer.echo(f"== {name}")
        typer.echo(format_report(report))
    if photos is not None:
        classifier_report = next(iter(reports.values()))  # the classifier runs first
        photos.parent.mkdir(parents=True, exist_ok=True)
        photos.write_text(photo_rows_csv(classifier_report["photo_rows"]), encoding="utf-8")
        typer.echo(f"photo by photo: {photos}")


@app.command("calibrate")
def calibrate(
    model: str = typer.Option(..., "--model", help="'default', a bundle folder or models:/name@alias"),
    data: Path = typer.Option(
        ..., "--data", help="labelled photos to fit on (any format `loupe data` reads)"
    ),
    out: Path = typer.Option(..., "--out", help="folder for the recalibrated bundle (not the model's own)"),
    task: str = typer.Option(
        "classifier", "--task", help="classifier or detector (for 'default' / models:/)"
    ),
    config: str | None = typer.Option(
        None,
        "--config",
        help="take this recipe's calibration targets (and a detector's decoding); default: the bundle's own",
    ),
    split: str | None = typer.Option(None, "--split", help="only this manifest split (train/val/test)"),
    version: str | None = typer.Option(
        None, "--version", help="the new bundle's version (default <old>-cal)"
    ),
    no_track: bool = typer.Option(False, "--no-track", help="do not log the calibration to MLflow"),
) -> None:
    """Fit a model's calibration and thresholds again on labelled photos (weights unchanged); prints
    the new bundle folder.

    Example: loupe calibrate --model default --data buyer/ --out data/buyer-classifier
    """
    _passive_omp_threads()
    from configs import ConfigError
    from models.errors import ModelFileError
    from models.refs import ModelRefError
    from training.validate import recalibrate

    options = {
        "--task": None if task == "classifier" else task,
        "--config": config,
        "--split": split,
        "--version": version,
    }
    command = f"loupe calibrate --model {model} --data {data} --out {out}" + "".join(
        f" {flag} {value}" for flag, value in options.items() if value
    )
    try:
        folder = recalibrate(
            model, data, out, task=task, recipe=config, split=split, version=version,
            track=not no_track, command=command, log=typer.echo,
        )  # fmt: skip
    except (ModelRefError, ModelFileError, ConfigError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    typer.echo(str(folder))


@app.command("ensemble")
def ensemble(
    models: list[str] = typer.Argument(..., help="two or more classifiers: 'default', folders, models:/..."),
    data: Path = typer.Option(..., "--data", help="labelled photos to calibrate the ensemble on"),
    out: Path = typer.Option(..., "--out", help="folder for the ensemble's bundle"),
    split: str | None = typer.Option(None, "--split", help="only this manifest split (train/val/test)"),
    version: str | None = typer.Option(None, "--version", help="its version (default: the members')"),
    no_track: bool = typer.Option(False, "--no-track", help="do not log the calibration to MLflow"),
) -> None:
    """Ship several classifiers as one, their logits averaged and calibrated afresh; prints its folder.
    It reads every tile once per member. Judge it first: loupe val --model OUT --against default.

    Example: loupe ensemble default data/other-classifier/bundle --data data/cal --out data/ensemble
    """
    _passive_omp_threads()
    from models.errors import ModelFileError
    from models.refs import ModelRefError
    from training.ensemble import ensemble_bundle

    options = {"--split": split, "--version": version}
    command = f"loupe ensemble {' '.join(models)} --data {data} --out {out}" + "".join(
        f" {flag} {value}" for flag, value in options.items() if value
    )
    try:
        folder = ensemble_bundle(
            models, data, out, version=version, split=split, track=not no_track, command=command,
            log=typer.echo,
        )  # fmt: skip
    except (ModelRefError, ModelFileError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    typer.echo(str(folder))


@app.command("champion")
def champion(
    model: str = typer.Argument(..., help="models:/loupe-classifier/N, or a bundle folder to register"),
    task: str = typer.Option("classifier", "--task", help="classifier or detector"),
) -> None:
    """Make a model the registry's champion (what models:/loupe-classifier@champion, triage's setting,
    loads); a bundle folder is registered first. Judge it first: loupe val --against.

    Example: loupe champion models:/loupe-classifier/7
    """
    from models.errors import ModelFileError
    from models.refs import ModelRefError
    from training.tracking import make_champion

    try:
        done = make_champion(model, task)
    except (ModelRefError, ModelFileError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    was = f" (was version {done['previous']})" if done["previous"] else ""
    typer.echo(f"{done['name']} version {done['version']} is @champion{was}")


@app.command("export")
def export(
    model: str = typer.Option(..., "--model", help="'default', a bundle folder or models:/name@alias"),
    fmt: ExportFormat = typer.Option(ExportFormat.onnx, "--format", help="export format"),
    out: Path | None = typer.Option(None, "--out", help="output file (default <bundle>/model.onnx)"),
    task: str = typer.Option(
        "classifier", "--task", help="classifier or detector (for 'default' / models:/)"
    ),
) -> None:
    """Export a model bundle to ONNX (checked against torch); prints the file."""
    from models.errors import ModelFileError
    from models.refs import ModelRefError
    from training.export import export_model

    try:
        path = export_model(model, task, fmt.value, out)
    except (ModelRefError, ModelFileError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    typer.echo(str(path))
