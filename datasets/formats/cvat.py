"""CVAT for images 1.1 XML, as CVAT exports it (``annotations.xml`` next to ``images/``).

``<annotations><version>1.1</version><meta><task>..<labels>..</labels></task></meta>`` then one
``<image id name width height [subset]>`` per photo holding ``<box label xtl ytl xbr ybr occluded
z_order>`` (with ``<attribute name="subtype">``), ``<polygon label points>`` (read as its bounding box,
polygon kept as segmentation) and ``<tag label>`` (the photo's families). ``subset`` carries the split.

Export writes coordinates with full float precision (CVAT writes 2 decimals and reads any), so round
trips are exact; scene/milestone/product are not kept. Rotated boxes import as their enclosing box.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

from datasets.coco import (
    IMAGES_DIR,
    Dataset,
    LabelFileError,
    Problems,
    copy_image,
    expected_classes,
    internal_name,
    make_annotation,
    make_image,
    new_coco,
    normalise_split,
    parse_class,
    sort_families,
)
from datasets.taxonomy import FAMILIES, GOOD, SUBTYPE_FAMILY, SUBTYPES

NAME = "cvat"
HAS_SPLITS = True  # export places photos in train/val(/test) from the manifest split
EXPORT_FILE = "annotations.xml"
COLOURS = {"stitching": "#fa3253", "logo": "#33ddff", "label": "#ffcc33"}


def _xml_path(path: Path) -> Path:
    if path.is_file():
        return path
    if (path / EXPORT_FILE).is_file():
        return path / EXPORT_FILE
    files = sorted(path.glob("*.xml"))
    if len(files) != 1:
        raise FileNotFoundError(
            f"{path}: expected {EXPORT_FILE} (CVAT for images 1.1), found {len(files)} .xml files"
        )
    return files[0]


def _family(label: str | None, where: str, problems: Problems) -> tuple[str | None, str | None]:
    family = parse_class(label or "")
    if family is None or family == GOOD:
        problems.add("unknown_class", where, f"unknown class {label!r} ({expected_classes(False)})")
        return None, None
    return family, (label if label in SUBTYPE_FAMILY else None)


def read(path: Path, problems: Problems) -> Dataset:
    xml_path = _xml_path(Path(path))
    root, fname = xml_path.parent, xml_path.name
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as exc:
        line, col = exc.position
        raise LabelFileError(f"{fname} line {line} column {col}: malformed XML ({exc})") from exc
    top = tree.getroot()
    if top.tag != "annotations":
        raise LabelFileError(
            f"{fname}: root element is <{top.tag}>, expected <annotations> (CVAT for images 1.1)"
        )
    for label in top.iterfind("./meta//labels/label"):
        name = label.findtext("name")
        if parse_class(name or "") in (None, GOOD):
            problems.add(
                "unknown_class",
                f"{fname} meta label {name!r}",
                f"unknown class {name!r} ({expected_classes(False)})",
            )
    coco = new_coco()
    for k, el in enumerate(top.iter("image")):
        where = f"{fname} image id {el.get('id', f'[{k}]')} ({el.get('name')})"
        try:
            name, width, height = el.attrib["name"], int(el.attrib["width"]), int(el.attrib["height"])
        except (KeyError, ValueError):
            raise LabelFileError(f"{where}: <image> needs name, width and height attributes") from None
        image_id = len(coco["images"]) + 1
        families = []
        for shape in el:
            swhere = f"{where} <{shape.tag} label={shape.get('label')!r}>"
            if shape.tag == "tag":
                family, _ = _family(shape.get("label"), swhere, problems)
                families += [family] if family else []
                continue
            if shape.tag not in ("box", "polygon"):
                continue
            family, subtype = _family(shape.get("label"), swhere, problems)
            if family is None:
                continue
            for attr in shape.iter("attribute"):
                if attr.get("name") == "subtype" and (attr.text or "").strip():
                    value = attr.text.strip()
                    if SUBTYPE_FAMILY.get(value) != family:
                        problems.add(
                            "unknown_class",
                            swhere,
                            f"unknown subtype {value!r} for {family} "
                            f"(expected one of {', '.join(SUBTYPES[family])})",
                        )
                    else:
                        subtype = value
            try:
                if shape.tag == "box":
                    x0, y0 = float(shape.attrib["xtl"]), float(shape.attrib["ytl"])
                    x1, y1 = float(shape.attrib["xbr"]), float(shape.attrib["ybr"])
                    bbox = _rotated([x0, y0, x1 - x0, y1 - y0], float(shape.get("rotation") or 0))
                    seg = None
                else:
                    pts = [tuple(float(v) for v in p.split(",")) for p in shape.attrib["points"].split(";")]
                    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                    bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
                    seg = [[v for p in pts for v in p]]
            except (KeyError, ValueError):
                raise LabelFileError(f"{swhere}: bad or missing coordinates") from None
            ann_id = len(coco["annotations"]) + 1
            coco["annotations"].append(make_annotation(ann_id, image_id, family, bbox, subtype, seg))
            families.append(family)
        file_name = f"{IMAGES_DIR}/{name}" if (root / IMAGES_DIR / name).exists() else name
        extra = {"split": normalise_split(el.get("subset")), "import_name": name}
        coco["images"].append(
            make_image(image_id, file_name, width, height, sort_families(families), **extra)
        )
    return Dataset(root=root, coco=coco, source_format=NAME)


def _rotated(bbox: list[float], degrees: float) -> list[float]:
    """CVAT rotates a box about its centre; keep the enclosing axis-aligned box."""
    if not degrees:
        return bbox
    x, y, w, h = bbox
    cx, cy, t = x + w / 2, y + h / 2, math.radians(degrees)
    hw = abs(w / 2 * math.cos(t)) + abs(h / 2 * math.sin(t))
    hh = abs(w / 2 * math.sin(t)) + abs(h / 2 * math.cos(t))
    return [cx - hw, cy - hh, 2 * hw, 2 * hh]


def _num(v: float) -> str:
    return repr(float(v))


def write(dataset: Dataset, folder: Path, final_dir: Path | None = None) -> Path:
    anns: dict[int, list[dict]] = {img["id"]: [] for img in dataset.coco["images"]}
    for ann in dataset.coco["annotations"]:
        anns[ann["image_id"]].append(ann)
    top = ET.Element("annotations")
    ET.SubElement(top, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(top, "meta"), "task")
    for key, value in (
        ("id", "0"),
        ("name", Path(final_dir or folder).name),
        ("size", str(len(dataset.coco["images"]))),
        ("mode", "annotation"),
        ("overlap", "0"),
    ):
        ET.SubElement(task, key).text = value
    labels = ET.SubElement(task, "labels")
    for family in FAMILIES:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = family
        ET.SubElement(label, "color").text = COLOURS[family]
        ET.SubElement(label, "type").text = "any"
        attr = ET.SubElement(ET.SubElement(label, "attributes"), "attribute")
        for key, value in (
            ("name", "subtype"),
            ("mutable", "False"),
            ("input_type", "select"),
            ("default_value", SUBTYPES[family][0]),
            ("values", "\n".join(SUBTYPES[family])),
        ):
            ET.SubElement(attr, key).text = value
    ET.SubElement(top.find("meta"), "dumped").text = datetime.now(UTC).isoformat(sep=" ")
    for k, img in enumerate(dataset.coco["images"]):
        name = internal_name(img)
        copy_image(dataset.image_path(img), folder / name)
        attrs = {
            "id": str(k),
            "name": name[len(IMAGES_DIR) + 1 :],
            "width": str(img["width"]),
            "height": str(img["height"]),
        }
        if img.get("split"):
            attrs["subset"] = img["split"]
        el = ET.SubElement(top, "image", attrs)
        for ann in anns[img["id"]]:
            x, y, w, h = ann["bbox"]
            box = ET.SubElement(
                el,
                "box",
                {
                    "label": ann["family"],
                    "source": "manual",
                    "occluded": "0",
                    "xtl": _num(x),
                    "ytl": _num(y),
                    "xbr": _num(x + w),
                    "ybr": _num(y + h),
                    "z_order": "0",
                },
            )
            if ann.get("subtype"):
                ET.SubElement(box, "attribute", {"name": "subtype"}).text = ann["subtype"]
        for family in img["labels"]:
            ET.SubElement(el, "tag", {"label": family, "source": "manual"})
    ET.indent(top)
    out = folder / EXPORT_FILE
    ET.ElementTree(top).write(out, encoding="utf-8", xml_declaration=True)
    return out
