"""Every bad label file gets an error naming the file, the record and the problem."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_formats import make_dataset, write_photo

from datasets.coco import LabelFileError
from datasets.reader import read_dataset


def csv_dataset(root: Path, rows: str) -> Path:
    for k, name in enumerate(["a.jpg", "b.jpg", "c.jpg"]):
        write_photo(root / name, 20, 20, k)
    (root / "labels.csv").write_text(rows)
    return root


def test_csv_unknown_class_names_file_line_and_choices(tmp_path: Path) -> None:
    csv_dataset(
        tmp_path, "file,label\na.jpg,logo\nb.jpg,good\nc.jpg,label\na.jpg,label\nb.jpg,logo\nc.jpg,stiching\n"
    )
    expected = "labels.csv line 7: unknown class 'stiching' (expected one of good, stitching, logo, label)"
    with pytest.raises(LabelFileError, match=re.escape(expected)):
        read_dataset(tmp_path)


def test_csv_with_wrong_column_count(tmp_path: Path) -> None:
    csv_dataset(tmp_path, "file,label\na.jpg,logo\nb.jpg,logo,extra\n")
    with pytest.raises(LabelFileError, match=r"labels\.csv line 3: expected 2 columns"):
        read_dataset(tmp_path)


def test_csv_missing_image(tmp_path: Path) -> None:
    csv_dataset(tmp_path, "file,label\na.jpg,logo\nzz.jpg,logo\n")
    with pytest.raises(LabelFileError, match=r"labels\.csv line 3 \(zz\.jpg\): image file .* not found"):
        read_dataset(tmp_path)


def test_unreadable_image(tmp_path: Path) -> None:
    csv_dataset(tmp_path, "file,label\na.jpg,logo\nb.jpg,logo\n")
    (tmp_path / "b.jpg").write_bytes(b"this is not a JPEG")
    with pytest.raises(LabelFileError, match=r"labels\.csv line 3 \(b\.jpg\): unreadable image"):
        read_dataset(tmp_path)


def test_malformed_coco_json_names_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "annotations.json").write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(LabelFileError, match=r"annotations\.json line 2 column \d+: malformed JSON"):
        read_dataset(tmp_path)


def test_malformed_label_studio_json(tmp_path: Path) -> None:
    (tmp_path / "export.json").write_text('[{"id": 1, "data": {"image": "a.jpg"}\n')
    with pytest.raises(LabelFileError, match=r"export\.json line 2 column \d+: malformed JSON"):
        read_dataset(tmp_path, "labelstudio")


def test_label_studio_task_without_image_names_the_task(tmp_path: Path) -> None:
    (tmp_path / "export.json").write_text(json.dumps([{"id": 31, "data": {"photo": "a.jpg"}}]))
    with pytest.raises(LabelFileError, match=r"export\.json task 31: 'data.image' is missing"):
        read_dataset(tmp_path)


def test_label_studio_unknown_label(tmp_path: Path) -> None:
    write_photo(tmp_path / "a.jpg", 20, 20, 1)
    result = [{"id": "r", "type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 5, "height": 5}}]
    result[0]["value"]["rectanglelabels"] = ["zipper"]
    (tmp_path / "export.json").write_text(
        json.dumps([{"id": 4, "data": {"image": "a.jpg"}, "annotations": [{"result": result}]}])
    )
    with pytest.raises(LabelFileError, match=r"export\.json task 4 result\[0\]: unknown class 'zipper'"):
        read_dataset(tmp_path)


def test_malformed_cvat_xml_names_line(tmp_path: Path) -> None:
    (tmp_path / "annotations.xml").write_text(
        '<?xml version="1.0"?>\n<annotations>\n  <image id="0" name="a.jpg" width="20" height="20">\n'
        '    <box label="logo" xtl="1" ytl="1" xbr="2" ybr="2">\n  </image>\n</annotations>\n'
    )
    with pytest.raises(LabelFileError, match=r"annotations\.xml line 5 column \d+: malformed XML"):
        read_dataset(tmp_path)


def test_cvat_unknown_label_and_bad_coordinates(tmp_path: Path) -> None:
    write_photo(tmp_path / "images/a.jpg", 20, 20, 1)
    xml = (
        '<annotations><version>1.1</version><image id="3" name="a.jpg" width="20" height="20">{}</image>'
        "</annotations>"
    )
    (tmp_path / "annotations.xml").write_text(
        xml.format('<box label="zipper" xtl="1" ytl="1" xbr="2" ybr="2"/>')
    )
    with pytest.raises(
        LabelFileError, match=r"annotations\.xml image id 3 \(a\.jpg\) <box label='zipper'>: unknown"
    ):
        read_dataset(tmp_path)
    (tmp_path / "annotations.xml").write_text(
        xml.format('<box label="logo" xtl="1" ytl="one" xbr="2" ybr="2"/>')
    )
    with pytest.raises(
        LabelFileError, match=r"image id 3 \(a\.jpg\) <box label='logo'>: bad or missing coordinates"
    ):
        read_dataset(tmp_path)


def test_yolo_malformed_line(tmp_path: Path) -> None:
    write_photo(tmp_path / "images/train/a.jpg", 20, 20, 1)
    (tmp_path / "labels/train").mkdir(parents=True)
    (tmp_path / "labels/train/a.txt").write_text("0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1\n")
    (tmp_path / "data.yaml").write_text(
        "train: images/train\nval: images/train\nnames: [stitching, logo, label]\n"
    )
    with pytest.raises(LabelFileError, match=r"labels/train/a\.txt line 2: expected 'class cx cy w h'"):
        read_dataset(tmp_path)
    (tmp_path / "labels/train/a.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(LabelFileError, match=r"labels/train/a\.txt line 1: unknown class index 7"):
        read_dataset(tmp_path)


def test_folder_with_unknown_class(tmp_path: Path) -> None:
    write_photo(tmp_path / "train/good/a.jpg", 20, 20, 1)
    write_photo(tmp_path / "train/stiching/b.jpg", 20, 20, 2)
    with pytest.raises(LabelFileError, match=r"folder 'train/stiching': unknown class 'stiching'"):
        read_dataset(tmp_path)


def test_box_outside_its_image(tmp_path: Path) -> None:
    spec = [
        (
            "images/a.jpg",
            40,
            30,
            ["logo"],
            [("logo", [1, 1, 5, 5], None), ("logo", [30, 20, 20, 5], None)],
            {},
        )
    ]
    make_dataset(tmp_path, spec)
    expected = "annotation id 2 (images/a.jpg): box [x=30, y=20, w=20, h=5] is outside the 40x30 image"
    with pytest.raises(LabelFileError, match=re.escape(expected)):
        read_dataset(tmp_path)


def test_box_overhanging_by_rounding_is_clipped(tmp_path: Path) -> None:
    make_dataset(tmp_path, [("images/a.jpg", 40, 30, ["logo"], [("logo", [-0.4, 10, 40.6, 20.3], None)], {})])
    assert read_dataset(tmp_path).coco["annotations"][0]["bbox"] == [0.0, 10.0, 40.0, 20.0]


def test_coco_unknown_family_and_subtype(tmp_path: Path) -> None:
    make_dataset(tmp_path, [("images/a.jpg", 40, 30, ["logo"], [("logo", [1, 1, 5, 5], None)], {})])
    coco = json.loads((tmp_path / "annotations.json").read_text())
    coco["annotations"][0]["family"] = "stiching"
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(LabelFileError, match=r"annotations\.json annotation id 1: unknown class 'stiching'"):
        read_dataset(tmp_path)
    coco["annotations"][0]["family"], coco["annotations"][0]["subtype"] = "logo", "open_seam"
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(
        LabelFileError, match=r"annotation id 1: unknown subtype 'open_seam' for family 'logo'"
    ):
        read_dataset(tmp_path)


def test_coco_missing_image(tmp_path: Path) -> None:
    make_dataset(tmp_path, [("images/a.jpg", 40, 30, [], [], {})])
    (tmp_path / "images/a.jpg").unlink()
    with pytest.raises(LabelFileError, match=r"image id 1 \(images/a\.jpg\): image file not found"):
        read_dataset(tmp_path)


def test_coco_record_without_required_fields(tmp_path: Path) -> None:
    (tmp_path / "annotations.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}]}))
    with pytest.raises(LabelFileError, match=r"annotations\.json images\[0\]: needs integer 'id', 'width'"):
        read_dataset(tmp_path)


def test_missing_dataset(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_dataset(tmp_path / "nope")
