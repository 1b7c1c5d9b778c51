"""Image-level labels as a CSV of ``file,label`` (header optional).

``file`` is relative to the CSV's folder (bare names are also looked up under ``images/``); ``label``
is ``good``, a family or a subtype (read as its family). A photo with two families has two rows (a
cell with ``stitching;logo`` also works). An optional ``split`` column is kept. Boxes and subtypes are
lost on export.
"""

from __future__ import annotations

import csv
from pathlib import Path

from datasets.coco import (
    IMAGES_DIR,
    Dataset,
    LabelFileError,
    Problems,
    checked_size,
    copy_image,
    expected_classes,
    internal_name,
    make_image,
    new_coco,
    normalise_split,
    parse_class,
    sort_families,
)
from datasets.taxonomy import GOOD

NAME = "csv"
EXPORT_FILE = "labels.csv"
FILE_COLUMNS = ("file", "filename", "file_name", "image", "path")
LABEL_COLUMNS = ("label", "labels", "class")


def _csv_path(path: Path) -> Path:
    if path.is_file():
        return path
    if (path / EXPORT_FILE).is_file():
        return path / EXPORT_FILE
    files = sorted(path.glob("*.csv"))
    if len(files) != 1:
        raise FileNotFoundError(f"{path}: expected {EXPORT_FILE} (file,label), found {len(files)} .csv files")
    return files[0]


def read(path: Path, problems: Problems) -> Dataset:
    csv_path = _csv_path(Path(path))
    root, fname = csv_path.parent, csv_path.name
    try:
        rows = list(csv.reader(csv_path.read_text(encoding="utf-8-sig").splitlines()))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise LabelFileError(f"{fname}: malformed CSV ({exc})") from exc
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if any(c in FILE_COLUMNS for c in header):
        try:
            file_col = next(header.index(c) for c in FILE_COLUMNS if c in header)
            label_col = next(header.index(c) for c in LABEL_COLUMNS if c in header)
        except StopIteration:
            raise LabelFileError(f"{fname} line 1: header needs a 'file' and a 'label' column") from None
        split_col = header.index("split") if "split" in header else None
        ncols, start = len(header), 2
        rows = rows[1:]
    else:
        file_col, label_col, split_col, ncols, start = 0, 1, None, 2, 1
    photos: dict[str, dict] = {}
    for line_no, row in enumerate(rows, start=start):
        where = f"{fname} line {line_no}"
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != ncols:
            raise LabelFileError(f"{where}: expected {ncols} columns (file,label), got {len(row)}: {row}")
        file_ref, label_cell = row[file_col].strip(), row[label_col].strip()
        if not file_ref or not label_cell:
            raise LabelFileError(f"{where}: empty file or label cell")
        file_name = file_ref
        if not (root / file_name).exists() and (root / IMAGES_DIR / file_name).exists():
            file_name = f"{IMAGES_DIR}/{file_name}"
        entry = photos.setdefault(file_name, {"classes": set(), "split": None, "where": where})
        for name in label_cell.replace("|", ";").split(";"):
            cls = parse_class(name)
            if cls is None:
                problems.add("unknown_class", where, f"unknown class {name.strip()!r} ({expected_classes()})")
            else:
                entry["classes"].add(cls)
        if split_col is not None:
            entry["split"] = normalise_split(row[split_col]) or entry["split"]
    coco = new_coco()
    for file_name, entry in photos.items():
        size = checked_size(root / file_name, f"{entry['where']} ({file_name})", problems)
        if size is None:
            continue
        width, height = size
        image_id = len(coco["images"]) + 1
        families = sort_families(entry["classes"] - {GOOD})
        coco["images"].append(make_image(image_id, file_name, width, height, families, split=entry["split"]))
    return Dataset(root=root, coco=coco, source_format=NAME)


def write(dataset: Dataset, folder: Path, final_dir: Path | None = None) -> Path:
    out = folder / EXPORT_FILE
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        for img in dataset.coco["images"]:
            name = internal_name(img)
            copy_image(dataset.image_path(img), folder / name)
            for cls in img["labels"] or [GOOD]:
                writer.writerow([name, cls])
    return out
