"""Decoding CenterNet maps into boxes, in numpy only: torch and ONNX Runtime outputs decode the same,
and a serving process running ONNX models never imports torch."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

# Output map names, in the order the ONNX graph returns them.
OUTPUT_NAMES = ("heatmap", "size", "offset", "subtype")
_LOG_SIZE_CLAMP = 12.0  # exp(12) stride units: far beyond any tile; stops overflow on garbage maps


def as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        return size, size
    h, w = size
    return int(h), int(w)


def map_size(input_size: int | Sequence[int], stride: int) -> tuple[int, int]:
    """Output map (H, W) for an input: ceil division, as TF "same" padding gives."""
    h, w = as_hw(input_size)
    return math.ceil(h / stride), math.ceil(w / stride)


class Detections(NamedTuple):
    """One tile's detections: ``boxes`` (K, 4) xyxy float32 in input pixels, ``scores`` (K,) float32,
    ``labels`` (K,) family indices, ``subtypes`` (K,) subtype indices (-1 without a subtype head)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    subtypes: np.ndarray


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; duck-typed so this module never imports torch
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)  # overflow-free logistic


def _max_pool3(x: np.ndarray) -> np.ndarray:
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)], constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(-2, -1))
    return windows.max(axis=(-2, -1))


def decode_detections(
    outputs: Mapping[str, Any] | Sequence[Any],
    score_threshold: float = 0.05,
    top_k: int = 100,
    input_size: int | Sequence[int] | None = None,
    stride: int | None = None,
    subtype_family: Sequence[int] | None = None,
) -> list[Detections]:
    """Peaks of the heatmaps as boxes, per tile; torch tensors or numpy arrays (e.g. ONNX outputs).

    ``outputs`` is the model's dict, or a sequence in ``OUTPUT_NAMES`` order. A peak is a location
    equal to the max of its 3x3 neighbourhood (CenterNet's max-pool NMS). ``stride`` defaults to
    ``input_size / map size``; boxes are clipped to ``input_size``. ``subtype_family`` (the family
    index of each subtype) restricts a peak's subtype to its own family's, so a logo finding is never
    called a skipped stitch.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if not isinstance(outputs, Mapping):
        outputs = dict(zip(OUTPUT_NAMES, outputs, strict=False))
    heat = _sigmoid(_as_numpy(outputs["heatmap"]))
    size = _as_numpy(outputs["size"])
    offset = _as_numpy(outputs["offset"])
    sub_logits = _as_numpy(outputs["subtype"]) if outputs.get("subtype") is not None else None
    n, c, h, w = heat.shape
    sub_family = None
    if sub_logits is not None and subtype_family is not None:
        sub_family = np.asarray(subtype_family, np.int64)
        if sub_family.shape != (sub_logits.shape[1],):
            raise ValueError(
                f"subtype_family has {sub_family.size} entries for {sub_logits.shape[1]} subtype maps"
            )
    if input_size is None and stride is None:
        raise ValueError("decode_detections needs input_size (the tile size in pixels) or stride")
    in_h, in_w = as_hw(input_size) if input_size is not None else (h * stride, w * stride)
    if stride is None:
        stride = round(in_h / h)
        if map_size((in_h, in_w), stride) != (h, w):
            raise ValueError(f"maps {h}x{w} do not fit input {in_h}x{in_w}: pass the model's stride")
    peaks = np.where(heat == _max_pool3(heat), heat, 0.0).reshape(n, -1)
    results = []
    for i in range(n):
        k = min(top_k, peaks.shape[1])
        idx = np.argpartition(-peaks[i], k - 1)[:k]
        idx = idx[np.argsort(-peaks[i, idx], kind="stable")]
        idx = idx[peaks[i, idx] >= score_threshold]
        cls, ys, xs = np.unravel_index(idx, (c, h, w))
        cx = (xs + offset[i, 0, ys, xs]) * stride
        cy = (ys + offset[i, 1, ys, xs]) * stride
        bw = np.exp(np.clip(size[i, 0, ys, xs], -_LOG_SIZE_CLAMP, _LOG_SIZE_CLAMP)) * stride
        bh = np.exp(np.clip(size[i, 1, ys, xs], -_LOG_SIZE_CLAMP, _LOG_SIZE_CLAMP)) * stride
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).astype(np.float32)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, in_w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, in_h)
        if sub_logits is not None:
            logits = sub_logits[i][:, ys, xs]  # (S, K)
            if sub_family is not None:
                logits = np.where(sub_family[:, None] == cls[None, :], logits, -np.inf)
            subs = logits.argmax(axis=0).astype(np.int64)
        else:
            subs = np.full(len(idx), -1, np.int64)
        results.append(Detections(boxes, peaks[i, idx].astype(np.float32), cls.astype(np.int64), subs))
    return results
