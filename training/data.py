"""Training data: a tile cache cut once per (dataset version, prep, cache settings), and balanced batches.

Decoding a 12 MP JPEG costs more than a training step, so each training photo is decoded once at
working scale and cut into crops: several jittered crops around every defect box (with a random
scale, so the models see threads at a range of px/mm), crops around recorded non-defect
look-alikes (hard negatives), and random crops. Crops are stored uint8 at the network input size
with their boxes (clipped, in crop pixels), family labels and subtypes under ``$LOUPE_DATA/cache``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from cv.prep import home_level
from datasets.taxonomy import FAMILIES, SUBTYPE_FAMILY, SUBTYPES

# Crop kinds, kept so batches can be balanced and hard negatives counted.
RANDOM, POSITIVE, LOOKALIKE = 0, 1, 2
# A crop's family label: 0 absent, 1 present, IGNORE when a box of it is only partly inside the crop
# or too small to see at the crop's scale (the loss skips it rather than teach either answer).
IGNORE = 255
CACHE_FORMAT = 3  # 3: crops keep the boxes they ignore, so the detector does not learn them as background
# Subtype index -> name, for the detector's subtype head: every subtype of every family, in taxonomy order.
SUBTYPE_NAMES: tuple[str, ...] = tuple(s for f in FAMILIES for s in SUBTYPES[f])
SUBTYPE_INDEX: dict[str, int] = {s: i for i, s in enumerate(SUBTYPE_NAMES)}
# Keys under which a generated image may record its non-defect look-alikes (boxes, COCO xywh).
LOOKALIKE_KEYS = ("lookalikes", "look_alikes", "hard_negatives")


@dataclass
class TileCache:
    """Training crops in memory (``crops`` may be a read-only memmap)."""

    crops: np.ndarray  # (N, S, S, 3) uint8, S = prep.input_size
    labels: np.ndarray  # (N, F) uint8: 1 family present (≥ min_visible of a box inside, or box fills the
    # crop), 0 absent, IGNORE (partly inside, or too small at the crop's scale)
    kinds: np.ndarray  # (N,) RANDOM / POSITIVE / LOOKALIKE
    photo_ids: np.ndarray  # (N,) COCO image id the crop came from
    boxes: list[np.ndarray]  # per crop (K, 4) xyxy float32 in crop (input) pixels
    box_families: list[np.ndarray]  # per crop (K,) family index
    box_subtypes: list[np.ndarray]  # per crop (K,) index into SUBTYPE_NAMES, -1 unknown
    # per crop (J, 4) / (J,): boxes that touch the crop but do not count (cut, or too small there);
    # neither defect nor background for the detector. None: a cache without them (all empty).
    ignore_boxes: list[np.ndarray] | None = None
    ignore_families: list[np.ndarray] | None = None
    folder: Path | None = None

    def __len__(self) -> int:
        return len(self.crops)

    def summary(self) -> dict[str, int]:
        return {
            "crops": len(self),
            "positive": int((self.kinds == POSITIVE).sum()),
            "lookalike": int((self.kinds == LOOKALIKE).sum()),
            "random": int((self.kinds == RANDOM).sum()),
            **{f"with_{f}": int((self.labels[:, i] == 1).sum()) for i, f in enumerate(FAMILIES)},
        }


def cache_key(
    data_version: str,
    prep: dict,
    settings: dict,
    image_ids: list[int],
    seed: int,
    lookalikes: dict[int, list] | None = None,
) -> str:
    """A short hash of everything that changes the crops.

    ``lookalikes`` (photo id -> its recorded look-alike regions) is hashed when any photo has one: the
    data version covers photos and defect labels only, and marking a hard negative changes the crops.
    """
    fields = {
        "format": CACHE_FORMAT,
        "data": data_version,
        "prep": prep,
        "cache": settings,
        "ids": sorted(image_ids),
        "seed": seed,
    }
    if lookalikes and any(lookalikes.values()):
        fields["lookalikes"] = {str(k): v for k, v in sorted(lookalikes.items())}
    blob = json.dumps(
        fields,
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_working_photo(path: Path, prep: Any) -> np.ndarray:
    """Decode a photo reduced and bring it to the working scale of ``prep`` (uint8 RGB), as serving does."""
    from cv.prep import working_photo

    return working_photo(path, prep).rgb_work


def photo_boxes_work(
    image: dict, annotations: list[dict], work_shape: tuple[int, ...]
) -> tuple[np.ndarray, ...]:
    """Annotation boxes in working-scale xyxy pixels, with family and subtype indices."""
    h, w = work_shape[:2]
    width = image.get("width") or w
    height = image.get("height") or h
    sx, sy = w / width, h / height
    boxes, fams, subs = [], [], []
    for a in annotations:
        x, y, bw, bh = (float(v) for v in a["bbox"])
        if bw <= 0 or bh <= 0:
            continue
        family = a.get("family") or FAMILIES[int(a["category_id"]) - 1]
        boxes.append([x * sx, y * sy, (x + bw) * sx, (y + bh) * sy])
        fams.append(FAMILIES.index(family))
        sub = a.get("subtype")
        subs.append(SUBTYPE_INDEX[sub] if sub in SUBTYPE_INDEX and SUBTYPE_FAMILY[sub] == family else -1)
    return (
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(fams, np.int64),
        np.asarray(subs, np.int64),
    )


def lookalike_boxes_work(image: dict, work_shape: tuple[int, ...]) -> np.ndarray:
    """Recorded look-alike regions (COCO xywh in photo pixels, or dicts with ``bbox``) in working xyxy."""
    h, w = work_shape[:2]
    sx, sy = w / (image.get("width") or w), h / (image.get("height") or h)
    out = []
    for key in LOOKALIKE_KEYS:
        for item in image.get(key) or []:
            box = item.get("bbox") if isinstance(item, dict) else item
            # The generator may record look-alikes by name only; only boxes can be cropped around.
            if not isinstance(box, list | tuple) or len(box) != 4:
                continue
            x, y, bw, bh = (float(v) for v in box)
            out.append([x * sx, y * sy, (x + bw) * sx, (y + bh) * sy])
    return np.asarray(out, np.float32).reshape(-1, 4)


def crop_targets(
    boxes: np.ndarray,
    fams: np.ndarray,
    subs: np.ndarray,
    crop_xyxy: tuple[float, float, float, float],
    out_size: int,
    min_visible: float,
    min_box_px: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boxes seen by a crop (clipped, in ``out_size`` crop pixels) and the crop's family labels.

    A box counts when ≥ ``min_visible`` of its area is inside the crop, or when its visible part
    covers ≥ ``min_visible`` of the crop (a defect larger than a tile, e.g. a missing label on a carton),
    and its long side is ≥ ``min_box_px`` crop pixels. A box that touches the crop but does not count
    makes its family IGNORE on this crop (unless another box of the family counts), and is returned
    among the ignored boxes. Returns boxes, families, subtypes, labels, ignored boxes, their families.
    """
    x0, y0, x1, y1 = crop_xyxy
    side = x1 - x0
    labels = np.zeros(len(FAMILIES), np.uint8)
    if len(boxes) == 0:
        none4, none = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        return none4, none, none, labels, none4, none
    clipped = np.stack(
        [
            boxes[:, 0].clip(x0, x1),
            boxes[:, 1].clip(y0, y1),
            boxes[:, 2].clip(x0, x1),
            boxes[:, 3].clip(y0, y1),
        ],
        axis=1,
    )
    vis = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = (vis >= min_visible * np.maximum(area, 1e-6)) | (vis >= min_visible * side * side)
    keep &= vis > 0
    long_side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * (out_size / side)
    keep &= long_side >= min_box_px
    ignored = (vis > 0) & ~keep
    labels[np.unique(fams[ignored])] = IGNORE
    labels[np.unique(fams[keep])] = 1

    def to_crop(b: np.ndarray) -> np.ndarray:
        return ((b - np.array([x0, y0, x0, y0], np.float32)) * (out_size / side)).astype(np.float32)

    return to_crop(clipped[keep]), fams[keep], subs[keep], labels, to_crop(clipped[ignored]), fams[ignored]


def _place_crop(cx: float, cy: float, side: float, w: int, h: int) -> tuple[float, float, float, float]:
    """A square crop of ``side`` centred near (cx, cy), shifted to lie inside the photo where it fits;
    larger than the photo, it starts at the photo's corner (padded right/bottom, as tiles are)."""
    x0 = min(max(cx - side / 2, 0.0), max(w - side, 0.0))
    y0 = min(max(cy - side / 2, 0.0), max(h - side, 0.0))
    return x0, y0, x0 + side, y0 + side


def level_tile_counts(w: int, h: int, prep: Any) -> dict[float, int]:
    """Tiles per pyramid level of a ``w`` x ``h`` working photo, as :func:`cv.prep.prepare_tiles` cuts."""
    from cv.prep import level_size
    from cv.tiling import tile_grid

    return {s: len(tile_grid(*level_size(w, h, s), prep.tile_size, prep.tile_overlap)) for s in prep.levels}


def _cut(rgb: np.ndarray, crop_xyxy: tuple[float, float, float, float], out_size: int) -> np.ndarray:
    """Cut and resize a crop; parts outside the photo are padded with the letterbox grey, as tiles are."""
    import cv2

    from cv.prep import LETTERBOX_FILL

    side = max(1, round(crop_xyxy[2] - crop_xyxy[0]))
    x0, y0 = round(crop_xyxy[0]), round(crop_xyxy[1])
    x1, y1 = x0 + side, y0 + side
    h, w = rgb.shape[:2]
    canvas = np.full((side, side, 3), LETTERBOX_FILL, np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    if side == out_size:
        return canvas
    interp = cv2.INTER_AREA if side > out_size else cv2.INTER_LINEAR
    return cv2.resize(canvas, (out_size, out_size), interpolation=interp)


def crops_from_photo(
    rgb_work: np.ndarray,
    boxes: np.ndarray,
    fams: np.ndarray,
    subs: np.ndarray,
    lookalikes: np.ndarray,
    prep: Any,
    settings: Any,
    rng: np.random.Generator,
    n_unlocated_lookalikes: int = 0,
) -> list[tuple]:
    """All crops of one photo: (crop, boxes, families, subtypes, labels, kind, ignored boxes, their
    families)."""
    h, w = rgb_work.shape[:2]
    lo, hi = settings.scale_jitter
    out_size = prep.input_size
    # Random crops are drawn from the pyramid levels as often as inference tiles them.
    counts = level_tile_counts(w, h, prep)
    levels = np.asarray(list(counts), np.float64)
    level_p = np.asarray(list(counts.values()), np.float64) / sum(counts.values())

    # A crop at the finest level shows a box as large as inference ever will: there a tiny box is still
    # taught, not ignored (ignoring it there would leave the smallest stitch defects never learnt).
    finest_side = prep.tile_size / max(levels) * hi

    def side(level: float) -> float:
        return prep.tile_size / level * math.exp(rng.uniform(math.log(lo), math.log(hi)))

    def make(cx: float, cy: float, s: float, kind: int):
        xyxy = _place_crop(cx, cy, s, w, h)
        min_px = 0.0 if s <= finest_side + 1e-6 else settings.min_box_px
        targets = crop_targets(boxes, fams, subs, xyxy, out_size, settings.min_visible, min_px)
        return _cut(rgb_work, xyxy, out_size), *targets[:4], kind, *targets[4:]

    def box_level(box: np.ndarray) -> float:
        return home_level(max(box[2] - box[0], box[3] - box[1]), prep)

    def around(box: np.ndarray, level: float, kind: int):
        s = side(level)
        j = settings.centre_jitter * s
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        return make(cx + rng.uniform(-j, j), cy + rng.uniform(-j, j), s, kind)

    crops = []
    for box in boxes:
        for _ in range(settings.crops_per_box):
            crops.append(around(box, box_level(box), POSITIVE))
    for box in lookalikes:
        for _ in range(settings.lookalike_crops):
            crops.append(around(box, box_level(box), LOOKALIKE))
    for _ in range(settings.negatives_per_photo):
        level = float(rng.choice(levels, p=level_p))
        crops.append(make(rng.uniform(0, w), rng.uniform(0, h), side(level), RANDOM))
    if len(levels) > 1 and counts[min(counts)] == 1:
        # The coarsest level shows the whole photo in one tile: that exact view, once per photo.
        coarse = min(counts)
        crops.append(make(0.0, 0.0, prep.tile_size / coarse, RANDOM))
    # Look-alikes recorded by name only (no box): extra random crops of that photo are likelier to
    # hold one, so they count as hard negatives when they hold no defect.
    for _ in range(settings.lookalike_crops * n_unlocated_lookalikes):
        crop = make(
            rng.uniform(0, w), rng.uniform(0, h), side(1.0 if 1.0 in counts else max(counts)), LOOKALIKE
        )
        if not crop[4].any():
            crops.append(crop)
    return crops


def build_tile_cache(
    dataset: Any,
    image_ids: list[int],
    prep: Any,
    settings: Any,
    cache_root: Path,
    data_version: str,
    seed: int = 0,
    log=print,
    mined: dict[int, np.ndarray] | None = None,
) -> TileCache:
    """Load the cache for these photos and settings, or cut it (once) and store it under ``cache_root``.

    ``mined``: per photo id, more look-alike boxes as xyxy fractions of the photo's width and height (a
    starting model's false flags, :mod:`training.mining`), cropped like the recorded ones.
    """
    from datasets.coco import annotations_by_image

    prep_d = prep.model_dump(mode="json")
    settings_d = settings.model_dump(mode="json")
    images = {im["id"]: im for im in dataset.coco["images"]}
    mined = mined or {}
    marked = {
        i: [images[i].get(k) or [] for k in LOOKALIKE_KEYS]
        + [np.round(np.asarray(mined.get(i, []), np.float64), 4).tolist()]
        for i in image_ids
    }
    key = cache_key(
        data_version, prep_d, settings_d, image_ids, seed, {i: v for i, v in marked.items() if any(v)}
    )
    folder = Path(cache_root) / f"tiles-{data_version}-{key}"
    if (folder / "meta.json").is_file():
        return load_tile_cache(folder)
    anns = annotations_by_image(dataset.coco)
    rng = np.random.default_rng(seed)
    ids = sorted(image_ids)
    if settings.max_photos:
        ids = ids[: settings.max_photos]
    items = []
    for n, image_id in enumerate(ids):
        image = images[image_id]
        rgb = load_working_photo(dataset.image_path(image), prep)
        boxes, fams, subs = photo_boxes_work(image, anns.get(image_id, []), rgb.shape)
        looks = lookalike_boxes_work(image, rgb.shape)
        unlocated = sum(len(image.get(k) or []) for k in LOOKALIKE_KEYS) - len(looks)
        if image_id in mined:
            h, w = rgb.shape[:2]
            relative = np.asarray(mined[image_id], np.float32).reshape(-1, 4)
            looks = np.concatenate([looks, relative * np.array([w, h, w, h], np.float32)])
        for crop in crops_from_photo(rgb, boxes, fams, subs, looks, prep, settings, rng, unlocated):
            items.append((*crop[:6], image_id, *crop[6:]))
        if log and (n + 1) % 50 == 0:
            log(f"tile cache: {n + 1}/{len(ids)} photos, {len(items)} crops")
    if not items:
        raise ValueError(
            f"no training crops from {len(ids)} photos: the dataset's train split is empty; "
            "give a dataset with photos, or a larger val_fraction split"
        )
    return _write_cache(folder, items, {"data_version": data_version, "prep": prep_d, "cache": settings_d})


def _write_cache(folder: Path, items: list, meta: dict) -> TileCache:
    # One staging folder per process: two trainings (classifier and detector) may cut the same cache at once.
    tmp = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        _write_staging(tmp, items, meta)
    except BaseException:  # an interrupted build must not leave gigabytes of crops behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(folder)
    except OSError:  # a concurrent build finished first; theirs is as good as ours
        shutil.rmtree(tmp)
    return load_tile_cache(folder)


def _write_staging(tmp: Path, items: list, meta: dict) -> None:
    crops = np.stack([it[0] for it in items])
    np.save(tmp / "crops.npy", crops)
    offsets = np.cumsum([0] + [len(it[1]) for it in items])
    ignore_offsets = np.cumsum([0] + [len(it[7]) for it in items])
    np.savez(
        tmp / "targets.npz",
        labels=np.stack([it[4] for it in items]),
        kinds=np.asarray([it[5] for it in items], np.int64),
        photo_ids=np.asarray([it[6] for it in items], np.int64),
        boxes=np.concatenate([it[1] for it in items]).reshape(-1, 4),
        box_families=np.concatenate([it[2] for it in items]),
        box_subtypes=np.concatenate([it[3] for it in items]),
        offsets=offsets,
        ignore_boxes=np.concatenate([it[7] for it in items]).reshape(-1, 4),
        ignore_families=np.concatenate([it[8] for it in items]),
        ignore_offsets=ignore_offsets,
    )
    (tmp / "meta.json").write_text(json.dumps({**meta, "crops": len(items)}, indent=1), encoding="utf-8")


def load_tile_cache(folder: Path) -> TileCache:
    folder = Path(folder)
    t = np.load(folder / "targets.npz")
    off, ioff = t["offsets"], t["ignore_offsets"]
    split = lambda a, o=off: [a[o[i] : o[i + 1]] for i in range(len(o) - 1)]  # noqa: E731
    return TileCache(
        crops=np.load(folder / "crops.npy", mmap_mode="r"),
        labels=t["labels"],
        kinds=t["kinds"],
        photo_ids=t["photo_ids"],
        boxes=split(t["boxes"].astype(np.float32)),
        box_families=split(t["box_families"]),
        box_subtypes=split(t["box_subtypes"]),
        ignore_boxes=split(t["ignore_boxes"].astype(np.float32), ioff),
        ignore_families=split(t["ignore_families"], ioff),
        folder=folder,
    )


# ------------------------------------------------------------------------------------------ batches


def balanced_batches(
    cache: TileCache, batch_size: int, positive_fraction: float, steps: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Index batches with ``positive_fraction`` crops holding a defect, the rest defect-free.

    Positives are drawn so every family is about equally frequent (stitching is most of the boxes);
    negatives favour look-alikes (hard negatives) at about a third of the negative share when there are any.
    """
    present = cache.labels == 1
    has_defect = present.any(axis=1)
    pos = np.flatnonzero(has_defect)
    neg = np.flatnonzero(~has_defect)
    if len(pos) == 0 or len(neg) == 0:
        pool = np.arange(len(cache))
        for _ in range(steps):
            yield rng.choice(pool, size=batch_size, replace=len(pool) < batch_size)
        return
    # Weight a positive crop by the rarest family it shows.
    fam_counts = present[pos].sum(axis=0).astype(np.float64)
    inv = np.where(fam_counts > 0, 1.0 / np.maximum(fam_counts, 1), 0.0)
    pos_w = (present[pos] * inv).max(axis=1)
    pos_w /= pos_w.sum()
    hard = cache.kinds[neg] == LOOKALIKE
    neg_w = np.ones(len(neg))
    if hard.any() and (~hard).any():
        neg_w[hard] = (1 / 3) / hard.sum()
        neg_w[~hard] = (2 / 3) / (~hard).sum()
    neg_w /= neg_w.sum()
    n_pos = max(1, round(batch_size * positive_fraction))
    for _ in range(steps):
        batch = np.concatenate(
            [rng.choice(pos, size=n_pos, p=pos_w), rng.choice(neg, size=batch_size - n_pos, p=neg_w)]
        )
        rng.shuffle(batch)
        yield batch


def augment_crop(
    pipeline: Any,
    crop: np.ndarray,
    boxes: np.ndarray,
    fams: np.ndarray,
    subs: np.ndarray,
    min_visible: float,
    ignore_boxes: np.ndarray | None = None,
    ignore_fams: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Augment one crop with a box-aware albumentations pipeline; recompute its family labels.

    A family stays present when at least one of its boxes survives (albumentations drops boxes cut
    below the pipeline's min_visibility or min_area); one whose boxes were all cut away becomes IGNORE,
    and IGNORE stays IGNORE. What the box filter drops is still a defect's pixels: every ignored box,
    and every counted box the filter dropped, is moved as its four corners (keypoints, which nothing
    filters) and returned as an ignored box clipped to the crop while any of it is left, so that the
    detector is not taught "no defect" on a sliver or a tiny piece. Returns crop, boxes xyxy, families,
    subtypes, labels, ignored boxes xyxy, their families.
    """
    size = crop.shape[0]
    if ignore_boxes is None or ignore_fams is None:
        ignore_boxes, ignore_fams = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    every = np.concatenate([boxes.reshape(-1, 4), ignore_boxes.reshape(-1, 4)]).astype(np.float32)
    every_fams = np.concatenate([fams, ignore_fams]).astype(np.int64)
    counted = boxes.reshape(-1, 4).astype(np.float32)
    xywh = np.concatenate([counted[:, :2], counted[:, 2:] - counted[:, :2]], axis=1)
    corners = every[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 2) - 0.5  # four (x, y) per box
    out = pipeline(
        image=np.ascontiguousarray(crop),
        bboxes=xywh,
        category_ids=fams.astype(np.int64).tolist(),
        ann_index=list(range(len(counted))),
        keypoints=corners,
    )
    image = out["image"]
    if image.shape[:2] != (size, size):  # a crop-type transform changed the size: back to the input size
        import cv2

        sx, sy = size / image.shape[1], size / image.shape[0]
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    else:
        sx = sy = 1.0
    kept = np.asarray(out["ann_index"], np.int64)
    b = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
    b = np.stack([b[:, 0] * sx, b[:, 1] * sy, (b[:, 0] + b[:, 2]) * sx, (b[:, 1] + b[:, 3]) * sy], axis=1)
    # Keypoints are pixel centres (a flip maps x to width - 1 - x), box corners pixel edges: hence ±0.5.
    moved = (np.asarray(out["keypoints"], np.float32).reshape(-1, 4, 2) + 0.5) * np.float32([sx, sy])
    pieces = np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1).clip(0, size)
    uncounted = np.ones(len(every), bool)
    uncounted[kept] = False
    visible = (pieces[:, 2] > pieces[:, 0]) & (pieces[:, 3] > pieces[:, 1])
    ignored = uncounted & visible
    labels = np.zeros(len(FAMILIES), np.uint8)
    labels[np.unique(every_fams)] = IGNORE
    labels[np.unique(fams[kept])] = 1
    return (
        image,
        b.astype(np.float32),
        fams[kept],
        subs[kept],
        labels,
        pieces[ignored].astype(np.float32),
        every_fams[ignored],
    )


class CropBatch(NamedTuple):
    """A training batch: normalised float32 NCHW crops, N×F labels (1 / 0 / -1 = ignore), and per crop
    its boxes (xyxy input pixels), families, subtypes, ignored boxes and their families."""

    images: np.ndarray
    labels: np.ndarray
    boxes: list[np.ndarray]
    families: list[np.ndarray]
    subtypes: list[np.ndarray]
    ignore_boxes: list[np.ndarray]
    ignore_families: list[np.ndarray]


def load_batch(
    cache: TileCache, indices: np.ndarray, pipeline: Any | None, prep: Any, min_visible: float
) -> CropBatch:
    """The crops at ``indices``, augmented by ``pipeline`` when given, normalised for the network."""
    from cv.prep import normalise

    images, labels, boxes, fams, subs, ign_boxes, ign_fams = [], [], [], [], [], [], []
    no_box, no_fam = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    for i in indices:
        crop, b, f, s, y = (
            np.asarray(cache.crops[i]),
            cache.boxes[i],
            cache.box_families[i],
            cache.box_subtypes[i],
            cache.labels[i],
        )
        ib = cache.ignore_boxes[i] if cache.ignore_boxes is not None else no_box
        if_ = cache.ignore_families[i] if cache.ignore_families is not None else no_fam
        if pipeline is not None:
            # Labels follow the boxes that survive the transforms (every cached label has its box).
            crop, b, f, s, aug_y, ib, if_ = augment_crop(pipeline, crop, b, f, s, min_visible, ib, if_)
            y = np.where(y == IGNORE, IGNORE, aug_y).astype(np.uint8)
        images.append(crop)
        labels.append(y)
        boxes.append(b)
        fams.append(f)
        subs.append(s)
        ign_boxes.append(ib)
        ign_fams.append(if_)
    y = np.stack(labels).astype(np.float32)
    y[y == IGNORE] = -1.0
    return CropBatch(normalise(np.stack(images), prep), y, boxes, fams, subs, ign_boxes, ign_fams)


@dataclass
class _CropSource:
    """``load_batch`` for one batch of cache indices: what a DataLoader worker process runs."""

    cache: TileCache
    pipeline: Any
    prep: Any
    min_visible: float

    def __getitem__(self, indices: np.ndarray) -> CropBatch:
        return load_batch(self.cache, indices, self.pipeline, self.prep, self.min_visible)

    def __getstate__(self) -> dict:
        # A spawned worker reopens the cache from its folder (a memmap) instead of receiving a copy.
        state = dict(self.__dict__)
        if self.cache.folder is not None:
            state["cache"] = self.cache.folder
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["cache"], Path):
            state["cache"] = load_tile_cache(state["cache"])
        self.__dict__.update(state)


def _as_is(batch: CropBatch) -> CropBatch:
    return batch  # keep numpy: the loops move images to the device themselves


def _seed_worker(_: int) -> None:
    import cv2
    import torch

    cv2.setNumThreads(1)  # one core per worker; OpenCV would otherwise start a thread per core in each
    source = torch.utils.data.get_worker_info().dataset
    if source.pipeline is not None:
        # Workers would otherwise share the pipeline's seed (or state): reseed each from its torch seed,
        # which the DataLoader draws from the (seeded) main process.
        source.pipeline.set_random_seed(torch.initial_seed() % 2**32)


class BatchFeeder:
    """Augmented, normalised training batches, in order: ``feeder(batches)`` yields one per index batch.

    Augmentation costs ~13 ms a crop on one core; beside a GPU step it is the whole step, so CUDA runs
    spread it over ``workers`` processes. They are spawned, not forked: on the GPU machine, workers
    forked after the cache was cut (OpenCV and OpenMP thread pools already running in the parent)
    hung at the first batch. They persist across epochs and open the cache's memmap themselves.
    """

    def __init__(
        self, cache: TileCache, pipeline: Any | None, prep: Any, min_visible: float, workers: int = 0
    ) -> None:
        self.source = _CropSource(cache, pipeline, prep, min_visible)
        self._epoch: list[np.ndarray] = []  # the loader's sampler: refilled each epoch, workers live on
        self._loader = None
        if workers > 0:
            from torch.utils.data import DataLoader

            self._loader = DataLoader(
                self.source,
                batch_size=None,
                sampler=self._epoch,
                num_workers=workers,
                collate_fn=_as_is,
                worker_init_fn=_seed_worker,
                multiprocessing_context="spawn",
                persistent_workers=True,
                prefetch_factor=4,
            )

    def __call__(self, batches: list[np.ndarray]) -> Iterator[CropBatch]:
        if self._loader is None:
            for indices in batches:
                yield self.source[indices]
            return
        self._epoch[:] = batches
        yield from self._loader
