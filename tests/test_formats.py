"""Round trips COCO -> format -> COCO for every label format, and atomic import/export."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.coco import LabelFileError, make_annotation, make_image, new_coco, save_coco
from datasets.formats import detect_format
from datasets.reader import export_dataset, import_dataset, read_dataset

# (file name, width, height, labels, boxes as (family, bbox, subtype), extra keys)
SAMPLE = [
    (
        "images/a.jpg",
        80,
        60,
        ["stitching"],
        [("stitching", [10.5, 12.25, 20.125, 8.0], "skipped_stitch")],
        {},
    ),
    (
        "images/b.png",
        64,
        48,
        ["logo", "label"],
        [("logo", [1.0, 2.0, 30.0, 20.0], "smudged_print"), ("label", [40.0, 10.0, 20.0, 30.0], None)],
        {"scene": "bag", "milestone": "PSI", "product": "tote"},
    ),
    ("images/c.jpg", 50, 40, [], [], {"milestone": "DUPRO"}),
    ("images/sub/e.jpg", 60, 60, ["label"], [("label", [0.0, 0.0, 60.0, 60.0], "missing_label")], {}),
    ("images/f.jpg", 72, 40, ["logo"], [], {}),  # image-level label only, no box
    (
        "images/g.jpg",
        90,
        70,
        ["stitching", "logo"],
        [
            ("stitching", [3.3333333, 4.1, 11.7, 2.9], "wavy_seam"),
            ("logo", [50, 20, 33.25, 41.5], "offset_logo"),
        ],
        {},
    ),
]


def write_photo(path: Path, width: int, height: int, seed: int) -> None:
    """A small photo with random content, so every file has different bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)


def make_dataset(root: Path, spec: list = SAMPLE) -> Path:
    """A Loupe dataset folder (annotations.json + images/) built from ``spec``."""
    coco = new_coco()
    for i, (name, w, h, labels, boxes, extra) in enumerate(spec, start=1):
        write_photo(root / name, w, h, seed=i)
        coco["images"].append(make_image(i, name, w, h, labels, **extra))
        for family, bbox, subtype in boxes:
            coco["annotations"].append(
                make_annotation(len(coco["annotations"]) + 1, i, family, bbox, subtype)
            )
    save_coco(coco, root / "annotations.json")
    return root


def summary(coco: dict, subtypes: bool = True, boxes: bool = True, extra: bool = False) -> dict:
    """file name -> (labels, boxes rounded to 1e-6 px with family and subtype, extras) for comparing."""
    out = {}
    for img in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        box_list = sorted(
            (a["family"], a["subtype"] if subtypes else None, *(round(v, 6) for v in a["bbox"])) for a in anns
        )
        keys = {k: img[k] for k in ("scene", "milestone", "product") if k in img} if extra else {}
        out[img["file_name"]] = (
            img["labels"],
            box_list if boxes else [],
            keys,
            (img["width"], img["height"]),
        )
    return out


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds")


# format -> what it keeps: subtypes, boxes, labels of photos without boxes, scene/milestone/product
KEEPS = {
    "coco": dict(subtypes=True, boxes=True, extra=True, boxless_labels=True),
    "yolo": dict(subtypes=False, boxes=True, extra=False, boxless_labels=False),
    "labelstudio": dict(subtypes=True, boxes=True, extra=True, boxless_labels=True),
    "cvat": dict(subtypes=True, boxes=True, extra=False, boxless_labels=True),
    "folders": dict(subtypes=False, boxes=False, extra=False, boxless_labels=True),
    "csv": dict(subtypes=False, boxes=False, extra=False, boxless_labels=True),
}


@pytest.mark.parametrize("fmt", list(KEEPS))
def test_round_trip_keeps_what_the_format_can_hold(dataset: Path, tmp_path: Path, fmt: str) -> None:
    keeps = KEEPS[fmt]
    exported = export_dataset(dataset, tmp_path / f"export_{fmt}", fmt)
    assert detect_format(exported) == fmt
    back = import_dataset(exported, tmp_path / "back")
    original = json.loads((dataset / "annotations.json").read_text())
    if not keeps["boxless_labels"]:  # YOLO: a photo's labels are the families of its boxes
        for img in original["images"]:
            img["labels"] = sorted(
                {a["family"] for a in original["annotations"] if a["image_id"] == img["id"]},
                key=["stitching", "logo", "label"].index,
            )
    got = json.loads((back / "annotations.json").read_text())
    opts = {k: keeps[k] for k in ("subtypes", "boxes", "extra")}
    assert summary(got, **opts) == summary(original, **opts)
    for img in got["images"]:  # the photos themselves came along, byte for byte
        assert (back / img["file_name"]).read_bytes() == (dataset / img["file_name"]).read_bytes()


@pytest.mark.parametrize("fmt", ["yolo", "cvat", "folders"])
def test_split_layouts_use_the_manifest_split(dataset: Path, tmp_path: Path, fmt: str) -> None:
    from datasets.manifest import build_manifest

    expected = {img.file_name: img.split for img in build_manifest(dataset).images}
    back = read_dataset(export_dataset(dataset, tmp_path / "out", fmt))
    assert {img["import_name"]: img["split"] for img in back.coco["images"]} == {
        name.removeprefix("images/"): split for name, split in expected.items()
    }


def test_yolo_export_is_the_ultralytics_layout(dataset: Path, tmp_path: Path) -> None:
    import yaml

    data_yaml = export_dataset(dataset, tmp_path / "y", "yolo")
    data = yaml.safe_load(data_yaml.read_text())
    assert data["names"] == {0: "stitching", 1: "logo", 2: "label"}
    assert Path(data["path"]) == (tmp_path / "y").resolve()
    assert data["train"] == "images/train"
    label_files = sorted((tmp_path / "y" / "labels").rglob("a.txt"))
    assert len(label_files) == 1
    cls, cx, _, _, h = label_files[0].read_text().split()
    assert cls == "0"
    assert float(cx) == pytest.approx((10.5 + 20.125 / 2) / 80)
    assert float(h) == pytest.approx(8.0 / 60)


def test_labelstudio_export_has_subtype_per_region(dataset: Path, tmp_path: Path) -> None:
    out = export_dataset(dataset, tmp_path / "ls", "labelstudio")
    tasks = json.loads(out.read_text())
    task = next(t for t in tasks if t["data"]["image"].endswith("a.jpg"))
    assert task["data"]["image"] == "/data/local-files/?d=images/a.jpg"
    result = task["annotations"][0]["result"]
    rect = next(r for r in result if r["type"] == "rectanglelabels")
    assert rect["value"]["rectanglelabels"] == ["stitching"]
    assert rect["value"]["x"] == pytest.approx(10.5 / 80 * 100)
    sub = next(r for r in result if r["type"] == "choices" and r["id"] == rect["id"])
    assert sub["value"]["choices"] == ["skipped_stitch"]
    assert (tmp_path / "ls" / "label_config.xml").read_text().startswith("<View>")


def test_export_refuses_a_folder_that_is_not_empty(dataset: Path, tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        export_dataset(dataset, target, "yolo")
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_failed_import_leaves_no_output_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_photo(src / "a.jpg", 32, 32, 1)
    write_photo(src / "b.jpg", 32, 32, 2)
    (src / "labels.csv").write_text("file,label\na.jpg,logo\nb.jpg,stiching\n")
    with pytest.raises(LabelFileError):
        import_dataset(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_missing_photo_stops_import_before_writing(dataset: Path, tmp_path: Path) -> None:
    (dataset / "images" / "g.jpg").unlink()
    with pytest.raises(LabelFileError, match=r"image id 6 \(images/g.jpg\): image file not found"):
        import_dataset(dataset, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failure_half_way_through_an_export_leaves_nothing(tmp_path: Path) -> None:
    # a.jpg and a.png would share labels/train/a.txt: the writer fails after copying a photo.
    spec = [
        ("images/a.jpg", 40, 30, [], [], {"split": "train"}),
        ("images/a.png", 40, 30, [], [], {"split": "train"}),
    ]
    ds = make_dataset(tmp_path / "ds", spec)
    with pytest.raises(LabelFileError, match=r"would share the YOLO label file labels/train/a\.txt"):
        export_dataset(ds, tmp_path / "out", "yolo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_unknown_format_names_the_known_ones(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown label format 'voc'.*yolo"):
        export_dataset(dataset, tmp_path / "out", "voc")


def test_import_and_export_commands(dataset: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from loupe.cli import app

    runner = CliRunner()
    out = runner.invoke(
        app, ["data", "export", str(dataset), "--format", "cvat", "--out", str(tmp_path / "cvat")]
    )
    assert out.exit_code == 0, out.output
    assert (tmp_path / "cvat" / "annotations.xml").is_file()
    back = runner.invoke(app, ["data", "import", str(tmp_path / "cvat"), "--out", str(tmp_path / "back")])
    assert back.exit_code == 0, back.output
    assert f"imported {len(SAMPLE)} photos, 6 boxes" in back.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "labels.csv").write_text("file,label\nx.jpg,zipper\n")
    failed = runner.invoke(app, ["data", "import", str(tmp_path / "bad"), "--out", str(tmp_path / "never")])
    assert failed.exit_code == 2
    assert "labels.csv line 2: unknown class 'zipper'" in failed.output
    assert not (tmp_path / "never").exists()
