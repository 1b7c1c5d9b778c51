"""CenterNet targets, loss and decoding of the tile detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.detector import decode_detections, detector_loss, encode_targets, map_size
from models.registry import build_model


def perfect_outputs(targets: dict[str, torch.Tensor], num_subtypes: int = 0) -> dict[str, torch.Tensor]:
    """The maps a perfect detector would output for these targets (heatmap as logits)."""
    heat = targets["heatmap"].clamp(1e-6, 1 - 1e-6)
    out = {"heatmap": torch.log(heat / (1 - heat)), "size": targets["size"], "offset": targets["offset"]}
    if num_subtypes:
        sub = targets["subtype"]
        logits = torch.zeros(sub.shape[0], num_subtypes, *sub.shape[1:])
        logits.scatter_(1, sub.clamp(min=0).unsqueeze(1), 5.0)
        out["subtype"] = logits
    return out


def sort_by_x(boxes: np.ndarray) -> np.ndarray:
    return boxes[np.lexsort((boxes[:, 1], boxes[:, 0]))]


BOXES = np.array(
    [
        [0.0, 0.0, 18.0, 11.0],  # touching the top-left corner
        [290.5, 301.0, 320.0, 320.0],  # touching the bottom-right corner
        [100.0, 40.0, 180.0, 52.0],  # a long thin seam defect
        [10.0, 200.0, 90.0, 316.0],  # near the left and bottom edges
        [200.3, 120.7, 211.9, 133.1],  # small, non-integer
    ],
    dtype=np.float32,
)
LABELS = np.array([0, 1, 2, 0, 1])
SUBTYPES = np.array([3, 7, 12, -1, 9])


@pytest.mark.parametrize("stride", [8, 4])
def test_encode_decode_round_trip_recovers_boxes(stride):
    targets = encode_targets([BOXES, BOXES[:2]], [LABELS, LABELS[:2]], None, input_size=320, stride=stride)
    cells = map_size(320, stride)
    assert targets["heatmap"].shape == (2, 3, *cells)
    assert int(targets["reg_mask"][0].sum()) == len(BOXES)
    decoded = decode_detections(perfect_outputs(targets), score_threshold=0.5, input_size=320)
    for det, boxes, labels in ((decoded[0], BOXES, LABELS), (decoded[1], BOXES[:2], LABELS[:2])):
        assert len(det.boxes) == len(boxes)
        assert det.boxes.dtype == np.float32
        np.testing.assert_allclose(sort_by_x(det.boxes), sort_by_x(boxes), atol=1e-3)
        assert sorted(det.labels.tolist()) == sorted(labels.tolist())
        assert np.all(det.scores > 0.99)


def test_decode_reads_subtypes_at_peaks_and_accepts_numpy_like_onnx_outputs():
    targets = encode_targets([BOXES], [LABELS], [SUBTYPES], input_size=320, stride=8)
    outputs = perfect_outputs(targets, num_subtypes=16)
    from_torch = decode_detections(outputs, score_threshold=0.5, input_size=320)[0]
    as_numpy = [outputs[k].numpy() for k in ("heatmap", "size", "offset", "subtype")]  # ONNX order
    from_numpy = decode_detections(as_numpy, score_threshold=0.5, input_size=320)[0]
    for a, b in zip(from_torch, from_numpy, strict=True):
        np.testing.assert_array_equal(a, b)
    by_box = {tuple(np.round(b, 2)): s for b, s in zip(from_torch.boxes, from_torch.subtypes, strict=True)}
    expected = {tuple(np.round(b, 2)): max(s, 0) for b, s in zip(BOXES, SUBTYPES, strict=True)}
    assert by_box == expected
    no_head = decode_detections({k: v for k, v in outputs.items() if k != "subtype"}, 0.5, input_size=320)
    assert np.all(no_head[0].subtypes == -1)


def test_subtype_is_restricted_to_the_peak_family():
    from datasets.taxonomy import FAMILIES, SUBTYPE_FAMILY, SUBTYPES

    names = [s for f in FAMILIES for s in SUBTYPES[f]]
    subtype_family = [FAMILIES.index(SUBTYPE_FAMILY[s]) for s in names]
    targets = encode_targets([BOXES[2:3]], [[1]], input_size=320, stride=8)  # one logo finding
    outputs = perfect_outputs(targets, num_subtypes=len(names))
    outputs["subtype"][:, names.index("skipped_stitch")] = 9.0  # strongest overall: a stitching subtype
    outputs["subtype"][:, names.index("smudged_print")] = 4.0  # strongest logo subtype
    free = decode_detections(outputs, 0.5, input_size=320)[0]
    assert names[int(free.subtypes[0])] == "skipped_stitch"
    bound = decode_detections(outputs, 0.5, input_size=np.int64(320), subtype_family=subtype_family)[0]
    assert names[int(bound.subtypes[0])] == "smudged_print"
    with pytest.raises(ValueError, match="subtype_family"):
        decode_detections(outputs, 0.5, input_size=320, subtype_family=[0, 1])


def test_encode_clips_boxes_and_drops_empty_ones():
    boxes = np.array([[-20.0, -10.0, 30.0, 40.0], [50.0, 50.0, 50.0, 80.0], [400.0, 10.0, 450.0, 20.0]])
    targets = encode_targets([boxes], [[0, 1, 2]], input_size=(320, 320), stride=8)
    assert int(targets["reg_mask"].sum()) == 1
    det = decode_detections(perfect_outputs(targets), 0.5, input_size=320)[0]
    np.testing.assert_allclose(det.boxes, [[0.0, 0.0, 30.0, 40.0]], atol=1e-3)


def test_heatmap_has_one_unit_peak_per_box_and_gaussian_falloff():
    targets = encode_targets([BOXES], [LABELS], input_size=320, stride=8)
    heat = targets["heatmap"][0]
    assert int((heat == 1.0).sum()) == len(BOXES)
    assert float(heat.max()) == 1.0 and float(heat.min()) == 0.0
    # Background around a large box's centre is positive but below 1 (penalty-reduced negatives).
    cy, cx = 258 // 8, 50 // 8
    assert 0.0 < float(heat[0, cy, cx + 1]) < 1.0


def test_encode_rejects_bad_labels_and_mismatched_lists():
    with pytest.raises(ValueError, match="family indices"):
        encode_targets([BOXES[:1]], [[3]], input_size=320)
    with pytest.raises(ValueError, match="one entry per image"):
        encode_targets([BOXES, BOXES], [LABELS], input_size=320)
    with pytest.raises(ValueError, match="boxes but"):
        encode_targets([BOXES], [LABELS[:2]], input_size=320)


def test_decode_respects_threshold_and_top_k():
    targets = encode_targets([BOXES], [LABELS], input_size=320, stride=8)
    outputs = perfect_outputs(targets)
    assert len(decode_detections(outputs, 0.5, top_k=2, input_size=320)[0].boxes) == 2
    scores = decode_detections(outputs, 0.0, top_k=50, input_size=320)[0].scores
    assert len(scores) == 50 and np.all(np.diff(scores) <= 0)
    with pytest.raises(ValueError, match="input_size"):
        decode_detections(outputs)
    with pytest.raises(ValueError, match="top_k"):
        decode_detections(outputs, top_k=0, input_size=320)


def test_loss_is_finite_and_falls_when_overfitting_a_tiny_batch():
    torch.manual_seed(0)
    model = build_model("tile_detector", pretrained="imagenet", num_subtypes=16)
    model.train()
    images = torch.randn(2, 3, 128, 128)
    boxes = [np.array([[20.0, 30.0, 60.0, 50.0]]), np.array([[70.0, 10.0, 120.0, 100.0], [5, 90, 40, 120]])]
    targets = encode_targets(boxes, [[0], [1, 2]], [[2], [7, 11]], input_size=128, stride=8)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(30):
        total, parts = detector_loss(model(images), targets)
        assert torch.isfinite(total) and set(parts) == {"heatmap", "size", "offset", "subtype"}
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        losses.append(float(total.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_loss_with_no_boxes_is_finite_and_checks_shapes():
    model = build_model("tile_detector", pretrained="none", num_subtypes=4).eval()
    outputs = model(torch.randn(1, 3, 64, 64))
    total, parts = detector_loss(outputs, encode_targets([np.zeros((0, 4))], [[]], input_size=64))
    assert torch.isfinite(total) and parts["size"] == 0.0
    with pytest.raises(ValueError, match="stride"):
        detector_loss(outputs, encode_targets([np.zeros((0, 4))], [[]], input_size=64, stride=4))


def test_ignored_boxes_are_neither_background_nor_centres_in_the_heatmap_loss():
    # A crop-cut seam on family 0 at the right edge: a detector that fires there is not punished.
    cut = np.array([[300.0, 100.0, 320.0, 140.0]])
    plain = encode_targets([BOXES[:1]], [[0]], input_size=320, stride=8)
    masked = encode_targets(
        [BOXES[:1]], [[0]], input_size=320, stride=8, ignore_boxes=[cut], ignore_labels=[[0]]
    )
    ignore = masked["ignore"][0]
    assert ignore.shape == (3, 40, 40) and int(masked["reg_mask"].sum()) == 1
    assert float(ignore[0, 12:18, 37:40].min()) == 1.0 and float(ignore.sum()) == 6 * 3
    assert float(ignore[1:].sum()) == 0.0  # other families still learn background there
    outputs = perfect_outputs(plain)
    fired = {**outputs, "heatmap": outputs["heatmap"].clone()}
    fired["heatmap"][0, 0, 12:18, 37:40] = 4.0
    clean, _ = detector_loss(outputs, plain)
    punished, _ = detector_loss(fired, plain)
    forgiven, _ = detector_loss(fired, masked)
    assert float(punished) > float(clean) + 1.0
    assert float(forgiven) == pytest.approx(float(clean), abs=1e-4)
    with pytest.raises(ValueError, match="ignored labels"):
        encode_targets([BOXES[:1]], [[0]], input_size=320, ignore_boxes=[cut], ignore_labels=[[]])
