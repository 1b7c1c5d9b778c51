"""Printed and embroidered logos (artwork the generator owns) and the five logo/print defects."""

from __future__ import annotations

import math

import cv2
import numpy as np

from datasets.synth.paint import F32, draw_text, patch_matrix, text_width, warp_patch
from datasets.synth.textures import gray, rgb3

BRANDS = (
    "NORDVIK",
    "ALTAMAR",
    "KESTREL",
    "VELLUM",
    "ORIANA",
    "TASMAN",
    "BRIXTON",
    "MERIDA",
    "SOLENT",
    "ARKADIA",
    "FJELL",
    "LUMA",
    "OKAPI",
    "RIVANO",
    "ZEPHYR",
    "KOBALT",
)
EMBLEMS = ("circle", "diamond", "star", "wave", "shield", "triangle", "none")


def logo_size_px(logo: dict, ppm: float) -> tuple[int, int]:
    return max(int(logo["w"] * ppm), 8), max(int(logo["h"] * ppm), 8)


def artwork(logo: dict, ppm: float) -> tuple[np.ndarray, np.ndarray]:
    """Two ink masks (emblem, wordmark) of the logo, float32 (h, w) at ``ppm``."""
    pw, ph = logo_size_px(logo, ppm)
    emblem = np.zeros((ph, pw), F32)
    words = np.zeros((ph, pw), F32)
    kind = logo["emblem"]
    text = logo["brand"]
    e = 0.0 if kind == "none" else min(ph, pw * 0.4)
    if kind != "none":
        cx, cy, r = e / 2, ph / 2, e * 0.46
        if kind == "circle":
            cv2.circle(emblem, (round(cx * 4), round(cy * 4)), round(r * 4), 1.0, -1, cv2.LINE_AA, 2)
            cv2.circle(emblem, (round(cx * 4), round(cy * 4)), round(r * 0.55 * 4), 0.0, -1, cv2.LINE_AA, 2)
        else:
            if kind == "star":
                ang = np.arange(10) * np.pi / 5 - np.pi / 2
                rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
            elif kind == "diamond":
                ang, rad = np.arange(4) * np.pi / 2, np.full(4, r)
            elif kind == "triangle":
                ang, rad = np.arange(3) * 2 * np.pi / 3 - np.pi / 2, np.full(3, r)
            elif kind == "shield":
                ang = np.array([-2.4, -0.74, 0.3, np.pi / 2, np.pi - 0.3])
                rad = np.array([r, r, r * 0.9, r, r * 0.9])
            else:  # wave: a thick sine band
                xs = np.linspace(-r, r, 24)
                top = np.c_[xs, -r * 0.25 + r * 0.35 * np.sin(xs / r * np.pi)]
                bot = np.c_[xs[::-1], r * 0.25 + r * 0.35 * np.sin(xs[::-1] / r * np.pi)]
                poly = np.r_[top, bot] + (cx, cy)
                cv2.fillPoly(emblem, [np.round(poly * 4).astype(np.int32)], 1.0, cv2.LINE_AA, 2)
                ang = None
            if ang is not None:
                poly = np.c_[cx + rad * np.cos(ang), cy + rad * np.sin(ang)]
                cv2.fillPoly(emblem, [np.round(poly * 4).astype(np.int32)], 1.0, cv2.LINE_AA, 2)
    avail = pw - e - (0.08 * pw if e else 0.02 * pw)
    # Measured at a large size: cv2 rounds sizes and stroke widths to whole pixels.
    cap = min(ph * 0.55, avail / max(text_width(text, 100.0, logo["font"], 1.6) / 100.0, 1e-3) * 0.96)
    tx = pw - avail + (avail - text_width(text, cap, logo["font"], 1.6)) / 2
    draw_text(words, text, tx, ph / 2 + cap / 2, cap, logo["font"], 1.6)
    return emblem, words


def _blob(shape, centre, radius, seed, rough=0.35) -> np.ndarray:
    """A ragged round blob (for smudges and peeled print), 0..1."""
    h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(F32)
    d = np.hypot(xx - centre[0], yy - centre[1]) / max(radius, 1.0)
    small = rng.standard_normal((8, 8)).astype(F32)
    n = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip((1.0 - d + rough * n) * 4.0, 0, 1).astype(F32)


def _distressed(h: int, w: int, ppm: float, seed: int) -> np.ndarray:
    """A vintage print's designed wear, 0..1 ink kept: fine cracks a few mm apart and worn specks all
    over the artwork (an approved finish, not a defect: a smudge or a peeled patch is one blob)."""
    rng = np.random.default_rng(seed + 17)

    def noise(cell_mm: float) -> np.ndarray:
        cells = (max(int(h / (cell_mm * ppm)), 1) + 2, max(int(w / (cell_mm * ppm)), 1) + 2)
        return cv2.resize(rng.standard_normal(cells).astype(F32), (w, h), interpolation=cv2.INTER_CUBIC)

    ridge = np.abs(noise(2.5))  # zero along a network of lines: the cracks
    crack = np.clip(1.0 - ridge / F32(0.12), 0, 1)
    specks = np.clip((noise(0.8) - F32(1.1)) * F32(3.0), 0, 1)
    return np.clip(F32(1.0) - F32(0.85) * crack - F32(0.8) * specks, 0, 1).astype(F32)


def render_logo(img: np.ndarray, origin: tuple[int, int], ppm: float, logo: dict, defect: dict | None):
    """Print or embroider ``logo`` onto img (float32 RGB, canvas pixel ``origin`` at img[0, 0]) in place."""
    sub = defect["subtype"] if defect is not None else None
    emblem, words = artwork(logo, ppm)
    colours = [np.asarray(c, F32) for c in logo["colours"]]
    cx, cy, ang = logo["x"] * ppm, logo["y"] * ppm, logo["angle"]
    ph, pw = emblem.shape
    if sub == "offset_logo":
        cx, cy, ang = cx + defect["dx"] * ppm, cy + defect["dy"] * ppm, ang + defect["dangle"]
    if sub == "wrong_colour":
        colours = [np.asarray(c, F32) for c in defect["colours"]]
    if sub in ("smudged_print", "partly_missing_print"):
        centre = (defect["fx"] * pw, defect["fy"] * ph)
        blob = _blob((ph, pw), centre, defect["radius"] * ph, defect["seed"])
        for mask in (emblem, words):
            if sub == "partly_missing_print":
                mask *= F32(1.0) - blob
            else:
                k = max(int(defect["length"] * ppm), 3)
                kern = np.zeros((k, k), F32)
                cv2.line(kern, (0, k // 2), (k - 1, k // 2), 1.0, 1)
                rot = cv2.getRotationMatrix2D(
                    (k / 2 - 0.5, k / 2 - 0.5), math.degrees(defect["direction"]), 1.0
                )
                kern = cv2.warpAffine(kern, rot, (k, k))
                kern /= max(kern.sum(), 1e-6)
                smear = cv2.filter2D(mask, -1, kern, borderType=cv2.BORDER_CONSTANT)
                smear = cv2.GaussianBlur(smear, (0, 0), max(0.15 * ppm, 0.6))
                mask[:] = np.maximum(
                    mask * (F32(1.0) - F32(0.35) * blob), np.clip(smear * 1.6, 0, 1) * blob * F32(0.9)
                )
    if logo.get("finish") == "distressed" and logo["style"] == "print":
        wear = _distressed(ph, pw, ppm, logo["seed"])
        emblem, words = emblem * wear, words * wear
    m = patch_matrix(cx, cy, ang, pw, ph, origin)
    size = img.shape[:2]
    if sub == "missing_logo":
        _traces(img, emblem, words, m, logo, ppm)
        return
    for mask, col in ((emblem, colours[0]), (words, colours[-1])):
        a = warp_patch(mask, m, size)
        if not a.any():
            continue
        if logo["style"] == "embroidery":
            _embroider(img, a, col, ppm, logo)
        else:
            # Print: ink sits in the weave, so the texture underneath still shows through.
            a = a * F32(logo.get("opacity", 0.92))
            lum = gray(img)[..., None]
            ref = F32(max(float(np.median(lum[a > 0.5])) if (a > 0.5).any() else 0.5, 1e-3))
            ink = col * (F32(0.6) + F32(0.4) * lum / ref)
            img *= rgb3(F32(1.0) - a)
            img += ink * a[..., None]


def _embroider(img, a, col, ppm, logo):
    """Satin stitches: fine parallel thread lines with sheen, raised with a shadow at the edges."""
    h, w = a.shape
    ang = logo["angle"] + 0.9
    yy, xx = np.mgrid[0:h, 0:w].astype(F32)
    phase = (xx * F32(math.cos(ang)) + yy * F32(math.sin(ang))) / F32(max(0.45 * ppm, 1.2))
    stripes = F32(0.75) + F32(0.25) * np.sin(F32(2 * np.pi) * phase) ** 2
    sheen = F32(0.25) * np.clip(np.sin(F32(2 * np.pi) * phase + F32(1.0)), 0, 1) ** 4
    shadow = cv2.GaussianBlur(a, (0, 0), max(0.4 * ppm, 1.0))
    off = max(0.3 * ppm, 1.0)
    shadow = cv2.warpAffine(shadow, np.float32([[1, 0, off], [0, 1, off]]), (w, h))
    img *= (F32(1.0) - F32(0.3) * shadow * (F32(1.0) - a))[..., None]
    thread = col * stripes[..., None] + sheen[..., None]
    img *= (F32(1.0) - a)[..., None]
    img += thread * a[..., None]


def _traces(img, emblem, words, m, logo, ppm):
    """What a missing logo leaves: a faint ghost of its outline and the placement marks around it."""
    mask = np.maximum(emblem, words)
    k = max(int(0.4 * ppm), 1) * 2 + 1
    edge = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((k, k), np.uint8))
    size = img.shape[:2]
    ghost = warp_patch(np.clip(edge * 0.5 + mask * 0.5, 0, 1), m, size)
    if logo["style"] == "embroidery":  # needle holes along the outline of the unpicked stitches
        rng = np.random.default_rng(logo["seed"])
        holes = (edge > 0.3) & (rng.random(edge.shape) < 0.06 / max(ppm / 8, 0.5))
        dots = cv2.GaussianBlur(holes.astype(F32), (0, 0), max(0.12 * ppm, 0.5)) * F32(4.0)
        img *= (F32(1.0) - F32(0.6) * np.clip(warp_patch(dots, m, size), 0, 1))[..., None]
        img *= (F32(1.0) - F32(0.08) * ghost)[..., None]
    else:
        img *= (F32(1.0) - F32(0.1) * ghost)[..., None]
    # Chalk/registration marks at the corners of where the logo belongs.
    ph, pw = mask.shape
    arm = max(int(1.5 * ppm), 3)
    big = np.zeros((ph + 2 * arm, pw + 2 * arm), F32)
    for x, y in ((arm, arm), (pw + arm - 1, arm), (arm, ph + arm - 1), (pw + arm - 1, ph + arm - 1)):
        cv2.line(big, (x - arm, y), (x + arm, y), 1.0, max(int(0.3 * ppm), 1), cv2.LINE_AA)
        cv2.line(big, (x, y - arm), (x, y + arm), 1.0, max(int(0.3 * ppm), 1), cv2.LINE_AA)
    mm = m.copy()
    mm[:, 2] -= mm[:, :2] @ np.array([arm, arm], np.float64)
    a = warp_patch(big, mm, size) * F32(0.55)
    img *= (F32(1.0) - a)[..., None]
    img += a[..., None] * np.asarray(logo.get("chalk", (0.92, 0.92, 0.95)), F32)
