"""The tile cache's crop rules and the balanced batch sampler."""

from __future__ import annotations

import cv2
import numpy as np

from cv.prep import PrepSettings, home_level
from training.config import CacheSettings
from training.data import (
    IGNORE,
    LOOKALIKE,
    POSITIVE,
    RANDOM,
    TileCache,
    balanced_batches,
    crop_targets,
    crops_from_photo,
    level_tile_counts,
    lookalike_boxes_work,
)


def test_box_counts_for_a_crop_when_half_of_it_is_inside():
    boxes = np.array([[90, 10, 110, 30], [60, 60, 100, 100], [0, 0, 400, 400]], np.float32)
    fams = np.array([0, 1, 2])
    subs = np.array([1, -1, 12])
    # crop 0..100 seen at 50 px: box 0 is half inside (counts), box 1 fully inside, box 2 covers the crop
    b, f, s, labels, ib, if_ = crop_targets(boxes, fams, subs, (0, 0, 100, 100), 50, 0.5)
    assert labels.tolist() == [1, 1, 1] and len(ib) == 0 and len(if_) == 0
    assert np.allclose(b[0], [45, 5, 50, 15]) and np.allclose(b[1], [30, 30, 50, 50])
    assert s.tolist() == [1, -1, 12]
    # box 0 only 40 % inside: dropped and its family ignored on this crop (neither defect nor good);
    # the carton-sized box 2 still counts (it fills the crop)
    b, f, s, labels, ib, if_ = crop_targets(
        boxes[[0, 2]], fams[[0, 2]], subs[[0, 2]], (0, 0, 98, 98), 98, 0.5
    )
    assert labels.tolist() == [IGNORE, 0, 1] and f.tolist() == [2]
    # the cut box is handed back, clipped to the crop, so the detector can leave it out of its loss
    assert if_.tolist() == [0] and np.allclose(ib, [[90, 10, 98, 30]])


def test_box_too_small_at_the_crop_scale_is_ignored_not_taught():
    boxes = np.array([[40, 40, 60, 50]], np.float32)  # 20 px long in the photo
    fams, subs = np.array([0]), np.array([0])
    # a 100-px crop seen at 50 px: 10 px in the input, visible
    assert crop_targets(boxes, fams, subs, (0, 0, 100, 100), 50, 0.5, min_box_px=6)[3].tolist() == [1, 0, 0]
    # a 400-px (coarse) crop seen at 50 px: 2.5 px, too small to see there
    b, _, _, labels, ib, _ = crop_targets(boxes, fams, subs, (0, 0, 400, 400), 50, 0.5, min_box_px=6)
    assert labels.tolist() == [IGNORE, 0, 0] and len(b) == 0 and np.allclose(ib, [[5, 5, 7.5, 6.25]])


def test_tiny_box_is_taught_on_finest_level_crops_and_ignored_on_coarser_ones():
    # 8x4 px at working scale: 4 px long in a 64-px crop of a 100-px tile, under min_box_px 6. The
    # finest level is the best view inference ever gets, so there it must still be learnt.
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    prep = PrepSettings(work_long_side=400, tile_size=100, tile_overlap=10, input_size=64, levels=(1.0, 0.5))
    settings = CacheSettings(crops_per_box=4, negatives_per_photo=40, lookalike_crops=0, min_box_px=6)
    boxes = np.array([[200, 150, 208, 154]], np.float32)
    crops = crops_from_photo(rgb, boxes, np.array([0]), np.array([0]), np.zeros((0, 4)), prep, settings, rng)
    positives = [c for c in crops if c[5] == POSITIVE]
    assert positives and all(c[4][0] == 1 and len(c[1]) == 1 for c in positives)
    # random crops at level 0.5 (200-px side) that touch the box show it at ~2.5 px: ignored, kept aside
    coarse = [c for c in crops if c[5] == RANDOM and len(c[6]) and not len(c[1])]
    assert coarse and all(c[4][0] == IGNORE and c[7].tolist() == [0] for c in coarse)


def test_pyramid_crops_put_large_boxes_on_coarse_levels_and_show_the_whole_photo():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    prep = PrepSettings(work_long_side=400, tile_size=100, tile_overlap=10, input_size=64, levels=(1.0, 0.25))
    settings = CacheSettings(
        crops_per_box=2, negatives_per_photo=3, lookalike_crops=0, scale_jitter=(1.0, 1.0)
    )
    boxes = np.array([[10, 10, 30, 20], [50, 50, 350, 250]], np.float32)  # a small and a 300-px box
    assert home_level(20, prep) == 1.0 and home_level(300, prep) == 0.25
    crops = crops_from_photo(
        rgb, boxes, np.array([0, 1]), np.array([0, 4]), np.zeros((0, 4)), prep, settings, rng
    )
    positives = [c for c in crops if c[5] == POSITIVE]
    # the large box is seen whole: its crop is 400 px (100 / 0.25) and holds the entire box
    big = positives[2:]
    assert all(c[4][1] == 1 and len(c[1]) >= 1 for c in big)
    # one more crop is exactly the coarsest tile of inference: the whole photo at 0.25, padded right/bottom
    whole = crops[-1]
    expected = np.full((100, 100, 3), 114, np.uint8)
    expected[:75, :100] = cv2.resize(rgb, (100, 75), interpolation=cv2.INTER_AREA)
    assert (
        np.abs(whole[0].astype(int) - cv2.resize(expected, (64, 64), interpolation=cv2.INTER_AREA)).mean() < 6
    )
    assert level_tile_counts(400, 300, prep) == {1.0: 20, 0.25: 1}


def test_crops_around_every_box_with_scale_jitter_and_negatives():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    prep = PrepSettings(work_long_side=400, tile_size=100, tile_overlap=10, input_size=64)
    settings = CacheSettings(crops_per_box=3, negatives_per_photo=4, scale_jitter=(0.8, 1.25))
    boxes = np.array([[200, 150, 220, 160]], np.float32)
    crops = crops_from_photo(
        rgb, boxes, np.array([0]), np.array([0]), np.zeros((0, 4)), prep, settings, rng, 2
    )
    kinds = [c[5] for c in crops]
    assert kinds.count(POSITIVE) == 3 and kinds.count(RANDOM) == 4
    assert all(c[0].shape == (64, 64, 3) and c[0].dtype == np.uint8 for c in crops)
    for _crop, b, _f, _s, labels, kind, _ib, _if in crops:
        if kind == POSITIVE:  # the box (20×10 px at working scale) is seen whole at 64/(100·s) px per px
            assert labels[0] == 1 and len(b) == 1
            w = b[0, 2] - b[0, 0]
            assert 20 * 64 / 125 - 0.01 <= w <= 20 * 64 / 80 + 0.01
        if kind == LOOKALIKE:
            assert not labels.any()  # a hard negative never holds a defect


def test_lookalikes_recorded_by_name_are_not_mistaken_for_boxes():
    image = {"width": 800, "height": 600, "lookalikes": ["lint", "fold"], "hard_negatives": [[80, 60, 8, 6]]}
    out = lookalike_boxes_work(image, (300, 400, 3))
    assert np.allclose(out, [[40, 30, 44, 33]])


def _cache(labels, kinds):
    n = len(labels)
    empty = [np.zeros((0, 4), np.float32)] * n
    return TileCache(
        crops=np.zeros((n, 8, 8, 3), np.uint8),
        labels=np.asarray(labels, np.uint8),
        kinds=np.asarray(kinds),
        photo_ids=np.zeros(n, np.int64),
        boxes=empty,
        box_families=[np.zeros(0, np.int64)] * n,
        box_subtypes=[np.zeros(0, np.int64)] * n,
    )


def test_batches_hold_the_positive_fraction_and_balance_families():
    # 90 stitching crops, 10 label crops, 200 negatives of which 20 hard
    labels = [[1, 0, 0]] * 90 + [[0, 0, 1]] * 10 + [[0, 0, 0]] * 200
    kinds = [POSITIVE] * 100 + [LOOKALIKE] * 20 + [RANDOM] * 180
    cache = _cache(labels, kinds)
    batches = list(balanced_batches(cache, 20, 0.5, 300, np.random.default_rng(1)))
    assert len(batches) == 300 and all(len(b) == 20 for b in batches)
    idx = np.concatenate(batches)
    has_defect = cache.labels[idx].any(axis=1)
    assert all(cache.labels[b].any(axis=1).sum() == 10 for b in batches)
    # the rare family is drawn about as often as the common one (weights 1/count)
    stitching, label = cache.labels[idx, 0].sum(), cache.labels[idx, 2].sum()
    assert 0.8 < stitching / label < 1.25
    # hard negatives are about a third of the negatives although they are a tenth of them
    hard = (cache.kinds[idx] == LOOKALIKE) & ~has_defect
    assert 0.28 < hard.sum() / (~has_defect).sum() < 0.39


def test_augmentation_moves_ignored_boxes_with_the_crop(tmp_path):
    import yaml

    from datasets.augment import build_augment
    from training.data import augment_crop

    path = tmp_path / "flip.yaml"
    path.write_text(yaml.safe_dump({"transforms": [{"name": "HorizontalFlip", "params": {"p": 1.0}}]}))
    pipeline = build_augment(path)
    crop = np.zeros((64, 64, 3), np.uint8)
    boxes, fams, subs = np.array([[4, 4, 20, 12]], np.float32), np.array([0]), np.array([2])
    ignored, ignored_fams = np.array([[0, 30, 10, 40]], np.float32), np.array([2])
    _, b, f, s, labels, ib, if_ = augment_crop(pipeline, crop, boxes, fams, subs, 0.5, ignored, ignored_fams)
    assert np.allclose(b, [[44, 4, 60, 12]]) and f.tolist() == [0] and s.tolist() == [2]
    assert np.allclose(ib, [[54, 30, 64, 40]]) and if_.tolist() == [2]
    # the family of an ignored box stays ignored; a counted box keeps its family present
    assert labels.tolist() == [1, 0, IGNORE]


def test_what_the_box_filter_drops_stays_an_ignored_region_of_the_detector(tmp_path):
    import yaml

    from datasets.augment import build_augment
    from training.data import augment_crop

    path = tmp_path / "shift.yaml"
    shift = {"name": "Affine", "params": {"translate_px": {"x": 40, "y": 0}, "p": 1.0}}
    path.write_text(yaml.safe_dump({"min_visibility": 0.6, "min_area": 16, "transforms": [shift]}))
    pipeline = build_augment(path)
    crop = np.zeros((64, 64, 3), np.uint8)
    # 40 px to the right on a 64-px crop: the first box stays 70 % visible, the second 20 %, the third
    # leaves the crop; the ignored piece is 9 px², under min_area.
    boxes = np.array([[10, 4, 30, 12], [20, 20, 40, 28], [30, 40, 50, 44]], np.float32)
    fams, subs = np.array([0, 1, 0]), np.array([2, 5, 2])
    ignored, ignored_fams = np.array([[2, 50, 5, 53]], np.float32), np.array([2])
    _, b, f, s, labels, ib, if_ = augment_crop(pipeline, crop, boxes, fams, subs, 0.6, ignored, ignored_fams)
    assert np.allclose(b, [[50, 4, 64, 12]], atol=0.5) and f.tolist() == [0] and s.tolist() == [2]
    # the sliver of the second box and the tiny piece are still defect pixels: ignored, not background;
    # the box that left the crop leaves nothing
    assert np.allclose(ib, [[60, 20, 64, 28], [42, 50, 45, 53]], atol=0.5) and if_.tolist() == [1, 2]
    assert labels.tolist() == [1, IGNORE, IGNORE]


def test_worker_processes_keep_the_batch_order_and_augment_each_batch_afresh(tmp_path):
    import torch
    import yaml

    from datasets.augment import build_augment
    from training.data import BatchFeeder

    n = 6
    cache = _cache([[0, 0, 0]] * n, [RANDOM] * n)
    cache.crops = np.random.default_rng(0).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    # no folder: the workers get a pickled copy (a cache on disk is reopened: test_training.py)
    prep = PrepSettings(work_long_side=64, tile_size=16, tile_overlap=0, input_size=16)
    batches = [np.array([i % n, (i + 1) % n]) for i in range(8)]
    plain = list(BatchFeeder(cache, None, prep, 0.5)(batches))
    spawned = list(BatchFeeder(cache, None, prep, 0.5, workers=2)(batches))
    assert len(spawned) == 8 and all(
        np.array_equal(a.images, b.images) for a, b in zip(plain, spawned, strict=True)
    )

    path = tmp_path / "noise.yaml"
    path.write_text(yaml.safe_dump({"transforms": [{"name": "GaussNoise", "params": {"p": 1.0}}]}))
    same = [np.array([0, 0])] * 4

    def two_epochs() -> list[np.ndarray]:
        torch.manual_seed(0)
        feed = BatchFeeder(cache, build_augment(path), prep, 0.5, workers=2)
        return [b.images for b in feed(same)] + [b.images for b in feed(same)]

    first = two_epochs()
    # batches 0 and 1 come from the two workers: with one seed they would be augmented alike
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], first[4])  # the workers live on, their augmentation moves on
    assert all(
        np.array_equal(a, b) for a, b in zip(first, two_epochs(), strict=True)
    )  # and a seeded run repeats


def test_marking_a_hard_negative_cuts_a_new_tile_cache(po, tmp_path):
    """The data version hashes photos and defect labels only; look-alike regions change the crops, so
    a cache cut before a region was marked must not be reused after."""
    from datasets.reader import read_dataset
    from training.data import build_tile_cache

    dataset = read_dataset(po)
    ids = [im["id"] for im in dataset.coco["images"]]
    prep = PrepSettings(work_long_side=400, tile_size=160, tile_overlap=16, input_size=64)
    settings = CacheSettings(crops_per_box=1, negatives_per_photo=1, lookalike_crops=3)
    before = build_tile_cache(dataset, ids, prep, settings, tmp_path, "v1", log=None)
    for im in dataset.coco["images"]:
        for key in ("lookalikes", "look_alikes", "hard_negatives"):
            im.pop(key, None)
    plain = build_tile_cache(dataset, ids, prep, settings, tmp_path, "v1", log=None)
    dataset.coco["images"][0]["hard_negatives"] = [[10, 10, 60, 60]]
    marked = build_tile_cache(dataset, ids, prep, settings, tmp_path, "v1", log=None)
    assert (marked.kinds == LOOKALIKE).sum() == (plain.kinds == LOOKALIKE).sum() + 3
    assert len({c.folder for c in (before, plain, marked)}) == 3
    again = build_tile_cache(dataset, ids, prep, settings, tmp_path, "v1", log=None)
    assert again.folder == marked.folder
    # a starting model's false flags (fractions of the photo) are cropped the same way, and hashed too
    mined = {ids[1]: np.array([[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9]], np.float32)}
    more = build_tile_cache(dataset, ids, prep, settings, tmp_path, "v1", log=None, mined=mined)
    assert (more.kinds == LOOKALIKE).sum() == (marked.kinds == LOOKALIKE).sum() + 6
    assert more.folder != marked.folder
