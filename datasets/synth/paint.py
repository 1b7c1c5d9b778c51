"""Small drawing helpers shared by logos, labels and cartons: text, patches placed with an affine map."""

from __future__ import annotations

import math

import cv2
import numpy as np

F32 = np.float32
FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
)


def draw_text(mask: np.ndarray, text: str, x: float, y: float, cap_px: float, font: int = 0, weight=1.0):
    """Write ``text`` into a float mask (1 = ink) with its baseline-left at (x, y) px; cap height cap_px."""
    face = FONTS[font % len(FONTS)]
    scale = max(cap_px / 22.0, 0.05)
    thick = max(1, round(scale * 2.0 * weight))
    buf = np.zeros(mask.shape, np.uint8)
    cv2.putText(buf, text, (round(x), round(y)), face, scale, 255, thick, cv2.LINE_AA)
    np.maximum(mask, buf.astype(F32) / F32(255.0), out=mask)


def text_width(text: str, cap_px: float, font: int = 0, weight=1.0) -> float:
    face = FONTS[font % len(FONTS)]
    scale = max(cap_px / 22.0, 0.05)
    (tw, _), _ = cv2.getTextSize(text, face, scale, max(1, round(scale * 2.0 * weight)))
    return float(tw)


def patch_matrix(cx: float, cy: float, angle: float, pw: int, ph: int, origin=(0, 0)) -> np.ndarray:
    """2x3 map from patch pixels (centre pw/2, ph/2) to image pixels (centre cx, cy px, canvas frame)."""
    c, s = math.cos(angle), math.sin(angle)
    tx = cx - origin[0] - (c * pw / 2 - s * ph / 2)
    ty = cy - origin[1] - (s * pw / 2 + c * ph / 2)
    return np.array([[c, -s, tx], [s, c, ty]], np.float64)


def warp_patch(patch: np.ndarray, m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.warpAffine(
        patch, m, (shape[1], shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )


def composite(
    img: np.ndarray,
    rgb: np.ndarray,
    alpha: np.ndarray,
    m: np.ndarray,
    shadow_px: float = 0.0,
    shadow: float = 0.0,
):
    """Place a patch (rgb, alpha) through affine ``m`` onto img in place, with an optional drop shadow."""
    h, w = img.shape[:2]
    corners = (
        m
        @ np.array(
            [[0, 0, 1], [alpha.shape[1], 0, 1], [0, alpha.shape[0], 1], [alpha.shape[1], alpha.shape[0], 1]],
            np.float64,
        ).T
    )
    pad = int(3 * shadow_px) + 3
    x0, x1 = max(int(corners[0].min()) - pad, 0), min(int(corners[0].max()) + pad + 1, w)
    y0, y1 = max(int(corners[1].min()) - pad, 0), min(int(corners[1].max()) + pad + 1, h)
    if x0 >= x1 or y0 >= y1:
        return
    mm = m.copy()
    mm[:, 2] -= (x0, y0)
    size = (y1 - y0, x1 - x0)
    a = warp_patch(alpha, mm, size)
    region = img[y0:y1, x0:x1]
    if shadow > 0 and shadow_px > 0:
        sm = mm.copy()
        sm[:, 2] += (shadow_px * 0.5, shadow_px * 0.8)
        sh = cv2.GaussianBlur(warp_patch(alpha, sm, size), (0, 0), max(shadow_px, 0.5))
        region *= (F32(1.0) - F32(shadow) * sh)[..., None]
    # Premultiplied, so that edge pixels do not pick up the black border of the warp.
    c = warp_patch(rgb * alpha[..., None], mm, size)
    region *= (F32(1.0) - a)[..., None]
    region += c
