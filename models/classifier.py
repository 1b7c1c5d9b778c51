"""The multi-label tile classifier: one logit per defect family for each tile of a photo.

A photo's family score is the max over its tiles (see training); a tile sees stitches at full
detail, which a classifier on the whole downscaled photo would not.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.backbone import create_backbone, freeze_stages, keep_in_eval
from models.registry import register


@register("tile_classifier")
class TileClassifier(nn.Module):
    """timm backbone + global pool + linear head; ``forward`` returns raw logits (N, num_classes).

    Input: float32 NCHW, normalised as ``models.pretrained.backbone_normalisation(backbone)`` says.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        pretrained: str | Path = "imagenet",
        num_classes: int = 3,
        freeze_stages: int = 0,
        dropout: float = 0.2,
        frozen_bn: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.net = create_backbone(backbone, pretrained, num_classes=num_classes, drop_rate=dropout)
        frozen = _freeze(self.net, freeze_stages)
        self._frozen = frozen
        self.frozen_bn = frozen_bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def train(self, mode: bool = True) -> TileClassifier:
        super().train(mode)
        if mode:
            keep_in_eval(self, self._frozen, self.frozen_bn)
        return self


def _freeze(net: nn.Module, stages: int) -> list[nn.Module]:
    if stages < 0:
        # The whole feature extractor, head layers before the classifier included: a linear probe.
        frozen = [m for name, m in net.named_children() if name != "classifier"]
        for m in frozen:
            m.requires_grad_(False)
        return frozen
    return freeze_stages(net, stages)
