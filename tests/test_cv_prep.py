"""Model-input preparation: working scale, normalisation, letterbox, tiles."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from cv.prep import (
    PrepSettings,
    letterbox,
    min_decode_side,
    normalise,
    prepare_tiles,
    tile_boxes_to_tile_px,
    to_working_scale,
)
from cv.tiling import merge_tile_detections


def scene(h: int = 750, w: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_to_working_scale_sets_the_long_side():
    s = PrepSettings(work_long_side=640)
    work, scale = to_working_scale(scene(750, 1000), s)
    assert work.shape == (480, 640, 3) and scale == pytest.approx(0.64)
    work, scale = to_working_scale(scene(1000, 300), s)
    assert work.shape == (640, 192, 3)


def test_min_decode_side_never_forces_an_upscale():
    s = PrepSettings(work_long_side=1280)
    assert min_decode_side(s, 4000, 3000) == 960
    assert min_decode_side(s, 3000, 4000) == 960
    assert min_decode_side(s, 800, 600) == 600


def test_normalise_image_and_batch():
    s = PrepSettings()
    img = np.zeros((4, 5, 3), np.uint8)
    img[..., 0] = 255
    chw = normalise(img, s)
    assert chw.shape == (3, 4, 5) and chw.dtype == np.float32
    assert chw[0].min() == pytest.approx(1.0) and chw[1].max() == pytest.approx(-1.0)
    nchw = normalise(np.stack([img, img]), s)
    assert nchw.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(nchw[1], chw)
    with pytest.raises(ValueError, match="uint8 RGB"):
        normalise(img.astype(np.float32), s)


def test_letterbox_maps_boxes_both_ways():
    img = scene(300, 600)
    out, tf = letterbox(img, 320)
    assert out.shape == (320, 320, 3)
    assert tf.scale == pytest.approx(320 / 600) and tf.pad_x == 0 and tf.pad_y == 80
    boxes = np.array([[60, 30, 120, 90], [0, 0, 600, 300]], np.float32)
    lb = tf.to_letterbox(boxes)
    np.testing.assert_allclose(lb[1], [0, 80, 320, 240], atol=1e-4)
    np.testing.assert_allclose(tf.to_source(lb), boxes, atol=1e-3)
    assert (out[:80] == 114).all() and (out[240:] == 114).all()


def test_prepare_tiles_and_merge_round_trip_a_known_box():
    s = PrepSettings(work_long_side=1280, tile_size=320, tile_overlap=48, input_size=160)
    work, _ = to_working_scale(scene(), s)
    batch, tiles = prepare_tiles(work, s)
    assert batch.shape == (len(tiles), 3, 160, 160) and batch.dtype == np.float32
    # The first tile is the top-left corner of the working photo, shrunk to the input and normalised.
    corner = cv2.resize(work[:320, :320], (160, 160), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(batch[0], normalise(corner, s), atol=1e-5)
    last = tiles[-1]
    assert (last.x + last.w, last.y + last.h) == (work.shape[1], work.shape[0])
    # A detector answering in input pixels: the box mapped back per tile lands where it should.
    box = np.array([250.0, 100.0, 420.0, 140.0])
    per_tile = []
    for t in tiles:
        x0, y0, x1, y1 = max(box[0], t.x), max(box[1], t.y), min(box[2], t.x + t.w), min(box[3], t.y + t.h)
        if x1 > x0 and y1 > y0:
            in_input = np.array([[x0 - t.x, y0 - t.y, x1 - t.x, y1 - t.y]]) * 160 / 320
            per_tile.append((t, tile_boxes_to_tile_px(in_input, s), np.array([0.8]), [3]))
    merged, _, labels = merge_tile_detections(per_tile)
    assert len(merged) == 1 and labels[0] == 3
    np.testing.assert_allclose(merged[0], box, atol=0.5)


def test_pyramid_levels_add_coarse_tiles_that_map_boxes_back_to_working_pixels():
    s = PrepSettings(
        work_long_side=1280, tile_size=320, tile_overlap=48, input_size=160, levels=(1.0, 0.5, 0.25)
    )
    work, _ = to_working_scale(scene(), s)
    batch, tiles = prepare_tiles(work, s)
    scales = [t.scale for t in tiles]
    assert scales == sorted(scales, reverse=True) and set(scales) == {1.0, 0.5, 0.25}
    whole = [t for t in tiles if t.scale == 0.25]
    # The coarsest level is the whole photo in one tile, padded right/bottom.
    assert len(whole) == 1 and (whole[0].x, whole[0].y) == (0, 0)
    assert (whole[0].w, whole[0].h) == (work.shape[1], work.shape[0])
    # A 600-px defect answered on the whole-photo tile comes back in working pixels.
    box = np.array([[300.0, 200.0, 900.0, 500.0]])
    in_input = box * 0.25 * 160 / 320
    back = tile_boxes_to_tile_px(in_input, s, whole[0].scale) + [whole[0].x, whole[0].y] * 2
    np.testing.assert_allclose(back, box, atol=1e-3)
    i = tiles.index(whole[0])
    coarse = np.full((320, 320, 3), 114, np.uint8)
    small = cv2.resize(work, (320, round(work.shape[0] * 0.25)), interpolation=cv2.INTER_AREA)
    coarse[: small.shape[0]] = small
    expected = normalise(cv2.resize(coarse, (160, 160), interpolation=cv2.INTER_AREA), s)
    np.testing.assert_allclose(batch[i], expected, atol=1e-5)
    with pytest.raises(ValueError, match="levels"):
        PrepSettings(levels=(1.0, 2.0))
    # Whatever the YAML order, tiles come finest level first.
    assert PrepSettings(levels=(0.25, 1.0, 0.5)).levels == (1.0, 0.5, 0.25)


def test_small_photo_is_padded_into_one_tile():
    s = PrepSettings(work_long_side=200, tile_size=320, tile_overlap=48, input_size=320)
    work, _ = to_working_scale(scene(150, 200), s)
    batch, tiles = prepare_tiles(work, s)
    assert len(tiles) == 1 and (tiles[0].w, tiles[0].h) == (200, 150)
    assert batch.shape == (1, 3, 320, 320)


def test_colour_corrections_change_what_they_should():
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 180, 120, 60  # warm tungsten cast
    rgb[16:48, 16:48] += 40
    wb, _ = to_working_scale(rgb, PrepSettings(work_long_side=64, white_balance=True))
    means = wb.reshape(-1, 3).mean(0)
    assert means.max() - means.min() < 5
    flat = np.repeat(np.linspace(100, 120, 64).astype(np.uint8)[None, :, None], 64, axis=0).repeat(3, axis=2)
    eq, _ = to_working_scale(flat, PrepSettings(work_long_side=64, clahe=True))
    spread_before = int(flat[..., 0].max()) - int(flat[..., 0].min())
    assert int(eq[..., 0].max()) - int(eq[..., 0].min()) > 1.3 * spread_before  # low contrast stretched
    plain, _ = to_working_scale(flat, PrepSettings(work_long_side=64))
    np.testing.assert_array_equal(plain, flat)


def test_settings_validate_and_round_trip():
    with pytest.raises(ValidationError, match="tile_overlap"):
        PrepSettings(tile_size=64, tile_overlap=64)
    with pytest.raises(ValidationError):
        PrepSettings(unknown_field=1)
    s = PrepSettings(clahe=True, mean=(0.485, 0.456, 0.406))
    assert PrepSettings.model_validate_json(s.model_dump_json()) == s


def test_bad_image_gets_a_clear_error():
    with pytest.raises(ValueError, match=r"RGB uint8.*decode_photo"):
        to_working_scale(np.zeros((10, 10), np.uint8), PrepSettings())
