"""Evaluation metrics against cases computed by hand."""

import math

import numpy as np
import pytest

from training.calibrate import calibrate_thresholds, fit_calibration, threshold_for_recall
from training.evaluate import (
    PhotoRun,
    calibration_halves,
    confusion_by_family,
    cross_fitted,
    detection_map,
    family_metrics,
    flat_metrics,
    format_report,
    group_auroc,
    group_map,
    photo_report,
    photo_rows,
    photo_rows_csv,
    subtype_recall,
    triage_outcome,
)

FAMS = ("stitching", "logo", "label")


def _case():
    # stitching: ranked 0.9+ 0.8- 0.7+ 0.6+ 0.5- 0.4-  -> AUROC 7/9, AP (1 + 2/3 + 3/4)/3 = 29/36
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    y = np.array([1, 0, 1, 1, 0, 0], bool)
    # logo: no defect anywhere -> AUROC/AP/recall undefined, false-flag rate 1/6 at 0.5
    logo_s = np.array([0.1, 0.2, 0.6, 0.3, 0.2, 0.1])
    # label: perfectly separated
    label_s = np.array([0.95, 0.05, 0.9, 0.1, 0.2, 0.85])
    label_y = np.array([1, 0, 1, 0, 0, 1], bool)
    scores = np.stack([s, logo_s, label_s], axis=1)
    labels = np.stack([y, np.zeros(6, bool), label_y], axis=1)
    return scores, labels


def test_family_metrics_match_hand_computed_values():
    scores, labels = _case()
    m = family_metrics(scores, labels, {"stitching": 0.65, "logo": 0.5, "label": 0.5}, FAMS)
    st = m["stitching"]
    assert st.auroc == pytest.approx(7 / 9)
    assert st.average_precision == pytest.approx(29 / 36)
    # flagged at 0.65: 0.9+, 0.8-, 0.7+  -> recall 2/3, false flags 1 of 3 good photos
    assert st.recall == pytest.approx(2 / 3)
    assert st.false_flag_rate == pytest.approx(1 / 3)
    assert (st.n_positive, st.n_negative, st.flagged) == (3, 3, 3)
    lg = m["logo"]
    assert math.isnan(lg.auroc) and math.isnan(lg.average_precision) and math.isnan(lg.recall)
    assert lg.false_flag_rate == pytest.approx(1 / 6)
    lb = m["label"]
    assert lb.auroc == 1.0 and lb.average_precision == 1.0 and lb.recall == 1.0 and lb.false_flag_rate == 0.0


def test_the_report_gives_each_rankable_familys_auroc_with_its_interval():
    scores, labels = _case()
    report = photo_report(PhotoRun(list(FAMS), list(range(6)), scores, labels), {}, {})
    intervals = report["auroc_interval"]
    assert set(intervals) == {"stitching", "label"}  # logo has no defect photo to rank
    low, high = intervals["stitching"]
    assert low < 7 / 9 < high and low >= 0.0 and high == 1.0  # six photos: a wide interval
    assert intervals["label"] == (1.0, 1.0)  # perfectly separated in every resample
    assert report["flat"]["val/stitching/auroc_low"] == low and "val/logo/auroc_low" not in report["flat"]
    stitching_row = [line for line in format_report(report).splitlines() if line.startswith("stitching")]
    assert stitching_row[0].split()[3:5] == ["0.778", f"{low:.3f}-{high:.3f}"]


def test_flat_metrics_drop_nans_and_average_defined_families():
    scores, labels = _case()
    flat = flat_metrics(family_metrics(scores, labels, 0.5, FAMS))
    assert "val/logo/auroc" not in flat
    assert flat["val/mean_auroc"] == pytest.approx((7 / 9 + 1.0) / 2)


def test_family_metrics_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="families"):
        family_metrics(np.zeros((4, 2)), np.zeros((4, 2)), 0.5, FAMS)


def test_subtype_recall_by_hand():
    families = ["stitching", "logo", "label"]
    probs = np.array([[0.9, 0, 0], [0.2, 0, 0], [0.7, 0.1, 0], [0.1, 0.8, 0]])
    run = PhotoRun(
        families=families,
        image_ids=[1, 2, 3, 4],
        raw=probs,
        labels=probs > 0.5,
        subtypes=[["skipped_stitch"], ["skipped_stitch"], ["open_seam", "wrong_colour"], []],
    )
    out = subtype_recall(probs, run, {"stitching": 0.5, "logo": 0.5, "label": 0.5})
    assert out["skipped_stitch"] == {
        "family": "stitching", "photos": 2, "recall": 0.5, "median_score": 0.55, "auroc": 1.0
    }  # fmt: skip
    assert out["open_seam"]["recall"] == 1.0 and out["wrong_colour"]["recall"] == 0.0
    assert set(out) == {"skipped_stitch", "open_seam", "wrong_colour"}


def test_subtype_auroc_ranks_its_photos_against_the_photos_without_that_familys_defect():
    families = ["stitching", "logo", "label"]
    # Stitching: two uneven-stitch photos (0.6, 0.3), a puckered one (0.9), three clean ones.
    stitching = np.array([0.6, 0.3, 0.9, 0.5, 0.1, 0.4])
    probs = np.c_[stitching, np.zeros(6), np.zeros(6)]
    subtypes = [["uneven_stitch_length"], ["uneven_stitch_length"], ["puckering"], [], [], []]
    labels = np.c_[np.array([1, 1, 1, 0, 0, 0], bool), np.zeros((6, 2), bool)]
    run = PhotoRun(families, list(range(6)), probs, labels, subtypes=subtypes)
    out = subtype_recall(probs, run, {"stitching": 0.5, "logo": 0.5, "label": 0.5})
    # 0.6 outranks all three clean photos, 0.3 only 0.1: 4 of 6 pairs; the puckered photo is no negative.
    assert out["uneven_stitch_length"]["auroc"] == pytest.approx(4 / 6)
    assert out["puckering"]["auroc"] == 1.0
    assert "auroc_by_shot" not in out["puckering"]  # the photos do not say their framing
    # Within each framing: the subtype's photos of that framing against its clean ones.
    shots = ["whole", "closeup", "whole", "whole", "closeup", "closeup"]
    framed = PhotoRun(
        families, list(range(6)), probs, labels, subtypes=subtypes, groups=[{"shot": s} for s in shots]
    )
    out = subtype_recall(probs, framed, {"stitching": 0.5, "logo": 0.5, "label": 0.5})
    # whole: 0.6 over the clean 0.5; close-ups: 0.3 over 0.1, under 0.4
    assert out["uneven_stitch_length"]["auroc_by_shot"] == {"whole": 1.0, "closeup": 0.5}
    assert out["uneven_stitch_length"]["auroc"] == pytest.approx(4 / 6)
    assert out["puckering"]["auroc_by_shot"]["whole"] == 1.0
    assert math.isnan(out["puckering"]["auroc_by_shot"]["closeup"])  # no puckered close-up
    table = format_report(photo_report(framed, {}, {f: {"flag": 0.5} for f in families}))
    header = next(line for line in table.splitlines() if line.startswith("subtype"))
    assert header.split()[-6:] == ["closeup", "whole", "(AUROC", "within", "each", "shot)"]
    row = next(line for line in table.splitlines() if line.startswith("puckering"))
    assert row.split()[-2:] == ["n/a", "1.000"]
    # A family without clean photos has no AUROC.
    labels[:, 0] = True
    assert math.isnan(
        subtype_recall(probs, run, {"stitching": 0.5, "logo": 0.5, "label": 0.5})["puckering"]["auroc"]
    )


def test_the_photo_table_names_each_photos_misses_and_false_flags():
    import csv
    import io

    scores, labels = _case()  # stitching 0.9+ 0.8- 0.7+ 0.6+ 0.5- 0.4-
    # label 0.95+ 0.05- 0.9+ 0.1- 0.2- 0.85+
    names = [f"IMG_{i}.jpg" for i in range(6)]
    subtypes = [["skipped_stitch", "torn_label"], [], ["puckering", "missing_label"]]
    subtypes += [["uneven_stitch_length"], [], []]
    groups = [{"shot": "whole", "product": "bag"}] * 3 + [{"shot": "closeup"}] * 3
    run = PhotoRun(list(FAMS), list(range(6)), scores, labels, subtypes=subtypes, groups=groups, names=names)
    # stitching flags at 0.65: photo 1 (0.8) falsely, photo 3 (0.6) missed; label at 0.88: photo 5 missed
    flag = {"stitching": 0.65, "logo": 0.5, "label": 0.88}
    rows = photo_rows(run, scores, flag)
    assert [r["photo"] for r in rows] == names
    assert rows[0] | {} == {
        "photo": "IMG_0.jpg", "shot": "whole", "product": "bag", "defects": "stitching;label",
        "subtypes": "skipped_stitch;torn_label", "stitching": 0.9, "logo": 0.1, "label": 0.95,
        "flagged": "stitching;label", "missed": "", "false_flags": "",
    }  # fmt: skip
    assert (rows[1]["flagged"], rows[1]["false_flags"], rows[1]["missed"]) == ("stitching", "stitching", "")
    assert (rows[2]["false_flags"], rows[2]["missed"]) == ("logo", "")  # logo 0.6 on a photo without one
    assert (rows[3]["missed"], rows[3]["product"]) == ("stitching", "")
    assert (rows[5]["flagged"], rows[5]["missed"]) == ("", "label")
    # per-photo thresholds (cross-fitted halves) apply photo by photo
    rows = photo_rows(run, scores, {**flag, "stitching": np.array([0.95, 0.5, 0.5, 0.5, 0.5, 0.5])})
    assert (rows[0]["flagged"], rows[0]["missed"]) == ("label", "stitching")  # 0.9 under its own 0.95
    assert rows[3]["missed"] == "" and rows[3]["flagged"] == "stitching"  # 0.6 over its own 0.5
    # The CSV reads back with one row per photo; the report carries the table and prints the misses.
    back = list(csv.DictReader(io.StringIO(photo_rows_csv(photo_rows(run, scores, flag)))))
    assert len(back) == 6 and back[3]["missed"] == "stitching" and float(back[3]["stitching"]) == 0.6
    report = photo_report(run, {}, {f: {"flag": t} for f, t in flag.items()})
    assert report["photo_rows"] == photo_rows(run, scores, flag)
    text = format_report(report)
    lines = text.splitlines()
    at = lines.index("missed defects (2; lowest score first, up to 12):")
    # lowest score first, each with the subtypes of the missed family only
    assert lines[at + 1].split() == ["IMG_3.jpg", "stitching", "0.600", "uneven_stitch_length", "closeup"]
    assert lines[at + 2].split() == ["IMG_5.jpg", "label", "0.850", "-", "closeup"]
    assert "missed defects" not in format_report(photo_report(run, {}, {f: {"flag": 0.0} for f in FAMS}))


def test_group_auroc_ranks_within_each_framing_and_product():
    scores, labels = _case()  # stitching ranked 0.9+ 0.8- 0.7+ 0.6+ 0.5- 0.4-
    groups = [
        {"shot": "whole", "product": "bag"},
        {"shot": "whole", "product": "bag"},
        {"shot": "closeup", "product": "bag"},
        {"shot": "whole"},  # an imported photo may say nothing of its product
        {"shot": "closeup", "product": "bag"},
        {"shot": "closeup", "product": "bag"},
    ]
    run = PhotoRun(list(FAMS), list(range(6)), scores, labels, groups=groups)
    out = group_auroc(scores, run)
    assert set(out) == {"shot"}  # one product value splits nothing
    whole, closeup = out["shot"]["whole"], out["shot"]["closeup"]
    # whole: 0.9+ 0.8- 0.6+ -> of 2 pairs, 0.9 > 0.8 wins and 0.6 < 0.8 loses; closeup: 0.7+ over 0.5-, 0.4-
    assert (whole["photos"], whole["positives"]["stitching"]) == (3, 2)
    assert whole["auroc"]["stitching"] == pytest.approx(1 / 2)
    assert closeup["auroc"]["stitching"] == 1.0
    assert math.isnan(whole["auroc"]["logo"])  # no logo defect: no AUROC
    report = photo_report(run, {}, {f: {"flag": 0.5} for f in FAMS})
    assert report["flat"]["val/shot/whole/stitching/auroc"] == pytest.approx(1 / 2)
    assert "val/shot/whole/logo/auroc" not in report["flat"]
    text = format_report(report)
    header, closeup_row, whole_row = text.splitlines()[-3:]
    assert header.startswith("by shot") and closeup_row.split()[:3] == ["closeup", "3", "1.000"]
    assert whole_row.split()[:4] == ["whole", "3", "0.500", "(2)"]
    # photos without those fields (an imported COCO file) leave the breakdown out
    assert group_auroc(scores, PhotoRun(list(FAMS), list(range(6)), scores, labels)) == {}


def test_cross_fitting_judges_each_half_at_what_the_other_half_chose():
    from training.calibrate import apply_calibration, fit_thresholds

    ids = [7, 3, 9, 1, 5, 2, 8, 4]
    assert [sorted(ids[i] for i in half) for half in calibration_halves(ids)] == [[1, 3, 5, 8], [2, 4, 7, 9]]
    # a photo scored twice (two splits of a bag validated on it) is judged in one half only
    twice = [*ids, 3, 4]
    assert [sorted(twice[i] for i in half) for half in calibration_halves(twice)] == [
        [1, 3, 3, 5, 8],
        [2, 4, 4, 7, 9],
    ]
    raw = np.array([[0.9], [0.2], [0.8], [0.3], [0.6], [0.7], [0.1], [0.4]])
    labels = np.array([[1], [0], [1], [0], [1], [1], [0], [0]], bool)
    run = PhotoRun(["stitching"], ids, raw, labels, subtypes=[["skipped_stitch"]] * 8)

    def fit(r, y, **levels):
        return fit_thresholds(r, y, ["stitching"], 1.0, 1.0, **levels)

    probs, flags = cross_fitted(run, fit)
    for fit_rows, eval_rows in (calibration_halves(ids), calibration_halves(ids)[::-1]):
        cal, thr = fit(raw[fit_rows], labels[fit_rows])
        np.testing.assert_allclose(probs[eval_rows], apply_calibration(raw[eval_rows], cal, ["stitching"]))
        assert np.all(flags["stitching"][eval_rows] == thr["stitching"]["flag"])
    # the report flags each photo at its own fold's threshold, not at the shipped one
    report = photo_report(run, {}, {"stitching": {"flag": 0.99}}, cross_fit=(probs, flags))
    expected = probs[:, 0] >= flags["stitching"]
    assert report["per_family"]["stitching"]["flagged"] == int(expected.sum())
    assert report["per_family"]["stitching"]["recall"] == expected[labels[:, 0]].mean()
    assert report["per_subtype"]["skipped_stitch"]["recall"] == expected.mean()


def test_triage_outcome_counts_photos_flagged_for_any_family():
    scores, labels = _case()
    flag = {"stitching": 0.65, "logo": 0.5, "label": 0.5}
    # defective photos 0, 2, 3, 5; photo 3 (stitching 0.6) reaches no threshold; good photo 1 does (0.8)
    t = triage_outcome(scores, labels, flag, FAMS, review={"stitching": 0.55, "logo": 0.5, "label": 0.5})
    assert (t["defective_photos"], t["good_photos"]) == (4, 2)
    assert t["defective_flagged"] == pytest.approx(3 / 4) and t["good_flagged"] == pytest.approx(1 / 2)
    assert t["good_passed"] == pytest.approx(1 / 2)  # photo 4: 0.5 / 0.2 / 0.2, under every review threshold
    assert t["defective_passed"] == 0.0  # photo 3 reaches the stitching review threshold
    lower = triage_outcome(scores, labels, flag, FAMS, review={"stitching": 0.45, "logo": 0.5, "label": 0.5})
    assert lower["good_passed"] == 0.0
    at_flag = triage_outcome(scores, labels, flag, FAMS, review=flag)
    assert at_flag["defective_passed"] == pytest.approx(1 / 4)
    assert at_flag["good_passed"] == pytest.approx(1 / 2)
    assert "good_passed" not in triage_outcome(scores, labels, flag, FAMS)
    report = photo_report(PhotoRun(list(FAMS), list(range(6)), scores, labels), {}, {
        f: {"flag": v, "review": v} for f, v in flag.items()
    })  # fmt: skip
    assert report["triage"]["good_passed"] == 1 / 2 and report["flat"]["val/triage/good_flagged"] == 1 / 2


def test_confusion_counts():
    scores, labels = _case()
    c = confusion_by_family(scores, labels, {"stitching": 0.65, "logo": 0.5, "label": 0.5}, FAMS)
    assert c["stitching"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 2}
    assert c["logo"] == {"tp": 0, "fp": 1, "fn": 0, "tn": 5}


# ------------------------------------------------------------------ calibration


def test_threshold_hits_target_recall_and_is_the_highest_that_does():
    rng = np.random.default_rng(0)
    labels = rng.random(400) < 0.3
    scores = np.where(labels, rng.beta(5, 2, 400), rng.beta(2, 5, 400))
    for target in (0.8, 0.95, 0.99, 1.0):
        t = threshold_for_recall(scores, labels, target)
        recall = (scores[labels] >= t).mean()
        assert recall >= target
        # any higher threshold (the next positive score up) loses the target
        higher = np.sort(scores[labels][scores[labels] > t])
        if higher.size:
            assert (scores[labels] >= higher[0]).mean() < target


def test_threshold_exact_small_case():
    # 20 positives 0.01..0.20: recall 0.95 keeps 19 -> threshold 0.02
    scores = np.arange(1, 21) / 100
    assert threshold_for_recall(scores, np.ones(20, bool), 0.95) == pytest.approx(0.02)
    assert math.isnan(threshold_for_recall(scores, np.zeros(20, bool), 0.95))
    with pytest.raises(ValueError, match="target_recall"):
        threshold_for_recall(scores, np.ones(20, bool), 1.5)


def test_platt_calibration_is_monotonic_and_thresholds_keep_recall():
    rng = np.random.default_rng(1)
    n = 300
    labels = np.stack([rng.random(n) < p for p in (0.3, 0.2, 0.0)], axis=1)
    raw = np.where(labels, rng.beta(6, 2, (n, 3)), rng.beta(2, 4, (n, 3)))
    cal = fit_calibration(raw, labels, FAMS)
    assert cal["label"] == {"a": 1.0, "b": 0.0}  # one class only: identity
    from training.calibrate import apply_calibration

    probs = apply_calibration(raw, cal, FAMS)
    order = np.argsort(raw[:, 0])
    assert np.all(np.diff(probs[order, 0]) >= -1e-12)
    th = calibrate_thresholds(probs, labels, FAMS, target_recall=0.95, review_recall=0.99)
    for i, f in enumerate(FAMS[:2]):
        assert (probs[labels[:, i], i] >= th[f]["flag"]).mean() >= 0.95
        assert (probs[labels[:, i], i] >= th[f]["review"]).mean() >= 0.99
        assert th[f]["review"] <= th[f]["flag"]
    assert th["label"] == {"flag": 0.5, "review": 0.25}  # no positives: fallback


# ------------------------------------------------------------------ mAP


def _gt():
    return {
        "images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 40], "area": 2000, "iscrowd": 0},
            {
                "id": 2,
                "image_id": 2,
                "category_id": 1,
                "bbox": [100, 100, 60, 30],
                "area": 1800,
                "iscrowd": 0,
            },
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [20, 120, 40, 40], "area": 1600, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "stitching"}, {"id": 2, "name": "logo"}, {"id": 3, "name": "label"}],
    }


def test_map_perfect_detections_is_one():
    gt = _gt()
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
    ]
    m = detection_map(gt, dets)
    assert m.map50 == pytest.approx(1.0) and m.map50_95 == pytest.approx(1.0)
    assert m.per_family["stitching"]["map50"] == pytest.approx(1.0)
    assert math.isnan(m.per_family["logo"]["map50"])  # no ground truth for logo


def test_map_one_of_two_missed_is_known_value():
    gt = _gt()
    gt["annotations"] = gt["annotations"][:2]  # two stitching boxes
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 40], "score": 0.9}]
    m = detection_map(gt, dets)
    # recall reaches 0.5 at precision 1: 51 of COCO's 101 recall points score 1, the rest 0
    assert m.map50 == pytest.approx(51 / 101)
    assert m.map50_95 == pytest.approx(51 / 101)


def test_group_map_scores_each_framing_on_its_own_photos():
    gt = _gt()  # photo 1: one stitching box; photo 2: a stitching and a label box
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 40], "score": 0.9}]  # photo 2 missed
    labels = np.zeros((2, 3), bool)
    groups = [{"shot": "closeup"}, {"shot": "whole"}]
    run = PhotoRun(list(FAMS), [1, 2], np.zeros((2, 3)), labels, detections=dets, groups=groups)
    out = group_map(gt, dets, run)["shot"]
    assert out["closeup"] == {"map50": pytest.approx(1.0), "map50_95": pytest.approx(1.0), "boxes": 1}
    assert out["whole"]["map50"] == 0.0 and out["whole"]["boxes"] == 2
    # the PO as a whole: stitching 1 of 2 boxes (51 of 101 recall points), label none
    assert detection_map(gt, dets).map50 == pytest.approx(51 / 101 / 2)
    report = photo_report(run, {}, {f: {"flag": 0.5} for f in FAMS}, gt)
    assert report["flat"]["val/shot/whole/map50"] == 0.0
    assert "    closeup            mAP@0.5 1.000" in format_report(report)


def test_map_no_detections_is_zero():
    m = detection_map(_gt(), [])
    assert m.map50 == 0.0 and m.per_family["label"]["map50"] == 0.0


def test_per_level_calibration_stops_an_inflated_level_from_winning_the_max():
    from training.calibrate import (
        LEFT_OUT,
        apply_calibration,
        combine_levels,
        fit_level_calibration,
        fit_thresholds,
        held_out_gain,
    )

    # 40 photos, levels 0.25 / 0.5 / 1.0. Stitching: the coarse levels separate the photos; the finest
    # scores every photo 0.85-0.99, barely higher with the defect (a fine-tune that inflated it).
    rng = np.random.default_rng(0)
    n, levels = 40, (0.25, 0.5, 1.0)
    labels = np.zeros((n, 3), bool)
    labels[::2, 0] = True  # stitching on half the photos
    labels[:1, 2] = True  # label on one: too few to fit levels on
    level_raw = rng.uniform(0.05, 0.3, size=(n, 3, 3))
    for lv in (0, 1):
        level_raw[labels[:, 0], lv, 0] = rng.uniform(0.35, 0.8, size=labels[:, 0].sum())
    level_raw[:, 2, 0] = rng.uniform(0.85, 0.97, size=n) + 0.02 * labels[:, 0]
    plain = level_raw.max(axis=1)

    fitted = fit_level_calibration(level_raw, labels, FAMS, levels, ["stitching", "label"])
    assert held_out_gain(level_raw[:, :, 0], labels[:, 0], levels) > 0  # kept by the held-out check
    assert set(fitted) == {"stitching"} and set(fitted["stitching"]) == {"0.25", "0.5", "1"}
    combined = combine_levels(level_raw, FAMS, levels, fitted)
    np.testing.assert_array_equal(combined[:, 1:], plain[:, 1:])  # families without levels: the plain max

    def auroc(scores):
        return family_metrics(scores, labels, 0.5, FAMS)["stitching"].auroc

    assert auroc(plain) < 0.8 and auroc(combined) == 1.0
    # A level that ranks the photos backwards is left out of the max; the others still decide.
    backwards = level_raw.copy()
    backwards[:, 1, 0] = 1 - backwards[:, 1, 0]
    refit = fit_level_calibration(backwards, labels, FAMS, levels, ["stitching"])
    assert refit["stitching"]["0.5"] == LEFT_OUT and refit["stitching"]["0.25"]["a"] > 0
    assert auroc(combine_levels(backwards, FAMS, levels, refit)) == 1.0

    # What a bundle ships: the photo Platt fit and thresholds on top of the combined levels.
    calibration, thresholds = fit_thresholds(
        plain, labels, FAMS, 0.95, 0.99, level_raw=level_raw, levels=levels, level_families=["stitching"]
    )  # fmt: skip
    assert calibration["levels"] == fitted
    probs = apply_calibration(plain, calibration, FAMS, level_raw=level_raw, levels=levels)
    assert auroc(probs) == 1.0 and np.mean(probs[labels[:, 0], 0] >= thresholds["stitching"]["flag"]) >= 0.95
    with pytest.raises(ValueError, match="per pyramid level"):
        apply_calibration(plain, calibration, FAMS)


def test_per_level_calibration_is_kept_only_where_it_predicts_held_out_photos_better():
    from training.calibrate import fit_level_calibration, fit_thresholds, held_out_gain

    # A buyer's validation photos: 15, three with a stitching defect. Every level carries the same
    # noisy evidence (positives a little higher): six per-level parameters can only fit the noise.
    rng = np.random.default_rng(0)
    n, levels = 15, (0.25, 0.5, 1.0)
    labels = np.zeros((n, 3), bool)
    labels[:3, 0] = True
    base = rng.uniform(0.1, 0.6, size=n) + 0.25 * labels[:, 0]
    level_raw = np.clip(base[:, None, None] + rng.normal(0, 0.12, size=(n, 3, 3)), 0.01, 0.99)

    unchecked = fit_level_calibration(level_raw, labels, FAMS, levels, ["stitching"], held_out_check=False)
    assert set(unchecked) == {"stitching"}  # enough photos each way, and the levels rank them right
    assert held_out_gain(level_raw[:, :, 0], labels[:, 0], levels) < 0
    assert fit_level_calibration(level_raw, labels, FAMS, levels, ["stitching"]) == {}
    calibration, _ = fit_thresholds(
        level_raw.max(axis=1), labels, FAMS, level_raw=level_raw, levels=levels, level_families=["stitching"]
    )  # fmt: skip
    assert "levels" not in calibration  # the plain max over tiles, Platt-fitted as without per_level

    # Where one level is inflated and the others separate the photos (the test above), per level
    # predicts the left-out photo better, and the fit is kept.
    inflated = level_raw.copy()
    inflated[:, 2, 0] = rng.uniform(0.85, 0.97, size=n)
    inflated[labels[:, 0], :2, 0] += 0.3
    assert held_out_gain(inflated[:, :, 0], labels[:, 0], levels) > 0
    assert set(fit_level_calibration(inflated, labels, FAMS, levels, ["stitching"])) == {"stitching"}
