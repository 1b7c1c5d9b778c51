"""Sewn and stuck labels: text, care symbols, a real EAN-13 and a lot/date overprint, and the five label
defects. Also the printed shipping marks of cartons (drawn straight onto the board, no label material).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from datasets.synth.barcode import GUARD_MODULES, modules
from datasets.synth.paint import F32, composite, draw_text, patch_matrix, warp_patch
from datasets.synth.seams import render_seam


def _care_symbol(mask: np.ndarray, kind: int, x: float, y: float, s: float):
    """One laundry symbol (wash tub, bleach triangle, tumble dryer, iron, dry-clean circle) in an s-px box."""
    t = max(1, round(s * 0.07))
    p = lambda pts: np.round(np.asarray(pts) * 16).astype(np.int32)  # noqa: E731
    k = kind % 5
    if k == 0:
        pts = [
            (x, y + s * 0.3),
            (x + s * 0.15, y + s * 0.95),
            (x + s * 0.85, y + s * 0.95),
            (x + s, y + s * 0.3),
        ]
        cv2.polylines(mask, [p(pts)], False, 1.0, t, cv2.LINE_AA, 4)
        wav = [(x + s * (0.05 + 0.9 * i / 8), y + s * (0.3 - 0.06 * (i % 2))) for i in range(9)]
        cv2.polylines(mask, [p(wav)], False, 1.0, t, cv2.LINE_AA, 4)
    elif k == 1:
        pts = [(x + s / 2, y + s * 0.05), (x + s, y + s * 0.95), (x, y + s * 0.95)]
        cv2.polylines(mask, [p(pts)], True, 1.0, t, cv2.LINE_AA, 4)
        cv2.line(
            mask,
            tuple(p((x + s * 0.25, y + s * 0.4))),
            tuple(p((x + s * 0.75, y + s * 0.9))),
            1.0,
            t,
            cv2.LINE_AA,
            4,
        )
    elif k == 2:
        cv2.rectangle(mask, tuple(p((x, y))), tuple(p((x + s, y + s))), 1.0, t, cv2.LINE_AA, 4)
        cv2.circle(mask, tuple(p((x + s / 2, y + s / 2))), round(s * 0.35 * 16), 1.0, t, cv2.LINE_AA, 4)
    elif k == 3:
        pts = [
            (x, y + s * 0.9),
            (x + s, y + s * 0.9),
            (x + s * 0.9, y + s * 0.35),
            (x + s * 0.35, y + s * 0.35),
            (x + s * 0.1, y + s * 0.6),
        ]
        cv2.polylines(mask, [p(pts)], True, 1.0, t, cv2.LINE_AA, 4)
        cv2.circle(
            mask, tuple(p((x + s * 0.6, y + s * 0.62))), max(1, round(s * 0.06 * 16)), 1.0, -1, cv2.LINE_AA, 4
        )
    else:
        cv2.circle(mask, tuple(p((x + s / 2, y + s / 2))), round(s * 0.45 * 16), 1.0, t, cv2.LINE_AA, 4)
        draw_text(mask, "P", x + s * 0.32, y + s * 0.68, s * 0.4)


def barcode_mask(code: str, module_px: float, bar_h_px: float) -> np.ndarray:
    """Anti-aliased EAN-13 bars (1 = ink), guard bars longer, with digits underneath; no quiet zone."""
    mods = modules(code)
    ss = 8  # supersample the 1-D profile for exact coverage of fractional module widths
    n = math.ceil(95 * module_px) + 1
    xs = (np.arange(n * ss) + 0.5) / (ss * module_px)
    idx = np.clip(xs.astype(int), 0, 94)
    bars = (mods[idx] * (xs < 95)).reshape(n, ss).mean(1).astype(F32)
    guard = np.isin(idx, list(GUARD_MODULES)).reshape(n, ss).max(1)
    digit_h = 9 * module_px
    h = int(bar_h_px + digit_h)
    out = np.zeros((h, n), F32)
    out[: int(bar_h_px)] = bars
    out[int(bar_h_px) : int(bar_h_px + digit_h * 0.45)] = bars * guard
    cap = module_px * 6.5
    for i, d in enumerate(code[1:]):
        x = (3 + i * 7 + (5 if i >= 6 else 0)) * module_px + module_px * 1.2
        draw_text(out, d, x, bar_h_px + digit_h * 0.9, cap)
    return out


def label_layout(label: dict, ppm: float, defect: dict | None) -> dict:
    """Masks of the label at ``ppm``: body alpha, ink, barcode (with its box) and overprint."""
    pw, ph = max(int(label["w"] * ppm), 6), max(int(label["h"] * ppm), 6)
    body = np.zeros((ph, pw), F32)
    r = min(pw, ph) * (0.04 if label["material"] == "paper" else 0.01)
    cv2.rectangle(body, (0, 0), (pw - 1, ph - 1), 1.0, -1)
    if r > 2 and label["material"] == "paper":  # die-cut round corners
        body[:] = 0
        ri = int(r)
        cv2.rectangle(body, (ri, 0), (pw - 1 - ri, ph - 1), 1.0, -1)
        cv2.rectangle(body, (0, ri), (pw - 1, ph - 1 - ri), 1.0, -1)
        for cx, cy in ((ri, ri), (pw - 1 - ri, ri), (ri, ph - 1 - ri), (pw - 1 - ri, ph - 1 - ri)):
            cv2.circle(body, (cx, cy), ri, 1.0, -1, cv2.LINE_AA)
    ink = np.zeros((ph, pw), F32)
    over = np.zeros((ph, pw), F32)
    m = 0.08 * min(pw, ph) + 0.8 * ppm
    y = m
    cap = label["cap"] * ppm
    for line in label["lines"]:
        y += cap * 1.55
        draw_text(ink, line, m, y, cap, label.get("font", 0))
    if label["symbols"]:
        s = min(4.5 * ppm, (pw - 2 * m) / (len(label["symbols"]) * 1.3))
        y += cap * 0.8
        for i, k in enumerate(label["symbols"]):
            _care_symbol(ink, k, m + i * s * 1.3, y, s)
        y += s
    code_box = None
    if label.get("ean"):
        module = label["module"] * ppm
        room = cap * 1.9 if label.get("overprint") else 0.0  # keep the overprint's strip free
        # Bars as tall as planned, but never over the text above or the overprint below.
        bh = min(label["bar_h"] * ppm, ph - (y + cap) - m - room - 9 * module)
        bh = max(bh, 12 * module)
        bc = barcode_mask(label["ean"], module, bh)
        bx = int((pw - bc.shape[1]) / 2)
        by = int(min(y + cap, ph - bc.shape[0] - m - room))
        hh, ww = min(bc.shape[0], ph - by), min(bc.shape[1], pw - bx)
        if hh > 0 and ww > 0 and by >= 0 and bx >= 0:
            ink[by : by + hh, bx : bx + ww] = np.maximum(ink[by : by + hh, bx : bx + ww], bc[:hh, :ww])
            code_box = (bx, by, bx + ww, by + int(bh))
    if label.get("overprint"):
        ox, oy, oang = label["over_x"] * pw, label["over_y"] * ph, 0.0
        if defect is not None and defect["subtype"] == "misplaced_overprint":
            ox, oy, oang = ox + defect["dx"] * ppm, oy + defect["dy"] * ppm, defect["dangle"]
        tmp = np.zeros((ph, pw), F32)
        draw_text(tmp, label["overprint"], ox, oy, cap * 0.95, 1)
        if oang:
            rot = cv2.getRotationMatrix2D((ox, oy), math.degrees(oang), 1.0)
            tmp = cv2.warpAffine(tmp, rot, (pw, ph))
        over = tmp
    return {"body": body, "ink": ink, "over": over, "code_box": code_box, "size": (pw, ph)}


def _pose(label: dict, defect: dict | None) -> tuple[float, float, float]:
    x, y, ang = label["x"], label["y"], label["angle"]
    if defect is not None and defect["subtype"] == "crooked_label":
        x, y, ang = x + defect["dx"], y + defect["dy"], ang + defect["dangle"]
    return x, y, ang


def render_label(
    img: np.ndarray, origin: tuple[int, int], ppm: float, label: dict, defect: dict | None
) -> dict:
    """Draw ``label`` (and its ``defect``) onto img in place; returns its barcode quad (canvas px), if any."""
    sub = defect["subtype"] if defect is not None else None
    lay = label_layout(label, ppm, defect)
    pw, ph = lay["size"]
    x, y, ang = _pose(label, defect)
    m = patch_matrix(x * ppm, y * ppm, ang, pw, ph, origin)
    if sub == "missing_label":
        _label_traces(img, origin, ppm, label, lay, m)
        return {}
    body, ink = lay["body"], np.maximum(lay["ink"], lay["over"] * F32(0.9))
    rng = np.random.default_rng(label["seed"])
    bg = np.asarray(label["bg"], F32)
    if label["material"] == "paper":
        grain = 1 + 0.015 * rng.standard_normal((ph, pw)).astype(F32)
    else:  # woven/satin label: fine weft ribs
        yy = np.arange(ph, dtype=F32)[:, None]
        grain = (
            F32(0.97)
            + F32(0.03) * np.sin(yy * F32(2 * np.pi / max(0.3 * ppm, 2.1))) ** 2
            + np.zeros((1, pw), F32)
        )
    rgb = bg * grain[..., None]
    if sub == "unreadable_label":
        ink = _damage(ink, lay, defect, ppm)
    inkc = np.asarray(label["ink"], F32)
    rgb = rgb * (F32(1.0) - ink[..., None]) + inkc * ink[..., None]
    if lay["over"].any():
        oc = np.asarray(label.get("over_ink", label["ink"]), F32)
        o = lay["over"][..., None] * F32(0.9)
        rgb = rgb * (F32(1.0) - o) + oc * o
    if label["material"] == "print":
        # Shipping marks: ink printed straight onto the board, a little rough, no label stock under it.
        rough = np.clip(1.0 - 0.35 * np.abs(rng.standard_normal((ph, pw))).astype(F32), 0, 1)
        alpha = (
            np.maximum(ink, lay["over"] * F32(0.9))
            if sub == "unreadable_label"
            else np.maximum(lay["ink"], lay["over"] * F32(0.9))
        )
        ink_rgb = np.zeros((ph, pw, 3), F32) + np.asarray(label["ink"], F32)
        composite(img, ink_rgb, alpha * rough * F32(0.9), m)
        return {}
    if sub == "torn_label":
        body, rgb = _tear(body, rgb, defect, ppm)
    shadow = 0.35 if label["sewn"] else 0.25
    composite(img, rgb, body, m, shadow_px=max(0.6 * ppm, 0.8), shadow=shadow)
    if label["sewn"]:
        for seam in _label_seams(label, x, y, ang, hole_only=False):
            render_seam(img, origin, ppm, seam, None)
    out = {}
    if lay["code_box"] is not None and sub not in ("unreadable_label", "torn_label"):
        bx0, by0, bx1, by1 = lay["code_box"]
        quad = m @ np.array([[bx0, by0, 1], [bx1, by0, 1], [bx1, by1, 1], [bx0, by1, 1]], np.float64).T
        out = {"ean13": label["ean"], "quad": (quad.T + origin).tolist()}
    return out


def _label_seams(label: dict, x: float, y: float, ang: float, hole_only: bool) -> list[dict]:
    """Stitch rows across the two short ends of a sewn label (canvas mm)."""
    c, s = math.cos(ang), math.sin(ang)
    w, h = label["w"], label["h"]
    seams = []
    ends = (
        ((-w / 2 + 1.5, -h / 2, math.pi / 2), (w / 2 - 1.5, -h / 2, math.pi / 2))
        if h < w
        else ((-w / 2, -h / 2 + 1.5, 0.0), (-w / 2, h / 2 - 1.5, 0.0))
    )
    length = h if h < w else w
    for i, (u, v, a) in enumerate(ends):
        seams.append(
            {
                "x": x + u * c - v * s,
                "y": y + u * s + v * c,
                "angle": ang + a,
                "length": length,
                "rows": [0.0],
                "stitch": 2.2,
                "thick": 0.22,
                "colour": tuple(label["thread"]),
                "fold": None,
                "seed": label["seed"] + 17 + i,
                "curve": 0.0,
                "holes_only": hole_only,
            }
        )
    return seams


def _label_traces(img, origin, ppm, label, lay, m):
    """A missing label leaves its needle holes (sewn) or glue residue with paper fibres (stuck)."""
    x, y, ang = label["x"], label["y"], label["angle"]
    if label["sewn"]:
        for seam in _label_seams(label, x, y, ang, hole_only=True):
            render_seam(img, origin, ppm, seam, None)
        a = warp_patch(lay["body"], m, img.shape[:2])
        img *= (F32(1.0) + F32(0.05) * a)[..., None]  # unfaded fabric where the label shielded it
        return
    rng = np.random.default_rng(label["seed"] + 5)
    ph, pw = lay["body"].shape
    # Scraps of label stock a few millimetres across, left along the edges where it was peeled off.
    cells = (max(int(ph / max(2.5 * ppm, 1)), 2), max(int(pw / max(2.5 * ppm, 1)), 2))
    n = cv2.resize(rng.standard_normal(cells).astype(F32), (pw, ph), interpolation=cv2.INTER_CUBIC)
    ed = np.minimum.reduce(
        [
            np.arange(pw)[None, :] + np.zeros((ph, 1)),
            pw - 1 - np.arange(pw)[None, :] + np.zeros((ph, 1)),
            np.arange(ph)[:, None] + np.zeros((1, pw)),
            ph - 1 - np.arange(ph)[:, None] + np.zeros((1, pw)),
        ]
    )
    fibres = ((n > 1.1) & (ed < 0.1 * min(pw, ph))).astype(F32) * lay["body"]
    glue = lay["body"] * F32(0.75)
    a = warp_patch(glue, m, img.shape[:2])
    img *= (F32(1.0) - F32(0.14) * a)[..., None]
    img += (F32(0.12) * a * np.clip(np.sin(np.arange(a.shape[1], dtype=F32) * F32(0.01)) + F32(0.3), 0, 1))[
        ..., None
    ]
    f = warp_patch(fibres, m, img.shape[:2])
    bg = np.asarray(label["bg"], F32)
    img *= (F32(1.0) - f)[..., None]
    img += f[..., None] * bg * F32(0.95)


def _damage(ink: np.ndarray, lay: dict, defect: dict, ppm: float) -> np.ndarray:
    """Make the barcode (or, without one, the text) unreadable: a ragged smudge of spread ink across its full
    height (a 1-D barcode survives any horizontal scratch, not a smear through all its rows), plus a scuff."""
    ink = ink.copy()
    box = lay["code_box"]
    if box is None:
        ys, xs = np.nonzero(ink > 0.3)
        if len(xs) == 0:
            return ink
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    ph, pw = ink.shape
    rng = np.random.default_rng(int(defect["f0"] * 1e6))
    yy, xx = np.mgrid[0:ph, 0:pw].astype(F32)
    cx, cy = x0 + (defect["f0"] + defect["width"] / 2) * bw, (y0 + y1) / 2
    rx, ry = max(defect["width"] * bw / 2, 2.0), bh * 0.75 + 2
    d = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    rough = cv2.resize(rng.standard_normal((6, 6)).astype(F32), (pw, ph), interpolation=cv2.INTER_CUBIC)
    blob = np.clip((1.0 - d + 0.25 * rough) * 5.0, 0, 1).astype(F32)
    k = max(int(defect["spread"] * ppm), 2)
    smear = cv2.blur(ink, (k * 2 + 1, 3))
    dirt = np.clip(0.35 + 0.25 * cv2.resize(rng.standard_normal((12, 12)).astype(F32), (pw, ph)), 0, 1)
    ink = ink * (F32(1.0) - blob) + blob * np.clip(smear * F32(1.3) + dirt, 0, 1)
    scuff = np.zeros_like(ink)
    cv2.line(scuff, (x0, y1), (x1, y0), 1.0, max(int(defect["scuff"] * ppm), 2), cv2.LINE_AA)
    scuff = cv2.GaussianBlur(scuff, (0, 0), max(0.3 * ppm, 1.0))
    return ink * (F32(1.0) - F32(0.5) * scuff)


def _tear(body: np.ndarray, rgb: np.ndarray, defect: dict, ppm: float):
    """Fold a corner over (its back shows, greyer, with a shadow at the crease) or tear it off."""
    ph, pw = body.shape
    corner = defect["corner"]  # 0..3: TL, TR, BR, BL
    cx, cy = (0 if corner in (0, 3) else pw - 1), (0 if corner in (0, 1) else ph - 1)
    da, db = defect["fa"] * pw, defect["fb"] * ph
    p1 = np.array([cx + (da if cx == 0 else -da), cy], float)
    p2 = np.array([cx, cy + (db if cy == 0 else -db)], float)
    yy, xx = np.mgrid[0:ph, 0:pw].astype(F32)
    nrm = np.array([p2[1] - p1[1], p1[0] - p2[0]])
    nrm /= np.linalg.norm(nrm)
    side = (xx - p1[0]) * nrm[0] + (yy - p1[1]) * nrm[1]
    corner_side = (cx - p1[0]) * nrm[0] + (cy - p1[1]) * nrm[1]
    if corner_side < 0:
        side = -side
    if defect.get("mode", "fold") == "tear":
        rng = np.random.default_rng(defect["seed"])
        jag = cv2.resize(rng.standard_normal((1, 24)).astype(F32), (pw, ph)) * F32(0.6 * ppm)
        cut = np.clip(-(side + jag) * 0.7 + 0.5, 0, 1)
        edge = np.exp(-(((side + jag) / max(0.4 * ppm, 1.0)) ** 2))
        rgb = rgb * (F32(1.0) - F32(0.2) * edge[..., None]) + F32(0.2) * edge[..., None]
        return body * cut, rgb
    flap = np.clip(0.5 - side, 0, 1)  # 1 on the label side of the crease
    # Reflect the corner across the crease: where it lands, the label's back shows.
    d = side[..., None] * np.array([nrm[0], nrm[1]], F32) * (1 if corner_side >= 0 else -1)
    mx = (xx - 2 * d[..., 0]).astype(F32)
    my = (yy - 2 * d[..., 1]).astype(F32)
    back_a = cv2.remap((side > 0).astype(F32) * body, mx, my, cv2.INTER_LINEAR) * (side < 0)
    back = np.asarray(defect["back"], F32)
    crease = np.exp(-((side / max(0.5 * ppm, 1.0)) ** 2))
    new_body = body * flap
    shade = np.clip(-side / max(2.0 * ppm, 1.0), 0, 1)
    rgb = rgb * (F32(1.0) - F32(0.3) * crease)[..., None]
    rgb = (
        rgb * (F32(1.0) - back_a[..., None])
        + back * (F32(0.8) + F32(0.2) * shade)[..., None] * back_a[..., None]
    )
    return new_body, rgb
