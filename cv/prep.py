"""Model-input preparation: the ONE set of functions used at training and at inference.

``PrepSettings`` is saved inside every model bundle, so a model sees the same pixels in
production as it saw in training: the photo is brought to a working scale (long side
``work_long_side``), optionally colour-corrected, then either letterboxed whole or cut into
overlapping tiles, and normalised to float32 CHW.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cv.tiling import Tile, tile_grid

LETTERBOX_FILL = 114  # neutral grey padding (the YOLO convention), far from any defect colour


class PrepSettings(BaseModel):
    """How a photo becomes model input; saved with the model."""

    model_config = ConfigDict(extra="forbid")

    work_long_side: int = Field(1280, ge=32, description="photo resized so its long side is this many px")
    tile_size: int = Field(320, ge=16, description="tile side in working-scale px")
    tile_overlap: int = Field(48, ge=0, description="overlap between neighbouring tiles in working-scale px")
    input_size: int = Field(320, ge=16, description="network input side; equals tile_size normally")
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # EfficientNet-Lite convention on RGB in [0, 1]
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    clahe: bool = False
    white_balance: bool = False
    # Pyramid levels tiled, as scales of the working photo. Defects range from a 3 mm skipped stitch
    # to a logo printed 5 cm off: full-scale tiles keep threads visible, coarse levels show a whole
    # label or logo with its surroundings (at 0.25 a 1280-px photo is one tile). (1.0,) = plain tiles.
    levels: tuple[float, ...] = (1.0,)

    @field_validator("levels")
    @classmethod
    def _finest_first(cls, levels: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(sorted(levels, reverse=True))  # tiles come full scale first, whatever the YAML order

    @model_validator(mode="after")
    def _check(self) -> PrepSettings:
        if self.tile_overlap >= self.tile_size:
            raise ValueError(
                f"tile_overlap ({self.tile_overlap}) must be smaller than tile_size ({self.tile_size})"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive in every channel, got {self.std}")
        if (
            not self.levels
            or any(not 0 < v <= 1 for v in self.levels)
            or len(set(self.levels)) != len(self.levels)
        ):
            raise ValueError(
                f"levels must be distinct scales in (0, 1], e.g. [1.0, 0.5, 0.25]; got {self.levels}"
            )
        return self


def min_decode_side(settings: PrepSettings, original_w: int, original_h: int) -> int:
    """The shorter side a decode must keep so that the working-scale photo is not upscaled."""
    long, short = max(original_w, original_h), min(original_w, original_h)
    if long <= settings.work_long_side:
        return short
    return math.ceil(settings.work_long_side * short / long)


def resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``rgb`` at ``size`` (width, height), as every working-scale photo is made."""
    h, w = rgb.shape[:2]
    if (w, h) == size:
        return rgb
    # INTER_AREA when shrinking keeps thin stitches from aliasing away; linear when enlarging.
    shrinking = size[0] < w or size[1] < h
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def grey_world(rgb: np.ndarray) -> np.ndarray:
    """Grey-world white balance: scale channels so their means agree (tames tungsten/LED casts)."""
    means = rgb.reshape(-1, 3).mean(axis=0)
    gains = means.mean() / np.maximum(means, 1.0)
    lut = np.clip(np.arange(256)[:, None] * gains[None, :], 0, 255).astype(np.uint8)
    return cv2.merge([cv2.LUT(rgb[..., c], lut[:, c]) for c in range(3)])


def clahe_rgb(rgb: np.ndarray, clip_limit: float = 2.0, grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation on lightness only, so colours keep their hue."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(grid, grid)).apply(
        np.ascontiguousarray(lab[..., 0])
    )
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def colour_correct(rgb: np.ndarray, settings: PrepSettings) -> np.ndarray:
    """The optional per-model corrections, in a fixed order (white balance, then CLAHE)."""
    if settings.white_balance:
        rgb = grey_world(rgb)
    if settings.clahe:
        rgb = clahe_rgb(rgb)
    return rgb


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        desc = (
            f"{rgb.dtype} array of shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        )
        raise ValueError(
            f"expected an RGB uint8 image of shape (H, W, 3), got {desc} - decode it with decode_photo"
        )


def same_working_photo(a: PrepSettings, b: PrepSettings) -> bool:
    """Whether two prep settings make the same working-scale photo (they may still tile it apart)."""
    fields = {"work_long_side", "clahe", "white_balance"}  # what working_photo reads
    return a.model_dump(include=fields) == b.model_dump(include=fields)


def same_tiles(a: PrepSettings, b: PrepSettings) -> bool:
    """Whether two prep settings cut the same tiles from a photo (:func:`prepare_tiles`' grid)."""
    fields = {"tile_size", "tile_overlap", "levels"}
    return same_working_photo(a, b) and a.model_dump(include=fields) == b.model_dump(include=fields)


def to_working_scale(rgb: np.ndarray, settings: PrepSettings) -> tuple[np.ndarray, float]:
    """Resize so the long side is ``work_long_side`` and apply the colour corrections.

    Returns (rgb_work, scale) with scale = working px per input px: a box on rgb_work maps back
    to ``rgb`` by dividing by scale.
    """
    _check_rgb(rgb)
    h, w = rgb.shape[:2]
    scale = settings.work_long_side / max(w, h)
    work = colour_correct(resize(rgb, level_size(w, h, scale)), settings)
    return work, scale


@dataclass(frozen=True)
class WorkingPhoto:
    """A decoded photo and its working-scale copy; ``to_photo`` maps working px to the photo's own px."""

    photo: Any  # cv.decode.Photo
    rgb_work: np.ndarray
    work_scale: float  # working px per decoded px

    @property
    def to_photo(self) -> float:
        return 1.0 / (self.work_scale * self.photo.scale)


def working_photo(
    source: Any, settings: PrepSettings, *, max_pixels: int | None = None, name: str | None = None
) -> WorkingPhoto:
    """Decode ``source`` (path or bytes) reduced to the working scale: the one decode that training,
    evaluation and serving all use, so a model sees the same pixels in each (the decode's DCT
    reduction depends on the size asked for, so asking for another size would give other pixels)."""
    from cv.decode import decode_photo

    kwargs = {"max_pixels": max_pixels} if max_pixels is not None else {}
    photo = decode_photo(source, min_long_side=settings.work_long_side, name=name, **kwargs)
    work, scale = to_working_scale(photo.rgb, settings)
    return WorkingPhoto(photo, work, scale)


def _normalise_lut(settings: PrepSettings) -> np.ndarray:
    """(3, 256) float32: the normalised value of every uint8 level, per channel."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    mean, std = np.asarray(settings.mean, np.float64), np.asarray(settings.std, np.float64)
    return ((levels[None, :] - mean[:, None]) / std[:, None]).astype(np.float32)


def normalise(images: np.ndarray, settings: PrepSettings) -> np.ndarray:
    """uint8 RGB HWC (or NHWC batch) -> float32 CHW (or NCHW): (x / 255 - mean) / std."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError(f"normalise expects uint8 RGB HWC or NHWC, got {arr.dtype} {arr.shape}")
    # A 256-entry lookup per channel writes straight into CHW: 3x faster than float arithmetic
    # followed by a transpose.
    lut = _normalise_lut(settings)
    out = np.empty((*arr.shape[:-3], 3, *arr.shape[-3:-1]), np.float32)
    for c in range(3):
        np.take(lut[c], arr[..., c], out=out[..., c, :, :], mode="clip")
    return out


@dataclass(frozen=True)
class LetterboxTransform:
    """Where a source image sits inside a letterboxed square: ``lb = src * scale + pad``."""

    scale: float
    pad_x: int
    pad_y: int
    src_width: int
    src_height: int
    size: int

    def to_letterbox(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Boxes in source pixels -> letterboxed-input pixels."""
        b = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        return b * self.scale + np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], np.float32)

    def to_source(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Boxes in letterboxed-input pixels (a model's output) -> source pixels, clipped to the image."""
        b = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        out = (b - np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], np.float32)) / self.scale
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.src_width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.src_height)
        return out


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, LetterboxTransform]:
    """Fit the whole image into a ``size`` x ``size`` square keeping its aspect ratio, padding with grey."""
    _check_rgb(rgb)
    h, w = rgb.shape[:2]
    scale = size / max(w, h)
    nw, nh = min(size, max(1, round(w * scale))), min(size, max(1, round(h * scale)))
    pad_x, pad_y = (size - nw) // 2, (size - nh) // 2
    out = np.full((size, size, 3), LETTERBOX_FILL, np.uint8)
    out[pad_y : pad_y + nh, pad_x : pad_x + nw] = resize(rgb, (nw, nh))
    return out, LetterboxTransform(scale, pad_x, pad_y, w, h, size)


# A box belongs to the finest pyramid level where its long side fills at most this share of a tile:
# training crops it there, and a detector's box is trusted from that level.
FIT_IN_TILE = 0.8


def home_level(long_side_work: float, settings: PrepSettings) -> float:
    """The finest pyramid level at which a box of this long side (working px) fits in a tile; the
    coarsest when none does."""
    levels = sorted(settings.levels, reverse=True)
    return next((s for s in levels if long_side_work * s <= FIT_IN_TILE * settings.tile_size), levels[-1])


def level_size(w: int, h: int, scale: float) -> tuple[int, int]:
    """(width, height) of a ``w`` x ``h`` working photo at pyramid level ``scale``."""
    return max(1, round(w * scale)), max(1, round(h * scale))


def pyramid_level(rgb_work: np.ndarray, scale: float) -> np.ndarray:
    """The working photo at one pyramid level (``scale`` 1.0 returns it as it is)."""
    h, w = rgb_work.shape[:2]
    return resize(rgb_work, level_size(w, h, scale))


def prepare_tiles(rgb_work: np.ndarray, settings: PrepSettings) -> tuple[np.ndarray, list[Tile]]:
    """Cut the working-scale photo into overlapping tiles at every pyramid level, ready for the network.

    Returns (float32 N x 3 x input_size x input_size, tiles), full-scale tiles first. A tile smaller
    than ``tile_size`` (a level smaller than one tile) is padded at the right/bottom, so a box from
    the network maps to working pixels as ``box * tile_size / input_size / tile.scale + (tile.x, tile.y)``
    for every tile (:func:`tile_boxes_to_tile_px`).
    """
    _check_rgb(rgb_work)
    s = settings.tile_size
    crops, tiles = [], []
    for scale in settings.levels:
        level = pyramid_level(rgb_work, scale)
        lh, lw = level.shape[:2]
        for t in tile_grid(lw, lh, s, settings.tile_overlap):
            crop = np.full((s, s, 3), LETTERBOX_FILL, np.uint8)
            crop[: t.h, : t.w] = level[t.y : t.y + t.h, t.x : t.x + t.w]
            crops.append(crop)
            tiles.append(
                Tile(round(t.x / scale), round(t.y / scale), round(t.w / scale), round(t.h / scale), scale)
            )
    batch = np.stack(crops)
    if settings.input_size != s:
        batch = np.stack([resize(tile, (settings.input_size, settings.input_size)) for tile in batch])
    return normalise(batch, settings), tiles


def tile_boxes_to_tile_px(boxes_xyxy: np.ndarray, settings: PrepSettings, scale: float = 1.0) -> np.ndarray:
    """Boxes in network-input pixels of one tile -> that tile's working-scale pixels (``scale``:
    the tile's pyramid level)."""
    return np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4) * (
        settings.tile_size / settings.input_size / scale
    )
