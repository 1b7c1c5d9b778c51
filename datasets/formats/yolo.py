"""YOLO detection labels as Ultralytics reads and writes them.

Layout: ``data.yaml`` (``path``, ``train``, ``val``, optional ``test``, ``names``), images under
``images/<split>/`` and one ``labels/<split>/<stem>.txt`` per image with a line ``class cx cy w h``
(normalised to 0..1) per box. Polygon lines (``class x1 y1 x2 y2 ...``) are read as their bounding box.

What YOLO cannot hold, and is lost on export: the **subtype** (class = family; a dataset whose
``names`` are subtypes keeps them on import), image-level labels of photos without boxes (a photo's
labels become the families of its boxes), segmentation polygons, and scene/milestone/product.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from datasets.coco import (
    IMAGE_SUFFIXES,
    IMAGES_DIR,
    Dataset,
    LabelFileError,
    Problems,
    checked_size,
    copy_image,
    expected_classes,
    find_images,
    internal_name,
    make_annotation,
    make_image,
    new_coco,
    normalise_split,
    parse_class,
    sort_families,
)
from datasets.taxonomy import CATEGORY_IDS, FAMILIES, GOOD, SUBTYPE_FAMILY

NAME = "yolo"
HAS_SPLITS = True  # export places photos in train/val(/test) from the manifest split
YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml")


def _yaml_path(path: Path) -> Path:
    if path.is_file():
        return path
    for name in YAML_NAMES:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"{path}: no data.yaml found; a YOLO dataset needs one (path, train, val, names)")


def _class_map(names: object, source: str, problems: Problems) -> dict[int, tuple[str, str | None]]:
    """YOLO class index -> (family, subtype or None)."""
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise LabelFileError(f"{source}: 'names' must map class indices to names, e.g. {{0: stitching}}")
    out = {}
    for idx, name in names.items():
        family = parse_class(str(name))
        if family is None or family == GOOD:
            problems.add(
                "unknown_class",
                f"{source} names[{idx}]",
                f"unknown class {name!r} ({expected_classes(False)})",
            )
            continue
        subtype = str(name).strip().lower() if str(name).strip().lower() in SUBTYPE_FAMILY else None
        out[int(idx)] = (family, subtype)
    return out


def _split_images(root: Path, entry: object, source: str) -> list[tuple[Path, Path | None]]:
    """(image, folder listed under) for a ``train``/``val``/``test`` entry: folders, list files or lists."""
    entries = entry if isinstance(entry, list) else [entry]
    out: list[tuple[Path, Path | None]] = []
    for e in entries:
        p = root / str(e)
        if p.is_dir():
            out += [(img, p) for img in find_images(p)]
        elif p.is_file() and p.suffix == ".txt":  # a list of image paths, relative to the root
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    img = Path(line.strip())
                    out.append((img if img.is_absolute() else (root / img).resolve(), None))
        else:
            raise LabelFileError(
                f"{source}: split entry {e!r} is neither a folder nor a .txt list under {root}"
            )
    return out


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` in the path becomes ``/labels/``, the suffix ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    s = str(image)
    return Path(sb.join(s.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt")


def read(path: Path, problems: Problems) -> Dataset:
    yaml_path = _yaml_path(Path(path))
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise LabelFileError(f"{yaml_path.name}: malformed YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise LabelFileError(f"{yaml_path.name}: expected a mapping with path, train, val and names")
    root = yaml_path.parent
    if data.get("path"):
        given = Path(str(data["path"]))
        candidate = given if given.is_absolute() else yaml_path.parent / given
        root = candidate if candidate.is_dir() else root  # a moved dataset: fall back to the yaml's folder
    classes = _class_map(data.get("names"), yaml_path.name, problems)
    if not any(data.get(s) for s in ("train", "val", "test")):
        raise LabelFileError(
            f"{yaml_path.name}: needs at least one of 'train', 'val', 'test' (image folders)"
        )

    coco = new_coco()
    seen: set[Path] = set()
    for key in ("train", "val", "test"):
        if not data.get(key):
            continue
        for img_path, listed_under in _split_images(root, data[key], yaml_path.name):
            if img_path in seen:
                continue
            seen.add(img_path)
            _read_image(coco, root, img_path, listed_under, key, classes, problems)
    return Dataset(root=root, coco=coco, source_format=NAME)


def _read_image(coco, root, img_path, listed_under, split, classes, problems) -> None:
    image_id = len(coco["images"]) + 1
    rel = os.path.relpath(img_path, root).replace(os.sep, "/")
    extra = {"split": normalise_split(split)}
    if listed_under is not None:
        extra["import_name"] = os.path.relpath(img_path, listed_under).replace(os.sep, "/")
    size = checked_size(img_path, rel, problems)
    if size is None:
        return
    width, height = size
    families = []
    lp = label_path(img_path)
    lines = lp.read_text(encoding="utf-8").splitlines() if lp.exists() else []
    lrel = os.path.relpath(lp, root).replace(os.sep, "/")
    for n, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls = int(fields[0])
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise LabelFileError(
                f"{lrel} line {n}: expected 'class cx cy w h' numbers, got {line!r}"
            ) from None
        if len(values) == 4:
            cx, cy, w, h = values
            x0, y0 = cx - w / 2, cy - h / 2
        elif len(values) >= 6 and len(values) % 2 == 0:  # segmentation polygon
            xs, ys = values[0::2], values[1::2]
            x0, y0, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
        else:
            raise LabelFileError(
                f"{lrel} line {n}: expected 'class cx cy w h' (5 numbers), got {len(fields)}"
            )
        if cls not in classes:
            problems.add(
                "unknown_class",
                f"{lrel} line {n}",
                f"unknown class index {cls} (data.yaml names {sorted(classes)})",
            )
            continue
        family, subtype = classes[cls]
        bbox = [x0 * width, y0 * height, w * width, h * height]
        ann_id = len(coco["annotations"]) + 1
        coco["annotations"].append(make_annotation(ann_id, image_id, family, bbox, subtype))
        families.append(family)
    coco["images"].append(make_image(image_id, rel, width, height, sort_families(families), **extra))


def write(dataset: Dataset, folder: Path, final_dir: Path | None = None) -> Path:
    """Write ``images/<split>/``, ``labels/<split>/`` and ``data.yaml``; ``split`` comes from each image
    record (export fills it from the manifest). ``path`` in data.yaml is the final folder, absolute,
    because Ultralytics resolves a relative ``path`` against its own datasets folder."""
    anns: dict[int, list[dict]] = {img["id"]: [] for img in dataset.coco["images"]}
    for ann in dataset.coco["annotations"]:
        anns[ann["image_id"]].append(ann)
    used: dict[str, str] = {}
    splits = set()
    for img in dataset.coco["images"]:
        split = img.get("split") or "train"
        splits.add(split)
        name = internal_name(img)[len(IMAGES_DIR) + 1 :]
        dst = folder / IMAGES_DIR / split / name
        label_rel = f"labels/{split}/{name.rsplit('.', 1)[0]}.txt"
        if label_rel in used:
            raise LabelFileError(
                f"{img['file_name']} and {used[label_rel]} would share the YOLO label file {label_rel}: "
                "rename one"
            )
        used[label_rel] = img["file_name"]
        copy_image(dataset.image_path(img), dst)
        lines = []
        for ann in anns[img["id"]]:
            x, y, w, h = ann["bbox"]
            cls = CATEGORY_IDS[ann["family"]] - 1
            cx, cy = (x + w / 2) / img["width"], (y + h / 2) / img["height"]
            nums = (cx, cy, w / img["width"], h / img["height"])
            lines.append(f"{cls} " + " ".join(f"{v:.10g}" for v in nums))
        (folder / label_rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / label_rel).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    data = {"path": str(Path(final_dir or folder).resolve())}
    for split in ("train", "val", "test"):
        if split in splits:
            data[split] = f"{IMAGES_DIR}/{split}"
    if "val" not in data and "train" in data:
        data["val"] = data["train"]  # Ultralytics needs a val entry
    data["names"] = dict(enumerate(FAMILIES))
    out = folder / "data.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return out


__all__ = ["IMAGE_SUFFIXES", "label_path", "read", "write"]
