"""Label formats Loupe imports and exports; COCO is internal, everything else converts at the edge.

Each module has ``read(path, problems) -> Dataset`` and ``write(dataset, folder) -> Path`` (the
folder is empty and staged by the caller; ``write`` returns the file a reader should be pointed at).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from datasets.coco import ANNOTATIONS_FILE, CLASS_NAMES, LabelFileError, label_jsons
from datasets.formats import coco_json as coco
from datasets.formats import cvat, folders, labels_csv, labelstudio, yolo

FORMATS: dict[str, ModuleType] = {
    "coco": coco,
    "yolo": yolo,
    "labelstudio": labelstudio,
    "cvat": cvat,
    "folders": folders,
    "csv": labels_csv,
}
ALIASES = {
    "label-studio": "labelstudio",
    "label_studio": "labelstudio",
    "ls": "labelstudio",
    "cvat_images": "cvat",
    "cvat-images": "cvat",
    "folder": "folders",
    "classify": "folders",
    "imagefolder": "folders",
    "ultralytics": "yolo",
}


def format_module(fmt: str) -> ModuleType:
    """The module for a format name (or alias); a clear error lists the known ones."""
    name = ALIASES.get(fmt.lower(), fmt.lower())
    if name not in FORMATS:
        raise ValueError(f"unknown label format {fmt!r}: use one of {', '.join(FORMATS)} (or auto)")
    return FORMATS[name]


def format_name(fmt: str) -> str:
    return format_module(fmt).NAME


def detect_format(path: Path) -> str:
    """Guess the format of a file or folder from the files the real tools write."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a dataset folder or a label file")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            return "yolo"
        if suffix == ".xml":
            return "cvat"
        if suffix == ".csv":
            return "csv"
        if suffix == ".json":
            return _json_kind(path)
        raise LabelFileError(
            f"{path.name}: cannot tell the label format from a {suffix!r} file; pass --format"
        )
    if (path / ANNOTATIONS_FILE).is_file():
        return "coco"
    for name in ("data.yaml", "data.yml", "dataset.yaml"):
        if (path / name).is_file():
            return "yolo"
    if (path / "annotations.xml").is_file() or len(list(path.glob("*.xml"))) == 1:
        return "cvat"
    jsons = label_jsons(path)
    if len(jsons) == 1:
        return _json_kind(jsons[0])
    if (path / "labels.csv").is_file() or len(list(path.glob("*.csv"))) == 1:
        return "csv"
    subdirs = {p.name for p in path.iterdir() if p.is_dir()}
    if subdirs & set(CLASS_NAMES) or subdirs & {"train", "val", "test"}:
        return "folders"
    raise LabelFileError(
        f"{path}: no label file found (annotations.json, data.yaml, annotations.xml, a Label Studio .json, "
        f"labels.csv or class folders {', '.join(CLASS_NAMES)}); pass --format"
    )


def _json_kind(path: Path) -> str:
    # Peek without a full parse error here: the reader reports malformed JSON with line and column.
    head = path.read_text(encoding="utf-8", errors="replace").lstrip()[:1]
    if head == "[":
        return "labelstudio"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return "coco"
    return "labelstudio" if isinstance(data, dict) and "data" in data and "images" not in data else "coco"
