"""Dataset versions: a manifest with a content hash, the class map and a deterministic split.

A training run records the manifest, so anyone can tell exactly which photos and labels a model saw
and which of them it was validated on.

* ``version`` is a short sha256 over every photo's bytes and its canonical labels (file names and
  list order do not matter; changing one label or one byte of a photo changes it).
* The split hashes each photo's *content* with the seed: a photo's split never depends on which other
  photos are in the dataset, and identical photos always land in the same split (no leakage).
  Stratification by family: every family (and ``good``) with at least two photos gets at least one in
  val and keeps at least one in train; the hash threshold gives each family about ``val_fraction``.
  A split already recorded on a photo (from a YOLO/CVAT source with train/val folders) is kept.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel

from datasets.coco import MANIFEST_FILE, SPLITS, Dataset, annotations_by_image
from datasets.taxonomy import CATEGORY_IDS, FAMILIES, GOOD

VERSION_LENGTH = 12


class ManifestImage(BaseModel):
    file_name: str
    sha256: str
    split: str
    labels: list[str]
    boxes: int


class Manifest(BaseModel):
    version: str
    content_sha256: str
    split_id: str  # short hash of (photo, split) pairs: two runs with the same split_id saw the same split
    classes: dict[str, int]
    val_fraction: float
    test_fraction: float
    seed: int
    source_format: str
    counts: dict[str, dict[str, int]]  # split (and "all") -> images, boxes, good, <family>...
    images: list[ManifestImage]

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [f"dataset version {self.version}  (split {self.split_id}, seed {self.seed})"]
        lines.append("classes: " + ", ".join(f"{name}={cid}" for name, cid in self.classes.items()))
        cols = ["images", "boxes", GOOD, *FAMILIES]
        lines.append(f"{'split':<6}" + "".join(f"{c:>11}" for c in cols))
        for split, counts in self.counts.items():
            lines.append(f"{split:<6}" + "".join(f"{counts.get(c, 0):>11}" for c in cols))
        return "\n".join(lines)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical_labels(image: dict, annotations: list[dict]) -> str:
    """The labels of one photo as canonical JSON: sorted, boxes rounded to 1/1000 px, ids dropped."""
    boxes = sorted(
        [a["family"], a.get("subtype") or "", *(round(float(v), 3) for v in a["bbox"])] for a in annotations
    )
    return json.dumps(
        {"labels": sorted(image["labels"]), "boxes": boxes}, sort_keys=True, separators=(",", ":")
    )


def _unit_hash(seed: int, sha: str) -> float:
    return int(hashlib.sha256(f"{seed}:{sha}".encode()).hexdigest()[:16], 16) / 2**64


def _stratify(dataset: Dataset, u: dict[int, float], splits: dict[int, str], fixed: set[int]) -> None:
    """Move the fewest photos so that each family with >= 2 photos has one in val and one in train."""
    for stratum in (*FAMILIES, GOOD):
        ids = [
            img["id"]
            for img in dataset.coco["images"]
            if (stratum in img["labels"] or (stratum == GOOD and not img["labels"]))
            and splits[img["id"]] != "test"
        ]
        movable = sorted((i for i in ids if i not in fixed), key=lambda i: (u[i], i))
        if len(ids) < 2 or not movable:
            continue
        in_val = [i for i in ids if splits[i] == "val"]
        if not in_val:
            splits[movable[0]] = "val"
        elif len(in_val) == len(ids):
            splits[movable[-1]] = "train"


def assign_splits(
    dataset: Dataset,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    shas: dict[int, str] | None = None,
) -> dict[int, str]:
    """image id -> ``train``/``val``/``test``, deterministic in the photos' content and ``seed``."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction}: each must be in [0, 1) "
            "and their sum below 1"
        )
    images = dataset.coco["images"]
    shas = shas or {img["id"]: file_sha256(dataset.image_path(img)) for img in images}
    u = {img["id"]: _unit_hash(seed, shas[img["id"]]) for img in images}
    splits: dict[int, str] = {}
    fixed: set[int] = set()
    for img in images:
        given = img.get("split")
        if given in SPLITS:
            splits[img["id"]] = given
            fixed.add(img["id"])
        elif u[img["id"]] < test_fraction:
            splits[img["id"]] = "test"
        elif u[img["id"]] < test_fraction + val_fraction:
            splits[img["id"]] = "val"
        else:
            splits[img["id"]] = "train"
    if val_fraction > 0:
        _stratify(dataset, u, splits, fixed)
    return splits


def build_manifest(
    dataset_dir: Path | str, val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0
) -> Manifest:
    """The manifest of a dataset (a Loupe folder, or any format :func:`read_dataset` reads)."""
    from datasets.reader import read_dataset

    dataset = read_dataset(Path(dataset_dir))
    return manifest_of(dataset, val_fraction, test_fraction, seed)


def manifest_of(
    dataset: Dataset, val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0
) -> Manifest:
    """The manifest of a dataset already in memory."""
    images = dataset.coco["images"]
    shas = {img["id"]: file_sha256(dataset.image_path(img)) for img in images}
    anns = annotations_by_image(dataset.coco)
    entries = sorted(
        hashlib.sha256(f"{shas[img['id']]}\n{canonical_labels(img, anns[img['id']])}".encode()).hexdigest()
        for img in images
    )
    content = hashlib.sha256("\n".join(entries).encode()).hexdigest()
    splits = assign_splits(dataset, val_fraction, test_fraction, seed, shas)
    split_pairs = sorted(f"{shas[i]}:{s}" for i, s in splits.items())
    split_id = hashlib.sha256("\n".join(split_pairs).encode()).hexdigest()[:VERSION_LENGTH]

    records = [
        ManifestImage(
            file_name=img["file_name"],
            sha256=shas[img["id"]],
            split=splits[img["id"]],
            labels=list(img["labels"]),
            boxes=len(anns[img["id"]]),
        )
        for img in sorted(images, key=lambda im: im["file_name"])
    ]
    counts: dict[str, dict[str, int]] = {}
    for rec in records:
        for key in ("all", rec.split):
            c = counts.setdefault(key, {"images": 0, "boxes": 0, GOOD: 0, **dict.fromkeys(FAMILIES, 0)})
            c["images"] += 1
            c["boxes"] += rec.boxes
            for label in rec.labels or [GOOD]:
                c[label] += 1
    order = ["all", *SPLITS]
    counts = {k: counts[k] for k in order if k in counts}
    return Manifest(
        version=content[:VERSION_LENGTH],
        content_sha256=content,
        split_id=split_id,
        classes=dict(CATEGORY_IDS),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        source_format=dataset.source_format,
        counts=counts,
        images=records,
    )


def write_manifest(manifest: Manifest, dataset_dir: Path | str) -> Path:
    """Write ``DIR/manifest.json``."""
    path = Path(dataset_dir) / MANIFEST_FILE
    path.write_text(manifest.model_dump_json(indent=1) + "\n", encoding="utf-8")
    return path


def read_manifest(path: Path | str) -> Manifest:
    """Read a manifest file (or ``DIR/manifest.json``)."""
    path = Path(path)
    path = path / MANIFEST_FILE if path.is_dir() else path
    return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
