"""COCO JSON (the internal format), also as other tools write it (no ``labels``/``family``/``subtype``).

Reading accepts a dataset folder with ``annotations.json`` or any COCO ``.json`` file; file names
are relative to the folder holding the JSON (bare names are also looked up under ``images/``).
"""

from __future__ import annotations

from pathlib import Path

from datasets.coco import (
    ANNOTATIONS_FILE,
    IMAGES_DIR,
    Dataset,
    Problems,
    label_jsons,
    load_json,
    normalise_coco,
    write_internal,
)

NAME = "coco"


def read(path: Path, problems: Problems) -> Dataset:
    path = Path(path)
    json_path = path
    if path.is_dir():
        others = label_jsons(path)
        json_path = (
            path / ANNOTATIONS_FILE if (path / ANNOTATIONS_FILE).is_file() or len(others) != 1 else others[0]
        )
    if not json_path.is_file():
        raise FileNotFoundError(f"{json_path} not found: a COCO dataset needs {ANNOTATIONS_FILE}")
    root = json_path.parent
    coco = normalise_coco(load_json(json_path), json_path.name, problems)
    for img in coco["images"]:
        name = img["file_name"]
        if not (root / name).exists() and (root / IMAGES_DIR / name).exists():
            img["file_name"] = f"{IMAGES_DIR}/{name}"
    return Dataset(root=root, coco=coco, source_format=NAME)


def write(dataset: Dataset, folder: Path, final_dir: Path | None = None) -> Path:
    write_internal(dataset, folder)
    return folder / ANNOTATIONS_FILE
