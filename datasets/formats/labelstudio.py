"""Label Studio's JSON export (the full "JSON" export: a list of tasks), and a matching labeling config.

A task is ``{"id", "data": {"image": ...}, "annotations": [{"result": [...]}]}``. Result items:

* ``rectanglelabels``: ``value`` = ``x, y, width, height`` in percent of ``original_width`` /
  ``original_height``, ``rotation`` (degrees, clockwise about the top-left corner) and
  ``rectanglelabels`` (the family; a subtype name also works);
* ``choices`` with the **same id** as a rectangle (a ``perRegion`` Choices): the box's subtype;
* other ``choices``: the photo's families (``good`` = none).

Export writes ``labelstudio.json`` with ``data.image`` as ``/data/local-files/?d=images/x.jpg`` (serve
the export folder as local storage) and ``label_config.xml`` for the project. scene/milestone/product
travel in ``data``. Rotated rectangles import as their enclosing axis-aligned box; of several
annotations on a task the first not cancelled is used; tasks nobody labelled are skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from datasets.coco import (
    IMAGES_DIR,
    Dataset,
    LabelFileError,
    Problems,
    checked_size,
    copy_image,
    expected_classes,
    internal_name,
    label_jsons,
    load_json,
    make_annotation,
    make_image,
    new_coco,
    parse_class,
    sort_families,
)
from datasets.taxonomy import FAMILIES, GOOD, SUBTYPE_FAMILY, SUBTYPES

NAME = "labelstudio"
EXPORT_FILE = "labelstudio.json"
EXTRA_KEYS = ("scene", "milestone", "product")


def _json_path(path: Path) -> Path:
    if path.is_file():
        return path
    files = label_jsons(path)
    if len(files) != 1:
        raise FileNotFoundError(f"{path}: expected one Label Studio .json export, found {len(files)}")
    return files[0]


def _resolve_image(root: Path, ref: str) -> str | None:
    """The image's path relative to ``root`` for the ways Label Studio refers to files, or None."""
    parsed = urlparse(ref)
    candidates = []
    if "d" in parse_qs(parsed.query):  # /data/local-files/?d=relative/path
        candidates.append(unquote(parse_qs(parsed.query)["d"][0]))
    path = unquote(parsed.path)
    name = Path(path).name
    candidates += [path.lstrip("/"), f"{IMAGES_DIR}/{name}", name]
    if "-" in name:  # uploads are stored as /data/upload/<project>/<8 hex>-<original name>
        original = name.split("-", 1)[1]
        candidates += [f"{IMAGES_DIR}/{original}", original]
    for c in candidates:
        if c and (root / c).is_file():
            return c
    return None


def _enclosing_box(x: float, y: float, w: float, h: float, degrees: float) -> list[float]:
    if not degrees:
        return [x, y, w, h]
    t = math.radians(degrees)
    corners = [(0, 0), (w, 0), (w, h), (0, h)]
    xs = [x + cx * math.cos(t) - cy * math.sin(t) for cx, cy in corners]
    ys = [y + cx * math.sin(t) + cy * math.cos(t) for cx, cy in corners]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def read(path: Path, problems: Problems) -> Dataset:
    json_path = _json_path(Path(path))
    root, fname = json_path.parent, json_path.name
    tasks = load_json(json_path)
    if isinstance(tasks, dict) and "data" in tasks:
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise LabelFileError(f"{fname}: expected a Label Studio JSON export (a list of tasks)")
    coco = new_coco()
    for i, task in enumerate(tasks):
        where = f"{fname} task {task.get('id', f'[{i}]') if isinstance(task, dict) else f'[{i}]'}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise LabelFileError(f"{where}: a task needs a 'data' object with the image")
        ref = task["data"].get("image")
        if not isinstance(ref, str):
            raise LabelFileError(
                f"{where}: 'data.image' is missing; export with the image field named 'image'"
            )
        annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not annotations:
            continue
        result = annotations[0].get("result")
        if not isinstance(result, list):
            raise LabelFileError(f"{where}: 'annotations[0].result' must be a list")
        file_name = _resolve_image(root, ref)
        if file_name is None:
            problems.add(
                "missing_image", where, f"image {ref!r} not found next to {fname} or in {IMAGES_DIR}/"
            )
            continue
        _read_task(coco, root, file_name, task, result, where, problems)
    return Dataset(root=root, coco=coco, source_format=NAME)


def _read_task(coco, root, file_name, task, result, where, problems) -> None:
    image_id = len(coco["images"]) + 1
    width = height = None
    boxes: dict[str, dict] = {}
    subtypes: dict[str, str] = {}
    families: list[str] = []
    for k, item in enumerate(result):
        rwhere = f"{where} result[{k}]"
        kind, value = item.get("type"), item.get("value") or {}
        width = width or item.get("original_width")
        height = height or item.get("original_height")
        if kind in ("rectanglelabels", "polygonlabels"):
            names = value.get(kind) or []
            if len(names) != 1:
                raise LabelFileError(f"{rwhere}: expected one label in {kind}, got {names}")
            family = parse_class(names[0])
            if family is None or family == GOOD:
                problems.add(
                    "unknown_class", rwhere, f"unknown class {names[0]!r} ({expected_classes(False)})"
                )
                continue
            boxes[item.get("id") or f"#{k}"] = {
                "family": family,
                "subtype": names[0] if names[0] in SUBTYPE_FAMILY else None,
                "value": value,
                "kind": kind,
                "where": rwhere,
            }
        elif kind == "choices":
            for choice in value.get("choices") or []:
                cls = parse_class(choice)
                if cls is None:
                    problems.add("unknown_class", rwhere, f"unknown class {choice!r} ({expected_classes()})")
                elif item.get("id") and "x" in value and choice in SUBTYPE_FAMILY:
                    subtypes[item["id"]] = choice
                elif cls != GOOD:
                    families.append(cls)
    if not (width and height):
        size = checked_size(root / file_name, where, problems)
        if size is None:
            return
        width, height = size
    for rid, box in boxes.items():
        v = box["value"]
        try:
            if box["kind"] == "polygonlabels":
                xs = [p[0] * width / 100 for p in v["points"]]
                ys = [p[1] * height / 100 for p in v["points"]]
                bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            else:
                bbox = _enclosing_box(
                    v["x"] * width / 100,
                    v["y"] * height / 100,
                    v["width"] * width / 100,
                    v["height"] * height / 100,
                    float(v.get("rotation") or 0),
                )
        except (KeyError, TypeError, IndexError):
            raise LabelFileError(
                f"{box['where']}: a {box['kind']} value needs x, y, width, height (percent)"
            ) from None
        subtype = subtypes.get(rid) or box["subtype"]
        if subtype and SUBTYPE_FAMILY[subtype] != box["family"]:
            problems.add(
                "unknown_class", box["where"], f"subtype {subtype!r} is not a {box['family']} subtype"
            )
            subtype = None
        ann_id = len(coco["annotations"]) + 1
        coco["annotations"].append(make_annotation(ann_id, image_id, box["family"], bbox, subtype))
        families.append(box["family"])
    extra = {k: task["data"][k] for k in EXTRA_KEYS if k in task["data"]}
    coco["images"].append(
        make_image(image_id, file_name, int(width), int(height), sort_families(families), **extra)
    )


def write(dataset: Dataset, folder: Path, final_dir: Path | None = None) -> Path:
    anns: dict[int, list[dict]] = {img["id"]: [] for img in dataset.coco["images"]}
    for ann in dataset.coco["annotations"]:
        anns[ann["image_id"]].append(ann)
    tasks = []
    for img in dataset.coco["images"]:
        name = internal_name(img)
        copy_image(dataset.image_path(img), folder / name)
        w, h = img["width"], img["height"]
        dims = {"to_name": "image", "original_width": w, "original_height": h, "image_rotation": 0}
        result = [
            {
                "id": f"photo{img['id']}",
                "type": "choices",
                "from_name": "defects",
                **dims,
                "value": {"choices": list(img["labels"]) or [GOOD]},
            }
        ]
        for ann in anns[img["id"]]:
            x, y, bw, bh = ann["bbox"]
            geom = {
                "x": x / w * 100,
                "y": y / h * 100,
                "width": bw / w * 100,
                "height": bh / h * 100,
                "rotation": 0,
            }
            rid = f"box{ann['id']}"
            result.append(
                {
                    "id": rid,
                    "type": "rectanglelabels",
                    "from_name": "family",
                    **dims,
                    "value": {**geom, "rectanglelabels": [ann["family"]]},
                }
            )
            if ann.get("subtype"):
                result.append(
                    {
                        "id": rid,
                        "type": "choices",
                        "from_name": "subtype",
                        **dims,
                        "value": {**geom, "choices": [ann["subtype"]]},
                    }
                )
        data = {"image": f"/data/local-files/?d={name}", **{k: img[k] for k in EXTRA_KEYS if k in img}}
        tasks.append(
            {
                "id": img["id"],
                "data": data,
                "annotations": [
                    {"id": img["id"], "result": result, "was_cancelled": False, "ground_truth": False}
                ],
                "predictions": [],
            }
        )
    (folder / "label_config.xml").write_text(label_config(), encoding="utf-8")
    out = folder / EXPORT_FILE
    out.write_text(json.dumps(tasks, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def label_config() -> str:
    """The Label Studio labeling config the export matches: photo choices, family boxes, per-box subtype."""
    fam = "\n".join(f'    <Choice value="{f}"/>' for f in (GOOD, *FAMILIES))
    rect = "\n".join(f'    <Label value="{f}"/>' for f in FAMILIES)
    sub = "\n".join(f'    <Choice value="{s}"/>' for f in FAMILIES for s in SUBTYPES[f])
    return (
        "<View>\n"
        '  <Image name="image" value="$image"/>\n'
        f'  <Choices name="defects" toName="image" choice="multiple">\n{fam}\n  </Choices>\n'
        f'  <RectangleLabels name="family" toName="image">\n{rect}\n  </RectangleLabels>\n'
        f'  <Choices name="subtype" toName="image" perRegion="true">\n{sub}\n  </Choices>\n'
        "</View>\n"
    )
