"""Is one model better than another on these photos? Paired bootstrap over the photos.

One PO is one draw: on 120 photos the same two models can swap places with another draw of photos,
so a difference is reported with the 95 % interval of the difference itself. Both models are judged
on the same resampled photos in every round (a paired bootstrap), which is what decides whether one
beats the other on this many photos; "better" only when the whole interval is above zero.
Used by ``loupe val --against`` and ``benchmarks/bench_finetune.py``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

AUROC_ROUNDS = 1000
MAP_ROUNDS = 200  # each round is a COCO evaluation per side


@dataclass
class Difference:
    """A figure of one model minus another's, with the 95 % bootstrap interval of that difference."""

    diff: float
    low: float
    high: float

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "better"
        return "worse" if self.high < 0 else "no clear difference"

    def as_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}

    def __str__(self) -> str:
        return f"{self.diff:+.3f}  [{self.low:+.3f}, {self.high:+.3f}]  {self.verdict}"


def interval(diffs: np.ndarray, point: float) -> Difference:
    """``point`` (the difference on the photos as they are) with the 2.5 and 97.5 percentiles of the
    bootstrap rounds' ``diffs`` (rounds where a family had one class only are left out)."""
    lo, hi = np.nanpercentile(diffs, [2.5, 97.5])
    return Difference(float(point), float(lo), float(hi))


def family_figures(
    raw: np.ndarray, labels: np.ndarray, families: list[str], columns: list[int]
) -> np.ndarray:
    """AUROC and AP per family column (:func:`training.evaluate.family_metrics`): shape (2, len(columns))."""
    from training.evaluate import family_metrics

    per_family = family_metrics(raw, labels, 0.5, families)
    return np.array(
        [[getattr(per_family[families[i]], m) for i in columns] for m in ("auroc", "average_precision")]
    )


def scored_columns(labels: np.ndarray) -> list[int]:
    """The family columns with both photos that hold the defect and photos that do not."""
    labels = np.asarray(labels, bool)
    return [i for i in range(labels.shape[1]) if 0 < labels[:, i].sum() < len(labels)]


def paired_bootstrap(
    arm: list[np.ndarray],
    base: list[np.ndarray],
    labels: np.ndarray,
    families: list[str],
    columns: list[int],
    rounds: int = AUROC_ROUNDS,
    seed: int = 0,
) -> np.ndarray:
    """(rounds, 2, columns) AUROC and AP differences ``arm - base`` per family column on resampled photos.

    ``arm`` and ``base`` hold one score array per model (a benchmark's training seeds; one for a model
    that is judged as it is); each side's figure is its mean over them.
    """

    def figures(runs: list[np.ndarray], pick: np.ndarray) -> np.ndarray:
        return np.mean([family_figures(raw[pick], labels[pick], families, columns) for raw in runs], axis=0)

    rng = np.random.default_rng(seed)
    out = np.empty((rounds, 2, len(columns)))
    for r in range(rounds):
        pick = rng.integers(0, len(labels), len(labels))
        out[r] = figures(arm, pick) - figures(base, pick)
    return out


def auroc_intervals(
    scores: np.ndarray, labels: np.ndarray, families: list[str], rounds: int = AUROC_ROUNDS, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Per family with both classes, the 95 % bootstrap interval of its photo AUROC on these photos."""
    from scipy.stats import rankdata

    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    picks = np.random.default_rng(seed).integers(0, len(labels), (rounds, len(labels)))
    out: dict[str, tuple[float, float]] = {}
    for i in scored_columns(labels):
        y, s = labels[:, i][picks], scores[:, i][picks]
        # AUROC as the Mann-Whitney U of each round's ranks (ties count a half, as in roc_auc_score)
        n_pos = y.sum(axis=1)
        n_neg = y.shape[1] - n_pos
        ranks = rankdata(s, axis=1)
        both = (n_pos > 0) & (n_neg > 0)
        u = (ranks * y).sum(axis=1) - n_pos * (n_pos + 1) / 2
        values = u[both] / (n_pos[both] * n_neg[both])
        lo, hi = np.percentile(values, [2.5, 97.5])
        out[families[i]] = (float(lo), float(hi))
    return out


def compare_photo_scores(
    model: np.ndarray,
    baseline: np.ndarray,
    labels: np.ndarray,
    families: list[str],
    rounds: int = AUROC_ROUNDS,
) -> dict:
    """Two classifiers' raw photo scores on the same photos: per family and over the families' mean,
    each model's AUROC and AP and the difference with its interval
    (``{"auroc": {"stitching": {...}, "mean": {...}}, "average_precision": {...}, "rounds": N}``)."""
    columns = scored_columns(labels)
    out: dict = {"rounds": rounds, "photos": len(labels)}
    if not columns:
        return out
    diffs = paired_bootstrap([model], [baseline], labels, families, columns, rounds)
    figures = [family_figures(raw, labels, families, columns) for raw in (model, baseline)]
    for k, metric in enumerate(("auroc", "average_precision")):
        entries = {}
        for j, i in enumerate(columns):
            d = interval(diffs[:, k, j], figures[0][k, j] - figures[1][k, j])
            entries[families[i]] = {"model": figures[0][k, j], "baseline": figures[1][k, j], **d.as_dict()}
        means = [float(np.mean(f[k])) for f in figures]
        d = interval(_row_means(diffs[:, k]), means[0] - means[1])
        entries["mean"] = {"model": means[0], "baseline": means[1], **d.as_dict()}
        out[metric] = entries
    return out


def _row_means(rows: np.ndarray) -> np.ndarray:
    """Each round's mean over the families it could rank (nan for a round that could rank none)."""
    out = np.full(len(rows), np.nan)
    ranked = ~np.isnan(rows).all(axis=1)
    out[ranked] = np.nanmean(rows[ranked], axis=1)
    return out


# --------------------------------------------------------------------------------------------- boxes


def resampled(gt: dict, pick: np.ndarray) -> tuple[dict, dict[int, list[int]]]:
    """``gt`` on the photo rows ``pick`` (repeats allowed: each copy is a photo of its own id), and
    per original photo id the ids of its copies (:func:`box_figures` maps detections with them)."""
    images = gt["images"]
    copies: dict[int, list[int]] = {}
    for n, row in enumerate(pick):
        copies.setdefault(images[row]["id"], []).append(n + 1)
    anns = [(a, i) for a in gt["annotations"] for i in copies.get(a["image_id"], [])]
    return {
        "images": [{**images[row], "id": n + 1} for n, row in enumerate(pick)],
        "annotations": [{**a, "id": k + 1, "image_id": i} for k, (a, i) in enumerate(anns)],
        "categories": gt["categories"],
    }, copies


def box_figures(
    gt: dict, detections: list[dict], families: list[str], copies: dict[int, list[int]] | None = None
) -> np.ndarray:
    """mAP@0.5 overall and per family (pycocotools, :func:`training.evaluate.detection_map`): shape
    (1 + len(families),). With ``copies`` (from :func:`resampled`) ``gt`` is a resampled one and each
    detection goes to every copy of its photo."""
    from training.evaluate import detection_map

    if copies is not None:
        detections = [{**d, "image_id": i} for d in detections for i in copies.get(d["image_id"], [])]
    m = detection_map(gt, detections)
    return np.array([m.map50] + [m.per_family.get(f, {}).get("map50", math.nan) for f in families])


def paired_box_bootstrap(
    arm: list[list[dict]], base: list[list[dict]], gt: dict, families: list[str], rounds: int = MAP_ROUNDS,
    seed: int = 0,
) -> np.ndarray:  # fmt: skip
    """(rounds, 1 + families) mAP@0.5 differences ``arm - base`` on resampled photos, each side the
    mean over its runs' boxes (as :func:`paired_bootstrap` does for photo scores)."""
    rng = np.random.default_rng(seed)
    out = np.empty((rounds, 1 + len(families)))
    for r in range(rounds):
        gt_r, copies = resampled(gt, rng.integers(0, len(gt["images"]), len(gt["images"])))
        figures = [
            np.mean([box_figures(gt_r, d, families, copies) for d in side], axis=0) for side in (arm, base)
        ]
        out[r] = figures[0] - figures[1]
    return out


def compare_boxes(
    model: list[dict], baseline: list[dict], gt: dict, families: list[str], rounds: int = MAP_ROUNDS
) -> dict:
    """Two detectors' boxes on the same photos: mAP@0.5 of each, overall and per family with defect
    boxes, and the difference with its interval (``{"map50": {"all": {...}, "stitching": {...}}}``)."""
    names = {c["id"]: c["name"] for c in gt["categories"]}
    boxed = {names.get(a["category_id"]) for a in gt["annotations"]}
    diffs = paired_box_bootstrap([model], [baseline], gt, families, rounds)
    figures = [box_figures(gt, d, families) for d in (model, baseline)]
    entries = {}
    for j, name in enumerate(["all", *families]):
        if name != "all" and name not in boxed:  # no defect box of it: nothing to rank
            continue
        d = interval(diffs[:, j], figures[0][j] - figures[1][j])
        entries[name] = {"model": figures[0][j], "baseline": figures[1][j], **d.as_dict()}
    return {"rounds": rounds, "photos": len(gt["images"]), "map50": entries}
