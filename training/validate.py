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
    against: str | None = None,
    against_detector: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Per-family metrics (and mAP for a detector) of each model on ``data``; ``{bundle ref: report}``.

    With both models the detector's report also has ``map_supported``: mAP of its boxes as triage
    scores them, tempered by the classifier (:func:`models.photo.supported_detections`).
    ``against`` (a classifier) and ``against_detector`` are baselines run on the same photos: the
    report of the model judged against one also has ``against``, each figure's difference with its
    95 % paired-bootstrap interval (:mod:`training.compare`), which says whether a fine-tune beats
    the model it started from on these photos.
    """
    from models.predictor import load_predictor
    from training.evaluate import ground_truth, photo_report, run_on_photos

    refs = [(model_ref, "classifier")] + ([(detector_ref, "detector")] if detector_ref else [])
    if against_detector and not detector_ref:
        raise ValueError("--against-detector compares two detectors: give the one to judge with --detector")
    baselines = {"classifier": against, "detector": against_detector}
    # a bad ref fails before the dataset is hashed
    folders = [_resolve(ref, task) for ref, task in refs]
    base_folders = {task: _resolve(ref, task) for task, ref in baselines.items() if ref}
    _check_baselines(dict(zip((task for _, task in refs), folders, strict=True)), base_folders)
    dataset, ids, data_version = _photos(data, split)
    reports: dict[str, dict[str, Any]] = {}
    classifier_run = None
    for (ref, task), folder in zip(refs, folders, strict=True):
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
        if task in base_folders:
            base = load_predictor(base_folders[task], backend="torch", device="auto", threads=threads)
            log(f"evaluating the baseline {base.bundle.ref} ({task}) on the same photos")
            base_run = run_on_photos(dataset, ids, base, base.bundle.prep, log=log, n_panels=0)
            report["against"] = _against(run, base_run, base.bundle.ref, gt)
            _with_baseline_scores(report["photo_rows"], base_run, base.bundle.calibration)
            report["flat"].update(_against_flat(report["against"]))
        reports[bundle.ref] = report
        if track:
            _log_val(bundle, ref, data, data_version, split, report, run, against=baselines[task])
    return reports


def _check_baselines(folders: dict[str, Path], base_folders: dict[str, Path]) -> None:
    """A baseline judges a model of its own kind: a detector's boxes against a classifier mean nothing."""
    from models.bundle import load_bundle

    for role, base_folder in base_folders.items():
        model, base = load_bundle(folders[role]), load_bundle(base_folder)
        if model.task != base.task or model.families != base.families:
            raise ValueError(
                f"the baseline {base.ref} is a {base.task} of {base.families}, the model {model.ref} a "
                f"{model.task} of {model.families}: compare a classifier with --against and a detector "
                "with --against-detector"
            )


def _against(run, base_run, base_ref: str, gt: dict | None) -> dict[str, Any]:
    """A model's run against a baseline's on the same photos (:mod:`training.compare`)."""
    from training.compare import compare_boxes, compare_photo_scores

    out = {"ref": base_ref, **compare_photo_scores(run.raw, base_run.raw, run.labels, run.families)}
    if gt is not None and gt.get("annotations"):
        boxes = compare_boxes(run.detections, base_run.detections, gt, run.families)
        out |= {"map50": boxes["map50"], "map_rounds": boxes["rounds"]}
    return out


def _with_baseline_scores(rows: list[dict], base_run, calibration: dict) -> None:
    """Each photo's row gains the baseline's calibrated score per family (``stitching_against``): the
    photo table then shows which photos a fine-tune moved, and which way."""
    from models.photo import calibrate_scores

    probs = calibrate_scores(base_run.raw, calibration, base_run.families)
    for row, p in zip(rows, probs, strict=True):
        row.update({f"{f}_against": round(float(p[k]), 4) for k, f in enumerate(base_run.families)})


def _against_flat(against: dict[str, Any]) -> dict[str, float]:
    """``val/against/stitching/auroc_diff`` (and ``_low``, ``_high``) for MLflow."""
    flat = {}
    for metric in ("auroc", "average_precision", "map50"):
        for family, d in (against.get(metric) or {}).items():
            for key in ("diff", "low", "high"):
                flat[f"val/against/{family}/{metric}_{key}"] = float(d[key])
    return flat


def _photos(data: str | Path, split: str | None) -> tuple[Any, list[int], str]:
    """The dataset at ``data``, the ids of its photos (only ``split``'s, when given) and its version."""
    from datasets.manifest import manifest_of
    from datasets.reader import read_dataset

    dataset = read_dataset(Path(data))
    manifest = manifest_of(dataset)
    ids = [im["id"] for im in dataset.coco["images"]]
    if split is not None:
        split_of = {m.file_name: m.split for m in manifest.images}
        ids = [im["id"] for im in dataset.coco["images"] if split_of.get(im["file_name"]) == split]
    if not ids:
        raise ValueError(f"{data}: no photos to evaluate{f' in split {split!r}' if split else ''}")
    return dataset, ids, manifest.version


def recalibrate(
    model_ref: str,
    data: str | Path,
    out: str | Path,
    task: str = "classifier",
    recipe: str | None = None,
    split: str | None = None,
    version: str | None = None,
    track: bool = True,
    threads: int = 2,
    command: str = "",
    log=print,
) -> Path:
    """Fit a saved model's calibration and thresholds again on ``data``'s photos, as training fits them
    on its validation photos, and write the model with them as a new bundle in ``out``; returns it.

    The weights stay as they are. ``recipe`` (a training recipe) replaces the bundle's scoring settings
    with the recipe's: the calibration targets and per-level families, and a detector's decoding
    (``detector``); without it the bundle's own are kept. Use it to set a model's thresholds on a
    buyer's own labelled photos, or at another target recall, without training it again.
    """
    from models.bundle import save_bundle_from
    from models.predictor import load_predictor
    from training.calibrate import recipe_fit
    from training.card import recalibration_card
    from training.config import CalibrationSettings, load_train_config
    from training.engine import _jsonable
    from training.evaluate import cross_fitted, ground_truth, photo_report, run_on_photos

    folder = _resolve(model_ref, task)
    out = Path(out)
    if out.resolve() == folder.resolve():
        raise ValueError(f"{out}: is {model_ref}'s own folder; write the recalibrated model to a new folder")
    source = load_predictor(folder, backend="torch", device="auto", threads=threads)
    bundle = source.bundle
    config = dict(bundle.config)
    if recipe is not None:
        sections = ("calibration", "detector") if bundle.task == "detector" else ("calibration",)
        resolved = load_train_config(recipe, bundle.task).model_dump(mode="json")
        config.update({name: resolved[name] for name in sections})
    bundle = bundle.model_copy(update={"config": config, "version": version or f"{bundle.version}-cal"})
    # Scored as the network and its memory score them, before any calibration: the old per-level
    # Platt fits must not shape the new ones.
    predictor = source.with_bundle(bundle.model_copy(update={"calibration": {}}))
    dataset, ids, data_version = _photos(data, split)
    log(f"calibrating {bundle.ref} ({bundle.task}) on {len(ids)} photos of {data}")
    run = run_on_photos(dataset, ids, predictor, bundle.prep, log=log)
    fit = recipe_fit(CalibrationSettings(**config.get("calibration", {})), bundle.families)
    calibration, thresholds = fit(run.raw, run.labels, **run.fit_args())
    bundle = bundle.model_copy(update={"calibration": calibration, "thresholds": thresholds})
    gt = ground_truth(dataset, ids) if bundle.task == "detector" else None
    report = photo_report(run, calibration, thresholds, gt, cross_fit=cross_fitted(run, fit))
    metrics = {**bundle.metrics, **report["flat"], "val_photos": len(ids), "per_family": report["per_family"]}
    if "map" in report:
        metrics["map"] = report["map"]
    in_split = f", split {split}" if split else ""
    fitted_on = f"{len(ids)} photos of `{data}` (dataset version `{data_version}`{in_split})"
    command = command or f"loupe calibrate --model {model_ref} --data {data} --out {out}"
    card = recalibration_card(bundle, report, fitted_on, recipe, command)
    bundle = bundle.model_copy(update={"metrics": _jsonable(metrics), "card": card})
    save_bundle_from(folder, bundle, out)
    if track:
        from training import tracking

        params = {"model": model_ref, "bundle": bundle.ref, "task": bundle.task, "data": str(data)}
        params |= {"split": split or "all", "recipe": recipe or "the bundle's own"}
        with tracking.tracked_run(
            "loupe-calibrate", f"calibrate-{bundle.name}", params, data_version=data_version,
            tags={"loupe.task": "calibrate"},
        ):  # fmt: skip
            tracking.log_metrics(report["flat"])
            tracking.log_dict_artifact(
                {"thresholds": thresholds, "calibration": calibration}, "thresholds.json"
            )
    log(f"bundle written: {out}")
    return out


def _log_val(
    bundle,
    ref: str,
    data,
    data_version: str,
    split: str | None,
    report: dict,
    run,
    against: str | None = None,
) -> None:
    from training import tracking

    config = {
        "model": ref,
        "bundle": bundle.ref,
        "task": bundle.task,
        "data": str(data),
        "split": split or "all",
    }
    if against:
        config["against"] = against
    with tracking.tracked_run(
        "loupe-val", f"val-{bundle.name}", config, data_version=data_version, tags={"loupe.task": "val"}
    ):
        tracking.log_metrics(report["flat"])
        tracking.log_evaluation(report)
        tracking.log_figure(tracking.confusion_figure(report["confusion"]), "confusion.png")
        if run.labels.any():
            from models.photo import calibrate_scores

            probs = calibrate_scores(run.raw, bundle.calibration, run.families)
            tracking.log_figure(tracking.pr_curves_figure(probs, run.labels, run.families), "pr_curves.png")
        if run.panels:
            tracking.log_figure(tracking.predictions_grid_figure(run.panels), "val_predictions.png")
