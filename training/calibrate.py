"""Per-family threshold calibration and Platt scaling, fitted on validation photos.

A photo's raw family score is the max over its tiles, which is not a probability; Platt scaling
(a 1-D logistic regression on the logit of the raw score) turns it into one. Thresholds are then
picked on the calibrated probabilities: "flag" is the highest threshold whose validation recall is
still ≥ the target (a missed defect costs more than a second look), "review" a lower one at a
stricter recall. Platt scaling is monotonic, so the thresholds keep their recall either way.
"""

from __future__ import annotations

import math

import numpy as np

from models.photo import apply_platt

# Where a family has no positive validation photos we cannot measure recall; flag on a coin toss
# rather than pretend, and say so in the model card.
FALLBACK_FLAG = 0.5
FALLBACK_REVIEW = 0.25


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

    With only one class present (nothing to separate) returns the identity ``a=1, b=0``.
    """
    from sklearn.linear_model import LogisticRegression

    raw = np.asarray(raw, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(int).ravel()
    if len(np.unique(labels)) < 2:
        return {"a": 1.0, "b": 0.0}
    x = _logit(raw).reshape(-1, 1)
    # Light regularisation: validation sets are small and often separable, where an unregularised
    # fit runs to infinite slope.
    lr = LogisticRegression(C=10.0)
    lr.fit(x, labels)
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if a <= 0:  # a score anti-correlated with the label on validation: keep ranking, refuse to flip it
        return {"a": 1.0, "b": 0.0}
    return {"a": a, "b": b}


def fit_calibration(raw: np.ndarray, labels: np.ndarray, families: tuple[str, ...] | list[str]) -> dict:
    """Per-family Platt parameters for ``raw`` (N×F photo scores) and ``labels`` (N×F booleans)."""
    raw, labels = check_score_matrix(raw, labels, families)
    return {"method": "platt", **{f: fit_platt(raw[:, i], labels[:, i]) for i, f in enumerate(families)}}


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
) -> tuple[dict, dict[str, dict[str, float]]]:
    """Platt calibration and flag/review thresholds fitted on the same photos (what a bundle ships)."""
    calibration = fit_calibration(raw, labels, families)
    probs = apply_calibration(raw, calibration, families)
    return calibration, calibrate_thresholds(probs, labels, families, target_recall, review_recall)


def apply_calibration(
    raw: np.ndarray, calibration: dict, families: tuple[str, ...] | list[str]
) -> np.ndarray:
    """Calibrated probabilities (N×F) for raw scores (N×F), parameters from :func:`fit_calibration`."""
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
