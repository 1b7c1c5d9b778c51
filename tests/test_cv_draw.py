"""Drawing findings and thumbnails."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from cv.draw import FAMILY_COLOURS, draw_findings, encode_jpeg, thumbnail


@dataclass
class Finding:
    family: str
    subtype: str
    score: float
    box: tuple[float, float, float, float]


def test_boxes_are_drawn_in_their_family_colour_and_the_input_is_untouched():
    rgb = np.full((600, 800, 3), 128, np.uint8)
    findings = [
        {"family": "stitching", "subtype": "skipped_stitch", "score": 0.91, "box": [100, 200, 300, 260]},
        Finding("label", "crooked_label", 0.55, (500, 20, 700, 150)),
    ]
    out = draw_findings(rgb, findings)
    assert (rgb == 128).all()
    assert tuple(out[230, 100]) == FAMILY_COLOURS["stitching"]  # left edge of the first box
    assert tuple(out[100, 700]) == FAMILY_COLOURS["label"]  # right edge of the second box
    assert tuple(out[230, 200]) == (128, 128, 128)  # inside the box stays clear
    # The caption is written above the first box (dark text on the family colour).
    caption = out[150:200, 100:300]
    assert (caption == FAMILY_COLOURS["stitching"]).all(axis=2).any() and (caption < 60).all(axis=2).any()


def test_photo_level_finding_without_a_box_is_listed():
    out = draw_findings(np.zeros((200, 300, 3), np.uint8), [{"family": "logo", "subtype": "missing_logo"}])
    assert (out[:40, :150] == FAMILY_COLOURS["logo"]).all(axis=2).any()


def test_bad_box_is_refused():
    with pytest.raises(ValueError, match=r"x0, y0, x1, y1"):
        draw_findings(np.zeros((10, 10, 3), np.uint8), [{"family": "logo", "box": [1, 2, 3]}])


def test_thumbnail_keeps_aspect_and_never_enlarges():
    rgb = np.zeros((3000, 4000, 3), np.uint8)
    assert thumbnail(rgb, 320).shape == (240, 320, 3)
    assert thumbnail(np.zeros((100, 50, 3), np.uint8), 320).shape == (100, 50, 3)


def test_encode_jpeg_round_trips_rgb():
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200
    back = cv2.imdecode(np.frombuffer(encode_jpeg(rgb), np.uint8), cv2.IMREAD_COLOR_RGB)
    assert abs(int(back[16, 16, 0]) - 200) < 5 and back[16, 16, 2] < 10
