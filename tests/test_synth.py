"""The synthetic PO generator: determinism, the dataset contract, sizes, barcodes, the command."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import zxingcpp

from configs import ConfigError
from datasets.synth import SynthConfig, generate_po, load_synth_config, plan_photo, render_photo
from datasets.synth.barcode import check_digit, make_ean13, modules
from datasets.synth.textures import material
from datasets.taxonomy import CATEGORY_IDS, FAMILIES, SUBTYPES, coco_categories

SIZE = (1280, 960)


@pytest.fixture(scope="module")
def po(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("po") / "a"
    generate_po(out, 6, seed=11, size=SIZE, workers=2)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "images").glob("*.jpg"))}


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(po, tmp_path):
    again = tmp_path / "b"
    generate_po(again, 6, seed=11, size=SIZE, workers=1)
    assert _files(again) == _files(po)
    assert (again / "annotations.json").read_bytes() == (po / "annotations.json").read_bytes()


def test_different_seed_gives_different_photos(po, tmp_path):
    other = tmp_path / "c"
    generate_po(other, 2, seed=12, size=SIZE, workers=1)
    a, b = _files(po), _files(other)
    first_a, second_a = list(a.values())[:2]
    first_b, second_b = list(b.values())[:2]
    assert first_a != first_b
    assert second_a != second_b


def test_annotations_follow_the_dataset_contract(po):
    coco = json.loads((po / "annotations.json").read_text())
    assert coco["categories"] == coco_categories()
    assert len(coco["images"]) == 6
    ids = {im["id"] for im in coco["images"]}
    assert len(ids) == 6
    anns_by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        assert a["image_id"] in ids
        anns_by_image.setdefault(a["image_id"], []).append(a)
        assert a["family"] in FAMILIES
        assert a["subtype"] in SUBTYPES[a["family"]]
        assert a["category_id"] == CATEGORY_IDS[a["family"]]
        assert a["iscrowd"] == 0 and a["area"] > 0
        assert a["segmentation"] and all(len(poly) >= 6 for poly in a["segmentation"])
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    for im in coco["images"]:
        path = po / im["file_name"]
        assert path.exists() and im["file_name"].startswith("images/")
        photo = cv2.imread(str(path))
        assert photo.shape[:2] == (im["height"], im["width"]) == (SIZE[1], SIZE[0])  # --size honoured
        for key in ("scene", "product", "milestone", "shot", "px_per_mm", "barcodes"):
            assert key in im
        assert im["shot"] in ("whole", "closeup")
        families = {a["family"] for a in anns_by_image.get(im["id"], [])}
        assert set(im["labels"]) == families
        for a in anns_by_image.get(im["id"], []):
            x, y, w, h = a["bbox"]
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= im["width"] and y + h <= im["height"]
    summary = json.loads((po / "summary.json").read_text())
    assert summary["photos"] == 6
    assert summary["defects"] == len(coco["annotations"])
    assert summary["good_photos"] == sum(1 for im in coco["images"] if not im["labels"])


def test_sizes_come_from_the_config_mix_without_a_size():
    config = SynthConfig(size_mix=[{"size": "1600x1200", "weight": 1.0}], portrait_rate=0.0)
    plans = [plan_photo(3, i, config, None) for i in range(4)]
    assert {(p.width, p.height) for p in plans} == {(1600, 1200)}
    assert plan_photo(3, 0, config, (1280, 960)).width == 1280


def test_thread_scale_is_true_to_millimetres():
    config = SynthConfig(closeup_rate=1.0, defect_rate=0.0)
    for i in range(6):
        plan = plan_photo(5, i, config, (2000, 1500))
        assert 2000 / 200 <= plan.ppm <= 2000 / 100  # a close-up covers 10-20 cm
        for part in plan.parts:
            if part["kind"] == "seam" and part["thick"] > 0.3:
                assert 2.0 <= part["stitch"] <= 4.0 and 0.25 <= part["thick"] <= 0.5
    whole = plan_photo(
        5,
        0,
        SynthConfig(closeup_rate=0.0, milestone_mix={"DUPRO": 1}, product_mix={"DUPRO": {"tshirt": 1}}),
        (2000, 1500),
    )
    assert 500 <= 2000 / whole.ppm <= 800  # a whole garment: 50-80 cm across


def test_jersey_is_a_mesh_product_that_no_default_mix_shoots():
    # bench_finetune's new product: the default recipe must never have seen it.
    assert all("jersey" not in mix for mix in load_synth_config().product_mix.values())
    config = SynthConfig(product_mix={m: {"jersey": 1} for m in ("IPC", "DUPRO", "PSI", "CLI")})
    plans = [plan_photo(8, i, config, (1280, 960)) for i in range(8)]
    assert {p.product for p in plans} == {"jersey"}
    assert {r["material"] for p in plans for r in p.regions} == {"mesh"}


def test_a_style_seed_gives_every_photo_of_the_po_one_colourway_and_logo_artwork():
    mix = {m: {"jersey": 1} for m in ("IPC", "DUPRO", "PSI", "CLI")}
    artwork = ("brand", "emblem", "font", "style", "colours")

    def looks(config: SynthConfig) -> tuple[set, set]:
        plans = [plan_photo(8, i, config, (1280, 960)) for i in range(24)]
        logos = [p for plan in plans for p in plan.parts if p["kind"] == "logo"]
        garments = {tuple(r["colour"]) for plan in plans for r in plan.regions if r["material"] == "mesh"}
        return {tuple(str(lg[k]) for k in artwork) for lg in logos}, garments

    logos, garments = looks(SynthConfig(product_mix=mix, style_seed=11))
    assert len(logos) == 1 and len(garments) == 1  # one team's jersey across the PO
    other, garments = looks(SynthConfig(product_mix=mix))
    assert len(other) > 5 and len(garments) > 5  # without it each photo draws its own
    # a wrong colour is wrong against the PO's artwork: inks other than the style's
    config = SynthConfig(
        product_mix=mix, style_seed=11, family_mix={"logo": 1.0}, subtype_mix={"wrong_colour": 1.0}
    )
    plans = [plan_photo(9, i, config, (1280, 960)) for i in range(12)]
    wrong = [(d, p.parts[d["part"]]) for p in plans for d in p.defects if d["subtype"] == "wrong_colour"]
    (style,) = logos
    assert wrong and all(str(part["colours"]) == style[-1] for _, part in wrong)
    assert all(d["colours"] != part["colours"] for d, part in wrong)


def test_a_distressed_finish_wears_the_print_and_changes_nothing_else():
    # bench_finetune's vintage look: an approved finish, so no new annotation and no other draw moves.
    assert load_synth_config().distressed_print == 0  # the default recipe's data never has it
    mix = {m: {"tshirt": 1} for m in ("IPC", "DUPRO", "PSI", "CLI")}
    clean = SynthConfig(product_mix=mix, style_seed=12, closeup_rate=0.0)
    worn = clean.model_copy(update={"distressed_print": 1.0})
    plan = plan_photo(8, 0, clean, (1280, 960))
    plan_worn = plan_photo(8, 0, worn, (1280, 960))
    logos = [p for p in plan_worn.parts if p["kind"] == "logo" and p["style"] == "print"]
    assert logos and all(p["finish"] == "distressed" for p in logos)
    assert all("finish" not in p for p in plan.parts)  # the default draws nothing for it
    for p in plan_worn.parts:
        p.pop("finish", None)
    assert plan_worn == plan
    # a one-style PO is all distressed or all clean, whatever each photo shows
    half = SynthConfig(product_mix=mix, style_seed=12, distressed_print=0.5)
    finishes = {p.get("finish") for i in range(24) for p in plan_photo(8, i, half, (1280, 960)).parts}
    assert len(finishes - {None}) == 1
    before, after = render_photo(plan), render_photo(plan_photo(8, 0, worn, (1280, 960)))
    assert after.annotations == before.annotations
    diff = np.abs(after.rgb.astype(np.int16) - before.rgb.astype(np.int16)).max(axis=2)
    assert (diff > 30).sum() > 200  # cracks and specks show at whole-shirt scale
    x, y, w, h = cv2.boundingRect((diff > 30).astype(np.uint8))
    logo = logos[0]
    cx, cy, lw, lh = (logo[k] * plan.ppm for k in ("x", "y", "w", "h"))
    # only on the print: around its centre, no larger than it (the camera's roll and perspective aside)
    assert x <= cx <= x + w and y <= cy <= y + h
    assert w <= 1.3 * lw and h <= 1.3 * lh + 0.1 * lw


def test_mesh_holes_are_true_to_millimetres():
    ppm = 12.0  # px per mm: a close-up of 2000 px across 167 mm
    lum = material("mesh", 3, 480, 480, ppm, (0.8, 0.8, 0.8)).mean(axis=2)
    # Along a row of holes the brightness repeats once per hole pitch (1.6 mm, drawn within -15/+20 %).
    row = lum - lum.mean()
    spectrum = np.abs(np.fft.rfft(row, axis=1)).mean(axis=0)
    period_mm = 480 / int(np.argmax(spectrum[2:]) + 2) / ppm
    assert 1.6 * 0.8 <= period_mm <= 1.6 * 1.25
    assert lum.min() < 0.6 * np.median(lum)  # the holes are dark: the lining shows through


def test_a_family_no_milestone_product_carries_falls_back_to_products_the_po_shoots():
    config = SynthConfig(
        family_mix={"stitching": 1.0, "logo": 0.0, "label": 0.0},
        defect_rate=1.0,
        milestone_mix={"CLI": 1},
        product_mix={"CLI": {"carton": 1}, "IPC": {"shoe": 1}},
    )
    assert {plan_photo(2, i, config, (1280, 960)).product for i in range(6)} == {"shoe"}


def test_good_label_barcodes_decode_to_the_recorded_number():
    config = SynthConfig(
        defect_rate=0.0,
        closeup_rate=1.0,
        milestone_mix={"PSI": 1},
        product_mix={"PSI": {"carton": 1, "retail_box": 1}},
        lookalike_rate=0.0,
    )
    found = 0
    for i in range(8):
        plan = plan_photo(21, i, config, SIZE)
        if not any(p["kind"] == "label" and p.get("ean") for p in plan.parts):
            continue
        photo = render_photo(plan)
        _, buf = cv2.imencode(
            ".jpg", photo.rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, plan.conditions["jpeg"]]
        )
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
        texts = {r.text for r in zxingcpp.read_barcodes(np.ascontiguousarray(decoded))}
        for code in photo.barcodes:
            assert code["ean13"] in texts
            assert check_digit(code["ean13"][:12]) == int(code["ean13"][12])
            found += 1
    assert found >= 2


def test_ean13_encoding_matches_a_reader():
    rng = np.random.default_rng(0)
    for _ in range(5):
        code = make_ean13(rng)
        bars = np.repeat(1 - modules(code)[None, :], 40, 0).repeat(3, 1).astype(np.uint8) * 255
        img = np.pad(bars, 30, constant_values=255)
        assert [r.text for r in zxingcpp.read_barcodes(img)] == [code]
    with pytest.raises(ValueError, match="check digit"):
        modules("4006381333932")


def test_config_errors_name_the_field_and_the_fix(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("subtype_mix: {skiped_stitch: 1}\n")
    with pytest.raises(ConfigError, match="skiped_stitch"):
        load_synth_config(bad)
    bad.write_text("defect_rate: 1.5\n")
    with pytest.raises(ConfigError, match="defect_rate"):
        load_synth_config(bad)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        SynthConfig(size_mix=[{"size": "big", "weight": 1}])


def test_commands_write_a_po_and_a_preview(tmp_path):
    from typer.testing import CliRunner

    from loupe.apps import app
    from loupe.commands import data_synth  # noqa: F401  (registers the verbs)

    out = tmp_path / "po"
    runner = CliRunner()
    res = runner.invoke(
        app, ["data", "synth", "--out", str(out), "--photos", "2", "--seed", "3", "--size", "1280x960"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((out / "summary.json").read_text())["photos"] == 2
    assert (out / "synth.yaml").exists()
    res = runner.invoke(
        app, ["data", "preview", str(out), "--out", str(tmp_path / "sheet.png"), "--max", "2"]
    )
    assert res.exit_code == 0, res.output
    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet is not None and sheet.shape[1] >= 480
    res = runner.invoke(app, ["data", "synth", "--out", str(out), "--photos", "1", "--size", "huge"])
    assert res.exit_code != 0 and "WIDTHxHEIGHT" in res.output
