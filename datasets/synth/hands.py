"""An inspector's hand holding the product at the edge of the photo: palm, tapered fingers with nails and
knuckle creases, round shading and a soft shadow on what it holds."""

from __future__ import annotations

import math

import cv2
import numpy as np

from datasets.synth.textures import F32, material, rgb3


def _finger(canvas, base, angle, length, width, tone, seed, ppm):
    """One finger from ``base`` (px) along ``angle``: a tapered rounded capsule, shaded like a cylinder."""
    h, w = canvas.shape[:2]
    c, s = math.cos(angle), math.sin(angle)
    tip = (base[0] + c * length, base[1] + s * length)
    pad = width
    x0, x1 = max(int(min(base[0], tip[0]) - pad), 0), min(int(max(base[0], tip[0]) + pad) + 1, w)
    y0, y1 = max(int(min(base[1], tip[1]) - pad), 0), min(int(max(base[1], tip[1]) + pad) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return
    gx = np.arange(x0, x1, dtype=F32)[None, :] - F32(base[0])
    gy = np.arange(y0, y1, dtype=F32)[:, None] - F32(base[1])
    u = gx * F32(c) + gy * F32(s)
    v = -gx * F32(s) + gy * F32(c)
    r = F32(width / 2) * (F32(1.0) - F32(0.18) * np.clip(u / F32(length), 0, 1))
    rt = F32(width / 2 * 0.82)
    body = np.clip(r - np.abs(v) + F32(0.5), 0, 1) * (u >= 0) * (u <= F32(length) - rt)
    tipd = np.sqrt((u - (F32(length) - rt)) ** 2 + v * v)
    cap = np.clip(rt - tipd + F32(0.5), 0, 1) * (u > F32(length) - rt)
    alpha = np.maximum(body, cap)
    if not alpha.any():
        return
    across = np.clip(np.abs(v) / np.maximum(r, F32(1.0)), 0, 1)
    shade = F32(0.5) + F32(0.5) * np.sqrt(F32(1.0) - across**2)
    shade *= F32(1.0) - F32(0.25) * np.clip((F32(length) - u) / F32(length) - F32(0.7), 0, 1)
    for frac in (0.45, 0.72):  # knuckle creases
        shade *= F32(1.0) - F32(0.12) * np.exp(-(((u - F32(frac * length)) / F32(width * 0.05 + 0.5)) ** 2))
    near_tip = (u > F32(length) - F32(2.3) * rt) & (u < F32(length) - F32(0.25) * rt)
    nail = near_tip & (np.abs(v) < F32(0.62) * r)
    nail_a = cv2.GaussianBlur(nail.astype(F32), (0, 0), max(width * 0.04, 0.6))
    tex = material("skin", seed, y1 - y0, x1 - x0, ppm, tone)
    tex *= rgb3(shade)
    tex += rgb3(nail_a * F32(0.16)) * np.asarray((1.0, 0.85, 0.85), F32)
    region = canvas[y0:y1, x0:x1]
    # Contact shadow on what the finger rests on, then the finger itself.
    sh = cv2.GaussianBlur(alpha, (0, 0), max(width * 0.12, 1.0))
    shift = np.float32([[1, 0, width * 0.05 + 1], [0, 1, width * 0.08 + 1]])
    sh = cv2.warpAffine(sh, shift, (sh.shape[1], sh.shape[0]))
    region *= rgb3((F32(1.0) - F32(0.45) * sh) * (F32(1.0) - alpha))
    region += tex * rgb3(alpha)


def draw_hand(canvas: np.ndarray, hand: dict, ppm: float):
    """Draw the hand planned in ``hand`` (side of the photo, position, size, skin tone) onto the canvas."""
    h, w = canvas.shape[:2]
    s = hand["size"] * ppm
    side = hand["side"]
    if side in ("bottom", "top"):
        cx, cy = hand["pos"] * w, (h + s * 0.45 if side == "bottom" else -s * 0.45)
        base = -math.pi / 2 if side == "bottom" else math.pi / 2
    else:
        cx, cy = (-s * 0.45 if side == "left" else w + s * 0.45), hand["pos"] * h
        base = 0.0 if side == "left" else math.pi
    base += hand["angle"]
    c, sn = math.cos(base), math.sin(base)
    rng = np.random.default_rng(hand["seed"])
    fw = s * 0.19
    # Fingers fan out a little from the knuckle line; the palm stays mostly out of the frame.
    for j, (off, length) in enumerate(((-0.33, 0.62), (-0.11, 0.72), (0.11, 0.68), (0.31, 0.55))):
        bx = cx + (-sn) * off * s * 1.0 + c * s * 0.3
        by = cy + c * off * s * 1.0 + sn * s * 0.3
        ang = base + off * 0.25 + rng.normal(0, 0.04)
        _finger(
            canvas,
            (bx, by),
            ang,
            length * s * rng.uniform(0.95, 1.05),
            fw * (1.06 if j == 1 else 1.0),
            hand["tone"],
            hand["seed"] + j,
            ppm,
        )
    thumb_ang = base - 1.0
    tx, ty = cx + sn * s * 0.55, cy - c * s * 0.55
    _finger(canvas, (tx, ty), thumb_ang + 0.9, s * 0.55, fw * 1.15, hand["tone"], hand["seed"] + 9, ppm)
