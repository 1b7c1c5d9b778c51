"""Rendering a planned photo: background, product, parts (with or without each defect), a hand, then the
camera (light, perspective, blur, noise). Defect masks are the pixels a defect changes, found by drawing
its part twice, warped with the photo's own homography: boxes are exact by construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import zxingcpp

from datasets.synth.conditions import apply_camera, camera_homography
from datasets.synth.hands import draw_hand
from datasets.synth.labels import render_label
from datasets.synth.logos import render_logo
from datasets.synth.plan import PhotoPlan
from datasets.synth.seams import render_seam, seam_corners
from datasets.synth.textures import F32, channel_max, fbm, material, rgb3, smooth_noise
from datasets.taxonomy import CATEGORY_IDS

# A pixel counts as changed by a defect when some channel moves by more than this (0..1 scale).
CHANGE_TOL = 0.008


@dataclass
class RenderedPhoto:
    """A rendered photo before JPEG, with its ground truth in the photo's own pixels."""

    rgb: np.ndarray  # (H, W, 3) uint8
    annotations: list[dict]  # bbox [x, y, w, h], segmentation, area, family, subtype, category_id
    barcodes: list[dict]  # {"ean13", "bbox"} for each barcode that reads in this photo
    px_per_mm: float
    lookalikes: list[str] = field(default_factory=list)


def render_photo(plan: PhotoPlan, without: set[int] | frozenset[int] = frozenset()) -> RenderedPhoto:
    """Render ``plan``; defects whose index is in ``without`` are left out (their part is drawn good)."""
    w, h, ppm = plan.width, plan.height, plan.ppm
    canvas = _background(plan)
    _product(canvas, plan)
    masks: dict[int, tuple[tuple[int, int, int, int], np.ndarray]] = {}
    quads: list[dict] = []
    by_part = {d["part"]: (k, d) for k, d in enumerate(plan.defects) if k not in without}
    for i, part in enumerate(plan.parts):
        k, defect = by_part.get(i, (None, None))
        roi = _part_roi(part, defect, ppm, (h, w))
        if roi is None:
            continue
        x0, y0, x1, y1 = roi
        view = canvas[y0:y1, x0:x1]
        if defect is not None:
            good = view.copy()
            _draw(good, (x0, y0), ppm, part, None)
            info = _draw(view, (x0, y0), ppm, part, defect)
            changed = channel_max(np.abs(view - good)) > CHANGE_TOL
            if changed.any():
                masks[k] = (roi, changed)
        else:
            info = _draw(view, (x0, y0), ppm, part, None)
        if info:
            quads.append(info)
    if plan.hand is not None:
        draw_hand(canvas, plan.hand, plan.ppm)
    hom, zoom = camera_homography(plan)
    rgb, margin = apply_camera(canvas, plan, hom)
    annotations = [_annotation(plan, k, masks[k], hom, margin) for k in sorted(masks)]
    annotations = [a for a in annotations if a is not None]
    barcodes = _readable_barcodes(rgb, quads, hom)
    return RenderedPhoto(rgb, annotations, barcodes, float(ppm * zoom), list(plan.lookalikes))


# -- scene -----------------------------------------------------------------------------------------
def _background(plan: PhotoPlan) -> np.ndarray:
    bg = plan.background
    w, h, ppm = plan.width, plan.height, plan.ppm
    if plan.shot == "closeup":  # the fabric fills the frame; nothing of the background shows
        return np.zeros((h, w, 3), F32)
    if bg["defocus"]:  # held in hand: the floor or table far behind is out of focus, so draw it small
        small = material(bg["material"], bg["seed"], max(h // 6, 8), max(w // 6, 8), ppm / 12, bg["colour"])
        return cv2.GaussianBlur(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), (0, 0), 3)
    return material(bg["material"], bg["seed"], h, w, ppm, bg["colour"])


def _poly_mask(poly_px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(poly_px * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
    return m.astype(F32) / F32(255.0)


def _product(canvas: np.ndarray, plan: PhotoPlan):
    h, w = canvas.shape[:2]
    ppm = plan.ppm
    if plan.setting != "hand" and plan.shot == "whole":
        _drop_shadow(canvas, plan)
    light = plan.conditions["light_dir"]
    for reg in plan.regions:
        poly = np.asarray(reg["poly"], float) * ppm
        x0, y0 = max(int(poly[:, 0].min()) - 1, 0), max(int(poly[:, 1].min()) - 1, 0)
        x1, y1 = min(int(poly[:, 0].max()) + 2, w), min(int(poly[:, 1].max()) + 2, h)
        if x0 >= x1 or y0 >= y1:
            continue
        alpha = _poly_mask(poly - (x0, y0), (y1 - y0, x1 - x0))
        if reg["kind"] == "shade":  # the same cloth, a shade apart (the other ply of a close-up seam)
            canvas[y0:y1, x0:x1] *= rgb3(F32(1.0) + (F32(reg["shade"]) - F32(1.0)) * alpha)
            continue
        tex = material(reg["material"], reg["seed"], y1 - y0, x1 - x0, ppm, reg["colour"])
        shade = np.full(alpha.shape, F32(reg["shade"]))
        if reg["round"] > 0:
            # Rounded, stuffed or folded edges fall off in light; the lit side a little less.
            dist = cv2.distanceTransform((alpha > 0.5).astype(np.uint8), cv2.DIST_L2, 3) / F32(ppm)
            if reg["kind"] == "sphere":
                r = dist / F32(reg["round"])
                shade *= F32(0.35) + F32(0.75) * np.sqrt(np.clip(r * (2 - r), 0, 1))
            else:
                shade *= F32(0.78) + F32(0.22) * np.sqrt(np.clip(dist / F32(reg["round"]), 0, 1))
        if reg["kind"] == "tape":  # glossy parcel tape: a broad sheen
            shade *= F32(1.0) + F32(0.15) * smooth_noise(
                np.random.default_rng(reg["seed"]), *alpha.shape, 40 * ppm
            ).clip(-1, 1)
        if reg["material"] in ("woven", "twill", "knit", "canvas") and plan.shot == "whole":
            shade *= _folds(reg["seed"], alpha.shape, ppm, light)
        region = canvas[y0:y1, x0:x1]
        tex *= rgb3(alpha * shade)
        if alpha.min() >= 1.0:  # a close-up's fabric fills the frame
            region[:] = tex
        else:
            region *= rgb3(F32(1.0) - alpha)
            region += tex


def _folds(seed: int, shape, ppm: float, light: float) -> np.ndarray:
    """Soft drape folds of cloth lying on a table: a few long ridges and some lumpiness, as shading
    (computed at 1/8 size and scaled up: folds are tens of millimetres wide)."""
    rng = np.random.default_rng(seed + 1)
    f = 8
    sh, sw = max(shape[0] // f, 4), max(shape[1] // f, 4)
    mm = ppm / f  # small-grid pixels per mm
    yy, xx = np.mgrid[0:sh, 0:sw].astype(F32)
    hgt = F32(0.4) * fbm(rng, sh, sw, 50 * mm, 2)
    for _ in range(int(rng.integers(2, 5))):
        cx, cy, ang = rng.uniform(0, sw), rng.uniform(0, sh), rng.uniform(0, np.pi)
        length, width = rng.uniform(150, 400) * mm, rng.uniform(10, 30) * mm
        u = (xx - F32(cx)) * F32(math.cos(ang)) + (yy - F32(cy)) * F32(math.sin(ang))
        v = -(xx - F32(cx)) * F32(math.sin(ang)) + (yy - F32(cy)) * F32(math.cos(ang))
        taper = np.clip(F32(1.0) - (u / F32(length / 2)) ** 2, 0, 1)
        hgt += F32(rng.uniform(0.6, 1.2)) * np.exp(-((v / F32(width)) ** 2)) * taper
    gy, gx = np.gradient(hgt)
    slope = gx * F32(math.cos(light)) + gy * F32(math.sin(light))
    scale = F32(0.13) / max(float(np.percentile(np.abs(slope), 99)), 1e-4)
    s = np.clip(F32(1.0) + slope * scale, 0.8, 1.15)
    return cv2.resize(s, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def _drop_shadow(canvas: np.ndarray, plan: PhotoPlan):
    h, w = canvas.shape[:2]
    f = 8
    ppm = plan.ppm / f
    small = np.zeros((h // f + 1, w // f + 1), F32)
    for reg in plan.regions:
        poly = np.asarray(reg["poly"], float) * ppm
        cv2.fillPoly(small, [np.round(poly * 16).astype(np.int32)], 1.0, cv2.LINE_AA, 4)
    ang = plan.conditions["light_dir"]
    off = 12 * ppm
    m = np.float32([[1, 0, -math.cos(ang) * off], [0, 1, -math.sin(ang) * off]])
    small = cv2.warpAffine(small, m, (small.shape[1], small.shape[0]))
    small = cv2.GaussianBlur(small, (0, 0), 10 * ppm + 1)
    sh = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)[:h, :w]
    canvas *= rgb3(F32(1.0) - F32(0.45) * sh)


# -- parts ------------------------------------------------------------------------------------------
def _part_roi(part: dict, defect: dict | None, ppm: float, shape) -> tuple[int, int, int, int] | None:
    h, w = shape
    kind = part["kind"]
    if kind == "seam":
        pts = seam_corners(part, defect)
        xs, ys = pts[:, 0], pts[:, 1]
    else:
        if kind in ("logo", "label"):
            r = math.hypot(part["w"], part["h"]) / 2 + 6.0
            if defect is not None:
                r += abs(defect.get("dx", 0.0)) + abs(defect.get("dy", 0.0))
                r += abs(defect.get("dangle", 0.0)) * max(part["w"], part["h"]) * 0.5
        elif kind == "wrinkle":
            r = part["length"] / 2 + part["width"] * 4
        else:
            r = max(part["rx"], part["ry"]) * 3
        xs = np.array([part["x"] - r, part["x"] + r])
        ys = np.array([part["y"] - r, part["y"] + r])
    x0, x1 = max(int(xs.min() * ppm) - 2, 0), min(int(xs.max() * ppm) + 3, w)
    y0, y1 = max(int(ys.min() * ppm) - 2, 0), min(int(ys.max() * ppm) + 3, h)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


def _draw(img, origin, ppm, part, defect) -> dict:
    kind = part["kind"]
    if kind == "seam":
        render_seam(img, origin, ppm, part, defect)
    elif kind == "logo":
        render_logo(img, origin, ppm, part, defect)
    elif kind == "label":
        return render_label(img, origin, ppm, part, defect)
    elif kind == "wrinkle":
        _wrinkle(img, origin, ppm, part)
    elif kind == "glare":
        _glare(img, origin, ppm, part)
    return {}


def _local_uv(img, origin, ppm, part):
    h, w = img.shape[:2]
    gx = (np.arange(w, dtype=F32) + F32(origin[0] + 0.5)) / F32(ppm) - F32(part["x"])
    gy = (np.arange(h, dtype=F32) + F32(origin[1] + 0.5)) / F32(ppm) - F32(part["y"])
    c, s = F32(math.cos(part["angle"])), F32(math.sin(part["angle"]))
    return gx[None, :] * c + gy[:, None] * s, -gx[None, :] * s + gy[:, None] * c


def _wrinkle(img, origin, ppm, part):
    """A soft fold across the fabric (a look-alike of puckering and wavy seams, and not a defect)."""
    u, v = _local_uv(img, origin, ppm, part)
    half = F32(part["length"] / 2)
    taper = np.clip(F32(1.0) - (u / half) ** 2, 0, 1)
    sig = F32(part["width"])
    slope = F32(-2.0) * v / sig * np.exp(-((v / sig) ** 2)) * taper
    img *= rgb3(F32(1.0) + F32(0.3 * part["amp"]) * slope)


def _glare(img, origin, ppm, part):
    """A specular reflection of a ceiling lamp (not a defect)."""
    u, v = _local_uv(img, origin, ppm, part)
    g = np.exp(-((u / F32(part["rx"])) ** 2 + (v / F32(part["ry"])) ** 2) * F32(2.0)) * F32(part["strength"])
    img += (F32(1.0) - img) * rgb3(g * F32(0.9))


# -- ground truth -----------------------------------------------------------------------------------
def _annotation(plan, k, roi_mask, hom, margin) -> dict | None:
    (x0, y0, x1, y1), changed = roi_mask
    w, h = plan.width, plan.height
    full = np.zeros((h, w), np.uint8)
    full[y0:y1, x0:x1] = changed.astype(np.uint8) * 255
    warped = cv2.warpPerspective(full, hom, (w, h), flags=cv2.INTER_LINEAR, borderValue=0) > 0
    if not warped.any():
        return None
    k_px = 2 * margin + 1
    grown = cv2.dilate(warped.astype(np.uint8), np.ones((k_px, k_px), np.uint8))
    ys, xs = np.nonzero(grown)
    bx0, by0, bx1, by1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    # Defects smaller than the floor get a box of the floor's area around them (still containing them).
    min_area = plan_min_area(plan) * w * h
    if (bx1 - bx0) * (by1 - by0) < min_area:
        f = math.sqrt(min_area / max((bx1 - bx0) * (by1 - by0), 1))
        cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
        hw, hh = (bx1 - bx0) * f / 2, (by1 - by0) * f / 2
        side = math.sqrt(min_area)
        hw, hh = max(hw, min(side / 2, hw * 3)), max(hh, min(side / 2, hh * 3))
        bx0, bx1 = max(int(cx - hw), 0), min(math.ceil(cx + hw), w)
        by0, by1 = max(int(cy - hh), 0), min(math.ceil(cy + hh), h)
    closed = cv2.morphologyEx(grown, cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))
    contours, _ = cv2.findContours(closed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    seg = []
    for c in contours:
        if len(c) >= 3:
            c = cv2.approxPolyDP(c, 1.0, True)
            if len(c) >= 3:
                seg.append([float(v) for v in c.reshape(-1)])
    d = plan.defects[k]
    return {
        "bbox": [bx0, by0, bx1 - bx0, by1 - by0],
        "area": float(closed.astype(bool).sum()),
        "segmentation": seg,
        "family": d["family"],
        "subtype": d["subtype"],
        "category_id": CATEGORY_IDS[d["family"]],
        "iscrowd": 0,
        "defect_index": k,
    }


def plan_min_area(plan: PhotoPlan) -> float:
    return float(plan.conditions.get("min_area", 0.001))


def _readable_barcodes(rgb: np.ndarray, quads: list[dict], hom: np.ndarray) -> list[dict]:
    """Barcodes that zxing-cpp reads in the finished photo (too small or blurred ones are left out)."""
    out = []
    h, w = rgb.shape[:2]
    for q in quads:
        pts = cv2.perspectiveTransform(np.asarray(q["quad"], np.float64)[None], hom)[0]
        x0, y0 = max(int(pts[:, 0].min()), 0), max(int(pts[:, 1].min()), 0)
        x1, y1 = min(math.ceil(pts[:, 0].max()), w), min(math.ceil(pts[:, 1].max()), h)
        if x1 - x0 < 20 or y1 - y0 < 5:
            continue
        pad = int((x1 - x0) * 0.2) + 4
        crop = rgb[max(y0 - pad, 0) : min(y1 + pad, h), max(x0 - pad, 0) : min(x1 + pad, w)]
        found = zxingcpp.read_barcodes(np.ascontiguousarray(crop), formats=zxingcpp.BarcodeFormat.EAN13)
        if any(r.text == q["ean13"] for r in found):
            out.append({"ean13": q["ean13"], "bbox": [x0, y0, x1 - x0, y1 - y0]})
    return out
