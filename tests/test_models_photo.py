"""Photo-level detection over the tile pyramid: boxes back in working pixels, one per defect."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cv.prep import PrepSettings, prepare_tiles
from models.decode import Detections
from models.photo import detect_photo

NO_BOXES = Detections(
    np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, int), np.zeros(0, int)
)
PREP = PrepSettings(work_long_side=640, tile_size=160, tile_overlap=16, input_size=160, levels=(1.0, 0.25))


class OneDefectEverywhere:
    """A detector's answer to every tile: the same 400x200 working-px defect, wherever the tile sees it.

    Stands in for a trained network so the expected boxes are known exactly; everything after the
    network (level mapping, filtering, merging) is the real code.
    """

    families = ("stitching", "logo", "label")
    subtypes = ()
    bundle = SimpleNamespace(config={"detector": {}})
    box = np.array([100.0, 100.0, 500.0, 300.0])

    def __init__(self, tiles):
        self.tiles = list(tiles)
        self.calls = 0

    def detect(self, batch, score_threshold, top_k):
        out = []
        for _ in range(len(batch)):
            t = self.tiles[self.calls]
            self.calls += 1
            x0, y0 = max(self.box[0], t.x), max(self.box[1], t.y)
            x1, y1 = min(self.box[2], t.x + t.w), min(self.box[3], t.y + t.h)
            if x1 <= x0 or y1 <= y0:
                out.append(NO_BOXES)
                continue
            in_input = (np.array([[x0 - t.x, y0 - t.y, x1 - t.x, y1 - t.y]]) * t.scale).astype(np.float32)
            score = 0.9 if t.scale < 1 else 0.6
            out.append(Detections(in_input, np.array([score], np.float32), np.array([1]), np.array([-1])))
        return out


def test_pyramid_detections_come_back_in_working_pixels_once_per_defect():
    work = np.full((480, 640, 3), 128, np.uint8)
    _, tiles = prepare_tiles(work, PREP)
    # Every level answers: the coarse tile sees the whole defect, full-scale tiles see pieces of it.
    found = detect_photo(work, OneDefectEverywhere(tiles), PREP, home_level_only=False)
    assert found[0][2] == "logo"
    np.testing.assert_allclose(found[0][0], OneDefectEverywhere.box, atol=1.0)
    # Trusting each box only from its home level: pieces too long for a full-scale tile are dropped,
    # the small ones merge into the whole box found at 0.25, which keeps its score.
    only = detect_photo(work, OneDefectEverywhere(tiles), PREP, home_level_only=True)
    assert len(only) == 1 and only[0][1] == np.float32(0.9)
    np.testing.assert_allclose(only[0][0], OneDefectEverywhere.box, atol=1.0)


def test_evidence_for_a_flag_is_the_finest_tile_that_reaches_the_threshold():
    from cv.tiling import Tile
    from models.photo import PhotoScores

    tiles = [Tile(0, 0, 160, 160), Tile(144, 0, 160, 160), Tile(0, 0, 640, 480, scale=0.25)]
    # Logo: the whole-photo tile is strongest, but a full-scale tile also passes the threshold.
    tile_scores = np.array([[0.1, 0.2, 0.0], [0.2, 0.7, 0.0], [0.3, 0.9, 0.6]], np.float32)
    scores = PhotoScores(
        families=("stitching", "logo", "label"),
        raw=tile_scores.max(axis=0),
        tile_scores=tile_scores,
        best_tile={"stitching": 2, "logo": 2, "label": 2},
        tiles=tiles,
    )
    assert scores.evidence_tile("logo", None, 0.5) == tiles[1]
    # Calibration moves the bar: with these Platt parameters 0.7 maps below 0.5 and only the
    # coarse tile passes.
    calibration = {"logo": {"a": 1.0, "b": -1.0}}
    assert scores.evidence_tile("logo", calibration, 0.5) == tiles[2]
    # Nothing reaches the threshold: the strongest tile.
    assert scores.evidence_tile("label", None, 0.9) == tiles[2]


def test_a_box_is_scored_with_the_classifiers_tiles_under_its_centre():
    from cv.tiling import Tile
    from models.photo import PhotoScores, supported_detections

    # Classifier working pixels: two full-scale tiles side by side and a coarse one over both.
    tiles = [Tile(0, 0, 160, 160), Tile(160, 0, 160, 160), Tile(0, 0, 320, 160, scale=0.5)]
    tile_scores = np.array([[0.64, 0.1, 0.0], [0.04, 0.1, 0.0], [0.09, 0.1, 0.0]], np.float32)
    scores = PhotoScores(("stitching", "logo", "label"), tile_scores.max(axis=0), tile_scores, {}, tiles)
    # Detector boxes in pixels twice as fine (a 640-px working photo against the classifier's 320).
    found = [
        ((200.0, 100.0, 240.0, 140.0), 0.25, "stitching", "skipped_stitch"),  # centre (110, 60): tiles 0, 2
        ((360.0, 100.0, 400.0, 140.0), 1.0, "stitching", None),  # centre (190, 60): tiles 1, 2
        ((900.0, 100.0, 940.0, 140.0), 0.9, "stitching", None),  # centre (460, 60): under no tile
        ((0.0, 0.0, 20.0, 20.0), 0.5, "colour_shade", None),  # a family the classifier does not score
    ]
    out = supported_detections(found, scores, to_classifier=0.5)
    assert [(d[0], round(d[1], 4), d[3]) for d in out] == [
        ((0.0, 0.0, 20.0, 20.0), 0.5, None),  # kept as the detector scored it
        ((200.0, 100.0, 240.0, 140.0), 0.4, "skipped_stitch"),  # sqrt(0.25 * 0.64)
        ((360.0, 100.0, 400.0, 140.0), 0.3, None),  # sqrt(1.0 * 0.09): the coarse tile beats 0.04
        ((900.0, 100.0, 940.0, 140.0), 0.0, None),
    ]
    assert supported_detections([], scores) == []


class ByLevel:
    """A classifier's answer to every tile, by its pyramid level: stitching 0.9 at full scale, 0.6 at
    0.25 (the network stands in so the expected scores are known; tiling and the max are real)."""

    families = ("stitching", "logo", "label")

    def __init__(self, tiles, calibration):
        self.scales = [t.scale for t in tiles]
        self.bundle = SimpleNamespace(calibration=calibration)
        self.calls = 0

    def run(self, batch):
        scales = self.scales[self.calls : self.calls + len(batch)]
        self.calls += len(batch)
        return np.array([[0.9 if s == 1.0 else 0.6, 0.2, 0.1] for s in scales], np.float32)


def test_a_bundle_calibrated_per_level_scores_each_level_through_its_own_platt_before_the_max():
    from models.photo import apply_platt, score_photo

    work = np.full((480, 640, 3), 128, np.uint8)
    _, tiles = prepare_tiles(work, PREP)
    plain = score_photo(work, ByLevel(tiles, {}), PREP)
    assert plain.levels == (0.25, 1.0)
    np.testing.assert_allclose(plain.level_max(), [[0.6, 0.2, 0.1], [0.9, 0.2, 0.1]], rtol=1e-6)
    assert plain.raw[0] == np.float32(0.9) and plain.tiles[plain.best_tile["stitching"]].scale == 1.0

    # The full-scale level's 0.9 means less than the coarse level's 0.6 once each level is calibrated.
    levels = {"stitching": {"1": {"a": 1.0, "b": -3.0}, "0.25": {"a": 1.0, "b": 0.5}}}
    calibrated = score_photo(work, ByLevel(tiles, {"levels": levels}), PREP)
    coarse = float(apply_platt(np.array([0.6]), levels["stitching"]["0.25"])[0])
    assert float(apply_platt(np.array([0.9]), levels["stitching"]["1"])[0]) < coarse
    assert calibrated.raw[0] == pytest.approx(coarse, rel=1e-6)
    assert calibrated.tiles[calibrated.best_tile["stitching"]].scale == 0.25
    # Families without per-level parameters keep their scores.
    np.testing.assert_array_equal(calibrated.raw[1:], plain.raw[1:])


def test_two_views_boxes_fuse_by_score_and_a_box_one_view_missed_keeps_half_its_score():
    from models.photo import fuse_views

    plain = [
        ((0.0, 0.0, 10.0, 10.0), 0.8, "logo", "smudged_print"),
        ((100.0, 100.0, 110.0, 110.0), 0.6, "label", None),
    ]
    mirrored = [
        ((1.0, 0.0, 11.0, 10.0), 0.4, "logo", "offset_logo"),
        ((100.0, 100.0, 110.0, 110.0), 0.5, "stitching", None),
    ]
    fused = fuse_views(plain, mirrored)
    # The logos overlap at IoU 90/110: one box, corners weighted 0.8 : 0.4, the stronger view's subtype.
    assert [(d[2], round(d[1], 6), d[3]) for d in fused] == [
        ("logo", 0.6, "smudged_print"),
        ("label", 0.3, None),  # the other view's box there is another family's
        ("stitching", 0.25, None),
    ]
    np.testing.assert_allclose(fused[0][0], [1 / 3, 0.0, 10 + 1 / 3, 10.0], atol=1e-9)
    # Below the fusion IoU the two stay apart, each at half its score.
    apart = fuse_views(plain[:1], [((5.0, 0.0, 15.0, 10.0), 0.4, "logo", None)])
    assert [round(d[1], 6) for d in apart] == [0.4, 0.2]


class BrightPatch:
    """A detector that boxes the tile's bright patch (channel 0) 4 input px right of where it is, scoring
    0.8 when the patch's green ramp is brighter on its left and 0.4 when it is brighter on its right. The
    mirrored view sees the ramp reversed and its box 4 px left once mapped back; the detector stands in
    so the fused box and score are known exactly (tiling, mirroring, merging and fusion are real)."""

    families = ("stitching", "logo", "label")
    subtypes = ()
    bundle = SimpleNamespace(config={"detector": {"mirror": True, "score_threshold": 0.1}})

    def detect(self, batch, score_threshold, top_k):
        out = []
        for tile in batch:
            ys, xs = np.nonzero(tile[0] > 0.5)
            if not len(xs):
                out.append(NO_BOXES)
                continue
            x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
            mid = (x0 + x1) / 2
            left, right = tile[1, y0:y1, x0 : int(mid)].mean(), tile[1, y0:y1, int(mid) : x1].mean()
            box = np.array([[x0 + 4, y0, x1 + 4, y1]], np.float32)
            out.append(
                Detections(
                    box, np.array([0.8 if left > right else 0.4], np.float32), np.array([0]), np.array([-1])
                )
            )
        return out


def _patch_photo(brighter_left: bool = True) -> np.ndarray:
    """A 640x480 working photo with BrightPatch's patch at x 200-280, y 100-140, its green ramp
    brighter on the left (or the right)."""
    work = np.zeros((480, 640, 3), np.uint8)
    work[100:140, 200:280, 0] = 255
    ramp = np.linspace(250, 50, 80) if brighter_left else np.linspace(50, 250, 80)
    work[100:140, 200:280, 1] = ramp.astype(np.uint8)
    return work


def test_a_mirrored_view_is_read_too_and_its_boxes_mapped_back_and_fused():
    prep = PrepSettings(work_long_side=640, tile_size=160, tile_overlap=16, input_size=160, levels=(1.0,))
    work = _patch_photo()  # brighter on the left
    plain = detect_photo(work, BrightPatch(), prep, mirror=False)
    assert [(d[0], round(d[1], 6)) for d in plain] == [((204.0, 100.0, 284.0, 140.0), 0.8)]
    (fused,) = detect_photo(work, BrightPatch(), prep)  # the bundle asks for the mirror
    # The mirrored view: score 0.4, box 4 px left once mapped back; corners weighted 0.8 : 0.4.
    np.testing.assert_allclose(fused[0], [200 + 4 / 3, 100.0, 280 + 4 / 3, 140.0], atol=1e-4)
    assert fused[1] == pytest.approx(0.6) and fused[2] == "stitching"


def test_a_view_at_another_scale_is_read_too_and_its_boxes_mapped_back_and_fused():
    prep = PrepSettings(work_long_side=640, tile_size=160, tile_overlap=16, input_size=160, levels=(1.0,))
    work = _patch_photo()
    detector = BrightPatch()
    detector.bundle = SimpleNamespace(config={"detector": {"score_threshold": 0.1, "scales": [0.5]}})
    plain = detect_photo(work, detector, prep, scales=[])
    assert [(d[0], round(d[1], 6)) for d in plain] == [((204.0, 100.0, 284.0, 140.0), 0.8)]
    # At half scale the patch is at x 100-140 and boxed 4 px right, 8 working px once mapped back;
    # the two boxes (IoU 0.9) fuse at equal weights.
    (fused,) = detect_photo(work, detector, prep)  # the bundle asks for the half-scale view
    np.testing.assert_allclose(fused[0], [206.0, 100.0, 286.0, 140.0], atol=1e-4)
    assert fused[1] == pytest.approx(0.8) and fused[2] == "stitching"
    # Given tiles of the plain photo's grid, there is no other view to read them on.
    assert detect_photo(work, detector, prep, tiles=list(range(len(prepare_tiles(work, prep)[1])))) == plain


def test_detector_scales_are_factors_other_than_one():
    from training.config import DetectorSettings

    assert DetectorSettings(scales=[0.8, 1.25]).scales == [0.8, 1.25]
    for bad in ([1.0], [0.1], [5.0]):
        with pytest.raises(ValueError, match=r"between 0\.25 and 4 other than 1"):
            DetectorSettings(scales=bad)


class CountingBrightPatch(BrightPatch):
    """BrightPatch that counts the tiles it reads, its bundle asking for the mirror at ``threshold``."""

    def __init__(self, threshold: float = 0.1) -> None:
        self.tiles_read = 0
        self.bundle = SimpleNamespace(config={"detector": {"mirror": True, "score_threshold": threshold}})

    def detect(self, batch, score_threshold, top_k):
        self.tiles_read += len(batch)
        out = []
        for d in super().detect(batch, score_threshold, top_k):
            keep = d.scores >= score_threshold  # as the real decoding does
            out.append(Detections(d.boxes[keep], d.scores[keep], d.labels[keep], d.subtypes[keep]))
        return out


def test_the_mirrored_view_can_read_only_the_tiles_over_the_plain_views_boxes():
    prep = PrepSettings(work_long_side=640, tile_size=160, tile_overlap=16, input_size=160, levels=(1.0,))
    work = _patch_photo()
    grid = len(prepare_tiles(work, prep)[1])
    everywhere, found_only = CountingBrightPatch(), CountingBrightPatch()
    full = detect_photo(work, everywhere, prep)
    fast = detect_photo(work, found_only, prep, mirror_found_only=True)
    assert everywhere.tiles_read == 2 * grid
    # Mirrored, the box (x 356-436) lies over two tiles of the first row (x 288-448 and 432-592): the
    # mirrored view reads those two and finds what it found reading every tile.
    assert found_only.tiles_read == grid + 2
    assert fast == full
    # A photo where the plain view finds nothing costs one view.
    blank, counted = np.zeros_like(work), CountingBrightPatch()
    assert detect_photo(blank, counted, prep, mirror_found_only=True) == []
    assert counted.tiles_read == grid


def test_a_scaled_view_can_read_only_the_tiles_over_the_plain_views_boxes():
    import cv2

    prep = PrepSettings(work_long_side=640, tile_size=160, tile_overlap=16, input_size=160, levels=(1.0,))
    work = _patch_photo()
    grid = len(prepare_tiles(work, prep)[1])
    half_grid = len(prepare_tiles(cv2.resize(work, (320, 240), interpolation=cv2.INTER_AREA), prep)[1])
    everywhere, found_only = CountingBrightPatch(), CountingBrightPatch()
    full = detect_photo(work, everywhere, prep, mirror=False, scales=[0.5])
    fast = detect_photo(work, found_only, prep, mirror=False, scales=[0.5], scales_found_only=True)
    assert everywhere.tiles_read == grid + half_grid
    # at half scale the box (x 102-142, y 50-70) lies in the first tile only (x 0-160, y 0-160)
    assert found_only.tiles_read == grid + 1
    assert fast == full and len(full) == 1 and full[0][0] == pytest.approx((206.0, 100.0, 286.0, 140.0))
    # A photo where the plain view finds nothing reads no resized one.
    blank, counted = np.zeros_like(work), CountingBrightPatch()
    assert detect_photo(blank, counted, prep, mirror=False, scales=[0.5], scales_found_only=True) == []
    assert counted.tiles_read == grid


def test_a_peak_under_the_threshold_still_leads_the_mirrored_view_there():
    # The ramp brighter on the right: the plain view scores the patch 0.4, under the threshold of 0.5
    # but over half of it; the mirrored view scores it 0.8 and keeps it, at half its score once fused.
    prep = PrepSettings(work_long_side=640, tile_size=160, tile_overlap=16, input_size=160, levels=(1.0,))
    work = _patch_photo(brighter_left=False)
    full = detect_photo(work, CountingBrightPatch(0.5), prep)
    assert [round(d[1], 6) for d in full] == [0.4]
    counted = CountingBrightPatch(0.5)
    assert detect_photo(work, counted, prep, mirror_found_only=True) == full
    assert counted.tiles_read == len(prepare_tiles(work, prep)[1]) + 2


def test_the_detector_reads_only_the_tiles_its_classifier_points_at_when_its_bundle_asks():
    from models.photo import PhotoScores, guided_tiles

    prep = PrepSettings(work_long_side=640, tile_size=160, tile_overlap=16, input_size=160, levels=(1.0,))
    work = _patch_photo()  # the patch lies in the tile at x 144, y 0
    grid = prepare_tiles(work, prep)[1]
    tile_scores = np.zeros((len(grid), 3), np.float32)
    at = {(t.x, t.y): i for i, t in enumerate(grid)}
    tile_scores[at[(144, 0)], 1] = 0.3  # the classifier sees a logo where the patch is
    tile_scores[at[(432, 288)], 0] = 0.15  # and a weak stitching hint on a blank tile
    scores = PhotoScores(("stitching", "logo", "label"), tile_scores.max(axis=0), tile_scores, tiles=grid)
    detector, unguided = CountingBrightPatch(), CountingBrightPatch()
    detector.bundle.config["detector"].update(guide_threshold=0.2, mirror_found_only=True)
    tiles = guided_tiles(detector, prep, scores, prep)
    assert [(t.x, t.y) for t in tiles] == [(144, 0)]
    guided = detect_photo(work, detector, prep, tiles=tiles)
    assert guided == detect_photo(work, unguided, prep, mirror_found_only=True)  # mirrored too
    assert unguided.tiles_read == len(grid) + 2
    assert detector.tiles_read == 1 + 2  # the plain view's one tile; the mirrored view's two near it
    detector.bundle.config["detector"]["guide_threshold"] = 0.1
    assert len(guided_tiles(detector, prep, scores, prep)) == 2
    # A photo where no tile reaches the threshold: nothing read, no box.
    blank = PhotoScores(scores.families, np.zeros(3, np.float32), tile_scores * 0, tiles=grid)
    assert guided_tiles(detector, prep, blank, prep) == []
    assert detect_photo(work, detector, prep, tiles=[]) == []
    # Every tile when the bundle does not ask, or when the two models cut different tiles.
    detector.bundle.config["detector"]["guide_threshold"] = 0.0
    assert guided_tiles(detector, prep, scores, prep) is None
    detector.bundle.config["detector"]["guide_threshold"] = 0.2
    other = prep.model_copy(update={"tile_overlap": 32})
    assert guided_tiles(detector, prep, scores, other) is None
