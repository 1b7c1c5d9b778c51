"""``check_dataset`` and ``loupe data check`` report every problem at once, with counts and box sizes."""

from __future__ import annotations

import json
from pathlib import Path

from test_formats import SAMPLE, make_dataset
from typer.testing import CliRunner

from datasets.check import check_dataset
from loupe.cli import app


def broken_dataset(root: Path) -> Path:
    """One dataset with each problem: box outside, unknown class, missing, unreadable and duplicate photos."""
    spec = [
        (
            "images/a.jpg",
            40,
            30,
            ["logo"],
            [("logo", [1, 1, 5, 5], "offset_logo"), ("logo", [35, 1, 20, 5], None)],
            {},
        ),
        ("images/b.jpg", 40, 30, [], [], {}),
        ("images/c.jpg", 40, 30, [], [], {}),
        ("images/d.jpg", 40, 30, [], [], {}),
        ("images/e.jpg", 40, 30, ["stitching"], [("stitching", [2, 2, 10, 3], "skipped_stitch")], {}),
    ]
    make_dataset(root, spec)
    (root / "images/b.jpg").unlink()
    (root / "images/c.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated JPEG")
    (root / "images/d.jpg").write_bytes((root / "images/a.jpg").read_bytes())
    coco = json.loads((root / "annotations.json").read_text())
    coco["annotations"][2]["family"] = "stiching"
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def test_check_reports_every_problem(tmp_path: Path) -> None:
    report = check_dataset(broken_dataset(tmp_path / "ds"))
    found = sorted((p.kind, p.where) for p in report.problems)
    assert found == [
        ("box_outside_image", "annotation id 2 (images/a.jpg)"),
        ("duplicate_image", "image id 4 (images/d.jpg)"),
        ("missing_image", "image id 2 (images/b.jpg)"),
        ("unknown_class", "annotations.json annotation id 3"),
        ("unreadable_image", "image id 3 (images/c.jpg)"),
    ]
    dup = next(p for p in report.problems if p.kind == "duplicate_image")
    assert "same bytes as images/a.jpg" in dup.message
    assert not report.ok


def test_check_counts_families_subtypes_and_box_sizes(tmp_path: Path) -> None:
    report = check_dataset(make_dataset(tmp_path / "ds"))
    assert report.ok, report.summary()
    assert report.images == len(SAMPLE)
    assert report.images_per_class == {"good": 1, "stitching": 2, "logo": 3, "label": 2}
    assert report.boxes_per_family == {"stitching": 2, "logo": 2, "label": 2}
    assert report.boxes_per_subtype["stitching/skipped_stitch"] == 1
    assert report.boxes_per_subtype["label/unknown"] == 1
    assert report.box_size_px["max"] == 60.0  # the 60x60 missing-label box
    assert report.box_size_rel["max"] == 1.0
    assert report.small_boxes == 4  # sqrt(area) below 32 px: 12.7, 24.5, 24.5 and 5.8


def test_check_reports_a_size_that_does_not_match_the_photo(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [("images/a.jpg", 40, 30, [], [], {})])
    coco = json.loads((root / "annotations.json").read_text())
    coco["images"][0]["width"] = 400
    (root / "annotations.json").write_text(json.dumps(coco))
    [problem] = check_dataset(root).problems
    assert problem.kind == "size_mismatch"
    assert "recorded 400x30 but the photo is 40x30" in problem.message


def test_check_reports_a_malformed_file_instead_of_crashing(tmp_path: Path) -> None:
    (tmp_path / "annotations.json").write_text("{not json")
    [problem] = check_dataset(tmp_path).problems
    assert problem.kind == "malformed_labels"
    assert "annotations.json line 1 column 2: malformed JSON" in problem.message


def test_check_command_exit_status(tmp_path: Path) -> None:
    runner = CliRunner()
    good = runner.invoke(app, ["data", "check", str(make_dataset(tmp_path / "good"))])
    assert good.exit_code == 0, good.output
    assert "no problems found" in good.output
    bad = runner.invoke(app, ["data", "check", str(broken_dataset(tmp_path / "bad"))])
    assert bad.exit_code == 1
    assert "5 problem(s)" in bad.output
    assert "[duplicate_image] image id 4 (images/d.jpg)" in bad.output
