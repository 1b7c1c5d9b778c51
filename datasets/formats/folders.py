"""Image-level labels as folder-per-class, the layout of Ultralytics' classify datasets.

``ROOT/{train,val,test}/{good,stitching,logo,label}/photo.jpg`` (the split level is optional on
import). A photo with two families sits in both folders; import merges files with the same name in
the same split back into one photo with both labels. Boxes, subtypes and scene/milestone/product are
lost (the layout has no place for them).
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets.coco import (
    CLASS_NAMES,
    Dataset,
    Problems,
    checked_size,
    copy_image,
    expected_classes,
    find_images,
    internal_name,
    make_image,
    new_coco,
    normalise_split,
    parse_class,
    sort_families,
)
from datasets.taxonomy import GOOD

NAME = "folders"
HAS_SPLITS = True  # export places photos in train/val(/test) from the manifest split


def _class_dirs(root: Path) -> list[tuple[str | None, Path]]:
    """(split or None, class folder) pairs; split folders are recognised by name."""
    out = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        split = normalise_split(sub.name)
        if split and sub.name not in CLASS_NAMES:
            out += [
                (split, d)
                for d in sorted(p for p in sub.iterdir() if p.is_dir() and not p.name.startswith("."))
            ]
        else:
            out.append((None, sub))
    return out


def read(path: Path, problems: Problems) -> Dataset:
    root = Path(path)
    if not root.is_dir():
        raise NotADirectoryError(
            f"{root}: folder-per-class datasets are folders (good/, stitching/, logo/, label/)"
        )
    photos: dict[tuple[str | None, str], dict] = {}
    for split, class_dir in _class_dirs(root):
        cls = parse_class(class_dir.name)
        rel_dir = os.path.relpath(class_dir, root).replace(os.sep, "/")
        if cls is None:
            problems.add(
                "unknown_class",
                f"folder '{rel_dir}'",
                f"unknown class {class_dir.name!r} ({expected_classes()})",
            )
            continue
        for img_path in find_images(class_dir):
            name = os.path.relpath(img_path, class_dir).replace(os.sep, "/")
            entry = photos.setdefault(
                (split, name),
                {
                    "file_name": os.path.relpath(img_path, root).replace(os.sep, "/"),
                    "classes": set(),
                    "split": split,
                },
            )
            entry["classes"].add(cls)
    coco = new_coco()
    for (_, name), entry in sorted(photos.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        size = checked_size(root / entry["file_name"], entry["file_name"], problems)
        if size is None:
            continue
        width, height = size
        families = sort_families(entry["classes"] - {GOOD})
        image_id = len(coco["images"]) + 1
        coco["images"].append(
            make_image(
                image_id, entry["file_name"], width, height, families, split=entry["split"], import_name=name
            )
        )
    if not coco["images"]:
        raise FileNotFoundError(f"{root}: no photos found in class folders {', '.join(CLASS_NAMES)}")
    return Dataset(root=root, coco=coco, source_format=NAME)


def write(dataset: Dataset, folder: Path, final_dir: Path | None = None) -> Path:
    for img in dataset.coco["images"]:
        name = internal_name(img).split("/", 1)[1]
        split = img.get("split") or "train"
        for cls in img["labels"] or [GOOD]:
            copy_image(dataset.image_path(img), folder / split / cls / name)
    return folder
