"""Drawing for people: findings on a photo, and thumbnails for reports and the review page."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import cv2
import numpy as np

# RGB colours per defect family, distinct for colour-blind readers (Okabe-Ito palette).
FAMILY_COLOURS: dict[str, tuple[int, int, int]] = {
    "stitching": (230, 159, 0),  # orange
    "logo": (0, 114, 178),  # blue
    "label": (204, 121, 167),  # reddish purple
}
OTHER_COLOUR = (240, 228, 66)  # yellow, for anything else


def _field(finding: Mapping[str, Any] | Any, name: str, default: Any = None) -> Any:
    if isinstance(finding, Mapping):
        return finding.get(name, default)
    return getattr(finding, name, default)


def _box_of(finding: Mapping[str, Any] | Any) -> tuple[float, float, float, float] | None:
    box = _field(finding, "box")
    if box is None:
        box = _field(finding, "box_xyxy")
    if box is None:
        return None
    if isinstance(box, Mapping):  # {"x0":..,"y0":..,"x1":..,"y1":..}
        box = (box["x0"], box["y0"], box["x1"], box["y1"])
    values = [float(v) for v in box]
    if len(values) != 4:
        raise ValueError(f"a finding's box must be [x0, y0, x1, y1] in photo pixels, got {box!r}")
    return values[0], values[1], values[2], values[3]


def draw_findings(rgb: np.ndarray, findings: Iterable[Mapping[str, Any] | Any]) -> np.ndarray:
    """A copy of ``rgb`` with each finding's box, family/subtype and score drawn on it.

    Findings are dicts or objects with ``family``, optional ``subtype`` and ``score``, and
    ``box`` (xyxy in the pixels of ``rgb``); findings without a box (photo-level) are listed in
    the top-left corner instead.
    """
    out = np.ascontiguousarray(rgb).copy()
    h, w = out.shape[:2]
    thick = max(2, round(max(h, w) / 400))
    font = max(0.5, max(h, w) / 1600)
    text_th = max(1, thick // 2)
    unboxed = 0
    for f in findings:
        family = str(_field(f, "family", ""))
        colour = FAMILY_COLOURS.get(family, OTHER_COLOUR)
        score = _field(f, "score")
        subtype = _field(f, "subtype")
        text = f"{subtype or family}" + (f" {float(score):.2f}" if score is not None else "")
        box = _box_of(f)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, text_th)
        if box is None:
            x0, y0 = thick, thick + unboxed * (th + base + 2 * thick)
            unboxed += 1
        else:
            x0, y0, x1, y1 = (round(v) for v in box)
            cv2.rectangle(out, (x0, y0), (x1, y1), colour, thick)
            # Label above the box, or inside it when the box touches the top of the photo.
            y0 = y0 - th - base - thick if y0 - th - base - thick >= 0 else y0 + thick
            x0 = min(max(0, x0), max(0, w - tw - 2 * thick))
        cv2.rectangle(out, (x0, y0), (x0 + tw + 2 * thick, y0 + th + base + thick), colour, -1)
        cv2.putText(
            out,
            text,
            (x0 + thick, y0 + th + thick // 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            font,
            (0, 0, 0),
            text_th,
            cv2.LINE_AA,
        )
    return out


def thumbnail(rgb: np.ndarray, max_side: int = 320) -> np.ndarray:
    """Shrink so the longer side is at most ``max_side`` (never enlarges)."""
    if max_side <= 0:
        raise ValueError(f"thumbnail max_side must be positive, got {max_side}")
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return rgb.copy()
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def encode_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    """RGB array -> JPEG bytes (for reports and the review page)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(
            f"could not encode a {rgb.shape} {rgb.dtype} image as JPEG - pass an RGB uint8 array"
        )
    return buf.tobytes()
