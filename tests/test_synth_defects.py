"""Every defect subtype, forced through the config, changes pixels only inside its ground-truth box and
changes enough of them to be seen; an unreadable label's barcode does not decode."""

from __future__ import annotations

import numpy as np
import pytest
import zxingcpp

from datasets.synth import SynthConfig, plan_photo, render_photo
from datasets.taxonomy import SUBTYPE_FAMILY

SIZE = (1280, 960)
TOL = 6  # grey levels: beyond JPEG-free rounding and the mask's own threshold
BLUR_MARGIN = 3  # px


def _forced_plan(subtype: str, closeup: float = 0.5):
    config = SynthConfig(
        defect_rate=1.0,
        extra_defect_rate=0.0,
        family_mix={SUBTYPE_FAMILY[subtype]: 1.0},
        subtype_mix={subtype: 1.0},
        lookalike_rate=0.0,
        closeup_rate=closeup,
    )
    for i in range(40):
        plan = plan_photo(100, i, config, SIZE)
        for k, d in enumerate(plan.defects):
            if d["subtype"] == subtype:
                return plan, k
    raise AssertionError(f"no plan with {subtype} in 40 photos")


@pytest.mark.parametrize("subtype", sorted(SUBTYPE_FAMILY))
def test_defect_changes_pixels_only_inside_its_box(subtype):
    plan, k = _forced_plan(subtype)
    with_it = render_photo(plan)
    without = render_photo(plan, without={k})
    anns = [a for a in with_it.annotations if a["defect_index"] == k]
    assert len(anns) == 1 and anns[0]["subtype"] == subtype and anns[0]["family"] == SUBTYPE_FAMILY[subtype]
    assert not [a for a in without.annotations if a["defect_index"] == k]
    diff = np.abs(with_it.rgb.astype(np.int16) - without.rgb.astype(np.int16)).max(axis=2)
    changed = diff > TOL
    x, y, w, h = anns[0]["bbox"]
    inside = np.zeros_like(changed)
    inside[max(y - BLUR_MARGIN, 0) : y + h + BLUR_MARGIN, max(x - BLUR_MARGIN, 0) : x + w + BLUR_MARGIN] = (
        True
    )
    assert changed.sum() >= 40, f"{subtype}: only {changed.sum()} pixels changed"
    assert diff.max() >= 30, f"{subtype}: contrast only {diff.max()} grey levels"
    assert not (changed & ~inside).any(), (
        f"{subtype}: {(changed & ~inside).sum()} changed pixels outside the box"
    )
    frac = w * h / (SIZE[0] * SIZE[1])
    assert frac >= 0.001 * 0.95  # the configured floor


def test_smallest_defects_are_near_a_thousandth_of_the_photo():
    fracs = []
    for subtype in ("skipped_stitch", "uneven_stitch_length", "broken_thread"):
        plan, k = _forced_plan(subtype, closeup=1.0)
        ann = next(a for a in render_photo(plan).annotations if a["defect_index"] == k)
        fracs.append(ann["bbox"][2] * ann["bbox"][3] / (SIZE[0] * SIZE[1]))
    assert min(fracs) < 0.004, fracs


def test_unreadable_label_barcode_does_not_decode():
    config = SynthConfig(
        defect_rate=1.0,
        extra_defect_rate=0.0,
        family_mix={"label": 1.0},
        subtype_mix={"unreadable_label": 1.0},
        lookalike_rate=0.0,
        closeup_rate=1.0,
        milestone_mix={"PSI": 1},
        product_mix={"PSI": {"carton": 1, "retail_box": 1}},
    )
    checked = 0
    for i in range(12):
        plan = plan_photo(8, i, config, SIZE)
        hits = [
            d for d in plan.defects if d["subtype"] == "unreadable_label" and plan.parts[d["part"]].get("ean")
        ]
        if not hits:
            continue
        ean = plan.parts[hits[0]["part"]]["ean"]
        k = plan.defects.index(hits[0])
        damaged = render_photo(plan)
        good = render_photo(plan, without={k})
        assert ean not in {r.text for r in zxingcpp.read_barcodes(damaged.rgb)}
        assert ean not in {b["ean13"] for b in damaged.barcodes}
        assert ean in {r.text for r in zxingcpp.read_barcodes(good.rgb)}  # the same label, undamaged, reads
        checked += 1
        if checked == 2:
            break
    assert checked >= 1
