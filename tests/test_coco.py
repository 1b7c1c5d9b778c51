"""The internal COCO helpers: records, class names, boxes, EXIF-aware sizes, staged output."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from datasets.coco import (
    Problems,
    clip_box,
    image_size,
    internal_name,
    make_annotation,
    make_image,
    normalise_coco,
    parse_class,
    staged_output,
)
from datasets.taxonomy import coco_categories


def test_records_follow_the_contract() -> None:
    img = make_image(
        3, "images/x.jpg", 4000, 3000, ["label", "stitching", "label"], milestone="PSI", scene=None
    )
    assert img == {
        "id": 3,
        "file_name": "images/x.jpg",
        "width": 4000,
        "height": 3000,
        "labels": ["stitching", "label"],
        "milestone": "PSI",
    }
    ann = make_annotation(1, 3, "logo", [10, 20, 30, 40], "smudged_print")
    assert ann["category_id"] == 2
    assert ann["area"] == 1200.0
    assert ann["segmentation"] == [[10.0, 20.0, 40.0, 20.0, 40.0, 60.0, 10.0, 60.0]]
    assert (ann["family"], ann["subtype"], ann["iscrowd"]) == ("logo", "smudged_print", 0)


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("Stitching", "stitching"),
        ("good", "good"),
        ("torn-label", "label"),
        ("Wavy Seam", "stitching"),
        ("zip", None),
    ],
)
def test_parse_class(name: str, family: str | None) -> None:
    assert parse_class(name) == family


def test_clip_box() -> None:
    assert clip_box([-0.5, 0, 10, 10], 100, 100) == [0.0, 0, 9.5, 10]
    assert clip_box([95, 95, 10, 10], 100, 100) is None
    assert clip_box([5, 5, 0, 10], 100, 100) is None


def test_image_size_follows_exif_orientation(tmp_path: Path) -> None:
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: displayed portrait
    Image.new("RGB", (80, 60)).save(path, exif=exif)
    assert image_size(path) == (60, 80)


def test_normalise_coco_derives_labels_from_boxes() -> None:
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 2, 2]}],
        "categories": [{"id": 7, "name": "uneven_stitch_length"}],
    }
    out = normalise_coco(coco, "x.json", Problems())
    assert out["images"][0]["labels"] == ["stitching"]
    assert out["annotations"][0]["subtype"] == "uneven_stitch_length"
    assert out["categories"] == coco_categories()


def test_lenient_problems_collect_instead_of_raising() -> None:
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10, "labels": ["stiching", "zip"]}],
        "annotations": [],
    }
    problems = Problems(strict=False)
    normalise_coco(coco, "x.json", problems)
    assert [p.kind for p in problems.items] == ["unknown_class", "unknown_class"]


def test_internal_name() -> None:
    assert internal_name({"file_name": "images/sub/a.jpg"}) == "images/sub/a.jpg"
    assert internal_name({"file_name": "photos/a.jpg"}) == "images/photos/a.jpg"
    assert internal_name({"file_name": "images/train/a.jpg", "import_name": "a.jpg"}) == "images/a.jpg"
    assert internal_name({"file_name": "../../etc/a.jpg"}) == "images/etc/a.jpg"


def test_staged_output_is_all_or_nothing(tmp_path: Path) -> None:
    with staged_output(tmp_path / "ok") as tmp:
        (tmp / "f.txt").write_text("x")
    assert (tmp_path / "ok" / "f.txt").read_text() == "x"
    with pytest.raises(RuntimeError), staged_output(tmp_path / "bad") as tmp:
        (tmp / "f.txt").write_text("x")
        raise RuntimeError("half way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]
