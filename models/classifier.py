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
        taken: list[torch.Tensor] = []
        logits = self.head(self.run_parts(x, 0, None, taken))
        return {"logits": logits, "patches": patch_features(taken)}

    def run_parts(
        self, h: torch.Tensor, start: int, stop: int | None, taken: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The backbone's parts ``start:stop`` on ``h`` (part 0 the stem on the input tile, part s the
        s-th stage, as ``freeze_stages`` counts them); the PATCH_STAGES outputs go to ``taken``."""
        import torch.nn.functional as F

        net = self.net
        parts = len(net.blocks) + 1
        for part in range(start, parts if stop is None else stop):
            if part == 0:
                h = net.bn1(net.conv_stem(h))
                continue
            h = net.blocks[part - 1](h)
            if taken is not None and part - 1 in PATCH_STAGES:
                taken.append(F.avg_pool2d(h, 3, stride=1, padding=1))
        return h

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from the last stage's features."""
        return self.net.forward_head(self.net.bn2(self.net.conv_head(h)))

    def train(self, mode: bool = True) -> TileClassifier:
        super().train(mode)
        if mode:
            keep_in_eval(self, self._frozen, self.frozen_bn)
        return self


def patch_features(taken: list[torch.Tensor]) -> torch.Tensor:
    """(N, h*w, C) patch features from the two PATCH_STAGES outputs, finer first."""
    import torch.nn.functional as F

    # The finer stage has twice the stride's resolution: 2x2 means bring it to the coarser grid
    # (adaptive pooling to a traced size would not export to ONNX with dynamic tile sizes).
    finer = F.avg_pool2d(taken[0], 2, stride=2, ceil_mode=True)
    return torch.cat([finer, taken[1]], dim=1).flatten(2).transpose(1, 2)


class MeanLogits(nn.Module):
    """Several classifiers read as one: the mean of their logits. Models trained apart are wrong on
    different photos, so their mean ranks photos better than either (the classifier card's figures).

    ``trunk_of`` (per member, the member whose stem and first ``shared_stages`` stages it reads) shares
    those parts between members: a fine-tune that froze them (``ensemble_with_start``) has the very same
    weights there as its start, so each tile runs them once, not once per member.
    """

    def __init__(
        self, members: list[nn.Module], trunk_of: list[int] | None = None, shared_stages: int = 0
    ) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.trunk_of = list(trunk_of) if trunk_of is not None else list(range(len(members)))
        if len(self.trunk_of) != len(members) or any(
            not 0 <= j <= i or self.trunk_of[j] != j for i, j in enumerate(self.trunk_of)
        ):
            raise ValueError(
                f"trunk_of {trunk_of}: each member reads an earlier member's own trunk, or its own"
            )
        self.shared_stages = shared_stages
        self.shares = self.trunk_of != list(range(len(members)))  # decided once, not on every batch
        for i, j in enumerate(self.trunk_of):
            if j != i:  # the same modules, so the weights cannot drift apart
                source, target = members[j].net, members[i].net
                target.conv_stem, target.bn1 = source.conv_stem, source.bn1
                for stage in range(shared_stages):
                    target.blocks[stage] = source.blocks[stage]

    def _member_logits(self, x: torch.Tensor, taken: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        split = self.shared_stages + 1  # the stem and the shared stages
        trunks: dict[int, torch.Tensor] = {}
        logits = []
        for i, member in enumerate(self.members):
            j = self.trunk_of[i]
            if j not in trunks:
                trunks[j] = self.members[j].run_parts(x, 0, split, taken if j == 0 else None)
            h = member.run_parts(trunks[j], split, None, taken if i == 0 else None)
            logits.append(member.head(h).float())
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.shares:  # nothing shared: members may be ensembles too
            return torch.stack([m(x).float() for m in self.members]).mean(dim=0)
        return torch.stack(self._member_logits(x)).mean(dim=0)

    def forward_with_patches(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The mean logits, and the first member's patch features (one memory of good tiles serves all)."""
        taken: list[torch.Tensor] = []
        logits = self._member_logits(x, taken)
        return {"logits": torch.stack(logits).mean(dim=0), "patches": patch_features(taken)}


@register("tile_ensemble")
def tile_ensemble(
    members: int = 2,
    backbone: str = "tf_efficientnet_lite0",
    pretrained: str | Path = "imagenet",
    num_classes: int = 3,
    freeze_stages: int = 0,
    dropout: float = 0.2,
    frozen_bn: bool = False,
    trunk_of: list[int] | None = None,
    shared_stages: int = 0,
) -> MeanLogits:
    """``members`` tile classifiers of one backbone whose logits are averaged (``loupe ensemble``);
    ``trunk_of`` and ``shared_stages`` share their first parts (:class:`MeanLogits`)."""
    if members < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {members}")
    return MeanLogits(
        [
            TileClassifier(backbone, pretrained, num_classes, freeze_stages, dropout, frozen_bn)
            for _ in range(members)
        ],
        trunk_of,
        shared_stages,
    )


def _freeze(net: nn.Module, stages: int) -> list[nn.Module]:
    if stages < 0:
        # The whole feature extractor, head layers before the classifier included: a linear probe.
        frozen = [m for name, m in net.named_children() if name != "classifier"]
        for m in frozen:
            m.requires_grad_(False)
        return frozen
    return freeze_stages(net, stages)
