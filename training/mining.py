"""Hard negatives from new photos: the tiles the starting model flags that hold no defect.

The default's own stages mine them too (``configs/train_classifier.yaml``): a photo's score is the max
over ~27 tiles, so a good photo's strongest tile decides its false flag, and random negatives seldom
are that tile.

A model moved to a new product or look flags what that look has and its training data had not (one
team's crest in its own colours, a mesh's holes). A buyer's few dozen photos hold few defects to learn
from, but every clean tile the model flags is a labelled false flag. A fine-tune (``--from``) with
``cache.mined_negatives`` scores every tile of its photos with the starting model, the way serving
tiles them, and crops those tiles as look-alikes (hard negatives) in train and validation alike.
"""

from __future__ import annotations

from collections.abc import Callable
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

    ``predictor`` is a classifier (:func:`models.predictor.load_predictor`); its tile scores are the
    ones serving takes the max of (:func:`models.photo.score_photo`, per-level calibration included).
    """
    from datasets.coco import annotations_by_image
    from models.photo import as_prep, score_photo
    from training.data import load_working_photo

    prep = as_prep(predictor.bundle.prep)
    images = {im["id"]: im for im in dataset.coco["images"]}
    anns = annotations_by_image(dataset.coco)
    out: dict[int, np.ndarray] = {}
    for n, image_id in enumerate(sorted(image_ids)):
        image = images[image_id]
        rgb = load_working_photo(dataset.image_path(image), prep)
        scores = score_photo(rgb, predictor, prep)
        tiles = np.array([t.xyxy for t in scores.tiles], np.float32).reshape(-1, 4)
        clean = known_clean(image, anns.get(image_id, []), tiles, rgb.shape)
        picked = pick_false_flags(scores.tile_scores, clean, per_family, threshold)
        h, w = rgb.shape[:2]
        out[image_id] = tiles[picked] / np.array([w, h, w, h], np.float32)
        if log and (n + 1) % 50 == 0:
            log(f"mining false flags: {n + 1}/{len(image_ids)} photos")
    return out
