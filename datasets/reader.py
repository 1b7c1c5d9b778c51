"""Read any supported label format into the internal COCO contract; import and export datasets.

``read_dataset`` is what ``loupe train --data`` and ``loupe val --data`` call: it accepts a Loupe
dataset folder or a YOLO / Label Studio / CVAT / folder-per-class / CSV dataset as the tools write them.
"""

from __future__ import annotations

from pathlib import Path

from datasets.coco import (
    Dataset,
    LabelFileError,
    Problems,
    clip_box,
    sort_families,
    staged_output,
    write_internal,
)
from datasets.formats import detect_format, format_module

__all__ = [
    "Dataset",
    "LabelFileError",
    "export_dataset",
    "import_dataset",
    "read_dataset",
    "validate_dataset",
]


def read_dataset(path: Path | str, fmt: str = "auto", problems: Problems | None = None) -> Dataset:
    """Read a dataset in ``fmt`` (``auto`` detects it) into the internal COCO contract.

    Raises :class:`LabelFileError` naming the file, record and problem for a malformed label file, an
    unknown class, a missing image or a box outside its image (boxes overhanging by less than a pixel
    are clipped). Pass ``Problems(strict=False)`` to collect problems instead (``loupe data check``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a dataset folder or a label file")
    fmt = detect_format(path) if fmt == "auto" else format_module(fmt).NAME
    problems = problems if problems is not None else Problems(strict=True)
    dataset = format_module(fmt).read(path, problems)
    validate_dataset(dataset, problems)
    return dataset


def validate_dataset(dataset: Dataset, problems: Problems) -> None:
    """Cheap checks every reader needs: images exist, boxes lie inside their photo (clipped when they
    overhang by rounding), image labels include the families of their boxes."""
    images = {img["id"]: img for img in dataset.coco["images"]}
    for img in dataset.coco["images"]:
        if not dataset.image_path(img).is_file():
            problems.add(
                "missing_image",
                f"image id {img['id']} ({img['file_name']})",
                f"image file not found under {dataset.root}; add the photo or remove its record",
            )
    for ann in dataset.coco["annotations"]:
        img = images[ann["image_id"]]
        clipped = clip_box(ann["bbox"], img["width"], img["height"])
        if clipped is None:
            x, y, w, h = ann["bbox"]
            problems.add(
                "box_outside_image",
                f"annotation id {ann['id']} ({img['file_name']})",
                f"box [x={x:g}, y={y:g}, w={w:g}, h={h:g}] is outside the {img['width']}x{img['height']} "
                "image (or empty); fix or delete the box",
            )
            continue
        if clipped != ann["bbox"]:
            ann["bbox"], ann["area"] = clipped, clipped[2] * clipped[3]
        if ann["family"] not in img["labels"]:
            img["labels"] = sort_families([*img["labels"], ann["family"]])


def import_dataset(src: Path | str, out_dir: Path | str, fmt: str = "auto") -> Path:
    """Convert ``src`` into a new Loupe dataset folder (``annotations.json`` + copied ``images/``).

    Everything is written into a temp folder next to ``out_dir`` and renamed at the end, so a failed
    import leaves no output folder behind.
    """
    dataset = read_dataset(src, fmt)
    with staged_output(Path(out_dir)) as tmp:
        write_internal(dataset, tmp)
    return Path(out_dir)


def export_dataset(dataset_dir: Path | str, out_dir: Path | str, fmt: str) -> Path:
    """Write a dataset (any readable format, normally a Loupe folder) as ``fmt`` into a new ``out_dir``;
    returns the file to point the target tool at (``data.yaml``, the .json, the .xml, the .csv, or the
    folder). Photos without a split get the manifest's deterministic split."""
    from datasets.manifest import assign_splits

    module = format_module(fmt)
    dataset = read_dataset(dataset_dir)
    if getattr(module, "HAS_SPLITS", False):
        splits = assign_splits(dataset)
        for img in dataset.coco["images"]:
            img["split"] = img.get("split") or splits[img["id"]]
    out_dir = Path(out_dir)
    with staged_output(out_dir) as tmp:
        written = module.write(dataset, tmp, final_dir=out_dir)
    return out_dir / written.relative_to(tmp)
