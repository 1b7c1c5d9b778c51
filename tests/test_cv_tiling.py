"""Tile grids cover the photo; boxes split by tile borders come back once."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cv.tiling import Tile, merge_tile_detections, tile_grid


@pytest.mark.parametrize(("w", "h"), [(1280, 960), (1000, 333), (320, 320), (200, 150), (641, 700)])
def test_tile_grid_covers_the_image_without_padding(w, h):
    tiles = tile_grid(w, h, 320, 48)
    covered = np.zeros((h, w), bool)
    for t in tiles:
        assert t.x >= 0 and t.y >= 0 and t.x + t.w <= w and t.y + t.h <= h
        assert (t.w, t.h) == (min(320, w), min(320, h))
        covered[t.y : t.y + t.h, t.x : t.x + t.w] = True
    assert covered.all()
    xs = sorted({t.x for t in tiles})
    # Neighbours overlap by at least the requested overlap.
    assert all(b - a <= 320 - 48 for a, b in itertools.pairwise(xs))


def test_tile_grid_rejects_bad_overlap():
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(100, 100, 64, 64)


def detections_on_tiles(box: np.ndarray, tiles: list[Tile], label: int = 1, score: float = 0.9):
    """What a perfect detector would report on each tile: the part of ``box`` the tile sees."""
    per_tile = []
    for t in tiles:
        x0, y0 = max(box[0], t.x), max(box[1], t.y)
        x1, y1 = min(box[2], t.x + t.w), min(box[3], t.y + t.h)
        if x1 - x0 > 1 and y1 - y0 > 1:
            per_tile.append(
                (t, np.array([[x0 - t.x, y0 - t.y, x1 - t.x, y1 - t.y]]), np.array([score]), [label])
            )
        else:
            per_tile.append((t, np.zeros((0, 4)), np.zeros(0), []))
    return per_tile


@pytest.mark.parametrize(
    "box",
    [
        [250, 100, 300, 130],  # small, inside the overlap strip: seen whole by two tiles
        [200, 100, 420, 140],  # wider than the overlap: each tile sees a different piece
        [240, 230, 330, 330],  # straddles a corner: four pieces
        [100, 250, 130, 600],  # tall seam crossing two horizontal borders
    ],
)
def test_box_straddling_tile_borders_comes_back_once(box):
    box = np.array(box, float)
    tiles = tile_grid(1280, 960, 320, 48)
    per_tile = detections_on_tiles(box, tiles)
    assert sum(len(b) for _, b, _, _ in per_tile) >= 2
    boxes, scores, labels = merge_tile_detections(per_tile)
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes[0], box, atol=0.5)
    assert scores[0] == pytest.approx(0.9) and labels[0] == 1


def test_only_tiles_with_detections_given_still_merge():
    tiles = tile_grid(1280, 960, 320, 48)
    box = np.array([150, 100, 700, 140], float)  # long seam across three tiles
    per_tile = [t for t in detections_on_tiles(box, tiles) if len(t[1])]
    boxes, _, _ = merge_tile_detections(per_tile, image_size=(1280, 960))
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes[0], box, atol=0.5)


def test_distinct_defects_and_families_stay_apart():
    tiles = tile_grid(1280, 960, 320, 48)
    seam = np.array([200, 100, 420, 140], float)
    logo = np.array([200, 100, 420, 140], float)  # same place, different family
    far = np.array([900, 700, 950, 760], float)
    per_tile = detections_on_tiles(seam, tiles, label=1) + detections_on_tiles(
        logo, tiles, label=2, score=0.7
    )
    per_tile += detections_on_tiles(far, tiles, label=1, score=0.5)
    _boxes, scores, labels = merge_tile_detections(per_tile)
    assert sorted(labels.tolist()) == [1, 1, 2]
    assert scores.tolist() == sorted(scores.tolist(), reverse=True)


def test_two_neighbouring_defects_on_one_tile_are_not_merged():
    tiles = [Tile(0, 0, 320, 320)]
    per_tile = [(tiles[0], np.array([[10, 10, 50, 50], [60, 10, 100, 50]]), np.array([0.9, 0.8]), [1, 1])]
    boxes, _, _ = merge_tile_detections(per_tile)
    assert len(boxes) == 2


def test_empty_input_gives_empty_arrays():
    boxes, scores, labels = merge_tile_detections([])
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="one score and one label per box"):
        merge_tile_detections([(Tile(0, 0, 10, 10), np.zeros((2, 4)), np.zeros(1), [1, 1])])


def test_pieces_cut_by_a_coarse_tile_border_merge_within_that_levels_precision():
    # Quarter-scale tiles: 320-px tiles cover 1280 working px; one level pixel is 4 working px, so a
    # piece ending 6 working px short of the border (1.5 level px) is still cut by it.
    a, b = Tile(0, 0, 1280, 1280, scale=0.25), Tile(1088, 0, 1280, 1280, scale=0.25)
    left = (a, np.array([[900.0, 400.0, 1274.0, 480.0]]), np.array([0.9]), [0])
    right = (b, np.array([[6.0, 402.0, 412.0, 478.0]]), np.array([0.8]), [0])  # 1094..1500 working px
    boxes, _, _ = merge_tile_detections([left, right], 0.7, image_size=(2368, 1280))
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes[0], [900, 400, 1500, 480])
    # The same pieces from full-scale tiles (1 working px per level px) are two defects.
    a1, b1 = Tile(0, 0, 1280, 1280), Tile(1088, 0, 1280, 1280)
    boxes, _, _ = merge_tile_detections([(a1, *left[1:]), (b1, *right[1:])], 0.7, image_size=(2368, 1280))
    assert len(boxes) == 2


def test_a_weak_uncut_box_over_a_strong_one_is_dropped_not_unioned():
    tile = Tile(0, 0, 320, 320)
    strong = np.array([[100.0, 100.0, 160.0, 140.0]])
    weak = np.array([[80.0, 60.0, 260.0, 200.0]])  # holds the strong box: intersection-over-smaller 1
    boxes, scores, _ = merge_tile_detections(
        [(tile, np.concatenate([strong, weak]), np.array([0.9, 0.2]), [0, 0])], 0.5, image_size=(320, 320)
    )
    assert len(boxes) == 1 and scores[0] == pytest.approx(0.9)
    np.testing.assert_allclose(boxes[0], strong[0])
