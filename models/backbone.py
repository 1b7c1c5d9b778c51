"""Shared backbone plumbing: a timm net, its pretrained weights, and freezing its early stages."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from models.pretrained import load_backbone_weights


def create_backbone(
    backbone: str,
    pretrained: str | Path,
    *,
    features_only: bool = False,
    out_indices: tuple[int, ...] = (2, 3, 4),
    num_classes: int = 0,
    drop_rate: float = 0.0,
) -> nn.Module:
    """A timm backbone with weights from ``pretrained`` ("imagenet", "none" or a state-dict path).

    timm never downloads here (``pretrained=False``): weights come from local files only.
    """
    import timm

    kwargs: dict = {"features_only": True, "out_indices": out_indices} if features_only else {}
    if not features_only:
        kwargs.update(num_classes=num_classes, drop_rate=drop_rate)
    try:
        net = timm.create_model(backbone, pretrained=False, **kwargs)
    except RuntimeError as exc:  # timm's "Unknown model"
        raise ValueError(f"unknown backbone {backbone!r}: give a timm model name ({exc})") from exc
    if str(pretrained) != "none":
        load_backbone_weights(net, backbone, pretrained)
    return net


def stem_and_stages(net: nn.Module) -> list[nn.Module]:
    """The stem followed by each stage of an EfficientNet/MobileNet-style timm net, input first."""
    if not hasattr(net, "blocks"):
        raise ValueError(
            f"freezing stages needs a net with .blocks (EfficientNet/MobileNet), got {type(net).__name__}"
        )
    stem = nn.ModuleList(
        [m for m in (getattr(net, "conv_stem", None), getattr(net, "bn1", None)) if m is not None]
    )
    return [stem, *net.blocks]


def freeze_stages(net: nn.Module, stages: int) -> list[nn.Module]:
    """Freeze the stem and the first ``stages`` stages (``-1``: the whole backbone); return them.

    Frozen parts should also stay in eval mode while training so their batch-norm statistics keep
    the pretrained values; the models call ``keep_in_eval`` from ``train()``.
    """
    if stages == 0:
        return []
    parts = stem_and_stages(net)
    if stages < 0:
        frozen = [net]
    elif stages > len(parts) - 1:
        raise ValueError(f"freeze_stages={stages}: this backbone has {len(parts) - 1} stages (or -1 for all)")
    else:
        frozen = parts[: stages + 1]
    for part in frozen:
        part.requires_grad_(False)
    return frozen


def keep_in_eval(net: nn.Module, frozen: list[nn.Module], frozen_bn: bool) -> None:
    """After ``net.train()``: the frozen parts stay in eval mode, and with ``frozen_bn`` so does every
    batch-norm layer (it normalises with its stored statistics and does not update them; its affine
    weights still learn). For fine-tuning on a few dozen photos: their balanced, augmented batches
    estimate the statistics worse than the thousands the model was trained on."""
    for part in frozen:
        part.eval()
    if frozen_bn:
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
