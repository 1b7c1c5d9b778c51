"""The camera: perspective and roll, uneven light, cast shadow, white balance, defocus and motion blur,
sensor noise. (JPEG compression happens when the photo is written.)"""

from __future__ import annotations

import math

import cv2
import numpy as np

from datasets.synth.textures import F32, fbm, gray, white_noise


def camera_homography(plan) -> tuple[np.ndarray, float]:
    """Map from the flat scene canvas to the photo: zoom (so no border shows), roll and corner jitter."""
    w, h = plan.width, plan.height
    c = plan.conditions
    roll = c["roll"]
    jit = np.asarray(c["corners"], float)
    zoom = 1.0 + abs(math.sin(roll)) * (w / h if w > h else h / w) + float(np.abs(jit).max()) * 2.2 + 0.01
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    centre = np.array([w / 2, h / 2])
    cr, sr = math.cos(roll), math.sin(roll)
    rot = np.array([[cr, -sr], [sr, cr]])
    dst = (src - centre) @ rot.T * zoom + centre + jit * np.array([w, h])
    return cv2.getPerspectiveTransform(src, np.float32(dst)), zoom


def _light_field(plan, h: int, w: int) -> np.ndarray:
    """Low-frequency light (gradient, vignette, cast shadow, colour drift, white balance), full size."""
    c = plan.conditions
    f = 16
    sh, sw = h // f + 2, w // f + 2
    yy, xx = np.mgrid[0:sh, 0:sw].astype(F32)
    nx, ny = (xx * f - w / 2) / F32(max(w, h)), (yy * f - h / 2) / F32(max(w, h))
    ang = c["light_dir"]
    lum = F32(1.0) + F32(c["gradient"]) * (nx * F32(math.cos(ang)) + ny * F32(math.sin(ang))) * F32(1.6)
    lum *= F32(1.0) - F32(c["vignette"]) * (nx * nx + ny * ny) * F32(1.6)
    rng = np.random.default_rng(c["shadow_seed"])
    if c["shadow"]:
        # The inspector's arm or phone: a soft dark band entering from one side.
        m = np.zeros((sh, sw), F32)
        a = rng.uniform(0, 2 * np.pi)
        p0 = np.array([sw / 2, sh / 2]) + np.array([math.cos(a), math.sin(a)]) * max(sw, sh) * rng.uniform(
            0.35, 0.7
        )
        d = np.array([-math.sin(a), math.cos(a)]) * max(sw, sh)
        band = rng.uniform(0.15, 0.35) * max(sw, sh)
        poly = np.array(
            [
                p0 - d,
                p0 + d,
                p0 + d + np.array([math.cos(a), math.sin(a)]) * band * 4,
                p0 - d + np.array([math.cos(a), math.sin(a)]) * band * 4,
            ]
        )
        cv2.fillPoly(m, [np.round(poly).astype(np.int32)], 1.0)
        m = cv2.GaussianBlur(m, (0, 0), rng.uniform(1.5, 5))
        lum *= F32(1.0) - F32(rng.uniform(0.25, 0.5)) * m
    trng = np.random.default_rng(c["tint_seed"])
    field = np.empty((sh, sw, 3), F32)
    wb = np.asarray(c["wb"], F32) * F32(c["exposure"])
    for ch in range(3):
        field[..., ch] = lum * wb[ch] * (F32(1.0) + F32(0.03) * fbm(trng, sh, sw, 6, 2))
    return cv2.resize(field, (w, h), interpolation=cv2.INTER_LINEAR)


def apply_camera(canvas: np.ndarray, plan, hom: np.ndarray) -> tuple[np.ndarray, int]:
    """The finished photo (uint8 RGB) and the blur margin (px) by which defect masks must grow."""
    h, w = canvas.shape[:2]
    c = plan.conditions
    img = cv2.warpPerspective(canvas, hom, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
    img *= _light_field(plan, h, w)
    margin = 1
    if c["defocus"] > 0:
        img = cv2.GaussianBlur(img, (0, 0), c["defocus"])
        margin += math.ceil(2.5 * c["defocus"])
    if c["motion"] > 0:
        k = max(round(c["motion"]) * 2 + 1, 3)
        kern = np.zeros((k, k), F32)
        kern[k // 2, :] = 1.0
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), c["motion_angle"], 1.0)
        kern = cv2.warpAffine(kern, rot, (k, k))
        kern /= kern.sum()
        img = cv2.filter2D(img, -1, kern)
        margin += k // 2 + 1
    rng = np.random.default_rng(c["noise_seed"])
    # Shot noise grows with brightness, read noise does not; each channel gets its own.
    sigma = F32(c["noise"])
    amp = sigma * (F32(0.5) + F32(0.8) * np.sqrt(np.clip(gray(img), 0, 1)))
    noise = cv2.merge([white_noise(rng, h, w) for _ in range(3)])
    noise *= cv2.cvtColor(amp, cv2.COLOR_GRAY2RGB)
    img += noise
    # convertScaleAbs rounds and saturates to uint8 in one fast pass.
    return cv2.convertScaleAbs(img, alpha=255.0), margin
