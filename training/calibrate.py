"""Per-family threshold calibration and Platt scaling, fitted on validation photos.

A photo's raw family score is the max over its tiles, which is not a probability; Platt scaling
(a 1-D logistic regression on the logit of the raw score) turns it into one. Thresholds are then
picked on the calibrated probabilities: "flag" is the highest threshold whose validation recall is
still ≥ the target (a missed defect costs more than a second look), "review" a lower one at a
stricter recall. Platt scaling is monotonic, so the thresholds keep their recall either way.

Optionally (``calibration.per_level`` in the training config) a family's tiles are first calibrated
per pyramid level, so the max over tiles compares levels on one scale: see
:func:`models.photo.level_calibrated` and :func:`fit_level_calibration`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from models.photo import apply_platt, level_calibrated, level_key

# Where a family has no positive validation photos we cannot measure recall; flag on a coin toss
# rather than pretend, and say so in the model card.
FALLBACK_FLAG = 0.5
FALLBACK_REVIEW = 0.25
# Per-level calibration needs photos with and without the defect. Two of each is enough to help: on
# the one-style jersey look, fits on 16 random photos (often under 5 with a stitching defect) raised
# the stitching AUROC of fine-tuned weights on 60 other photos by 0.05-0.07 on average, in 91-96 % of
# 200 draws (benchmarks/README.md), with the fine-tuning recipe of then. Below it a family keeps the plain
# max over its tiles; above it the held-out check (held_out_gain) still decides.
MIN_LEVEL_PHOTOS = 2
# The parameters of a level left out of the max over levels: sigmoid(-30) ~ 1e-13, never the max.
LEFT_OUT = {"a": 0.0, "b": -30.0}


def threshold_for_recall(scores: np.ndarray, labels: np.ndarray, target_recall: float) -> float:
    """The highest threshold ``t`` with recall(score >= t) >= ``target_recall`` on these photos.

    ``scores`` are per-photo scores for one family, ``labels`` whether the family is present.
    Returns ``nan`` when there is no positive photo to measure recall on.
    """
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in length")
    positives = np.sort(scores[labels])[::-1]
    if positives.size == 0:
        return float("nan")
    # Keep at least k positives at or above the threshold; the k-th highest positive score is the
    # highest threshold that does. Rounding guards against 0.95 * 20 = 19.000000000000004.
    k = max(1, math.ceil(round(target_recall * positives.size, 9)))
    return float(positives[k - 1])


def fit_platt(raw: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Fit ``p = sigmoid(a * logit(raw) + b)`` on one family's validation photos.

    With only one class present (nothing to separate) returns the identity ``a=1, b=0``; so it does
    for a score anti-correlated with the label on validation: keep its ranking, refuse to flip it.
    """
    a, b = _logistic_fit(raw, labels)
    return {"a": a, "b": b} if a > 0 else {"a": 1.0, "b": 0.0}


def _logistic_fit(raw: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of a logistic regression of ``labels`` on ``logit(raw)``; (0, 0) for one class."""
    from sklearn.linear_model import LogisticRegression

    raw = np.asarray(raw, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(int).ravel()
    if len(np.unique(labels)) < 2:
        return 0.0, 0.0
    # Light regularisation: validation sets are small and often separable, where an unregularised
    # fit runs to infinite slope.
    lr = LogisticRegression(C=10.0)
    lr.fit(_logit(raw).reshape(-1, 1), labels)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def fit_calibration(raw: np.ndarray, labels: np.ndarray, families: tuple[str, ...] | list[str]) -> dict:
    """Per-family Platt parameters for ``raw`` (N×F photo scores) and ``labels`` (N×F booleans)."""
    raw, labels = check_score_matrix(raw, labels, families)
    return {"method": "platt", **{f: fit_platt(raw[:, i], labels[:, i]) for i, f in enumerate(families)}}


def fit_level_calibration(
    level_raw: np.ndarray,
    labels: np.ndarray,
    families: tuple[str, ...] | list[str],
    levels: tuple[float, ...] | list[float],
    level_families: tuple[str, ...] | list[str],
    min_photos: int = MIN_LEVEL_PHOTOS,
    held_out_check: bool = True,
) -> dict[str, dict[str, dict[str, float]]]:
    """Per-level Platt parameters ``{family: {level_key: {"a", "b"}}}``: a bundle's ``calibration["levels"]``.

    ``level_raw`` is N×L×F: per photo, pyramid level (``levels``) and family the max tile score of
    that level. Each level of each family in ``level_families`` gets its own Platt fit against the
    photo labels, so each level's max becomes "the chance this photo has the defect, from this
    level". A family is left out (it keeps the plain max) with fewer than ``min_photos`` photos with
    or without the defect, when no level ranks the photos the right way round, or (``held_out_check``)
    when the per-level fit predicts photos it was not fitted on no better than the plain max does
    (:func:`held_out_gain`).
    """
    level_raw = np.asarray(level_raw, dtype=np.float64)
    if level_raw.ndim != 3 or level_raw.shape[1:] != (len(levels), len(families)):
        raise ValueError(
            f"expected per-level scores of shape (photos, {len(levels)} levels, {len(families)} families); "
            f"got {level_raw.shape}"
        )
    _, labels = check_score_matrix(level_raw[:, 0, :], labels, families)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for k, family in enumerate(families):
        positives = int(labels[:, k].sum())
        if family not in level_families or min(positives, len(labels) - positives) < min_photos:
            continue
        fits = _level_fits(level_raw[:, :, k], labels[:, k], levels)
        # A buyer's fine-tune validates on 8-20 photos, 2-8 of them with the defect: there six
        # parameters can fit noise, and on two of three buyer looks the per-level fit lost 0.02-0.03
        # stitching AUROC against the plain max (configs/finetune_classifier.yaml). Keep it only
        # where it predicts held-out validation photos better.
        if fits and (not held_out_check or held_out_gain(level_raw[:, :, k], labels[:, k], levels) > 0):
            out[family] = fits
    return out


def _level_fits(level_raw: np.ndarray, labels: np.ndarray, levels) -> dict[str, dict[str, float]]:
    """One family's per-level Platt parameters from its N×L level maxima; {} when no level ranks the
    photos the right way round (nothing to calibrate)."""
    fits = {level_key(lv): _logistic_fit(level_raw[:, i], labels) for i, lv in enumerate(levels)}
    if all(a <= 0 for a, _ in fits.values()):
        return {}
    # A level whose scores rank the photos backwards says nothing about them: it is left out of the
    # max (its raw scores would outbid the calibrated levels; the base rate would tie photos).
    return {key: {"a": a, "b": b} if a > 0 else dict(LEFT_OUT) for key, (a, b) in fits.items()}


def held_out_gain(level_raw: np.ndarray, labels: np.ndarray, levels) -> float:
    """How much better one family's per-level calibration predicts a validation photo it was not fitted
    on than the plain max over levels does: the mean log-loss per photo of the photo Platt
    probabilities, leaving each photo out in turn (positive: per level predicts better).

    ``level_raw`` is that family's N×L level maxima, ``labels`` its N booleans.
    """
    level_raw = np.asarray(level_raw, dtype=np.float64)[:, :, None]  # one family, as combine_levels takes it
    labels = np.asarray(labels).astype(bool)
    plain = level_raw.max(axis=1)[:, 0]
    gain = 0.0
    for i in range(len(labels)):
        keep = np.arange(len(labels)) != i
        fits = _level_fits(level_raw[keep, :, 0], labels[keep], levels)
        per_level = combine_levels(level_raw, ["family"], levels, {"family": fits})[:, 0]
        for sign, photo in ((1.0, plain), (-1.0, per_level)):
            p = float(apply_platt(photo[i : i + 1], fit_platt(photo[keep], labels[keep]))[0])
            p = min(max(p, 1e-6), 1 - 1e-6)
            gain -= sign * math.log(p if labels[i] else 1 - p)
    return gain / len(labels)


def combine_levels(level_raw: np.ndarray, families, levels, level_calibration: dict | None) -> np.ndarray:
    """N×F photo scores from N×L×F per-level maxima: the max over levels after per-level calibration
    (what :func:`models.photo.score_photo` gives for a bundle with that calibration)."""
    level_raw = np.asarray(level_raw, dtype=np.float64)
    n, n_levels, n_families = level_raw.shape
    flat = level_raw.reshape(n * n_levels, n_families)
    scales = np.tile(np.asarray(levels, dtype=np.float64), n)
    calibrated = level_calibrated(flat, scales, families, level_calibration)
    return calibrated.reshape(n, n_levels, n_families).max(axis=1).astype(np.float64)


def calibrate_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    families: tuple[str, ...] | list[str],
    target_recall: float = 0.95,
    review_recall: float = 0.99,
) -> dict[str, dict[str, float]]:
    """``{family: {"flag": t, "review": t'}}`` on calibrated probabilities (the bundle's ``thresholds``).

    A family without positive validation photos gets the fallback thresholds (see the model card).
    """
    if review_recall < target_recall:
        raise ValueError(f"review_recall ({review_recall}) must be >= target_recall ({target_recall})")
    probs, labels = check_score_matrix(probs, labels, families)
    out: dict[str, dict[str, float]] = {}
    for i, family in enumerate(families):
        flag = threshold_for_recall(probs[:, i], labels[:, i], target_recall)
        review = threshold_for_recall(probs[:, i], labels[:, i], review_recall)
        if math.isnan(flag):
            flag, review = FALLBACK_FLAG, FALLBACK_REVIEW
        out[family] = {"flag": float(flag), "review": float(min(review, flag))}
    return out


def fit_thresholds(
    raw: np.ndarray,
    labels: np.ndarray,
    families: tuple[str, ...] | list[str],
    target_recall: float = 0.95,
    review_recall: float = 0.99,
    *,
    level_raw: np.ndarray | None = None,
    levels: tuple[float, ...] | list[float] = (),
    level_families: tuple[str, ...] | list[str] = (),
    level_min_photos: int = MIN_LEVEL_PHOTOS,
    level_held_out: bool = True,
) -> tuple[dict, dict[str, dict[str, float]]]:
    """Platt calibration and flag/review thresholds fitted on the same photos (what a bundle ships).

    With ``level_families`` (and the N×L×F ``level_raw`` of those photos), those families are first
    calibrated per pyramid level (:func:`fit_level_calibration`), and the photo Platt fit and the
    thresholds are fitted on the max over the calibrated levels; ``calibration["levels"]`` holds them.
    """
    level_calibration = {}
    if level_families and level_raw is not None:
        level_calibration = fit_level_calibration(
            level_raw, labels, families, levels, level_families, level_min_photos, level_held_out
        )
        if level_calibration:
            raw = combine_levels(level_raw, families, levels, level_calibration)
    calibration = fit_calibration(raw, labels, families)
    probs = apply_calibration(raw, calibration, families)  # raw is already the max over calibrated levels
    if level_calibration:
        calibration["levels"] = level_calibration
    return calibration, calibrate_thresholds(probs, labels, families, target_recall, review_recall)


def recipe_fit(settings: Any, families: tuple[str, ...] | list[str]) -> Callable[..., tuple[dict, dict]]:
    """``fit(raw, labels, level_raw=..., levels=...)`` -> (calibration, thresholds) with a recipe's
    calibration settings (:class:`training.config.CalibrationSettings`): what training and
    ``loupe calibrate`` both fit on validation photos."""

    def fit(raw: np.ndarray, labels: np.ndarray, **levels: Any) -> tuple[dict, dict]:
        return fit_thresholds(
            raw, labels, families, settings.target_recall, settings.review_recall,
            level_families=settings.per_level, level_min_photos=settings.per_level_min_photos,
            level_held_out=settings.per_level_held_out, **levels,
        )  # fmt: skip

    return fit


def apply_calibration(
    raw: np.ndarray,
    calibration: dict,
    families: tuple[str, ...] | list[str],
    *,
    level_raw: np.ndarray | None = None,
    levels: tuple[float, ...] | list[float] = (),
) -> np.ndarray:
    """Calibrated probabilities (N×F) for raw scores (N×F), parameters from :func:`fit_thresholds`.

    A calibration with per-level parameters needs the photos' N×L×F ``level_raw`` (the plain max in
    ``raw`` is not what it was fitted on).
    """
    if calibration.get("levels"):
        if level_raw is None:
            raise ValueError("this calibration is per pyramid level: pass the photos' level_raw and levels")
        raw = combine_levels(level_raw, families, levels, calibration["levels"])
    raw = np.asarray(raw, dtype=np.float64)
    return np.stack([apply_platt(raw[:, i], calibration.get(f)) for i, f in enumerate(families)], axis=1)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def check_score_matrix(values: np.ndarray, labels: np.ndarray, families) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels as float64 and bool N×F arrays; a clear error when the shapes disagree."""
    values = np.asarray(values, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    if values.ndim != 2 or values.shape != labels.shape or values.shape[1] != len(families):
        raise ValueError(
            f"expected scores and labels of shape (photos, {len(families)} families); "
            f"got {values.shape} and {labels.shape}"
        )
    return values, labels
