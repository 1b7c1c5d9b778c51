"""Comparing two models on the same photos: paired-bootstrap differences and AUROC intervals."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.compare import (
    Difference,
    auroc_intervals,
    compare_boxes,
    compare_photo_scores,
    interval,
    scored_columns,
)

FAMS = ["stitching", "logo", "label"]


def _photos(n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 3), bool)
    labels[: n // 2, 0] = True  # stitching: half the photos
    labels[::4, 2] = True  # label: a quarter; logo: none (nothing to rank)
    return labels, rng


def test_a_verdict_needs_the_whole_interval_on_one_side():
    assert Difference(0.05, 0.01, 0.09).verdict == "better"
    assert Difference(-0.05, -0.09, -0.01).verdict == "worse"
    assert Difference(0.05, -0.01, 0.09).verdict == "no clear difference"
    d = interval(np.array([0.0, 0.1, 0.2, np.nan]), 0.1)  # rounds without both classes are left out
    assert d.low == pytest.approx(0.005) and d.high == pytest.approx(0.195) and d.diff == 0.1


def test_a_model_against_itself_differs_by_nothing():
    labels, rng = _photos()
    scores = rng.random(labels.shape) + 0.3 * labels
    out = compare_photo_scores(scores, scores, labels, FAMS, rounds=200)
    assert set(out["auroc"]) == {"stitching", "label", "mean"}  # logo has no defect photo
    for d in [*out["auroc"].values(), *out["average_precision"].values()]:
        assert d["diff"] == d["low"] == d["high"] == 0.0 and d["verdict"] == "no clear difference"
        assert d["model"] == d["baseline"]


def test_a_model_that_ranks_every_photo_right_beats_one_that_ranks_them_backwards():
    labels, rng = _photos()
    right = labels + 0.1 * rng.random(labels.shape)
    backwards = -right
    out = compare_photo_scores(right, backwards, labels, FAMS, rounds=200)
    stitching = out["auroc"]["stitching"]
    assert (stitching["model"], stitching["baseline"], stitching["diff"]) == (1.0, 0.0, 1.0)
    assert stitching["low"] == stitching["high"] == 1.0 and stitching["verdict"] == "better"
    assert out["auroc"]["mean"]["verdict"] == "better"
    # and backwards the other way round
    assert (
        compare_photo_scores(backwards, right, labels, FAMS, rounds=50)["auroc"]["label"]["verdict"]
        == "worse"
    )


def test_a_small_noisy_gain_is_no_clear_difference_and_more_photos_make_it_clear():
    labels, rng = _photos(40, seed=3)
    base = rng.random(labels.shape) + 0.8 * labels
    better = base + 0.25 * labels  # every defect photo a little higher: a real but small gain
    few = compare_photo_scores(better, base, labels, FAMS, rounds=200)["auroc"]["stitching"]
    assert few["diff"] > 0 and few["low"] <= 0 and few["verdict"] == "no clear difference"
    many = compare_photo_scores(
        np.tile(better, (10, 1)), np.tile(base, (10, 1)), np.tile(labels, (10, 1)), FAMS, rounds=200
    )["auroc"]["stitching"]
    assert many["diff"] == pytest.approx(few["diff"]) and many["verdict"] == "better"
    assert many["high"] - many["low"] < few["high"] - few["low"]


def test_auroc_intervals_rank_as_sklearn_does_ties_included():
    labels, rng = _photos(30, seed=1)
    scores = np.round(rng.random(labels.shape) + 0.4 * labels, 1)  # rounded: many ties
    one = auroc_intervals(scores, labels, FAMS, rounds=1, seed=7)
    pick = np.random.default_rng(7).integers(0, 30, (1, 30))[0]  # the one round's photos
    for i, family in ((0, "stitching"), (2, "label")):
        expected = roc_auc_score(labels[pick, i], scores[pick, i])
        assert one[family] == pytest.approx((expected, expected))
    assert "logo" not in one
    wide = auroc_intervals(scores, labels, FAMS, rounds=500)
    point = roc_auc_score(labels[:, 0], scores[:, 0])
    assert wide["stitching"][0] < point < wide["stitching"][1]
    separated = auroc_intervals(labels + 0.5 * rng.random(labels.shape), labels, FAMS, rounds=100)
    assert separated["stitching"] == (1.0, 1.0)
    assert scored_columns(labels) == [0, 2]


def _gt():
    # four photos: a stitching box on each of the first two, a label box on the third, the fourth good
    images = [{"id": i, "width": 100, "height": 100} for i in (1, 2, 3, 4)]
    boxes = [(1, 1, [10, 10, 20, 20]), (2, 1, [30, 30, 20, 20]), (3, 3, [50, 50, 30, 10])]
    annotations = [
        {"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
        for k, (i, c, b) in enumerate(boxes)
    ]
    categories = [{"id": k + 1, "name": f} for k, f in enumerate(FAMS)]
    return {"images": images, "annotations": annotations, "categories": categories}


def test_boxes_that_find_every_defect_beat_boxes_that_find_none():
    gt = _gt()
    found = [
        {**{k: a[k] for k in ("image_id", "category_id", "bbox")}, "score": 0.9} for a in gt["annotations"]
    ]
    missed = [{"image_id": 4, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9}]
    out = compare_boxes(found, missed, gt, FAMS, rounds=50)
    assert set(out["map50"]) == {"all", "stitching", "label"}  # no logo box: nothing to rank
    assert out["map50"]["all"]["model"] == pytest.approx(1.0) and out["map50"]["all"]["baseline"] == 0.0
    assert out["map50"]["all"]["verdict"] == "better" and out["photos"] == 4
    same = compare_boxes(found, found, gt, FAMS, rounds=20)["map50"]["stitching"]
    assert same["diff"] == same["low"] == same["high"] == 0.0
