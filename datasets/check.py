"""``loupe data check``: counts, box sizes and every problem in a dataset, never stopping at the first.

Problems found: malformed label files (with the record named), unknown classes, missing and unreadable
photos, boxes outside their photo, recorded sizes that differ from the photo, and duplicate photos
(same bytes, which would leak between train and val).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from datasets.coco import LabelFileError, Problem, Problems, annotations_by_image, image_size
from datasets.manifest import file_sha256
from datasets.taxonomy import FAMILIES, GOOD, SUBTYPES

# Boxes smaller than this (sqrt of area, px) are "small" in COCO's sense: they need tiles or high resolution.
SMALL_BOX_PX = 32


@dataclass
class CheckReport:
    root: str
    source_format: str
    images: int = 0
    boxes: int = 0
    images_per_class: dict[str, int] = field(default_factory=dict)  # good and each family
    boxes_per_family: dict[str, int] = field(default_factory=dict)
    boxes_per_subtype: dict[str, int] = field(default_factory=dict)  # "<family>/unknown" when not given
    box_size_px: dict[str, float] = field(default_factory=dict)  # sqrt(area): min, p10, median, p90, max
    box_size_rel: dict[str, float] = field(default_factory=dict)  # the same over the photo's short side
    small_boxes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"{self.root} ({self.source_format}): {self.images} photos, {self.boxes} boxes"]
        lines.append("photos per class: " + ", ".join(f"{k} {v}" for k, v in self.images_per_class.items()))
        lines.append("boxes per family: " + ", ".join(f"{k} {v}" for k, v in self.boxes_per_family.items()))
        if self.boxes_per_subtype:
            lines.append("boxes per subtype:")
            lines += [f"  {k:<36}{v:>6}" for k, v in self.boxes_per_subtype.items() if v]
        if self.box_size_px:
            px = ", ".join(f"{k} {v:.0f}" for k, v in self.box_size_px.items())
            rel = ", ".join(f"{k} {v:.3f}" for k, v in self.box_size_rel.items())
            lines.append(f"box size sqrt(area) px: {px}")
            lines.append(f"box size / photo short side: {rel}")
            lines.append(f"small boxes (< {SMALL_BOX_PX} px): {self.small_boxes}")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  [{p.kind}] {p}" for p in self.problems]
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    q = np.quantile(np.asarray(values, dtype=float), [0, 0.1, 0.5, 0.9, 1.0])
    return dict(zip(("min", "p10", "median", "p90", "max"), (float(v) for v in q), strict=True))


def _decodes(path: Path) -> str | None:
    """None when the photo decodes, else why not. JPEGs decode at 1/8 scale: a truncated or corrupt
    file still fails, at a fraction of a full 12 MP decode."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except Exception as exc:  # PIL raises many types for corrupt data
        return f"{type(exc).__name__}: {exc}"
    return None


def check_dataset(path: Path | str, fmt: str = "auto") -> CheckReport:
    """Read a dataset leniently and report counts, box sizes and every problem found."""
    from datasets.reader import read_dataset

    path = Path(path)
    problems = Problems(strict=False)
    try:
        dataset = read_dataset(path, fmt, problems)
    except (LabelFileError, FileNotFoundError, NotADirectoryError) as exc:
        # A malformed file stops its reader: report it (the message names the file and record).
        return CheckReport(
            str(path), fmt, problems=[*problems.items, Problem("malformed_labels", str(path), str(exc))]
        )
    report = CheckReport(str(path), dataset.source_format)
    coco = dataset.coco
    anns = annotations_by_image(coco)
    report.images, report.boxes = len(coco["images"]), len(coco["annotations"])
    classes = Counter(label for img in coco["images"] for label in (img["labels"] or [GOOD]))
    report.images_per_class = {c: classes.get(c, 0) for c in (GOOD, *FAMILIES)}
    fams = Counter(a["family"] for a in coco["annotations"])
    report.boxes_per_family = {f: fams.get(f, 0) for f in FAMILIES}
    subs = Counter(f"{a['family']}/{a.get('subtype') or 'unknown'}" for a in coco["annotations"])
    report.boxes_per_subtype = {
        key: subs[key] for f in FAMILIES for key in (*(f"{f}/{s}" for s in SUBTYPES[f]), f"{f}/unknown")
    }
    sizes, rel = [], []
    by_sha: dict[str, str] = {}
    for img in coco["images"]:
        where = f"image id {img['id']} ({img['file_name']})"
        p = dataset.image_path(img)
        for a in anns[img["id"]]:
            side = float(a["bbox"][2] * a["bbox"][3]) ** 0.5
            sizes.append(side)
            rel.append(side / min(img["width"], img["height"]))
        if not p.is_file():
            continue  # already reported as missing_image by the reader
        why = _decodes(p)
        if why is not None:
            problems.add("unreadable_image", where, f"does not decode ({why}); replace or remove the photo")
            continue
        actual = image_size(p)
        if actual != (img["width"], img["height"]):
            problems.add(
                "size_mismatch",
                where,
                f"recorded {img['width']}x{img['height']} but the photo is {actual[0]}x{actual[1]} "
                "(after EXIF orientation); boxes may be in the wrong pixels",
            )
        sha = file_sha256(p)
        if sha in by_sha:
            problems.add("duplicate_image", where, f"same bytes as {by_sha[sha]}; remove one of them")
        else:
            by_sha[sha] = img["file_name"]
    report.box_size_px, report.box_size_rel = _quantiles(sizes), _quantiles(rel)
    report.small_boxes = sum(s < SMALL_BOX_PX for s in sizes)
    report.problems = problems.items
    return report
