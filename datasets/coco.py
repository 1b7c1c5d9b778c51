"""The internal label format: a COCO dict plus the helpers every format reader and writer shares.

A dataset is a folder with ``annotations.json`` and ``images/``. Images carry ``labels`` (the families
present in the photo, ``[]`` = good); annotations carry ``family`` and ``subtype`` next to the COCO
``category_id`` (the family's :data:`~datasets.taxonomy.CATEGORY_IDS`). Boxes are ``[x, y, w, h]`` in the
photo's own pixels after EXIF orientation.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from datasets.taxonomy import CATEGORY_IDS, FAMILIES, GOOD, SUBTYPE_FAMILY, SUBTYPES, coco_categories

ANNOTATIONS_FILE = "annotations.json"
MANIFEST_FILE = "manifest.json"  # written by datasets.manifest; never a label file
IMAGES_DIR = "images"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".heic", ".heif")
CLASS_NAMES: tuple[str, ...] = (GOOD, *FAMILIES)  # image-level classes, in the order users see them
FAMILY_BY_ID: dict[int, str] = {cid: fam for fam, cid in CATEGORY_IDS.items()}
# A box may overhang its photo by this much (rounding in other tools) before it counts as outside.
BOX_TOLERANCE_PX = 1.0


class LabelFileError(ValueError):
    """A label file is malformed or names something Loupe does not know; the message names the file,
    the record and the problem, e.g. ``labels.csv line 7: unknown class 'stiching' (...)``."""


@dataclass
class Dataset:
    """A dataset in memory: ``coco`` follows the internal contract, ``file_name`` relative to ``root``.

    Readers of formats with splits add ``split`` (train/val/test) to image records, which the
    manifest keeps, and ``import_name`` (the name under ``images/`` an import gives the photo).
    """

    root: Path
    coco: dict
    source_format: str = "coco"

    def image_path(self, image: dict) -> Path:
        return self.root / image["file_name"]


@dataclass
class Problem:
    """One thing wrong with a dataset: ``kind`` is a stable key, ``where`` names the file and record."""

    kind: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Problems:
    """Where readers put what is wrong: strict readers raise at the first, ``loupe data check`` collects."""

    strict: bool = True
    items: list[Problem] = field(default_factory=list)

    def add(self, kind: str, where: str, message: str) -> None:
        problem = Problem(kind, where, message)
        if self.strict:
            raise LabelFileError(str(problem))
        self.items.append(problem)


def expected_classes(include_good: bool = True) -> str:
    names = CLASS_NAMES if include_good else FAMILIES
    return "expected one of " + ", ".join(names)


def new_coco() -> dict:
    """An empty internal COCO dict."""
    return {"images": [], "annotations": [], "categories": coco_categories()}


def make_image(
    image_id: int, file_name: str, width: int, height: int, labels: list[str], **extra: object
) -> dict:
    """An image record; ``extra`` keeps optional keys such as ``scene``, ``milestone``, ``product``."""
    record = {
        "id": int(image_id),
        "file_name": file_name,
        "width": int(width),
        "height": int(height),
        "labels": sort_families(labels),
    }
    record.update({k: v for k, v in extra.items() if v is not None})
    return record


def make_annotation(
    ann_id: int,
    image_id: int,
    family: str,
    bbox: list[float],
    subtype: str | None = None,
    segmentation: list | dict | None = None,
) -> dict:
    """An annotation record; without a polygon the segmentation is the box as a 4-point polygon."""
    x, y, w, h = (float(v) for v in bbox)
    if segmentation is None:
        segmentation = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return {
        "id": int(ann_id),
        "image_id": int(image_id),
        "category_id": CATEGORY_IDS[family],
        "bbox": [x, y, w, h],
        "area": w * h,
        "iscrowd": 0,
        "segmentation": segmentation,
        "family": family,
        "subtype": subtype,
    }


def sort_families(labels: list[str] | set[str]) -> list[str]:
    """Families in taxonomy order, without duplicates and without ``good`` (good = no families)."""
    return [f for f in FAMILIES if f in set(labels)]


def parse_class(name: str) -> str | None:
    """Map a user's class or subtype name to a family (or ``good``); None when unknown."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key in FAMILIES or key == GOOD:
        return key
    return SUBTYPE_FAMILY.get(key)


def annotations_by_image(coco: dict) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {img["id"]: [] for img in coco["images"]}
    for ann in coco["annotations"]:
        out.setdefault(ann["image_id"], []).append(ann)
    return out


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed, i.e. after EXIF orientation; reads the header only."""
    from PIL import Image, UnidentifiedImageError

    _register_heif()
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError) as exc:
        raise LabelFileError(f"{path}: unreadable image ({exc}); replace or remove the file") from exc
    # EXIF orientations 5-8 turn the photo by 90 degrees.
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def checked_size(path: Path, where: str, problems: Problems) -> tuple[int, int] | None:
    """:func:`image_size`, reporting an unreadable photo as a problem (None) instead of stopping."""
    if not path.is_file():
        problems.add(
            "missing_image", where, f"image file {path} not found; add the photo or remove its record"
        )
        return None
    try:
        return image_size(path)
    except LabelFileError as exc:
        problems.add(
            "unreadable_image", where, f"unreadable image ({exc.__cause__}); replace or remove the file"
        )
        return None


def _register_heif() -> None:
    try:
        from pillow_heif import register_heif_opener

        register_heif_opener()
    except ImportError:  # HEIC support is optional
        pass


def label_jsons(folder: Path) -> list[Path]:
    """The .json files in a folder that may hold labels (not the dataset's manifest)."""
    return sorted(p for p in folder.glob("*.json") if p.name != MANIFEST_FILE)


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def clip_box(bbox: list[float], width: int, height: int) -> list[float] | None:
    """Clip a box overhanging its photo by less than :data:`BOX_TOLERANCE_PX`; None when truly outside."""
    x, y, w, h = bbox
    t = BOX_TOLERANCE_PX
    if w <= 0 or h <= 0 or x < -t or y < -t or x + w > width + t or y + h > height + t:
        return None
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    return [x0, y0, x1 - x0, y1 - y0]


def normalise_coco(coco: object, source: str, problems: Problems) -> dict:
    """Validate a COCO dict (Loupe's or another tool's) and bring it to the internal contract.

    Categories are matched to families by name (or by subtype name); images without ``labels`` get
    the families of their boxes; annotations without ``subtype`` get None.
    """
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise LabelFileError(f"{source}: not a COCO file (expected an object with an 'images' list)")
    cat_family: dict[int, str] = {}
    cat_subtype: dict[int, str] = {}
    for i, cat in enumerate(coco.get("categories") or []):
        try:
            family = parse_class(str(cat["name"]))
            cat_id = int(cat["id"])
        except (KeyError, TypeError, ValueError):
            raise LabelFileError(f"{source} categories[{i}]: needs 'id' and 'name'") from None
        if family is None or family == GOOD:
            problems.add("unknown_class", f"{source} category id {cat_id}", _unknown(cat["name"], False))
            continue
        cat_family[cat_id] = family
        if cat["name"] in SUBTYPE_FAMILY:
            cat_subtype[cat_id] = cat["name"]

    out = new_coco()
    seen_ids: set[int] = set()
    for i, img in enumerate(coco["images"]):
        where = f"{source} images[{i}]"
        try:
            image_id = int(img["id"])
            file_name = str(img["file_name"])
            width, height = int(img["width"]), int(img["height"])
        except (KeyError, TypeError, ValueError):
            raise LabelFileError(
                f"{where}: needs integer 'id', 'width', 'height' and a 'file_name'"
            ) from None
        if image_id in seen_ids:
            raise LabelFileError(f"{where}: duplicate image id {image_id}; ids must be unique")
        seen_ids.add(image_id)
        labels = img.get("labels")
        extra = {k: v for k, v in img.items() if k not in {"id", "file_name", "width", "height", "labels"}}
        families = []
        for name in labels or []:
            family = parse_class(str(name))
            if family is None:
                problems.add("unknown_class", f"{where} ({file_name})", _unknown(name))
            elif family != GOOD:
                families.append(family)
        record = make_image(image_id, file_name, width, height, families, **extra)
        record["_has_labels"] = labels is not None
        out["images"].append(record)

    images = {img["id"]: img for img in out["images"]}
    for i, ann in enumerate(coco.get("annotations") or []):
        where = f"{source} annotation id {ann.get('id', f'[{i}]')}" if isinstance(ann, dict) else source
        try:
            image_id = int(ann["image_id"])
            bbox = [float(v) for v in ann["bbox"]]
            if len(bbox) != 4:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise LabelFileError(
                f"{where}: needs 'image_id' and a 'bbox' of 4 numbers [x, y, w, h]"
            ) from None
        family = ann.get("family") or cat_family.get(ann.get("category_id"))
        if family not in FAMILIES:
            name = ann.get("family") or f"category_id {ann.get('category_id')}"
            problems.add("unknown_class", where, _unknown(name, False))
            continue
        subtype = ann.get("subtype") or cat_subtype.get(ann.get("category_id"))
        if subtype is not None and SUBTYPE_FAMILY.get(subtype) != family:
            problems.add(
                "unknown_class",
                where,
                f"unknown subtype {subtype!r} for family {family!r} "
                f"(expected one of {', '.join(SUBTYPES[family])})",
            )
            subtype = None
        img = images.get(image_id)
        if img is None:
            problems.add("missing_image", where, f"refers to image_id {image_id}, which is not in 'images'")
            continue
        record = make_annotation(
            ann.get("id", i + 1), image_id, family, bbox, subtype, ann.get("segmentation")
        )
        out["annotations"].append(record)

    for img in out["images"]:  # images from other tools carry no 'labels': their boxes say it
        if not img.pop("_has_labels"):
            img["labels"] = sort_families(
                [a["family"] for a in out["annotations"] if a["image_id"] == img["id"]]
            )
    return out


def _unknown(name: object, include_good: bool = True) -> str:
    return f"unknown class {str(name)!r} ({expected_classes(include_good)})"


def load_json(path: Path) -> object:
    """Parse a JSON label file; a syntax error names the file, line and column."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LabelFileError(
            f"{path.name} line {exc.lineno} column {exc.colno}: malformed JSON ({exc.msg})"
        ) from exc
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"{path.name}: not UTF-8 text ({exc})") from exc


def save_coco(coco: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def relabel_ids(coco: dict) -> dict:
    """Renumber image and annotation ids 1..n (stable order); merged datasets need unique ids."""
    id_map = {img["id"]: i for i, img in enumerate(coco["images"], start=1)}
    for img in coco["images"]:
        img["id"] = id_map[img["id"]]
    for j, ann in enumerate(coco["annotations"], start=1):
        ann["id"] = j
        ann["image_id"] = id_map[ann["image_id"]]
    return coco


@contextmanager
def staged_output(out_dir: Path) -> Iterator[Path]:
    """Write into a temp folder next to ``out_dir`` and rename it into place only when all went well,
    so a failed import or export leaves nothing half-written behind."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(
            f"{out_dir} already exists and is not empty: choose a new output folder or delete it"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_image(src: Path, dst: Path) -> None:
    """Copy (hard-link when possible: datasets of 12 MP photos are large) an image into a dataset."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_internal(dataset: Dataset, folder: Path) -> dict:
    """Write ``dataset`` in the internal layout (``annotations.json`` + ``images/``) into ``folder``
    (callers stage it with :func:`staged_output`); returns the written COCO dict. File names are kept
    under ``images/``; a split folder from a split layout is dropped (see :func:`internal_name`)."""
    coco = json.loads(json.dumps(dataset.coco))  # a deep copy we may rename in
    used: set[str] = set()
    for img in coco["images"]:
        src = dataset.image_path(img)
        name = internal_name(img)
        stem, suffix, k = name.rsplit(".", 1)[0], Path(name).suffix, 1
        while name.lower() in used:  # two sources' photos with one name: keep both
            k += 1
            name = f"{stem}_{k}{suffix}"
        used.add(name.lower())
        img.pop("import_name", None)
        img["file_name"] = name
        copy_image(src, folder / name)
    save_coco(coco, folder / ANNOTATIONS_FILE)
    return coco


def internal_name(img: dict) -> str:
    """``images/<name>`` for an image record: a reader of a split layout (``images/train/x.jpg``) sets
    ``import_name`` (``x.jpg``) so that the photo comes back as ``images/x.jpg``; otherwise a leading
    ``images/`` is kept and anything else is placed under it."""
    name = img.get("import_name") or img["file_name"]
    parts = [p for p in Path(name).parts if p not in ("..", ".", "/", "\\")]
    if "import_name" not in img and parts and parts[0] == IMAGES_DIR:
        parts = parts[1:]
    return "/".join([IMAGES_DIR, *parts])


SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"training": "train", "valid": "val", "validation": "val", "testing": "test"}


def normalise_split(name: object) -> str | None:
    """``train``/``val``/``test`` for the split names tools use (``Validation``, ``valid``...), else None."""
    key = str(name or "").strip().lower()
    key = _SPLIT_ALIASES.get(key, key)
    return key if key in SPLITS else None
