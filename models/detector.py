"""A cheap anchor-free CenterNet-style detector for tiles: heatmap peaks are defect centres.

Per family a heatmap (logits), per location a box size (log of size in stride units) and a centre
offset (sub-cell position), optionally subtype logits read at the peak. Backbone features at strides
8/16/32 (and 4 for ``stride=4``) are fused top-down like a light FPN into one map of ``channels``.
The head and FPN add little to the backbone's cost (``benchmarks/bench_models.py``); freezing early
stages (``freeze_stages``) is what makes CPU training affordable. It exports to ONNX as raw maps;
decoding is numpy (``models.decode``) so torch and ONNX Runtime outputs decode identically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import create_backbone, freeze_stages, keep_in_eval
from models.decode import OUTPUT_NAMES, Detections, as_hw, decode_detections, map_size
from models.registry import register

__all__ = [
    "OUTPUT_NAMES",
    "Detections",
    "TileDetector",
    "decode_detections",
    "detector_loss",
    "encode_targets",
    "focal_loss",
    "map_size",
]

# Heatmap bias so the initial foreground probability is ~0.1, as CenterNet: keeps the first focal-loss
# steps from being swamped by the background.
HEATMAP_PRIOR_BIAS = -2.19


def _conv_bn_relu(cin: int, cout: int, k: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _separable(ch: int) -> nn.Sequential:
    # Depthwise 3x3 + pointwise: the cheap smoothing used by light FPNs on mobile.
    return nn.Sequential(_conv_bn_relu(ch, ch, 3, groups=ch), _conv_bn_relu(ch, ch, 1))


def _head(ch: int, out: int, bias: float = 0.0) -> nn.Sequential:
    # Separable 3x3 rather than a full one: at stride 8 four full 3x3 heads cost a third of the
    # backbone's FLOPs (and more than the backbone at stride 4); separable ones cost ~4 %.
    head = nn.Sequential(_separable(ch), nn.Conv2d(ch, out, 1))
    nn.init.constant_(head[-1].bias, bias)
    return head


@register("tile_detector")
class TileDetector(nn.Module):
    """Backbone + light FPN to ``stride`` + CenterNet heads; ``forward`` returns a dict of raw maps.

    Maps are (N, K, ceil(H/stride), ceil(W/stride)): ``heatmap`` K=num_classes logits, ``size`` K=2
    log(w/stride), log(h/stride), ``offset`` K=2 centre offset within the cell in cells, and
    ``subtype`` K=num_subtypes logits when ``num_subtypes > 0``.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        pretrained: str | Path = "imagenet",
        num_classes: int = 3,
        num_subtypes: int = 0,
        stride: int = 8,
        channels: int = 64,
        freeze_stages: int = 0,
        frozen_bn: bool = False,
    ) -> None:
        super().__init__()
        if stride not in (4, 8):
            raise ValueError(f"stride must be 4 or 8, got {stride}")
        if num_classes < 1 or num_subtypes < 0:
            raise ValueError(
                f"need num_classes >= 1 and num_subtypes >= 0, got {num_classes}, {num_subtypes}"
            )
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.num_subtypes = num_subtypes
        self.stride = stride
        # timm feature indices: 1 = stride 4, 2 = 8, 3 = 16, 4 = 32.
        out_indices = (1, 2, 3, 4) if stride == 4 else (2, 3, 4)
        self.backbone = create_backbone(backbone, pretrained, features_only=True, out_indices=out_indices)
        in_channels = self.backbone.feature_info.channels()
        self.lateral = nn.ModuleList([_conv_bn_relu(c, channels) for c in in_channels])
        self.smooth = nn.ModuleList([_separable(channels) for _ in in_channels[:-1]])
        self.heatmap = _head(channels, num_classes, HEATMAP_PRIOR_BIAS)
        self.size = _head(channels, 2)
        self.offset = _head(channels, 2)
        self.subtype = _head(channels, num_subtypes) if num_subtypes else None
        self._frozen = _freeze(self.backbone, freeze_stages) if freeze_stages else []
        self.frozen_bn = frozen_bn

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        fused = self.lateral[-1](features[-1])
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            up = F.interpolate(fused, size=lateral.shape[-2:], mode="nearest")
            fused = self.smooth[i](lateral + up)
        out = {"heatmap": self.heatmap(fused), "size": self.size(fused), "offset": self.offset(fused)}
        if self.subtype is not None:
            out["subtype"] = self.subtype(fused)
        return out

    def train(self, mode: bool = True) -> TileDetector:
        super().train(mode)
        if mode:
            keep_in_eval(self, self._frozen, self.frozen_bn)
        return self


def _freeze(net: nn.Module, stages: int) -> list[nn.Module]:
    if stages < 0:
        net.requires_grad_(False)
        return [net]
    return freeze_stages(net, stages)


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius: a centre this far off still gives a box of IoU >= ``min_overlap``."""
    a1, b1, c1 = 1, height + width, width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2, c2 = 4, 2 * (height + width), (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (height + width), (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def _draw_gaussian(heatmap: np.ndarray, cx: int, cy: int, radius: int) -> None:
    diameter = 2 * radius + 1
    sigma = diameter / 6
    ys, xs = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    g = np.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma)).astype(np.float32)
    h, w = heatmap.shape
    left, right = min(cx, radius), min(w - cx, radius + 1)
    top, bottom = min(cy, radius), min(h - cy, radius + 1)
    region = heatmap[cy - top : cy + bottom, cx - left : cx + right]
    patch = g[radius - top : radius + bottom, radius - left : radius + right]
    np.maximum(region, patch, out=region)


def encode_targets(
    boxes_xyxy: Sequence[np.ndarray | Sequence[Sequence[float]]],
    labels: Sequence[np.ndarray | Sequence[int]],
    subtypes: Sequence[np.ndarray | Sequence[int]] | None = None,
    input_size: int | Sequence[int] = 320,
    stride: int = 8,
    num_classes: int = 3,
    min_overlap: float = 0.7,
    ignore_boxes: Sequence[np.ndarray | Sequence[Sequence[float]]] | None = None,
    ignore_labels: Sequence[np.ndarray | Sequence[int]] | None = None,
) -> dict[str, torch.Tensor]:
    """CenterNet targets for a batch of tiles.

    Per image: ``boxes_xyxy`` (K, 4) in input pixels, ``labels`` (K,) family indices 0..num_classes-1
    (``CATEGORY_IDS[family] - 1``), ``subtypes`` (K,) subtype indices or -1 (unknown). Boxes are
    clipped to the input; empty ones are dropped. Returns float32 ``heatmap`` (N, C, H, W), ``size``
    and ``offset`` (N, 2, H, W), ``reg_mask`` (N, 1, H, W) (1 at box centres) and int64 ``subtype``
    (N, H, W) (-1 where there is nothing to learn); with ``ignore_boxes``/``ignore_labels`` (defects
    cut by the tile or too small there) also ``ignore`` (N, C, H, W): 1 on the cells those boxes
    cover in their family's map, where the heatmap loss teaches neither defect nor background.
    """
    if len(boxes_xyxy) != len(labels) or (subtypes is not None and len(subtypes) != len(labels)):
        raise ValueError(
            f"one entry per image needed: {len(boxes_xyxy)} box lists, {len(labels)} label lists"
            + ("" if subtypes is None else f", {len(subtypes)} subtype lists")
        )
    in_h, in_w = as_hw(input_size)
    h, w = map_size(input_size, stride)
    n = len(boxes_xyxy)
    heatmap = np.zeros((n, num_classes, h, w), np.float32)
    size = np.zeros((n, 2, h, w), np.float32)
    offset = np.zeros((n, 2, h, w), np.float32)
    reg_mask = np.zeros((n, 1, h, w), np.float32)
    subtype = np.full((n, h, w), -1, np.int64)
    ignore = np.zeros((n, num_classes, h, w), np.float32) if ignore_boxes is not None else None
    for i in range(n):
        if ignore is not None:
            ib = np.asarray(ignore_boxes[i], np.float64).reshape(-1, 4)
            ic = np.asarray(ignore_labels[i] if ignore_labels is not None else [], np.int64).reshape(-1)
            if len(ib) != len(ic):
                raise ValueError(f"image {i}: {len(ib)} ignored boxes but {len(ic)} ignored labels")
            for (x1, y1, x2, y2), c in zip(ib, ic, strict=True):
                cx0, cy0 = max(0, int(x1 // stride)), max(0, int(y1 // stride))
                cx1, cy1 = min(w, math.ceil(x2 / stride)), min(h, math.ceil(y2 / stride))
                ignore[i, c, cy0:cy1, cx0:cx1] = 1.0
        boxes = np.asarray(boxes_xyxy[i], np.float64).reshape(-1, 4)
        cls = np.asarray(labels[i], np.int64).reshape(-1)
        sub = (
            np.full(len(cls), -1, np.int64)
            if subtypes is None
            else np.asarray(subtypes[i], np.int64).reshape(-1)
        )
        if not len(boxes) == len(cls) == len(sub):
            raise ValueError(f"image {i}: {len(boxes)} boxes but {len(cls)} labels and {len(sub)} subtypes")
        if len(cls) and (cls.min() < 0 or cls.max() >= num_classes):
            raise ValueError(
                f"image {i}: labels must be family indices 0..{num_classes - 1}, got {cls.tolist()}"
            )
        boxes = boxes.copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, in_w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, in_h)
        for (x1, y1, x2, y2), c, s in zip(boxes, cls, sub, strict=True):
            bw, bh = x2 - x1, y2 - y1
            if bw <= 0 or bh <= 0:
                continue
            # Centre in map cells; a box touching the right/bottom edge keeps its centre inside.
            cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
            ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
            radius = max(0, int(gaussian_radius(bh / stride, bw / stride, min_overlap)))
            _draw_gaussian(heatmap[i, c], ix, iy, radius)
            heatmap[i, c, iy, ix] = 1.0
            size[i, :, iy, ix] = (math.log(bw / stride), math.log(bh / stride))
            offset[i, :, iy, ix] = (cx - ix, cy - iy)
            reg_mask[i, 0, iy, ix] = 1.0
            subtype[i, iy, ix] = s
    out = {
        "heatmap": torch.from_numpy(heatmap),
        "size": torch.from_numpy(size),
        "offset": torch.from_numpy(offset),
        "reg_mask": torch.from_numpy(reg_mask),
        "subtype": torch.from_numpy(subtype),
    }
    if ignore is not None:
        out["ignore"] = torch.from_numpy(ignore)
    return out


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 4.0,
    ignore: torch.Tensor | None = None,
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on heatmap logits, normalised by the number of centres.

    ``ignore`` (same shape, 1 = ignore) drops the background term there: a cut or barely visible defect
    is not taught as background (a centre inside it still counts as a centre).
    """
    logits = logits.float()
    p = torch.sigmoid(logits)
    pos = target.eq(1.0).float()
    # logsigmoid is stable where log(sigmoid(x)) would give -inf.
    pos_loss = F.logsigmoid(logits) * (1 - p).pow(alpha) * pos
    neg_loss = F.logsigmoid(-logits) * p.pow(alpha) * (1 - target).pow(beta) * (1 - pos)
    if ignore is not None:
        neg_loss = neg_loss * (1 - ignore)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


def detector_loss(
    outputs: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    weights: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Focal loss on heatmaps + L1 on size and offset at centres (+ cross-entropy on subtypes).

    ``weights`` default to heatmap 1, size 1, offset 1, subtype 0.5. Returns the total (for
    ``backward``) and each weighted part as a float for logging.
    """
    w = {"heatmap": 1.0, "size": 1.0, "offset": 1.0, "subtype": 0.5, **(weights or {})}
    device = outputs["heatmap"].device
    if outputs["heatmap"].shape != targets["heatmap"].shape:
        raise ValueError(
            f"heatmap {tuple(outputs['heatmap'].shape)} vs targets {tuple(targets['heatmap'].shape)}: "
            "encode targets with the model's stride, num_classes and the input size"
        )
    mask = targets["reg_mask"].to(device)
    n_centres = mask.sum().clamp(min=1.0)
    parts = {
        "heatmap": focal_loss(
            outputs["heatmap"],
            targets["heatmap"].to(device),
            ignore=targets["ignore"].to(device) if "ignore" in targets else None,
        ),
        "size": (F.l1_loss(outputs["size"], targets["size"].to(device), reduction="none") * mask).sum()
        / n_centres,
        "offset": (F.l1_loss(outputs["offset"], targets["offset"].to(device), reduction="none") * mask).sum()
        / n_centres,
    }
    if "subtype" in outputs:
        sub = targets["subtype"].to(device)
        if (sub >= 0).any():
            parts["subtype"] = F.cross_entropy(outputs["subtype"], sub, ignore_index=-1)
        else:
            parts["subtype"] = outputs["subtype"].sum() * 0.0  # keeps the graph connected
    total = sum(w[k] * v for k, v in parts.items())
    return total, {k: float(w[k] * v.detach()) for k, v in parts.items()}
