"""Contact sheet of a dataset's ground truth: each photo with its boxes (coloured by family) and subtypes.

Works for any dataset in the internal COCO contract, not only synthetic ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

# BGR colours per family: stitching orange, logo magenta, label cyan; anything else yellow.
FAMILY_COLOURS = {"stitching": (0, 140, 255), "logo": (220, 40, 220), "label": (230, 200, 0)}


def contact_sheet(dataset: Path, out: Path, max_photos: int = 24, tile: int = 480) -> Path:
    """Write a PNG grid of up to ``max_photos`` photos of ``dataset`` with their ground truth drawn."""
    dataset = Path(dataset)
    ann_path = dataset / "annotations.json"
    if not ann_path.exists():
        raise FileNotFoundError(f"{ann_path} not found: give a dataset folder holding annotations.json")
    coco = json.loads(ann_path.read_text(encoding="utf-8"))
    cats = {c["id"]: c["name"] for c in coco.get("categories", [])}
    by_image: dict[int, list[dict]] = {}
    for a in coco.get("annotations", []):
        by_image.setdefault(a["image_id"], []).append(a)
    images = coco.get("images", [])[:max_photos]
    if not images:
        raise ValueError(f"{ann_path} lists no images")
    tiles = [_tile(dataset, im, by_image.get(im["id"], []), cats, tile) for im in images]
    cols = min(len(tiles), max(1, math.ceil(math.sqrt(len(tiles) * 1.3))))
    rows = math.ceil(len(tiles) / cols)
    th = max(t.shape[0] for t in tiles)
    sheet = np.full((rows * th, cols * tile, 3), 40, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * th : r * th + t.shape[0], c * tile : c * tile + t.shape[1]] = t
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), sheet):
        raise ValueError(f"could not write {out}: use a .png path in a writable folder")
    return out


def _tile(dataset: Path, image: dict, anns: list[dict], cats: dict, tile: int) -> np.ndarray:
    img = cv2.imread(str(dataset / image["file_name"]), cv2.IMREAD_COLOR)
    if img is None:
        img = np.zeros((int(image.get("height", 480)), int(image.get("width", 640)), 3), np.uint8)
        cv2.putText(img, "missing file", (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 255), 2)
    s = tile / img.shape[1]
    small = cv2.resize(img, (tile, max(int(img.shape[0] * s), 1)), interpolation=cv2.INTER_AREA)
    for a in anns:
        family = a.get("family") or cats.get(a.get("category_id"), "?")
        colour = FAMILY_COLOURS.get(family, (0, 230, 255))
        x, y, w, h = (v * s for v in a["bbox"])
        p0, p1 = (int(x), int(y)), (math.ceil(x + w), math.ceil(y + h))
        cv2.rectangle(small, p0, p1, (0, 0, 0), 3)
        cv2.rectangle(small, p0, p1, colour, 1)
        text = a.get("subtype") or family
        ty = p0[1] - 4 if p0[1] > 14 else p1[1] + 13
        cv2.putText(small, text, (p0[0], ty), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(small, text, (p0[0], ty), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    label = " ".join(str(image.get(k, "")) for k in ("product", "shot", "milestone") if image.get(k))
    label = label or Path(image["file_name"]).name
    cv2.rectangle(small, (0, 0), (tile, 16), (0, 0, 0), -1)
    cv2.putText(small, label[:60], (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return small
