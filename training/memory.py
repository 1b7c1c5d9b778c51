"""Building a classifier's memory of a buyer's good tiles (:mod:`models.memory`) from its photos.

The memory holds the patch features of the clean tiles of the training photos (no defect box touches
them), per pyramid level; the surprise of the validation photos' clean tiles, which the memory has not
seen, sets each level's centre and spread, so a surprise of 3 means as unusual as a clean tile three
robust standard deviations out. Validation photos are then scored with it like any photo.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from models.memory import PatchMemory, nearest_distances
from training.mining import known_clean

TOUCHES = 1e-9  # share of a box inside a tile that makes it unclean: any overlap at all


def clean_tile_patches(
    dataset: Any, image_ids: list[int], predictor: Any, prep: Any
) -> dict[float, list[np.ndarray]]:
    """Per pyramid level, the patch features (P x C per tile) of every tile no defect box touches.

    A photo labelled with a family that none of its boxes locates has no tile known to be clean
    (:func:`training.mining.known_clean`)."""
    from cv.prep import prepare_tiles
    from datasets.coco import annotations_by_image
    from models.photo import as_prep
    from training.data import load_working_photo

    prep = as_prep(prep)
    anns = annotations_by_image(dataset.coco)
    images = {im["id"]: im for im in dataset.coco["images"]}
    out: dict[float, list[np.ndarray]] = {}
    for image_id in image_ids:
        image = images[image_id]
        rgb = load_working_photo(dataset.image_path(image), prep)
        batch, tiles = prepare_tiles(rgb, prep)
        xyxy = np.array([t.xyxy for t in tiles], np.float64).reshape(-1, 4)
        keep = np.flatnonzero(known_clean(image, anns.get(image_id, []), xyxy, rgb.shape, TOUCHES))
        if not len(keep):
            continue
        patches = predictor.patch_features(np.asarray(batch, np.float32)[keep])
        for i, tile_patches in zip(keep, patches, strict=True):
            out.setdefault(float(tiles[i].scale), []).append(tile_patches.astype(np.float16))
    return out


def remember_good_tiles(
    split: Any,
    val_ids: list[int],
    predictor: Any,
    prep: Any,
    settings: Any,
    seed: int,
    log: Callable[[str], None],
) -> PatchMemory | None:
    """The memory of ``split``'s training photos, scaled on its validation photos (``settings``:
    :class:`training.config.MemorySettings`); None when no level has enough clean validation tiles."""
    rng = np.random.default_rng(seed)
    remembered = clean_tile_patches(split.train, split.train_ids, predictor, prep)
    held_out = clean_tile_patches(split.val, val_ids, predictor, prep)
    banks, centre, spread = {}, {}, {}
    for level, tiles in sorted(remembered.items()):
        val_tiles = held_out.get(level, [])
        if len(val_tiles) < settings.min_val_tiles:
            log(
                f"memory: level {level:g} has {len(val_tiles)} clean validation tiles "
                f"(< {settings.min_val_tiles}): not remembered"
            )
            continue
        bank = np.concatenate(tiles).astype(np.float32)
        if len(bank) > settings.max_patches:
            bank = bank[rng.choice(len(bank), settings.max_patches, replace=False)]
        dist = nearest_distances(np.stack(val_tiles), bank)
        mid = float(np.median(dist))
        banks[level] = bank.astype(np.float16)
        centre[level] = mid
        spread[level] = max(1.4826 * float(np.median(np.abs(dist - mid))), 1e-6)
        log(
            f"memory: level {level:g}: {len(bank)} patches of {len(tiles)} clean training tiles; "
            f"{len(val_tiles)} clean validation tiles at {mid:.2f} +- {spread[level]:.2f}"
        )
    if not banks:
        log("memory: no level could be scaled: the bundle has no memory")
        return None
    return PatchMemory(banks=banks, centre=centre, spread=spread, weights=dict(settings.weights))
