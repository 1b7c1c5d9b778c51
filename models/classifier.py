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

# Patch features for a memory of good tiles (models.memory): the outputs of these two stages (stride 8
# and 16 in EfficientNet-Lite), each 3x3-averaged and brought to the coarser grid, then concatenated.
# Mid-level features, as PatchCore takes: local enough for a print's edge, not yet class-specific.
PATCH_STAGES = (2, 4)


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

    def forward_with_patches(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"logits": (N, classes), "patches": (N, h*w, C)}``: one pass gives both (models.memory)."""
        import torch.nn.functional as F

        net = self.net
        h = net.bn1(net.conv_stem(x))
        taken = []
        for i, block in enumerate(net.blocks):
            h = block(h)
            if i in PATCH_STAGES:
                taken.append(F.avg_pool2d(h, 3, stride=1, padding=1))
        # The finer stage has twice the stride's resolution: 2x2 means bring it to the coarser grid
        # (adaptive pooling to a traced size would not export to ONNX with dynamic tile sizes).
        finer = F.avg_pool2d(taken[0], 2, stride=2, ceil_mode=True)
        patches = torch.cat([finer, taken[1]], dim=1)
        logits = net.forward_head(net.bn2(net.conv_head(h)))
        return {"logits": logits, "patches": patches.flatten(2).transpose(1, 2)}

    def train(self, mode: bool = True) -> TileClassifier:
        super().train(mode)
        if mode:
            keep_in_eval(self, self._frozen, self.frozen_bn)
        return self


class MeanLogits(nn.Module):
    """Several classifiers read as one: the mean of their logits. Models trained apart are wrong on
    different photos, so their mean ranks photos better than either (the classifier card's figures)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).float() for m in self.members]).mean(dim=0)

    def forward_with_patches(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The mean logits, and the first member's patch features (one memory of good tiles serves all)."""
        first = self.members[0].forward_with_patches(x)
        logits = [first["logits"].float()] + [m(x).float() for m in self.members[1:]]
        return {"logits": torch.stack(logits).mean(dim=0), "patches": first["patches"]}


@register("tile_ensemble")
def tile_ensemble(
    members: int = 2,
    backbone: str = "tf_efficientnet_lite0",
    pretrained: str | Path = "imagenet",
    num_classes: int = 3,
    freeze_stages: int = 0,
    dropout: float = 0.2,
    frozen_bn: bool = False,
) -> MeanLogits:
    """``members`` tile classifiers of one backbone whose logits are averaged (``loupe ensemble``)."""
    if members < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {members}")
    return MeanLogits(
        [
            TileClassifier(backbone, pretrained, num_classes, freeze_stages, dropout, frozen_bn)
            for _ in range(members)
        ]
    )


def _freeze(net: nn.Module, stages: int) -> list[nn.Module]:
    if stages < 0:
        # The whole feature extractor, head layers before the classifier included: a linear probe.
        frozen = [m for name, m in net.named_children() if name != "classifier"]
        for m in frozen:
            m.requires_grad_(False)
        return frozen
    return freeze_stages(net, stages)
