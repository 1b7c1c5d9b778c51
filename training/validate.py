"""``loupe val``: evaluate saved models on a dataset the way serving runs them, and log it to MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _resolve(ref: str, task: str) -> Path:
    """A bundle folder; a folder holding the other task's bundle is accepted as it is."""
    from models.refs import find_bundle_dir, resolve_model_ref

    path = Path(ref)
    if path.is_dir() and find_bundle_dir(path) is not None:
        return find_bundle_dir(path)
    return resolve_model_ref(ref, task)


def validate(
    model_ref: str,
    data: str | Path,
    detector_ref: str | None = None,
    split: str | None = None,
    track: bool = True,
    threads: int = 2,
    log=print,
) -> dict[str, dict[str, Any]]:
    """Per-family metrics (and mAP for a detector) of each model on ``data``; ``{bundle ref: report}``.

    With both models the detector's report also has ``map_supported``: mAP of its boxes as triage
    scores them, tempered by the classifier (:func:`models.photo.supported_detections`).
    """
    from datasets.manifest import manifest_of
    from datasets.reader import read_dataset
    from models.predictor import load_predictor
    from training.evaluate import ground_truth, photo_report, run_on_photos

    refs = [(model_ref, "classifier")] + ([(detector_ref, "detector")] if detector_ref else [])
    folders = [_resolve(ref, task) for ref, task in refs]  # a bad ref fails before the dataset is hashed
    dataset = read_dataset(Path(data))
    manifest = manifest_of(dataset)
    ids = [im["id"] for im in dataset.coco["images"]]
    if split is not None:
        split_of = {m.file_name: m.split for m in manifest.images}
        ids = [im["id"] for im in dataset.coco["images"] if split_of.get(im["file_name"]) == split]
    if not ids:
        raise ValueError(f"{data}: no photos to evaluate{f' in split {split!r}' if split else ''}")
    reports: dict[str, dict[str, Any]] = {}
    classifier_run = None
    for (ref, _), folder in zip(refs, folders, strict=True):
        predictor = load_predictor(folder, backend="torch", device="auto", threads=threads)
        bundle = predictor.bundle
        log(f"evaluating {bundle.ref} ({bundle.task}) on {len(ids)} photos of {data}")
        # The detector after the classifier: its boxes are also scored as triage scores them.
        support = classifier_run if bundle.task == "detector" else None
        run = run_on_photos(dataset, ids, predictor, bundle.prep, log=log, support=support)
        if bundle.task == "classifier":
            classifier_run = run
        gt = ground_truth(dataset, ids) if bundle.task == "detector" else None
        report = photo_report(run, bundle.calibration, bundle.thresholds, gt)
        reports[bundle.ref] = report
        if track:
            _log_val(bundle, ref, data, manifest.version, split, report, run)
    return reports


def _log_val(bundle, ref: str, data, data_version: str, split: str | None, report: dict, run) -> None:
    from training import tracking
    from training.engine import _jsonable

    config = {
        "model": ref,
        "bundle": bundle.ref,
        "task": bundle.task,
        "data": str(data),
        "split": split or "all",
    }
    with tracking.tracked_run(
        "loupe-val", f"val-{bundle.name}", config, data_version=data_version, tags={"loupe.task": "val"}
    ):
        tracking.log_metrics(report["flat"])
        tracking.log_dict_artifact(_jsonable(report), "evaluation/report.json")
        tracking.log_figure(tracking.confusion_figure(report["confusion"]), "confusion.png")
        if run.labels.any():
            from models.photo import calibrate_scores

            probs = calibrate_scores(run.raw, bundle.calibration, run.families)
            tracking.log_figure(tracking.pr_curves_figure(probs, run.labels, run.families), "pr_curves.png")
        if run.panels:
            tracking.log_figure(tracking.predictions_grid_figure(run.panels), "val_predictions.png")
