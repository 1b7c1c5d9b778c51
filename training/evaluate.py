"""Evaluation: per-family image-level metrics (scikit-learn) and detector mAP (pycocotools COCOeval).

The metric functions take plain arrays / COCO dicts so they can be checked by hand; the
``evaluate_*`` functions run a model over a dataset's photos (through :mod:`models.photo`, the one
place photo-level inference lives) and feed them.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasets.taxonomy import CATEGORY_IDS, FAMILIES


@dataclass
class FamilyMetrics:
    """Image-level metrics of one defect family on one set of photos."""

    family: str
    n_positive: int
    n_negative: int
    auroc: float  # nan when only one class is present
    average_precision: float  # nan without positives
    threshold: float
    recall: float  # nan without positives
    false_flag_rate: float  # good-for-this-family photos flagged; nan without negatives
    flagged: int

    def as_dict(self) -> dict:
        return asdict(self)


def family_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    thresholds: dict[str, float | np.ndarray] | float,
    families: tuple[str, ...] | list[str] = FAMILIES,
) -> dict[str, FamilyMetrics]:
    """Per-family AUROC, AP, recall and false-flag rate at the threshold.

    ``scores``: N×F per-photo scores (calibrated probabilities or raw, matching ``thresholds``);
    ``labels``: N×F booleans (family present in the photo); ``thresholds``: one per family or one for all,
    or per family one per photo (cross-fitting: each photo judged at the threshold of the other fold;
    ``threshold`` then reports their mean). A photo is flagged for a family when its score is ≥ the threshold.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    from training.calibrate import check_score_matrix

    scores, labels = check_score_matrix(scores, labels, families)
    out: dict[str, FamilyMetrics] = {}
    for i, family in enumerate(families):
        s, y = scores[:, i], labels[:, i]
        t = np.asarray(thresholds[family] if isinstance(thresholds, dict) else thresholds, np.float64)
        flagged = s >= t
        n_pos, n_neg = int(y.sum()), int((~y).sum())
        both = n_pos > 0 and n_neg > 0
        out[family] = FamilyMetrics(
            family=family,
            n_positive=n_pos,
            n_negative=n_neg,
            auroc=float(roc_auc_score(y, s)) if both else math.nan,
            average_precision=float(average_precision_score(y, s)) if n_pos else math.nan,
            threshold=float(t.mean()),
            recall=float((flagged & y).sum() / n_pos) if n_pos else math.nan,
            false_flag_rate=float((flagged & ~y).sum() / n_neg) if n_neg else math.nan,
            flagged=int(flagged.sum()),
        )
    return out


def flat_metrics(per_family: dict[str, FamilyMetrics], prefix: str = "val") -> dict[str, float]:
    """``{"val/stitching/auroc": ..., "val/mean_auroc": ...}`` for logging; NaNs dropped."""
    flat: dict[str, float] = {}
    for family, m in per_family.items():
        for key in ("auroc", "average_precision", "recall", "false_flag_rate", "threshold"):
            value = getattr(m, key)
            if not math.isnan(value):
                flat[f"{prefix}/{family}/{key}"] = float(value)
    for key in ("auroc", "average_precision"):
        values = [getattr(m, key) for m in per_family.values() if not math.isnan(getattr(m, key))]
        if values:
            flat[f"{prefix}/mean_{key}"] = float(np.mean(values))
    return flat


def confusion_by_family(
    scores: np.ndarray, labels: np.ndarray, thresholds: dict[str, float], families
) -> dict:
    """Per-family 2×2 counts ``{"tp", "fp", "fn", "tn"}`` at the thresholds (for the model card / plots)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    out = {}
    for i, family in enumerate(families):
        flagged = scores[:, i] >= thresholds[family]
        y = labels[:, i]
        out[family] = {
            "tp": int((flagged & y).sum()),
            "fp": int((flagged & ~y).sum()),
            "fn": int((~flagged & y).sum()),
            "tn": int((~flagged & ~y).sum()),
        }
    return out


# --------------------------------------------------------------------------------------------- mAP


@dataclass
class DetectionMetrics:
    """COCO box metrics on photo-level detections; per class keyed by family."""

    map50: float
    map50_95: float
    per_family: dict[str, dict[str, float]] = field(default_factory=dict)

    def flat(self, prefix: str = "val") -> dict[str, float]:
        flat = {f"{prefix}/map50": self.map50, f"{prefix}/map50_95": self.map50_95}
        for family, m in self.per_family.items():
            for key, value in m.items():
                if not math.isnan(value):
                    flat[f"{prefix}/{family}/{key}"] = value
        return {k: v for k, v in flat.items() if not math.isnan(v)}


def detection_map(gt: dict, detections: list[dict]) -> DetectionMetrics:
    """mAP@0.5 and mAP@[.5:.95], overall and per family, with pycocotools' COCOeval.

    ``gt``: a COCO dict in the internal format (images, annotations with category_id, categories);
    ``detections``: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]`` in photo pixels.
    Classes without ground truth get nan (COCOeval's -1) and are left out of the means.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {
        "images": [
            {"id": im["id"], "width": im.get("width", 0), "height": im.get("height", 0)}
            for im in gt["images"]
        ],
        "annotations": [
            {
                "id": a.get("id", i + 1),
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": [float(v) for v in a["bbox"]],
                "area": float(a.get("area") or a["bbox"][2] * a["bbox"][3]),
                "iscrowd": int(a.get("iscrowd", 0)),
            }
            for i, a in enumerate(gt.get("annotations", []))
        ],
        "categories": gt.get("categories") or [{"id": i, "name": f} for f, i in CATEGORY_IDS.items()],
    }
    cat_names = {c["id"]: c["name"] for c in gt["categories"]}
    if not gt["annotations"]:
        return DetectionMetrics(
            math.nan, math.nan, {n: {"map50": math.nan, "map50_95": math.nan} for n in cat_names.values()}
        )
    with contextlib.redirect_stdout(io.StringIO()):  # COCO prints progress chatter
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        dets = [
            {
                "image_id": d["image_id"],
                "category_id": d["category_id"],
                "bbox": [float(v) for v in d["bbox"]],
                "score": float(d["score"]),
            }
            for d in detections
        ]
        coco_dt = coco_gt.loadRes(dets) if dets else COCO()
        if not dets:
            coco_dt.dataset = {"images": gt["images"], "annotations": [], "categories": gt["categories"]}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
    # precision: [T ious, R recall points, K classes, A area ranges, M max dets]; area "all", 100 dets.
    precision = ev.eval["precision"][:, :, :, 0, -1]
    iou_50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))

    def _mean(p: np.ndarray) -> float:
        valid = p[p > -1]
        return float(valid.mean()) if valid.size else math.nan

    per_family = {}
    for k, cat_id in enumerate(ev.params.catIds):
        per_family[cat_names[cat_id]] = {
            "map50": _mean(precision[iou_50, :, k]),
            "map50_95": _mean(precision[:, :, k]),
        }
    # Means over classes that have ground truth (as COCOeval.summarize does).
    return DetectionMetrics(
        map50=_mean(precision[iou_50]),
        map50_95=_mean(precision),
        per_family=per_family,
    )


# ------------------------------------------------------------------------------ on whole photos


@dataclass
class PhotoRun:
    """A model run over validation photos: raw family scores, truth, and (detector) photo-level boxes."""

    families: list[str]
    image_ids: list[int]
    raw: np.ndarray  # N×F raw photo scores (classifier: max over tiles; detector: best box)
    labels: np.ndarray  # N×F booleans
    detections: list[dict] = field(default_factory=list)  # COCO results in photo pixels (detector)
    panels: list[tuple[np.ndarray, str]] = field(default_factory=list)  # drawn thumbnails for MLflow
    subtypes: list[list[str]] = field(default_factory=list)  # per photo, the defect subtypes it holds
    # per photo, what the dataset says of it that splits a PO (GROUP_KEYS: framing, product); {} when nothing
    groups: list[dict[str, str]] = field(default_factory=list)
    level_raw: np.ndarray | None = None  # classifier: N×L×F max tile score per pyramid level
    levels: tuple[float, ...] = ()  # the levels of level_raw, coarsest first
    # classifier: per image id its tile scores (models.photo.PhotoScores) and working -> photo factor
    photo_scores: dict[int, tuple[Any, float]] = field(default_factory=dict)
    # detector run given a classifier run: the boxes as triage scores them (supported_detections)
    supported_detections: list[dict] | None = None
    prep: Any = None  # the model's prep settings the photos were run with
    names: list[str] = field(default_factory=list)  # per photo, its file name in the dataset

    def fit_args(self, rows: np.ndarray | slice = slice(None)) -> dict:
        """The per-level scores of ``rows``, as :func:`training.calibrate.fit_thresholds` and
        :func:`~training.calibrate.apply_calibration` take them."""
        level_raw = None if self.level_raw is None else self.level_raw[rows]
        return {"level_raw": level_raw, "levels": self.levels}


# A classifier run's photo scores, kept in its run folder: a bag of fine-tunes calibrates on them.
RUN_FILE = "val_scores.npz"


def save_run(run: PhotoRun, path: str | Path) -> Path:
    """A classifier run's photo scores and what each photo holds (not its tile scores or panels)."""
    meta = {
        "families": list(run.families),
        "image_ids": [int(i) for i in run.image_ids],
        "levels": list(run.levels),
        "names": run.names,
        "subtypes": run.subtypes,
        "groups": run.groups,
    }
    arrays = {"raw": run.raw, "labels": run.labels}
    if run.level_raw is not None:
        arrays["level_raw"] = run.level_raw
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    return Path(path)


def load_run(path: str | Path) -> PhotoRun:
    """A run :func:`save_run` wrote."""
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        level_raw = data.get("level_raw")
        return PhotoRun(
            families=meta["families"],
            image_ids=meta["image_ids"],
            raw=data["raw"],
            labels=data["labels"],
            subtypes=meta["subtypes"],
            groups=meta["groups"],
            level_raw=level_raw,
            levels=tuple(meta["levels"]),
            names=meta["names"],
        )


def joined_runs(runs: list[PhotoRun]) -> PhotoRun:
    """Classifier runs of the same families and pyramid levels as one run, their photos in turn."""
    first = runs[0]
    for run in runs[1:]:
        if run.families != first.families or run.levels != first.levels:
            raise ValueError("runs to join must score the same families at the same pyramid levels")
    with_levels = all(run.level_raw is not None for run in runs)
    return PhotoRun(
        families=first.families,
        image_ids=[i for run in runs for i in run.image_ids],
        raw=np.concatenate([run.raw for run in runs]),
        labels=np.concatenate([run.labels for run in runs]),
        subtypes=[s for run in runs for s in run.subtypes],
        groups=[g for run in runs for g in run.groups],
        level_raw=np.concatenate([run.level_raw for run in runs]) if with_levels else None,
        levels=first.levels if with_levels else (),
        names=[n for run in runs for n in run.names],
    )


def calibration_halves(image_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The two folds of the validation photos for cross-fitting: alternate photos by id (rows). A photo
    scored more than once (a bag's splits can share validation photos) stays in one fold."""
    ids = np.asarray(image_ids)
    first = np.isin(ids, np.unique(ids)[0::2])
    return np.flatnonzero(first), np.flatnonzero(~first)


def cross_fitted(run: PhotoRun, fit: Callable) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Out-of-fold calibrated probabilities (N×F) and per-photo flag thresholds ``{family: (N,)}``.

    Each half of the photos is scored with the calibration and thresholds that
    ``fit(raw, labels, level_raw=..., levels=...)`` (→ calibration, thresholds) finds on the other
    half. A recall measured on the photos that chose its threshold is met by construction; this way
    none is, yet every photo is reported on and the shipped thresholds can be fitted on all of them
    (a buyer's fine-tune has only a dozen or two).
    """
    from training.calibrate import apply_calibration

    probs = np.zeros(run.raw.shape, np.float64)
    flags = {f: np.zeros(len(run.image_ids), np.float64) for f in run.families}
    a, b = calibration_halves(run.image_ids)
    for fit_rows, eval_rows in ((a, b), (b, a)):
        if len(eval_rows) == 0:
            continue
        calibration, thresholds = fit(run.raw[fit_rows], run.labels[fit_rows], **run.fit_args(fit_rows))
        probs[eval_rows] = apply_calibration(
            run.raw[eval_rows], calibration, run.families, **run.fit_args(eval_rows)
        )
        for f in run.families:
            flags[f][eval_rows] = thresholds[f]["flag"]
    return probs, flags


def photo_labels(image: dict, annotations: list[dict], families: list[str] | tuple[str, ...]) -> np.ndarray:
    """Families present in a photo: its image-level ``labels`` plus the families of its boxes."""
    present = set(image.get("labels") or [])
    present |= {a.get("family") or FAMILIES[int(a["category_id"]) - 1] for a in annotations}
    return np.array([f in present for f in families], bool)


def run_on_photos(
    dataset,
    image_ids: list[int],
    predictor,
    prep,
    n_panels: int = 8,
    log=None,
    support: PhotoRun | None = None,
) -> PhotoRun:
    """Run a classifier or detector predictor over photos the way serving does (:mod:`models.photo`).

    ``support``: a classifier's run on the same photos; a detector's boxes are then also scored as
    triage scores them, with the classifier's tiles under them (``supported_detections``).
    """
    from cv.draw import draw_findings, thumbnail
    from datasets.coco import annotations_by_image
    from models.photo import as_prep, detect_photo, guided_tiles, score_photo, supported_detections
    from training.data import load_working_photo

    prep = as_prep(prep)
    families = list(predictor.families)
    images = {im["id"]: im for im in dataset.coco["images"]}
    anns = annotations_by_image(dataset.coco)
    raw, labels, dets, panels, subtypes, level_raw, levels = [], [], [], [], [], [], ()
    groups: list[dict[str, str]] = []
    names: list[str] = []
    photo_scores: dict[int, tuple[Any, float]] = {}
    supported: list[dict] | None = [] if support is not None else None
    for n, image_id in enumerate(image_ids):
        image = images[image_id]
        rgb = load_working_photo(dataset.image_path(image), prep)
        labels.append(photo_labels(image, anns.get(image_id, []), families))
        subtypes.append(sorted({a["subtype"] for a in anns.get(image_id, []) if a.get("subtype")}))
        groups.append({k: str(image[k]) for k in GROUP_KEYS if image.get(k)})
        names.append(str(image.get("file_name") or image_id))
        to_photo = (image.get("width") or rgb.shape[1]) / rgb.shape[1]
        findings = []
        if predictor.task == "classifier":
            scores = score_photo(rgb, predictor, prep)
            raw.append(scores.raw)
            levels = scores.levels  # every photo is tiled at every level of prep.levels
            level_raw.append(scores.level_max())
            photo_scores[image_id] = (scores, to_photo)
            for f in families:
                if scores.raw[families.index(f)] >= 0.5:
                    t = scores.tiles[scores.best_tile[f]]
                    findings.append(
                        {"family": f, "score": float(scores.raw[families.index(f)]), "box": t.xyxy}
                    )
        else:
            found = detect_photo(rgb, predictor, prep)
            dets.extend(_coco_results(image_id, found, to_photo))
            if supported is not None and image_id in support.photo_scores:
                scores, cls_to_photo = support.photo_scores[image_id]
                # As triage reads the photo: on the tiles the classifier points at, when it asks so.
                tiles = guided_tiles(predictor, prep, scores, support.prep)
                guided = found if tiles is None else detect_photo(rgb, predictor, prep, tiles=tiles)
                boxes = supported_detections(guided, scores, to_photo / cls_to_photo)
                supported.extend(_coco_results(image_id, boxes, to_photo))
            best = np.zeros(len(families), np.float32)
            for box, score, family, subtype in found:
                k = families.index(family)
                best[k] = max(best[k], score)
                if score >= 0.3:
                    findings.append({"family": family, "subtype": subtype, "score": score, "box": box})
            raw.append(best)
        if len(panels) < n_panels:
            truth = ",".join(f for f, y in zip(families, labels[-1], strict=True) if y) or "good"
            panels.append((thumbnail(draw_findings(rgb, findings), 480), f"#{image_id} truth: {truth}"))
        if log and (n + 1) % 25 == 0:
            log(f"  evaluated {n + 1}/{len(image_ids)} photos")
    return PhotoRun(
        families=families,
        image_ids=list(image_ids),
        raw=np.asarray(raw, np.float32).reshape(-1, len(families)),
        labels=np.asarray(labels, bool).reshape(-1, len(families)),
        detections=dets,
        panels=panels,
        subtypes=subtypes,
        groups=groups,
        level_raw=np.asarray(level_raw, np.float32) if level_raw else None,
        levels=levels,
        photo_scores=photo_scores,
        supported_detections=supported,
        prep=prep,
        names=names,
    )


def _coco_results(image_id: int, found: list, to_photo: float) -> list[dict]:
    """COCO result dicts in photo pixels from ``detect_photo``-style boxes in working pixels."""
    out = []
    for box, score, family, _ in found:
        x0, y0, x1, y1 = (v * to_photo for v in box)
        out.append(
            {
                "image_id": image_id,
                "category_id": CATEGORY_IDS[family],
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": score,
            }
        )
    return out


def ground_truth(dataset, image_ids: list[int]) -> dict:
    """The dataset's COCO dict restricted to ``image_ids`` (for :func:`detection_map`)."""
    return restricted(dataset.coco, image_ids)


def restricted(coco: dict, image_ids) -> dict:
    """A COCO dict's images and annotations of ``image_ids`` only, with all its categories."""
    ids = set(image_ids)
    return {
        "images": [im for im in coco["images"] if im["id"] in ids],
        "annotations": [a for a in coco.get("annotations", []) if a["image_id"] in ids],
        "categories": coco.get("categories") or [],
    }


def photo_report(
    run: PhotoRun,
    calibration: dict,
    thresholds: dict[str, dict[str, float]],
    gt: dict | None = None,
    cross_fit: tuple[np.ndarray, dict[str, np.ndarray]] | None = None,
) -> dict:
    """Metrics of a photo run at the bundle's calibration and "flag" thresholds (+ mAP for a detector);
    with ``cross_fit`` (from :func:`cross_fitted`) at those out-of-fold probabilities and thresholds.
    Each family's AUROC comes with its 95 % bootstrap interval over the photos (``auroc_interval``)."""
    from models.photo import calibrate_scores
    from training.compare import auroc_intervals

    if cross_fit is not None:
        probs, flag = cross_fit
    else:
        probs = calibrate_scores(run.raw, calibration, run.families)
        flag = {f: thresholds.get(f, {}).get("flag", 0.5) for f in run.families}
    per_family = family_metrics(probs, run.labels, flag, run.families)
    # Cross-fitting refits only the flag threshold: the review share is reported at the shipped ones.
    review = None if cross_fit is not None else {
        f: thresholds.get(f, {}).get("review", flag[f]) for f in run.families
    }  # fmt: skip
    outcome = triage_outcome(probs, run.labels, flag, run.families, review)
    intervals = auroc_intervals(probs, run.labels, run.families)
    report = {
        "photos": len(run.image_ids),
        "per_family": {f: m.as_dict() for f, m in per_family.items()},
        "auroc_interval": intervals,
        "per_subtype": subtype_recall(probs, run, flag),
        "per_group": group_auroc(probs, run),
        "confusion": confusion_by_family(probs, run.labels, flag, run.families),
        "triage": outcome,
        "photo_rows": photo_rows(run, probs, flag),
        "flat": {
            **flat_metrics(per_family, prefix="val"),
            **{f"val/triage/{k}": v for k, v in outcome.items() if isinstance(v, float)},
            **{
                f"val/{f}/auroc_{end}": v
                for f, iv in intervals.items()
                for end, v in zip(("low", "high"), iv, strict=True)
            },
        },
    }
    for key, by_value in report["per_group"].items():
        for value, g in by_value.items():
            report["flat"].update(
                {
                    f"val/{key}/{key_part(value)}/{f}/auroc": a
                    for f, a in g["auroc"].items()
                    if not math.isnan(a)
                }
            )
    if gt is not None and run.detections is not None and gt.get("annotations"):
        m = detection_map(gt, run.detections)
        report["map"] = {"map50": m.map50, "map50_95": m.map50_95, "per_family": m.per_family}
        report["flat"].update(m.flat(prefix="val"))
        report["map_by_group"] = group_map(gt, run.detections, run)
        for key, by_value in report["map_by_group"].items():
            report["flat"].update({f"val/{key}/{key_part(v)}/map50": g["map50"] for v, g in by_value.items()})
        if run.supported_detections is not None:
            m = detection_map(gt, run.supported_detections)
            report["map_supported"] = {"map50": m.map50, "map50_95": m.map50_95, "per_family": m.per_family}
            report["flat"].update(m.flat(prefix="val/supported"))
    return report


def triage_outcome(
    probs: np.ndarray,
    labels: np.ndarray,
    flag: dict[str, float | np.ndarray],
    families: list[str],
    review: dict[str, float] | None = None,
) -> dict[str, int | float]:
    """What photo-level triage makes of these photos, which is what spares a person paging through a PO.

    A photo is flagged (verdict ``defect``) when any family reaches its flag threshold, and passes when
    it is below every ``review`` threshold (nobody opens it). Shares of the photos with a defect of any
    family and of the good photos; the pass shares need ``review``.
    """

    from models.photo import decide  # serving's verdict rule, so the shares are what triage would do

    flag_at = per_photo_thresholds(flag, families, len(probs))
    review_at = per_photo_thresholds(review or flag, families, len(probs))
    verdicts = np.array(
        [
            decide(
                {f: float(probs[i, k]) for k, f in enumerate(families)},
                {f: {"flag": flag_at[i, k], "review": review_at[i, k]} for k, f in enumerate(families)},
                "usable",
            )
            for i in range(len(probs))
        ]
    )

    def share(x: np.ndarray) -> float:
        return float(x.mean()) if len(x) else float("nan")

    defective = np.asarray(labels, bool).any(axis=1)
    flagged, passed = verdicts == "defect", verdicts == "pass"
    out: dict[str, int | float] = {
        "defective_photos": int(defective.sum()),
        "good_photos": int((~defective).sum()),
        "defective_flagged": share(flagged[defective]),
        "good_flagged": share(flagged[~defective]),
    }
    if review is not None:
        out["good_passed"] = share(passed[~defective])
        out["defective_passed"] = share(passed[defective])  # the misses: nobody sees these
    return out


def per_photo_thresholds(flag: dict[str, float | np.ndarray], families: list[str], n: int) -> np.ndarray:
    """(n, F): each family's threshold for each of ``n`` photos, from one per family or one per photo
    (cross-fitted halves judge each photo at the other half's threshold)."""
    return np.stack([np.broadcast_to(np.asarray(flag[f], np.float64), (n,)) for f in families], axis=1)


def photo_rows(run: PhotoRun, probs: np.ndarray, flag: dict[str, float | np.ndarray]) -> list[dict]:
    """One row per photo, for a person checking a model's misses and false flags photo by photo: the
    photo, what it holds (families, subtypes; framing and product where the dataset says), each
    family's calibrated score, the families flagged at the flag thresholds, and of those the ones
    it holds no defect of (``false_flags``) and the defects left below them (``missed``)."""
    n = len(run.image_ids)
    names = run.names or [str(i) for i in run.image_ids]
    groups = run.groups or [{} for _ in range(n)]
    subtypes = run.subtypes or [[] for _ in range(n)]
    flags = probs >= per_photo_thresholds(flag, run.families, n)
    rows = []
    for i in range(n):
        truth = [f for k, f in enumerate(run.families) if run.labels[i, k]]
        flagged = [f for k, f in enumerate(run.families) if flags[i, k]]
        rows.append(
            {
                "photo": names[i],
                **{key: groups[i].get(key, "") for key in GROUP_KEYS},
                "defects": ";".join(truth),
                "subtypes": ";".join(subtypes[i]),
                **{f: round(float(probs[i, k]), 4) for k, f in enumerate(run.families)},
                "flagged": ";".join(flagged),
                "missed": ";".join(f for f in truth if f not in flagged),
                "false_flags": ";".join(f for f in flagged if f not in truth),
            }
        )
    return rows


def photo_rows_csv(rows: list[dict]) -> str:
    """:func:`photo_rows` as CSV text (a spreadsheet sorts it by any family's score)."""
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def subtype_recall(probs: np.ndarray, run: PhotoRun, flag: dict[str, float | np.ndarray]) -> dict[str, dict]:
    """Per defect subtype: photos holding it, the share flagged for its family, their median score,
    and their AUROC against the photos without a defect of that family (nan when there are none);
    where the photos say their framing (``shot``), that AUROC within each framing too
    (``auroc_by_shot``: the subtype's photos of that framing against the clean ones of it).

    Shows which kinds of defect a model misses or ranks low (a family's figures average over very
    different ones), and whether only on whole-product shots.
    """
    from datasets.taxonomy import SUBTYPE_FAMILY

    flags = probs >= per_photo_thresholds(flag, run.families, len(probs))
    shots = group_rows(run).get("shot", {})
    out: dict[str, dict] = {}
    for sub in sorted({s for subs in run.subtypes for s in subs}):
        family = SUBTYPE_FAMILY.get(sub)
        if family not in run.families:
            continue
        k = run.families.index(family)
        held = np.array([sub in subs for subs in run.subtypes], bool)
        clean = ~run.labels[:, k] & ~held
        out[sub] = {
            "family": family,
            "photos": int(held.sum()),
            "recall": float(flags[held, k].mean()),
            "median_score": float(np.median(probs[held, k])),
            "auroc": _auroc(probs[held, k], probs[clean, k]),
        }
        if shots:
            out[sub]["auroc_by_shot"] = {
                shot: _auroc(probs[held & rows, k], probs[clean & rows, k]) for shot, rows in shots.items()
            }
    return out


def _auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """AUROC of ``positives`` against ``negatives``; nan when either is empty."""
    from sklearn.metrics import roc_auc_score

    if not len(positives) or not len(negatives):
        return math.nan
    y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
    return float(roc_auc_score(y, np.r_[positives, negatives]))


# Photo fields a generated PO carries (datasets/synth/po.py) that split it where models differ most:
# whole-product shots against close-ups (a thread under a pixel, or several), and the product.
# A field an imported dataset lacks is simply not reported.
GROUP_KEYS = ("shot", "product")


def key_part(value: str) -> str:
    """A photo field's value as one part of an MLflow metric name: an imported dataset's product may
    read "Men's tee (navy)" or hold a slash, which MLflow refuses or reads as a path."""
    return re.sub(r"[^\w\-]", "_", value)


def group_rows(run: PhotoRun) -> dict[str, dict[str, np.ndarray]]:
    """For each :data:`GROUP_KEYS` field whose values split the photos in two or more, each value's
    photos as a boolean row mask (a photo without the field is in none of them)."""
    groups = run.groups or [{} for _ in run.image_ids]
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in GROUP_KEYS:
        values = sorted({g[key] for g in groups if key in g})
        if len(values) >= 2:
            out[key] = {v: np.array([g.get(key) == v for g in groups], bool) for v in values}
    return out


def group_auroc(probs: np.ndarray, run: PhotoRun) -> dict[str, dict[str, dict]]:
    """Per-family AUROC within each value of each :data:`GROUP_KEYS` field that splits the photos
    in two or more: ``{"shot": {"whole": {"photos": 93, "positives": {...}, "auroc": {...}}}}``.

    Why: a PO's figure averages over framings, and a classifier that is blind to threads on
    whole-product shots can score well on a PO of close-ups; this shows it in every ``loupe val``.
    AUROC is nan where a family has no positive or no negative photo in the group.
    """
    out: dict[str, dict[str, dict]] = {}
    for key, by_value in group_rows(run).items():
        out[key] = {}
        for value, rows in by_value.items():
            entry: dict = {"photos": int(rows.sum()), "positives": {}, "auroc": {}}
            for k, family in enumerate(run.families):
                y = run.labels[:, k].astype(bool)
                entry["positives"][family] = int((rows & y).sum())
                entry["auroc"][family] = _auroc(probs[rows & y, k], probs[rows & ~y, k])
            out[key][value] = entry
    return out


def group_map(gt: dict, detections: list[dict], run: PhotoRun) -> dict[str, dict[str, dict]]:
    """mAP@0.5 and mAP@[.5:.95] of a detector's boxes within each value of each :data:`GROUP_KEYS`
    field that splits the photos in two or more (values whose photos hold no box are left out)."""
    out: dict[str, dict[str, dict]] = {}
    for key, by_value in group_rows(run).items():
        out[key] = {}
        for value, rows in by_value.items():
            ids = {run.image_ids[i] for i in np.flatnonzero(rows)}
            sub_gt = restricted(gt, ids)
            if not sub_gt["annotations"]:
                continue
            m = detection_map(sub_gt, [d for d in detections if d["image_id"] in ids])
            out[key][value] = {"map50": m.map50, "map50_95": m.map50_95, "boxes": len(sub_gt["annotations"])}
    return out


def format_report(report: dict) -> str:
    """A small table for the terminal."""
    lines = [f"photos: {report['photos']}"]
    if "map" in report:
        # Its thresholds are fitted like the classifier's, but nothing in triage acts on them.
        lines.append(
            "a detector's photo score is its best box per family; triage's verdicts come from the classifier"
        )
    lines.append(
        f"{'family':<10}{'pos':>5}{'neg':>5}{'AUROC':>8}{'(95 %)':>14}{'AP':>8}{'thresh':>8}{'recall':>8}"
        f"{'false-flag':>12}"
    )

    def fmt(v: float) -> str:
        return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    intervals = report.get("auroc_interval") or {}
    for f, m in report["per_family"].items():
        iv = f"{intervals[f][0]:.3f}-{intervals[f][1]:.3f}" if f in intervals else ""
        lines.append(
            f"{f:<10}{m['n_positive']:>5}{m['n_negative']:>5}{fmt(m['auroc']):>8}{iv:>14}"
            f"{fmt(m['average_precision']):>8}{m['threshold']:>8.3f}{fmt(m['recall']):>8}"
            f"{fmt(m['false_flag_rate']):>12}"
        )
    if report.get("triage"):
        t = report["triage"]

        def pct(v: float) -> str:
            return "n/a" if math.isnan(v) else f"{100 * v:.0f} %"

        for kind in ("defective", "good"):
            passed = f", {pct(t[f'{kind}_passed'])} pass" if f"{kind}_passed" in t else ""
            lines.append(
                f"{t[f'{kind}_photos']} {'photos with a defect' if kind == 'defective' else 'good photos'}: "
                f"{pct(t[f'{kind}_flagged'])} flagged{passed}"
            )
    if report.get("per_subtype"):
        shots = list(next(iter(report["per_subtype"].values())).get("auroc_by_shot", {}))
        lines.append(
            f"{'subtype':<22}{'family':<10}{'photos':>7}{'recall':>8}{'median score':>14}{'AUROC':>8}"
            + "".join(f"{shot:>10}" for shot in shots)
            + ("   (AUROC within each shot)" if shots else "")
        )
        for sub, v in report["per_subtype"].items():
            lines.append(
                f"{sub:<22}{v['family']:<10}{v['photos']:>7}{v['recall']:>8.3f}{v['median_score']:>14.3f}"
                f"{v.get('auroc', math.nan):>8.3f}"
                + "".join(f"{fmt(v['auroc_by_shot'].get(shot)):>10}" for shot in shots)
            )
    lines.extend(_format_misses(report.get("photo_rows") or [], list(report["per_family"])))
    for key, by_value in (report.get("per_group") or {}).items():
        families = list(report["per_family"])
        header = "".join(f"{f:>14}" for f in families)
        lines.append(f"{'by ' + key:<22}{'photos':>7}{header}   (AUROC, photos with the defect)")
        for value, g in by_value.items():
            cells = "".join(
                format(f"{fmt(a).strip()} ({g['positives'][f]})", ">14") for f, a in g["auroc"].items()
            )
            lines.append(f"  {value:<20}{g['photos']:>7}{cells}")
    for key, title in (("map", "detector"), ("map_supported", "boxes as triage scores them")):
        if key not in report:
            continue
        mp = report[key]
        lines.append(f"{title}: mAP@0.5 {mp['map50']:.3f}   mAP@[.5:.95] {mp['map50_95']:.3f}")
        for f, v in mp["per_family"].items():
            if not math.isnan(v["map50"]):
                lines.append(f"  {f:<10} mAP@0.5 {v['map50']:.3f}   mAP@[.5:.95] {v['map50_95']:.3f}")
        if key == "map":
            for group, by_value in (report.get("map_by_group") or {}).items():
                lines.append(f"  by {group}:")
                for value, g in by_value.items():
                    lines.append(
                        f"    {value:<18} mAP@0.5 {g['map50']:.3f}   mAP@[.5:.95] {g['map50_95']:.3f}"
                        f"   ({g['boxes']} defect boxes)"
                    )
    if "against" in report:
        lines.extend(format_against(report["against"]))
    return "\n".join(lines)


# The terminal lists this many of the lowest-scored misses; --photos writes them all.
MISSES_SHOWN = 12


def _format_misses(rows: list[dict], families: list[str]) -> list[str]:
    """The defects left below their flag threshold, lowest score first: the photos to look at."""
    from datasets.taxonomy import SUBTYPE_FAMILY

    misses = sorted(
        ((row[f], f, row) for row in rows for f in row["missed"].split(";") if f in families),
        key=lambda m: m[0],
    )
    if not misses:
        return []
    lines = [f"missed defects ({len(misses)}; lowest score first, up to {MISSES_SHOWN}):"]
    for score, family, row in misses[:MISSES_SHOWN]:
        subtypes = ",".join(s for s in row["subtypes"].split(";") if SUBTYPE_FAMILY.get(s) == family)
        where = " ".join(row[key] for key in GROUP_KEYS if row.get(key))
        lines.append(f"  {row['photo']:<28}{family:<10}{score:>7.3f}  {subtypes or '-'}  {where}".rstrip())
    return lines


def format_against(against: dict) -> list[str]:
    """The lines of a comparison with a baseline (:func:`training.validate.validate`'s ``against``)."""
    from training.compare import Difference

    lines = [
        f"against {against['ref']} on the same {against['photos']} photos (model - baseline; 95 % interval, "
        f"paired bootstrap over photos, {against['rounds']} rounds for AUROC and AP"
        + (f", {against['map_rounds']} for mAP)" if "map50" in against else ")")
    ]
    titles = {"auroc": "AUROC", "average_precision": "AP", "map50": "mAP@0.5"}
    for metric, title in titles.items():
        for family, d in (against.get(metric) or {}).items():
            name = f"{title} {family}"
            difference = Difference(d["diff"], d["low"], d["high"])
            lines.append(f"  {name:<26}{d['model']:.3f} vs {d['baseline']:.3f}   {difference}")
    return lines
