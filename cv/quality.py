"""The photo-quality gate: is this photo fit to judge?

Every check is a score with thresholds in ``configs/quality.yaml`` and a reason an inspector
understands ("blurred: sharpness 1.3 < 2 — retake"). All checks run on a small analysis image
(long side ``analysis_long_side``), which makes them fast on a reduced decode and makes the blur
score scale-normalised: a 3 MP and a 12 MP photo of the same scene score alike.
Verdict per photo: usable / warn / retake (the worst of its checks).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cv.decode import DEFAULT_MAX_PIXELS, Photo, decode_photo

Verdict = Literal["usable", "warn", "retake"]
_SCREENSHOT_MIN_LUMA = 48
_RANK = {"usable": 0, "warn": 1, "retake": 2}


class Limit(BaseModel):
    """Thresholds of one check; ``None`` switches that level off."""

    model_config = ConfigDict(extra="forbid")

    warn: float | None = None
    retake: float | None = None


@dataclass(frozen=True)
class _Check:
    """How a check reads: the score is bad when ``below`` (or above) its limit."""

    label: str  # what the inspector is told is wrong
    metric: str  # what the number is
    below: bool
    advice_warn: str
    advice_retake: str = "retake"
    fmt: str = ".0f"


CHECKS: dict[str, _Check] = {
    "blur": _Check("blurred", "sharpness", True, "check the defect area is sharp", fmt=".1f"),
    "noise": _Check("noisy", "chroma noise", False, "use more light or a lower ISO", fmt=".1f"),
    "shake": _Check("shaken", "steadiness", True, "hold the phone steady or brace it", fmt=".2f"),
    "underexposure": _Check("too dark", "highlight brightness", True, "use more light if you can"),
    "overexposure": _Check("overexposed", "% clipped white", False, "lower the exposure", fmt=".1f"),
    "glare": _Check(
        "glare", "% of photo in one hot spot", False, "tilt the camera or the product", fmt=".1f"
    ),
    "resolution": _Check("too small", "shorter side px", True, "shoot at full resolution"),
    "uniform": _Check(
        "not a photo (blank or uniform)", "contrast", True, "check it", "upload the real photo", ".1f"
    ),
    "screenshot": _Check(
        "not a photo (screenshot or graphic)",
        "% of pixels in 8 flat colours",
        False,
        "check it",
        "upload the camera photo",
    ),
    "duplicate": _Check("near-duplicate", "hash distance", True, "keep one", "keep one"),
}


class QualityConfig(BaseModel):
    """Gate thresholds (configs/quality.yaml)."""

    model_config = ConfigDict(extra="forbid")

    analysis_long_side: int = Field(
        768, ge=64, description="checks run on the photo resized to this long side"
    )
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="refuse photos larger than this (bombs)")
    clip_level: int = Field(253, ge=128, le=255, description="luma at or above this counts as clipped white")
    glare_max_saturation: int = Field(
        40, ge=0, le=255, description="hot spots are near-white, not bright colour"
    )
    blur_sigma: float = Field(0.7, ge=0, le=3, description="Gaussian pre-smoothing before the Laplacian")
    blur_block: int = Field(96, ge=16, description="blur is scored per block of this many analysis px")
    blur_percentile: float = Field(90, ge=0, le=100, description="the block score that counts as the photo's")
    shake_streak: int = Field(
        7, ge=3, le=31, description="analysis px of the streak the shake check smears the photo with"
    )
    shake_directions: int = Field(8, ge=4, le=32, description="streak directions tried, over 180 degrees")
    blur: Limit = Limit(warn=4, retake=2)
    noise: Limit = Limit(warn=2.5)
    shake: Limit = Limit(warn=0.58)
    underexposure: Limit = Limit(warn=60, retake=25)
    overexposure: Limit = Limit(warn=10, retake=25)
    glare: Limit = Limit(warn=0.5, retake=3.0)
    resolution: Limit = Limit(warn=1500, retake=720)
    uniform: Limit = Limit(retake=2.5)
    screenshot: Limit = Limit(retake=60.0)
    duplicate: Limit = Limit(warn=5)

    @model_validator(mode="after")
    def _retake_is_stricter(self) -> QualityConfig:
        for name, check in CHECKS.items():
            lim: Limit = getattr(self, name)
            if lim.warn is None or lim.retake is None:
                continue
            if (check.below and lim.retake > lim.warn) or (not check.below and lim.retake < lim.warn):
                word = "below" if check.below else "above"
                raise ValueError(
                    f"{name}: the retake limit ({lim.retake}) must be further {word} than the warn limit "
                    f"({lim.warn}) - a photo bad enough to retake is also bad enough to warn"
                )
        return self


def load_quality_config(name_or_path: str | Path = "quality", overrides: dict | None = None) -> QualityConfig:
    """Load and validate the gate thresholds (defaults to configs/quality.yaml)."""
    from configs import load_config

    return load_config(name_or_path, QualityConfig, overrides)


@dataclass
class QualityReport:
    """The gate's answer for one photo. ``checks`` holds each score (JSON-ready floats)."""

    photo: str
    width: int
    height: int
    verdict: Verdict
    reasons: list[str]
    checks: dict[str, float | None]
    phash: int
    outcomes: dict[str, Verdict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON shape of ``loupe quality --json`` (and of the per-photo result's quality part)."""
        return {
            "photo": self.photo,
            "width": self.width,
            "height": self.height,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "checks": dict(self.checks),
            "phash": f"{self.phash:016x}",
        }


def _grade(name: str, score: float | None, config: QualityConfig) -> tuple[Verdict, str | None]:
    if score is None:
        return "usable", None
    check, lim = CHECKS[name], getattr(config, name)
    for level, limit in (("retake", lim.retake), ("warn", lim.warn)):
        if limit is None:
            continue
        failed = score < limit if check.below else score > limit
        if failed:
            op = "<" if check.below else ">"
            advice = check.advice_retake if level == "retake" else check.advice_warn
            return level, f"{check.label}: {check.metric} {score:{check.fmt}} {op} {limit:g} — {advice}"
    return "usable", None


def perceptual_hash(gray: np.ndarray) -> int:
    """64-bit DCT perceptual hash (pHash): robust to rescaling, recompression and small exposure changes."""
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])  # the DC term would dominate the median
    return int(np.packbits(bits).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def _analysis_size(rgb: np.ndarray, long_side: int) -> tuple[int, int]:
    h, w = rgb.shape[:2]
    scale = long_side / max(h, w)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _block_grid(shape: tuple[int, ...], block: int) -> tuple[int, int]:
    """The (columns, rows) of ~``block``-px blocks an image of ``shape`` divides into (cv2 size order)."""
    h, w = shape[:2]
    return max(1, round(w / block)), max(1, round(h / block))


def _sharpness(gray: np.ndarray, config: QualityConfig) -> float:
    """Fine detail relative to contrast: per block of ~``blur_block`` px, 100 x the variance of the
    Laplacian of Gaussian over the variance of luma, scored at a high percentile of the blocks.

    - The fixed analysis size makes it scale-normalised; the light Gaussian first keeps per-pixel
      sensor noise and resampling from dominating (a 3 MP and a 12 MP photo of one scene score
      within a few %).
    - Dividing by the block's own contrast keeps a dark or low-contrast product (a navy T-shirt)
      from reading as blurred: darkness has its own check.
    - The sharpest blocks count, not the whole frame, so a sharp product on a plain table passes.
    """
    g = gray.astype(np.float32)
    smooth = cv2.GaussianBlur(g, (0, 0), config.blur_sigma) if config.blur_sigma > 0 else g
    lap = cv2.Laplacian(smooth, cv2.CV_32F)
    grid = _block_grid(g.shape, config.blur_block)

    def block_var(x: np.ndarray) -> np.ndarray:
        # Block means of x and x^2 by area resampling: exact block averages, no Python loop.
        m = cv2.resize(x, grid, interpolation=cv2.INTER_AREA)
        return np.maximum(cv2.resize(x * x, grid, interpolation=cv2.INTER_AREA) - m * m, 0)

    # +4 (a std of 2 grey levels) keeps flat blocks of pure sensor noise from scoring as sharp.
    ratio = 100.0 * block_var(lap) / (block_var(g) + 4.0)
    return float(np.percentile(ratio, config.blur_percentile))


_SECOND_DIFFERENCE = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def _chroma_noise(planes: tuple[np.ndarray, ...], block: int) -> float:
    """Sensor noise left in the photo: Immerkaer's estimate (the mean absolute response to a kernel
    that cancels smooth shading, scaled to a Gaussian sigma in grey levels) of the Cr and Cb planes,
    summed, each taken at the 25th percentile of blocks of ~``block`` px.

    - Chroma, not luma: fabric texture and print are mostly luma detail, while a sensor's noise is
      in every channel on its own. On the generator's test PO at 8 % of the light (bench_robustness)
      it tells noisy from clean photos at AUROC 0.985; luma alone 0.93.
    - The quiet quarter of the blocks counts, so a multicoloured print in one corner does not.
    """
    total = 0.0
    for plane in planes:
        response = cv2.filter2D(plane, cv2.CV_32F, _SECOND_DIFFERENCE)[1:-1, 1:-1]
        grid = _block_grid(response.shape, block)
        blocks = cv2.resize(np.abs(response), grid, interpolation=cv2.INTER_AREA)
        total += float(np.percentile(blocks, 25) * np.sqrt(np.pi / 2) / 6)
    return total


def streak_kernel(length: int, degrees: float) -> np.ndarray:
    """A normalised ``length``-px line, turned ``degrees`` counter-clockwise on screen: filtered
    with it, a photo looks as if the camera moved that far during the exposure."""
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    turn = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), float(degrees), 1.0)
    kernel = cv2.warpAffine(kernel, turn, (length, length))
    return kernel / kernel.sum()


@lru_cache(maxsize=4)
def _streaks(length: int, directions: int) -> tuple[tuple[float, float, np.ndarray], ...]:
    """(cos, sin, kernel) per direction over 180 degrees; the image-y component of a direction is
    -sin, as the kernels turn counter-clockwise on screen."""
    out = []
    for degrees in np.arange(directions) * 180.0 / directions:
        t = np.radians(degrees)
        out.append((float(np.cos(t)), float(np.sin(t)), streak_kernel(length, degrees)))
    return tuple(out)


def _least_over_most(gx: np.ndarray, gy: np.ndarray, config: QualityConfig, keep: np.ndarray | None) -> float:
    """The share of the detail along each direction that a streak along it removes, least over
    most, summed over the pixels ``keep`` marks (all when None)."""
    m = config.shake_streak  # the border, where the smear reads padding
    keep = None if keep is None else keep[m:-m, m:-m]
    removed = []
    for c, s, kernel in _streaks(config.shake_streak, config.shake_directions):
        along = cv2.addWeighted(gx, c, gy, -s, 0.0)
        before = cv2.norm(along[m:-m, m:-m], cv2.NORM_L1, keep)
        after = cv2.norm(cv2.filter2D(along, -1, kernel)[m:-m, m:-m], cv2.NORM_L1, keep)
        removed.append(1.0 - after / max(before, 1e-6))
    most = max(removed)
    # A photo with no detail to remove (blank, or blurred all over) has no direction to tell:
    # the uniform and blur checks speak for it.
    return min(removed) / most if most > 0.05 else 1.0


def _outside_barcodes(gray: np.ndarray, margin: int) -> np.ndarray | None:
    """A mask of the photo away from its barcodes (None when it has none): their bars have no
    detail along them at all, which reads as a streak."""
    found, corners = cv2.barcode.BarcodeDetector().detect(gray)
    if not found or corners is None:
        return None
    keep = np.full(gray.shape, 255, np.uint8)
    for quad in corners:
        cv2.fillPoly(keep, [np.round(quad).astype(np.int32)], 0)
    # The smear carries a barcode's edges this far out.
    return cv2.erode(keep, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))


def _steadiness(gray: np.ndarray, config: QualityConfig) -> float:
    """Hand shake: smear the photo along each direction with a short streak and measure how much of
    its detail along that direction the smear removes; the score is the least removed over the
    most (1 = alike in every direction).

    - A photo already streaked along one direction has little left to lose there, whatever its
      texture, and loses as much as any other photo across the streak. Comparing each direction
      with its own smeared copy, not with the other directions' detail, is what keeps a rib, a seam
      or a weave that runs one way from reading as shake (their detail along the run is small but
      just as sharp); comparing directions' detail (2026-12-06) did not separate them.
    - A barcode is the exception: its bars have no detail along them at all, which reads as shake,
      and across them so much that it can hide shake elsewhere. So barcodes are left out (OpenCV's
      detector, ~7 ms). Kraft board or a brushed finish whose grain runs one way can still warn,
      and so can heavy denoising that leaves a straight seam on a smooth material: warn only.
    - Smearing the directional derivative equals differentiating the smeared photo (both are
      convolutions), so each direction costs one filter.
    """
    g = gray.astype(np.float32)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    keep = _outside_barcodes(gray, config.shake_streak)
    if keep is not None and cv2.countNonZero(keep) < 0.25 * keep.size:
        keep = None  # a barcode filling the frame leaves too little else to judge
    return _least_over_most(gx, gy, config, keep)


def measure(photo: Photo, config: QualityConfig) -> tuple[dict[str, float | None], int]:
    """Every check's score (except ``duplicate``, which needs the PO) and the photo's perceptual hash."""
    size = _analysis_size(photo.rgb, config.analysis_long_side)
    shrinking = size[0] < photo.rgb.shape[1]
    # Luma and chroma are resized with INTER_AREA (a true average, so the blur and noise scores are
    # scale-normalised); colour checks use a nearest-neighbour sample, which keeps exact colours for
    # the screenshot check. YCrCb's Y is OpenCV's grey (same weights; rounding moves a few pixels by 1).
    ycc = cv2.resize(
        cv2.cvtColor(photo.rgb, cv2.COLOR_RGB2YCrCb),
        size,
        interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
    )
    gray, cr, cb = cv2.split(ycc)
    rgb = cv2.resize(photo.rgb, size, interpolation=cv2.INTER_NEAREST)
    sharpness = _sharpness(gray, config)
    noise = _chroma_noise((cr, cb), config.blur_block)
    steadiness = _steadiness(gray, config)
    _, std = cv2.meanStdDev(gray)
    # Brightness of the highlights (95th percentile of luma), not the mean: a navy garment that
    # fills the frame is dark but correctly exposed; an underexposed photo has dark highlights too.
    cdf = np.cumsum(cv2.calcHist([gray], [0], None, [256], [0, 256]).ravel())
    highlights = float(np.searchsorted(cdf, 0.95 * cdf[-1]))
    clipped = gray >= config.clip_level
    clipped_pct = 100.0 * float(np.count_nonzero(clipped)) / gray.size
    # Glare: the largest connected near-white, low-saturation blob (a specular reflection), not
    # clipping scattered over the photo (that is overexposure).
    glare_pct = 0.0
    if clipped_pct > 0:
        r, g, b = cv2.split(rgb)  # cv2 per-channel max/min: numpy's max(axis=2) is ~30x slower here
        sat = cv2.subtract(cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b))
        hot = (clipped & (sat <= config.glare_max_saturation)).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(hot, connectivity=8)
        if n > 1:
            glare_pct = 100.0 * float(stats[1:, cv2.CC_STAT_AREA].max()) / gray.size
    # Screenshot / graphic: a camera photo has sensor noise, so exact colours are spread thin;
    # rendered graphics put most pixels in a handful of flat colours.
    # Dark pixels are left out: a dark photo has little noise in 8 bits and few distinct levels.
    sample = rgb[::3, ::3].reshape(-1, 3)
    sample = sample[gray[::3, ::3].reshape(-1) >= _SCREENSHOT_MIN_LUMA].astype(np.uint32)
    screenshot_pct = 0.0
    if len(sample) >= 0.2 * gray[::3, ::3].size:
        packed = (sample[:, 0] << 16) | (sample[:, 1] << 8) | sample[:, 2]
        counts = np.unique(packed, return_counts=True)[1]
        screenshot_pct = 100.0 * float(np.sort(counts)[-8:].sum()) / len(packed)
    scores: dict[str, float | None] = {
        "blur": round(sharpness, 2),
        "noise": round(noise, 2),
        "shake": round(steadiness, 3),
        "underexposure": highlights,
        "overexposure": round(clipped_pct, 2),
        "glare": round(glare_pct, 2),
        "resolution": float(min(photo.original_width, photo.original_height)),
        "uniform": round(float(std[0, 0]), 2),
        "screenshot": round(screenshot_pct, 1),
        "duplicate": None,
    }
    return scores, perceptual_hash(gray)


def _judge(report: QualityReport, config: QualityConfig) -> QualityReport:
    outcomes, reasons = {}, []
    for name in CHECKS:
        outcome, reason = _grade(name, report.checks.get(name), config)
        outcomes[name] = outcome
        if reason:
            reasons.append(reason)
    report.outcomes = outcomes
    report.reasons = reasons
    report.verdict = max(outcomes.values(), key=_RANK.__getitem__, default="usable")
    return report


class DuplicateIndex:
    """Perceptual hashes of the photos of one PO seen so far, to spot near-duplicates."""

    def __init__(self) -> None:
        self._names: list[str] = []
        self._hashes: list[int] = []

    def __len__(self) -> int:
        return len(self._names)

    def nearest(self, phash: int) -> tuple[str | None, int]:
        """The earlier photo with the closest hash, and the distance (64 = nothing seen yet)."""
        best, best_d = None, 64
        for name, h in zip(self._names, self._hashes, strict=True):
            d = hamming(phash, h)
            if d < best_d:
                best, best_d = name, d
        return best, best_d

    def add(self, name: str, phash: int) -> None:
        self._names.append(name)
        self._hashes.append(phash)


def quality_needs(reports: Iterable[QualityReport]) -> dict[str, int]:
    """What a PO's photos need: how many photos each check found wanting (warn or retake), by the
    check's label ("shaken", "too small", ...), most first."""
    wanting = Counter(
        CHECKS[name].label for r in reports for name, outcome in r.outcomes.items() if outcome != "usable"
    )
    return dict(wanting.most_common())


def check_duplicate(report: QualityReport, index: DuplicateIndex, config: QualityConfig) -> QualityReport:
    """Score ``report`` against the earlier photos of its PO, add it to ``index``, and re-judge it."""
    nearest, distance = index.nearest(report.phash)
    index.add(report.photo, report.phash)
    report.checks["duplicate"] = float(distance) if nearest is not None else None
    _judge(report, config)
    if nearest is not None and report.outcomes.get("duplicate") != "usable":
        report.reasons = [
            r.replace("near-duplicate:", f"near-duplicate of {Path(nearest).name}:", 1)
            for r in report.reasons
        ]
    return report


def assess_photo(
    photo: Photo, config: QualityConfig | None = None, *, seen_hashes: DuplicateIndex | None = None
) -> QualityReport:
    """Run every check on a decoded photo. With ``seen_hashes`` (the PO's index) the photo is also
    compared with the earlier photos and then added to the index."""
    config = config or QualityConfig()
    scores, phash = measure(photo, config)
    report = QualityReport(
        photo=photo.name,
        width=photo.original_width,
        height=photo.original_height,
        verdict="usable",
        reasons=[],
        checks=scores,
        phash=phash,
    )
    if seen_hashes is not None:
        return check_duplicate(report, seen_hashes, config)
    return _judge(report, config)


def assess_file(path: str | Path, config: QualityConfig | None = None) -> QualityReport:
    """Decode a photo just large enough for the gate, then assess it (no duplicate check: that
    needs the PO's index, kept by the caller). Raises :class:`cv.errors.PhotoError`."""
    config = config or QualityConfig()
    photo = decode_photo(path, min_long_side=config.analysis_long_side, max_pixels=config.max_pixels)
    return assess_photo(photo, config)
