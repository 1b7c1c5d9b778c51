"""Hand-written samples laid out as the real tools export them import correctly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_formats import write_photo

from datasets.formats import detect_format
from datasets.reader import import_dataset, read_dataset


def boxes_of(coco: dict, file_suffix: str) -> list[tuple]:
    img = next(i for i in coco["images"] if i["file_name"].endswith(file_suffix))
    return sorted(
        (a["family"], a["subtype"], *(round(v, 6) for v in a["bbox"]))
        for a in coco["annotations"]
        if a["image_id"] == img["id"]
    )


def labels_of(coco: dict, file_suffix: str) -> list[str]:
    return next(i["labels"] for i in coco["images"] if i["file_name"].endswith(file_suffix))


def test_ultralytics_yolo_dataset(tmp_path: Path) -> None:
    root = tmp_path / "shoes"
    write_photo(root / "images/train/s1.jpg", 200, 100, 1)
    write_photo(root / "images/train/s2.jpg", 200, 100, 2)  # background photo: no label file
    write_photo(root / "images/val/s3.jpg", 100, 100, 3)
    (root / "labels/train").mkdir(parents=True)
    (root / "labels/val").mkdir(parents=True)
    (root / "labels/train/s1.txt").write_text("0 0.5 0.5 0.25 0.5\n2 0.1 0.2 0.1 0.2\n")
    (root / "labels/val/s3.txt").write_text("1 0.1 0.1 0.3 0.1 0.3 0.4 0.1 0.4\n")  # a polygon line
    # `path` points where the dataset used to live: the reader falls back to the yaml's folder.
    (root / "data.yaml").write_text(
        "path: ../datasets/shoes-old\ntrain: images/train\nval: images/val\n"
        "names:\n  0: stitching\n  1: logo\n  2: label\n"
    )
    ds = read_dataset(root)
    assert ds.source_format == "yolo"
    assert boxes_of(ds.coco, "s1.jpg") == [
        ("label", None, 10.0, 10.0, 20.0, 20.0),
        ("stitching", None, 75, 25, 50, 50),
    ]
    assert labels_of(ds.coco, "s2.jpg") == []
    assert boxes_of(ds.coco, "s3.jpg") == [("logo", None, 10.0, 10.0, 20.0, 30.0)]
    assert {i["file_name"]: i["split"] for i in ds.coco["images"]}["images/val/s3.jpg"] == "val"


def test_yolo_names_as_subtypes_keep_the_subtype(tmp_path: Path) -> None:
    root = tmp_path / "y"
    write_photo(root / "images/train/a.jpg", 100, 100, 1)
    (root / "labels/train").mkdir(parents=True)
    (root / "labels/train/a.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text(
        "train: images/train\nval: images/train\nnames: [open_seam, torn_label]\n"
    )
    assert boxes_of(read_dataset(root).coco, "a.jpg") == [("label", "torn_label", 40.0, 40.0, 20.0, 20.0)]


LABEL_STUDIO_EXPORT = [
    {
        "id": 11,
        "data": {"image": "/data/upload/3/5f2a9c1e-carton_01.jpg"},
        "annotations": [
            {
                "id": 7,
                "completed_by": 1,
                "was_cancelled": False,
                "ground_truth": False,
                "result": [
                    {
                        "original_width": 400,
                        "original_height": 300,
                        "image_rotation": 0,
                        "value": {
                            "x": 10,
                            "y": 20,
                            "width": 25,
                            "height": 10,
                            "rotation": 0,
                            "rectanglelabels": ["label"],
                        },
                        "id": "Xk3_a",
                        "from_name": "family",
                        "to_name": "image",
                        "type": "rectanglelabels",
                        "origin": "manual",
                    },
                    {
                        "original_width": 400,
                        "original_height": 300,
                        "image_rotation": 0,
                        "value": {
                            "x": 10,
                            "y": 20,
                            "width": 25,
                            "height": 10,
                            "rotation": 0,
                            "choices": ["crooked_label"],
                        },
                        "id": "Xk3_a",
                        "from_name": "subtype",
                        "to_name": "image",
                        "type": "choices",
                        "origin": "manual",
                    },
                    {
                        "value": {"choices": ["label", "logo"]},
                        "id": "q9",
                        "from_name": "defects",
                        "to_name": "image",
                        "type": "choices",
                        "origin": "manual",
                    },
                ],
                "created_at": "2026-11-20T09:12:44.123Z",
                "lead_time": 35.2,
            }
        ],
        "predictions": [],
        "meta": {},
        "created_at": "2026-11-20T09:10:00Z",
        "project": 3,
    },
    {
        "id": 12,
        "data": {"image": "/data/local-files/?d=photos/carton_02.jpg"},
        "annotations": [
            {"id": 8, "was_cancelled": True, "result": [{"type": "choices", "value": {"choices": ["logo"]}}]},
            {
                "id": 9,
                "was_cancelled": False,
                "result": [{"type": "choices", "value": {"choices": ["good"]}}],
            },
        ],
    },
    {"id": 13, "data": {"image": "/data/upload/3/0c0ffee0-unlabelled.jpg"}, "annotations": []},
]


def test_label_studio_json_export(tmp_path: Path) -> None:
    root = tmp_path / "ls"
    write_photo(root / "carton_01.jpg", 400, 300, 1)  # uploads are exported without their hash prefix
    write_photo(root / "photos/carton_02.jpg", 120, 90, 2)
    (root / "project-3-at-2026-11-21-10-00-1a2b3c4d.json").write_text(json.dumps(LABEL_STUDIO_EXPORT))
    assert detect_format(root) == "labelstudio"
    ds = read_dataset(root)
    assert len(ds.coco["images"]) == 2  # the unlabelled task is skipped
    assert boxes_of(ds.coco, "carton_01.jpg") == [("label", "crooked_label", 40.0, 60.0, 100.0, 30.0)]
    assert labels_of(ds.coco, "carton_01.jpg") == ["logo", "label"]
    assert labels_of(ds.coco, "carton_02.jpg") == []  # the cancelled annotation is ignored


def test_label_studio_rotated_rectangle_becomes_its_enclosing_box(tmp_path: Path) -> None:
    write_photo(tmp_path / "images/r.jpg", 100, 100, 1)
    task = {
        "data": {"image": "images/r.jpg"},
        "annotations": [
            {
                "result": [
                    {
                        "id": "a",
                        "type": "rectanglelabels",
                        "original_width": 100,
                        "original_height": 100,
                        "value": {
                            "x": 50,
                            "y": 10,
                            "width": 20,
                            "height": 10,
                            "rotation": 90,
                            "rectanglelabels": ["logo"],
                        },
                    }
                ]
            }
        ],
    }
    (tmp_path / "tasks.json").write_text(json.dumps([task]))
    # Rotated 90 degrees clockwise about the top-left corner (50, 10): spans x 40..50, y 10..30.
    assert boxes_of(read_dataset(tmp_path).coco, "r.jpg") == [("logo", None, 40.0, 10.0, 10.0, 20.0)]


CVAT_XML = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>42</id>
      <name>PO-1187 DUPRO</name>
      <size>2</size>
      <mode>annotation</mode>
      <overlap>0</overlap>
      <labels>
        <label>
          <name>stitching</name>
          <color>#fa3253</color>
          <type>any</type>
          <attributes>
            <attribute>
              <name>subtype</name>
              <mutable>False</mutable>
              <input_type>select</input_type>
              <default_value>skipped_stitch</default_value>
              <values>skipped_stitch
open_seam</values>
            </attribute>
          </attributes>
        </label>
        <label><name>logo</name><color>#33ddff</color><type>any</type><attributes/></label>
      </labels>
    </task>
    <dumped>2026-11-21 10:00:00.000000+00:00</dumped>
  </meta>
  <image id="0" name="garment_01.jpg" subset="Train" width="640" height="480">
    <box label="stitching" source="manual" occluded="0"
         xtl="100.00" ytl="50.50" xbr="180.25" ybr="70.00" z_order="0">
      <attribute name="subtype">open_seam</attribute>
    </box>
    <polygon label="logo" source="manual" occluded="0"
             points="300.00,200.00;340.00,210.00;320.00,260.00" z_order="0">
    </polygon>
    <tag label="stitching" source="manual">
    </tag>
  </image>
  <image id="1" name="garment_02.jpg" subset="Validation" width="320" height="240">
  </image>
</annotations>
"""


def test_cvat_for_images_export(tmp_path: Path) -> None:
    root = tmp_path / "cvat"
    write_photo(root / "images/garment_01.jpg", 640, 480, 1)
    write_photo(root / "images/garment_02.jpg", 320, 240, 2)
    (root / "annotations.xml").write_text(CVAT_XML)
    ds = read_dataset(root)
    assert ds.source_format == "cvat"
    assert boxes_of(ds.coco, "garment_01.jpg") == [
        ("logo", None, 300.0, 200.0, 40.0, 60.0),
        ("stitching", "open_seam", 100.0, 50.5, 80.25, 19.5),
    ]
    assert labels_of(ds.coco, "garment_01.jpg") == ["stitching", "logo"]
    assert labels_of(ds.coco, "garment_02.jpg") == []
    assert [i["split"] for i in ds.coco["images"]] == ["train", "val"]
    out = import_dataset(root, tmp_path / "internal")
    coco = json.loads((out / "annotations.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == ["images/garment_01.jpg", "images/garment_02.jpg"]


def test_ultralytics_classify_folders(tmp_path: Path) -> None:
    root = tmp_path / "cls"
    write_photo(root / "train/good/p1.jpg", 40, 30, 1)
    write_photo(root / "train/stitching/p2.jpg", 40, 30, 2)
    (root / "train/logo").mkdir(parents=True)
    (root / "train/logo/p2.jpg").write_bytes((root / "train/stitching/p2.jpg").read_bytes())  # both families
    write_photo(root / "val/label/p3.jpg", 30, 40, 3)
    ds = read_dataset(root)
    assert ds.source_format == "folders"
    assert {i["file_name"].split("/")[-1]: (i["labels"], i["split"]) for i in ds.coco["images"]} == {
        "p1.jpg": ([], "train"),
        "p2.jpg": (["stitching", "logo"], "train"),
        "p3.jpg": (["label"], "val"),
    }
    assert ds.coco["annotations"] == []


def test_csv_of_file_and_label(tmp_path: Path) -> None:
    root = tmp_path / "csv"
    for k, name in enumerate(["a.jpg", "b.jpg", "c.jpg"]):
        write_photo(root / "images" / name, 30, 20, k)
    (root / "labels.csv").write_text(
        "file,label\nimages/a.jpg,stitching\nimages/a.jpg,label\nb.jpg,good\nc.jpg,skipped_stitch;logo\n"
    )
    ds = read_dataset(root / "labels.csv")
    assert {i["file_name"]: i["labels"] for i in ds.coco["images"]} == {
        "images/a.jpg": ["stitching", "label"],
        "images/b.jpg": [],
        "images/c.jpg": ["stitching", "logo"],
    }


def test_coco_from_another_tool(tmp_path: Path) -> None:
    """COCO as other tools write it: their own category ids, bare file names, no labels/family/subtype."""
    root = tmp_path / "ext"
    write_photo(root / "images/x.jpg", 100, 80, 1)
    write_photo(root / "images/y.jpg", 100, 80, 2)
    coco = {
        "images": [
            {"id": 5, "file_name": "x.jpg", "width": 100, "height": 80},
            {"id": 6, "file_name": "y.jpg", "width": 100, "height": 80},
        ],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 0, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 1, "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0},
        ],
        "categories": [{"id": 0, "name": "logo"}, {"id": 1, "name": "broken_thread"}],
    }
    (root / "instances_default.json").write_text(json.dumps(coco))
    ds = read_dataset(root)
    assert ds.source_format == "coco"
    assert boxes_of(ds.coco, "x.jpg") == [
        ("logo", None, 1.0, 2.0, 3.0, 4.0),
        ("stitching", "broken_thread", 10.0, 20.0, 30.0, 40.0),
    ]
    assert labels_of(ds.coco, "x.jpg") == ["stitching", "logo"]
    assert labels_of(ds.coco, "y.jpg") == []
    assert [a["category_id"] for a in ds.coco["annotations"]] == [
        2,
        1,
    ]  # Loupe's ids, whatever the source used


@pytest.mark.parametrize(
    ("name", "content", "fmt"),
    [
        ("data.yaml", "train: images\nnames: [logo]\n", "yolo"),
        ("annotations.xml", "<annotations/>", "cvat"),
        ("labels.csv", "file,label\n", "csv"),
        ("export.json", "[]", "labelstudio"),
        ("annotations.json", '{"images": []}', "coco"),
    ],
)
def test_detect_format(tmp_path: Path, name: str, content: str, fmt: str) -> None:
    (tmp_path / name).write_text(content)
    assert detect_format(tmp_path) == fmt
    assert detect_format(tmp_path / name) == fmt
