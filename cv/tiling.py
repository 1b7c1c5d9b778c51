"""Overlapping tiles over a photo, and merging the boxes found on tiles back into one set.

A 3 mm stitch defect is a few pixels once a 12 MP photo is shrunk to a detector's input, so the
detector runs on tiles of the working-scale photo instead. Boxes come back in tile pixels; they
are shifted to photo pixels and merged across tile borders SAHI-style (greedy merge of boxes of
the same family whose intersection-over-smaller is high), plus one rule SAHI lacks: two pieces of
one defect cut by a tile border are merged when both touch that border and line up across it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    """A tile in working-scale pixels; ``w``/``h`` are smaller than the tile size only when the
    photo itself is smaller than one tile. ``scale`` is the pyramid level it was cut from: a tile of
    a level at scale 0.25 covers 4x the working pixels of a full-scale tile (``w``/``h`` say so)."""

    x: int
    y: int
    w: int
    h: int
    scale: float = 1.0

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.x + self.w, self.y + self.h


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    # The last tile is shifted inward to end exactly at the border rather than padded.
    starts.append(length - tile)
    return starts


def tile_grid(width: int, height: int, tile_size: int, overlap: int) -> list[Tile]:
    """Tiles of ``tile_size`` overlapping by at least ``overlap`` that cover the whole image, row by row."""
    if tile_size <= 0:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"tile overlap must be in [0, tile_size={tile_size}), got {overlap}")
    if width <= 0 or height <= 0:
        raise ValueError(f"cannot tile an empty {width}x{height} image")
    return [
        Tile(x, y, min(tile_size, width), min(tile_size, height))
        for y in _starts(height, tile_size, overlap)
        for x in _starts(width, tile_size, overlap)
    ]


def _inner_edges(tile: Tile, image_w: float, image_h: float, boxes: np.ndarray, tol: float) -> np.ndarray:
    """Per box, which sides (left, top, right, bottom) are cut by this tile's border inside the image."""
    x0, y0, x1, y1 = tile.xyxy
    return np.stack(
        [
            (boxes[:, 0] <= x0 + tol) & (x0 > 0),
            (boxes[:, 1] <= y0 + tol) & (y0 > 0),
            (boxes[:, 2] >= x1 - tol) & (x1 < image_w),
            (boxes[:, 3] >= y1 - tol) & (y1 < image_h),
        ],
        axis=1,
    )


def _overlap_1d(a0: float, a1: float, b0: float, b1: float) -> float:
    """Overlap of two intervals over the shorter one (pieces of a box spanning 4 tiles differ in length)."""
    inter = max(0.0, min(a1, b1) - max(a0, b0))
    shorter = min(a1 - a0, b1 - b0)
    return inter / shorter if shorter > 0 else 0.0


def _intersection_and_areas(a, b) -> tuple[float, float, float]:
    """Intersection area of two xyxy boxes, and each box's area."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter, (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])


def box_iou(a, b) -> float:
    """Intersection over union of two xyxy boxes."""
    inter, area_a, area_b = _intersection_and_areas(a, b)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def _match(a: np.ndarray, ea: np.ndarray, b: np.ndarray, eb: np.ndarray, thr: float) -> str | None:
    """How box ``b`` (weaker) relates to ``a``: "union" (pieces of one defect), "drop" (a duplicate
    of ``a``) or None (another defect)."""
    inter, area_a, area_b = _intersection_and_areas(a, b)
    if inter <= 0:
        return None
    if inter / max(min(area_a, area_b), 1e-9) >= thr:
        # Only a piece cut by a tile border extends the box; an uncut weaker box over it is a
        # duplicate, and growing the union with it would smear a good box over its weak neighbours.
        return "union" if ea.any() or eb.any() else "drop"
    return "union" if _cut_pieces(a, ea, b, eb, thr) else None


def _cut_pieces(a: np.ndarray, ea: np.ndarray, b: np.ndarray, eb: np.ndarray, thr: float) -> bool:
    # One defect cut by a vertical tile border: a piece cut on its right meets a piece cut on its
    # left, and the two line up vertically (and likewise for horizontal borders).
    cut_lr = (ea[2] and eb[0]) or (ea[0] and eb[2])
    if cut_lr and _overlap_1d(a[1], a[3], b[1], b[3]) >= thr:
        return True
    cut_tb = (ea[3] and eb[1]) or (ea[1] and eb[3])
    return bool(cut_tb and _overlap_1d(a[0], a[2], b[0], b[2]) >= thr)


def merge_tile_detections(
    per_tile: Sequence[tuple[Tile, np.ndarray, np.ndarray, np.ndarray]],
    iou_threshold: float = 0.5,
    *,
    edge_tolerance: float = 2.0,
    image_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shift per-tile boxes into image pixels and merge duplicates across tile borders.

    ``per_tile``: (tile, boxes xyxy in tile pixels (N, 4), scores (N,), labels (N,)) per tile.
    Boxes of the same label are merged greedily from the highest score down: pieces of one box cut
    by a tile border (overlapping by ``iou_threshold`` intersection-over-smaller, or lining up
    across the border) become their union; a weaker uncut box over a stronger one is a duplicate
    and is dropped (NMS-style), so weak neighbours cannot smear a good box. A merged box keeps the
    highest score.
    ``image_size`` (width, height) tells which tile sides are the photo's border; without it the
    extent of the tiles given is used, so pass it when you leave tiles without detections out.
    ``edge_tolerance``: how close (in pixels of the tile's pyramid level) a box side must come to a
    tile border to count as cut by it.
    Returns (boxes xyxy float32 (M, 4), scores float32 (M,), labels int64 (M,)) sorted by score.
    """
    boxes_l, scores_l, labels_l, edges_l = [], [], [], []
    if image_size is not None:
        image_w, image_h = image_size
    elif per_tile:
        image_w = max(t.x + t.w for t, *_ in per_tile)
        image_h = max(t.y + t.h for t, *_ in per_tile)
    for tile, boxes, scores, labels in per_tile:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            continue
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        labels = np.asarray(labels).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"tile at ({tile.x}, {tile.y}): {len(boxes)} boxes, {len(scores)} scores and "
                f"{len(labels)} labels - give one score and one label per box"
            )
        shifted = boxes + np.array([tile.x, tile.y, tile.x, tile.y], dtype=np.float64)
        boxes_l.append(shifted)
        scores_l.append(scores)
        labels_l.append(labels)
        # A coarse tile's box edges are only as precise as its level's pixels: scale the tolerance.
        edges_l.append(_inner_edges(tile, image_w, image_h, shifted, edge_tolerance / tile.scale))
    if not boxes_l:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    boxes = np.concatenate(boxes_l)
    scores = np.concatenate(scores_l)
    labels = np.concatenate(labels_l)
    edges = np.concatenate(edges_l)

    out_boxes, out_scores, out_labels = [], [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        # Each group: [union box, sides still cut by a tile border, best score]. Merging repeats
        # until nothing changes, because a grown union can reach pieces it missed before.
        groups = [[boxes[i].copy(), edges[i].copy(), scores[i]] for i in idx]
        merged = True
        while merged:
            merged = False
            for a in range(len(groups)):
                for b in range(len(groups) - 1, a, -1):
                    ga, gb = groups[a], groups[b]
                    how = _match(ga[0], ga[1], gb[0], gb[1], iou_threshold)
                    if how == "union":
                        ga[0] = np.concatenate(
                            [np.minimum(ga[0][:2], gb[0][:2]), np.maximum(ga[0][2:], gb[0][2:])]
                        )
                        # The union is cut on a side only where both pieces were cut on it.
                        ga[1] = ga[1] & gb[1]
                        ga[2] = max(ga[2], gb[2])
                    if how is not None:
                        del groups[b]
                        merged = True
        for box, _, score in groups:
            out_boxes.append(box)
            out_scores.append(score)
            out_labels.append(label)
    order = np.argsort(-np.asarray(out_scores), kind="stable")
    return (
        np.asarray(out_boxes, dtype=np.float32)[order],
        np.asarray(out_scores, dtype=np.float32)[order],
        np.asarray(out_labels, dtype=np.int64)[order],
    )
