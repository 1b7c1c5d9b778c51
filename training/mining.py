"""Hard negatives from new photos: the tiles the starting model flags that hold no defect.

The default's own stages mine them too (``configs/train_classifier.yaml``): a photo's score is the max
over ~27 tiles, so a good photo's strongest tile decides its false flag, and random negatives seldom
are that tile.

A model moved to a new product or look flags what that look has and its training data had not (one
team's crest in its own colours, a mesh's holes). A buyer's few dozen photos hold few defects to learn
from, but every clean tile the model flags is a labelled false flag. A fine-tune (``--from``) with
``cache.mined_negatives`` scores every tile of its photos with the starting model, the way serving
tiles them, and crops those tiles as look-alikes (hard negatives) in train and validation alike.

A detector's false flags are its boxes that hold no defect, found as triage reads the photo (its saved
decoding, both views) down to ``mine_threshold``: a crop around each teaches the heatmap to stay low
there. The crops' targets come from the photo's labels either way, so a mined region that does show
part of a defect is taught as what it shows.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

# A tile holds a defect when this share of the defect's box lies inside it (crop labels use the same
# share by default: cache.min_visible).
HOLDS_BOX = 0.5


def clean_tiles(tiles_xyxy: np.ndarray, boxes: np.ndarray, share: float = HOLDS_BOX) -> np.ndarray:
    """(T,) bool: tiles (xyxy) that hold less than ``share`` of every defect box (xyxy)."""
    if len(boxes) == 0:
        return np.ones(len(tiles_xyxy), bool)
    t, b = tiles_xyxy[:, None, :], boxes[None, :, :]
    iw = np.clip(np.minimum(t[..., 2], b[..., 2]) - np.maximum(t[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(t[..., 3], b[..., 3]) - np.maximum(t[..., 1], b[..., 1]), 0, None)
    area = np.maximum((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]), 1e-6)
    return ~(iw * ih / area >= share).any(axis=1)


def known_clean(
    image: dict, annotations: list[dict], tiles_xyxy: np.ndarray, work_shape: tuple[int, ...],
    share: float = HOLDS_BOX,
) -> np.ndarray:  # fmt: skip
    """(T,) tiles (working xyxy) known to hold no defect: :func:`clean_tiles` against the photo's
    boxes, and none at all when the photo names a family that no box locates (a folder-per-class or
    CSV label: the defect could be in any tile)."""
    from datasets.taxonomy import FAMILIES
    from training.data import photo_boxes_work

    boxes, families, _ = photo_boxes_work(image, annotations, work_shape)
    if set(image.get("labels") or []) - {FAMILIES[int(k)] for k in families}:
        return np.zeros(len(tiles_xyxy), bool)
    return clean_tiles(tiles_xyxy, boxes, share)


def pick_false_flags(
    tile_scores: np.ndarray, clean: np.ndarray, per_family: int, threshold: float
) -> list[int]:
    """Indices of up to ``per_family`` clean tiles per family scoring at least ``threshold``, the
    strongest first; a tile flagged for two families is taken once."""
    picked: list[int] = []
    for k in range(tile_scores.shape[1]):
        order = np.argsort(-tile_scores[:, k], kind="stable")
        hits = [int(i) for i in order if clean[i] and tile_scores[i, k] >= threshold][:per_family]
        picked.extend(i for i in hits if i not in picked)
    return picked


def mine_false_flags(
    dataset: Any,
    image_ids: list[int],
    predictor: Any,
    per_family: int,
    threshold: float = 0.5,
    log: Callable[[str], None] | None = None,
) -> dict[int, np.ndarray]:
    """Per photo id, its false flags (:func:`pick_false_flags`) as xyxy fractions of the photo's width
    and height: the model's working scale need not be the one a fine-tune trains at.

    ``predictor`` is a classifier or a detector (:func:`models.predictor.load_predictor`). A
    classifier's flags are its tiles, scored as serving takes the max of them
    (:func:`models.photo.score_photo`, per-level calibration included); a detector's are its boxes
    (:func:`flagged_boxes`).
    """
    from datasets.coco import annotations_by_image
    from models.photo import as_prep
    from training.data import load_working_photo

    prep = as_prep(predictor.bundle.prep)
    images = {im["id"]: im for im in dataset.coco["images"]}
    anns = annotations_by_image(dataset.coco)
    out: dict[int, np.ndarray] = {}
    for n, image_id in enumerate(sorted(image_ids)):
        image = images[image_id]
        rgb = load_working_photo(dataset.image_path(image), prep)
        regions, scores = flagged_boxes(rgb, predictor, prep, threshold)
        clean = known_clean(image, anns.get(image_id, []), regions, rgb.shape)
        picked = pick_false_flags(scores, clean, per_family, threshold)
        h, w = rgb.shape[:2]
        out[image_id] = regions[picked] / np.array([w, h, w, h], np.float32)
        if log and (n + 1) % 50 == 0:
            log(f"mining false flags: {n + 1}/{len(image_ids)} photos")
    return out


def flagged_boxes(
    rgb_work: np.ndarray, predictor: Any, prep: Any, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """The regions a model flags on a working-scale photo and their family scores: (N, 4) xyxy working
    pixels and (N, F). A classifier's are all its tiles; a detector's are its boxes scoring
    ``threshold`` or more, each scored for its own family only."""
    from models.photo import detect_photo, score_photo

    if predictor.task == "classifier":
        scores = score_photo(rgb_work, predictor, prep)
        return np.array([t.xyxy for t in scores.tiles], np.float32).reshape(-1, 4), scores.tile_scores
    families = list(predictor.families)
    # Decoded as triage does but at this threshold; a box one view missed reports half its score.
    found = detect_photo(rgb_work, predictor, prep, score_threshold=threshold)
    found = [d for d in found if d[1] >= threshold]
    table = np.zeros((len(found), len(families)), np.float32)
    for i, (_, score, family, _) in enumerate(found):
        table[i, families.index(family)] = score
    return np.array([d[0] for d in found], np.float32).reshape(-1, 4), table


def mined_key(bundle: Any, image_ids: Mapping[str, list[int]], per_family: int, threshold: float) -> str:
    """A short hash of what decides a model's false flags on a dataset's photos (with its data version):
    the files its torch scores come from, which photos, how many per family and from what score."""
    from models.bundle import BUNDLE_FILE, MEMORY_FILE, WEIGHTS_FILE

    digest = hashlib.sha256()
    # Not its card, nor model.onnx: exporting (serving does it on first use) changes no torch score.
    for name in (BUNDLE_FILE, WEIGHTS_FILE, MEMORY_FILE):
        path = Path(bundle.folder) / name
        if path.is_file():
            digest.update(name.encode() + path.read_bytes())
    fields = {"ids": {k: sorted(v) for k, v in image_ids.items()}, "n": per_family, "t": threshold}
    digest.update(json.dumps(fields, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def save_mined(path: Path, mined: Mapping[str, Mapping[int, np.ndarray]]) -> None:
    """Write false flags (split -> photo id -> xyxy fractions) as JSON, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = {name: {str(i): b.tolist() for i, b in boxes.items()} for name, boxes in mined.items()}
    tmp = path.with_name(f"{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(rows), encoding="utf-8")
    tmp.replace(path)


def load_mined(path: Path) -> dict[str, dict[int, np.ndarray]] | None:
    """False flags saved by :func:`save_mined`, or None when there are none."""
    if not path.is_file():
        return None
    rows = json.loads(path.read_text(encoding="utf-8"))
    return {
        name: {int(i): np.asarray(b, np.float32).reshape(-1, 4) for i, b in boxes.items()}
        for name, boxes in rows.items()
    }
