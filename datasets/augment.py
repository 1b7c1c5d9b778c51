"""Box-aware albumentations pipelines for training, defined in YAML (``configs/augment_*.yaml``).

A config lists transforms by albumentations class name with their parameters; ``OneOf`` / ``SomeOf``
/ ``Sequential`` take nested ``transforms``. Every transform is built while the config is validated,
so an unknown name or a bad parameter fails at load time with the transform named.

Call a pipeline with ``bboxes`` in COCO pixels and the label fields :data:`LABEL_FIELDS`, or use
:func:`augment_sample` with annotation dicts of the internal contract.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from configs import ConfigError, load_config

LABEL_FIELDS = ("category_ids", "ann_index")  # ann_index maps surviving boxes back to their annotation
COMPOSITIONS = ("OneOf", "SomeOf", "Sequential")


class TransformSpec(BaseModel):
    """One albumentations transform: its class name, keyword parameters, children for compositions."""

    model_config = ConfigDict(extra="forbid")

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    transforms: list[TransformSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _builds(self) -> TransformSpec:
        build_transform(self)  # raises ValueError naming the transform
        return self


class AugmentConfig(BaseModel):
    """An augmentation pipeline: transforms in order plus how boxes that leave the frame are treated."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    # A defect box cut below this visible fraction is dropped rather than kept as a misleading sliver.
    min_visibility: float = Field(0.5, ge=0.0, le=1.0)
    min_area: float = Field(0.0, ge=0.0)  # px^2 after transforms
    seed: int | None = None
    transforms: list[TransformSpec]


def build_transform(spec: TransformSpec) -> A.BasicTransform | A.BaseCompose:
    """Instantiate one spec; unknown names and bad parameters raise ValueError naming the transform."""
    cls = getattr(A, spec.name, None)
    is_transform = isinstance(cls, type) and issubclass(cls, A.BasicTransform)
    if not (is_transform or spec.name in COMPOSITIONS):
        raise ValueError(
            f"unknown transform {spec.name!r}: use an albumentations class name such as HorizontalFlip, "
            f"Affine, RandomBrightnessContrast (compositions: {', '.join(COMPOSITIONS)})"
        )
    if spec.transforms and spec.name not in COMPOSITIONS:
        raise ValueError(
            f"transform {spec.name!r} takes no nested 'transforms' (only {', '.join(COMPOSITIONS)})"
        )
    kwargs = dict(spec.params)
    # albumentations only warns about unknown parameters; a typo in a config must fail instead.
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"transform {spec.name!r} has no parameter(s) {', '.join(unknown)} "
            f"(it takes {', '.join(sorted(accepted))})"
        )
    if spec.name in COMPOSITIONS:
        if not spec.transforms:
            raise ValueError(f"{spec.name} needs a non-empty 'transforms' list")
        kwargs["transforms"] = [build_transform(child) for child in spec.transforms]
    try:
        transform = cls(**kwargs)
    except Exception as exc:  # albumentations raises pydantic, Type and Value errors for bad params
        raise ValueError(f"transform {spec.name!r} with params {spec.params}: {exc}") from exc
    if isinstance(transform, A.DualTransform) and not {"bboxes", "keypoints"} <= set(transform.targets):
        raise ValueError(
            f"transform {spec.name!r} cannot move bounding boxes and keypoints; choose a box-aware transform"
        )
    return transform


def compose(config: AugmentConfig) -> A.Compose:
    """The ``A.Compose`` for a validated config, boxes in COCO pixel format.

    Keypoints (xy, never removed) travel with the same transforms: regions that must follow the image
    whatever the box filter keeps, such as a defect's ignored pieces, are moved as their corners.
    """
    bbox_params = A.BboxParams(
        format="coco",
        label_fields=list(LABEL_FIELDS),
        min_visibility=config.min_visibility,
        min_area=config.min_area,
        clip=True,  # boxes drawn to the photo's edge can overshoot it by float rounding
        filter_invalid_bboxes=True,
    )
    kwargs = {"seed": config.seed} if config.seed is not None else {}
    keypoint_params = A.KeypointParams(format="xy", remove_invisible=False)
    with warnings.catch_warnings():
        # An empty pipeline (augmentation off) still carries boxes and keypoints through unchanged;
        # albumentations warns that no transform processes them, which is the point.
        warnings.filterwarnings("ignore", message="Got processor for", category=UserWarning)
        return A.Compose(
            [build_transform(t) for t in config.transforms],
            bbox_params=bbox_params,
            keypoint_params=keypoint_params,
            **kwargs,
        )


def load_augment_config(name_or_path: str | Path, overrides: dict | None = None) -> AugmentConfig:
    return load_config(name_or_path, AugmentConfig, overrides)


def build_augment(name_or_path: str | Path = "augment_train", overrides: dict | None = None) -> A.Compose:
    """Load ``configs/augment_<name>.yaml`` (or a path) and build its pipeline.

    Raises :class:`configs.ConfigError` naming the file and the transform for unknown names or bad params.
    """
    config = load_augment_config(name_or_path, overrides)
    return compose(config)


def augment_sample(
    pipeline: A.Compose, image: np.ndarray, annotations: list[dict]
) -> tuple[np.ndarray, list[dict]]:
    """Augment a photo and its annotation dicts; returns the new photo and the annotations that survived,
    with boxes (and box-polygon segmentation) moved. Image-level labels are the caller's to update."""
    out = pipeline(
        image=image,
        bboxes=np.asarray([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4),
        category_ids=[a["category_id"] for a in annotations],
        ann_index=list(range(len(annotations))),
    )
    moved = []
    for box, idx in zip(out["bboxes"], out["ann_index"], strict=True):
        x, y, w, h = (float(v) for v in box)
        ann = {**annotations[int(idx)], "bbox": [x, y, w, h], "area": w * h}
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        moved.append(ann)
    return out["image"], moved


__all__ = [
    "LABEL_FIELDS",
    "AugmentConfig",
    "ConfigError",
    "TransformSpec",
    "augment_sample",
    "build_augment",
    "build_transform",
    "compose",
    "load_augment_config",
]
