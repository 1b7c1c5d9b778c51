"""Seams drawn to thread scale: rows of lockstitches with twisted, glossy thread, needle holes and the
panel join beside them, plus the six stitching defects and decorative stitches that look like defects.

A seam lives in its own frame: ``u`` runs along it (mm from its start), ``v`` across it (mm). Every
pixel near the seam gets its (u, v) and the thread, holes, join line and fabric relief are evaluated
there, vectorised, in chunks along the seam so that a diagonal seam does not cost its whole bounding box.
Stitch geometry is drawn from the seam's own seed with a fixed number of draws, so a defect changes only
the stitches it touches.
"""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32


def seam_reach(seam: dict, defect: dict | None = None) -> float:
    """Half-width (mm) of the band around the seam line that rendering may touch."""
    # Rows reach ~3 mm (thread, tails, holes); the join line's relief reaches 5 mm either side of it.
    reach = max([abs(r) + 3.0 for r in seam["rows"]] + [abs(seam.get("fold") or 0.0) + 5.5])
    reach += abs(float(seam.get("curve", 0.0)))
    if defect is not None:
        sub = defect["subtype"]
        if sub == "wavy_seam":
            reach += abs(defect["amp"])
        elif sub == "puckering":
            reach += 2.5 * defect["spread"]
        elif sub in ("open_seam", "broken_thread"):
            reach += defect.get("gap", 0.0) + 2.0
    return reach


def seam_corners(seam: dict, defect: dict | None = None) -> np.ndarray:
    """The four corners (mm, canvas frame) of the band the seam may touch."""
    x0, y0, ang, length = seam["x"], seam["y"], seam["angle"], seam["length"]
    c, s = math.cos(ang), math.sin(ang)
    r = seam_reach(seam, defect)
    pts = []
    for u, v in ((-r, -r), (length + r, -r), (length + r, r), (-r, r)):
        pts.append((x0 + u * c - v * s, y0 + u * s + v * c))
    return np.asarray(pts, np.float64)


def _row_geometry(seam: dict, row: int, defect: dict | None) -> dict:
    """Per-stitch arrays for one row: [a, b] spans along u, lateral jitter, slope, sag, thickness, shade."""
    rng = np.random.default_rng([seam["seed"], row])
    s = seam["stitch"]
    pattern = seam.get("patterns", ["lock"] * len(seam["rows"]))[row]
    n = int(seam["length"] / s) + 3
    # Fixed-size draws: identical with or without a defect.
    jit_h = rng.normal(0, 0.035 * s, n + 1)
    lat = rng.normal(0, 0.035, n) + np.cumsum(rng.normal(0, 0.01, n))
    thick = seam["thick"] * (1 + rng.normal(0, 0.05, n))
    shade = 1 + rng.normal(0, 0.05, n)
    holes = np.arange(n + 1) * s + jit_h + s * 0.5
    holes[0] = s * 0.5
    if pattern == "saddle":  # long, short, long, short: a regular rhythm chosen by the designer
        holes = np.cumsum(np.r_[s * 0.5, np.tile([1.55 * s, 0.45 * s], n // 2 + 1)[:n]]) + jit_h
    present = np.ones(n, bool)
    if pattern == "pick":  # hand-look pick stitch: short visible stitches with long gaps
        holes = np.cumsum(np.r_[s * 0.5, np.tile([0.35 * s, 1.65 * s], n // 2 + 1)[:n]]) + jit_h * 0.5
        present[1::2] = False
    hole_vis = np.ones(n + 1, F32) * 0.5
    if seam.get("holes_only"):  # the stitches were unpicked: only their holes remain
        present[:] = False
        hole_vis[:] = 1.0
    slope = np.zeros(n)
    sag = np.zeros(n)
    sub = defect["subtype"] if defect is not None and defect.get("row", row) in (row, -1) else None
    if sub is not None:
        k0 = int(np.searchsorted(holes, defect["u0"]))
        k1 = max(int(np.searchsorted(holes, defect["u1"])), k0 + 1)
        k0, k1 = min(k0, n - 2), min(k1, n - 1)
        if sub == "uneven_stitch_length":
            mult = np.asarray(defect["jitter"], float)
            for j in range(k0 + 1, k1):
                holes[j] = holes[j] + mult[(j - k0) % len(mult)] * s
            holes[k0 : k1 + 1] = np.sort(holes[k0 : k1 + 1])
        elif sub == "skipped_stitch":
            skip = int(defect.get("skips", 1))
            last = min(k0 + skip, n - 1)
            present[k0 + 1 : last + 1] = False
            hole_vis[k0 + 1 : last + 1] = 0.25
            holes_end = holes[last + 1]
            sag[k0] = defect.get("sag", 0.4)
            # The float spans the skipped holes; encode it by moving this stitch's end hole.
            span_end = holes_end
            defect = {**defect, "_span": (k0, span_end)}
        elif sub in ("broken_thread", "open_seam"):
            present[k0:k1] = False
            hole_vis[k0 : k1 + 1] = 1.0
            tails = defect.get("tails", (2.5, 3.0))
            slope[k0] = defect.get("tail_slope", 0.5)
            present[k0] = True
            slope[k1 - 1] = -defect.get("tail_slope", 0.5)
            present[k1 - 1] = k1 - 1 > k0
            thick[k0] *= 0.8
            thick[k1 - 1] *= 0.8
            a = holes[:-1] + 0.4 * thick
            b = holes[1:] - 0.4 * thick
            b[k0] = a[k0] + tails[0]
            a[k1 - 1] = b[k1 - 1] - tails[1]
            return _pack(a, b, lat, slope, sag, thick, shade, present, holes, hole_vis, seam["length"])
    a = holes[:-1] + 0.4 * thick
    b = holes[1:] - 0.4 * thick
    if sub == "skipped_stitch":
        k0, span_end = defect["_span"]
        b[k0] = span_end - 0.4 * thick[k0]
    return _pack(a, b, lat, slope, sag, thick, shade, present, holes, hole_vis, seam["length"])


def _pack(a, b, lat, slope, sag, thick, shade, present, holes, hole_vis, length) -> dict:
    # Remove absent spans from the search so a long float is found by searchsorted; the seam ends where
    # it is meant to (the last stitch holes are the last ones).
    keep = present & (b > a) & (b <= length)
    hole_vis = np.where(holes <= length + 0.1, hole_vis, 0.0).astype(F32)
    return {
        "a": a[keep].astype(F32),
        "b": b[keep].astype(F32),
        "e": lat[keep].astype(F32),
        "slope": slope[keep].astype(F32),
        "sag": sag[keep].astype(F32),
        "t": thick[keep].astype(F32),
        "shade": shade[keep].astype(F32),
        "holes": holes.astype(F32),
        "hole_vis": hole_vis,
    }


def _window(u: np.ndarray, u0: float, u1: float) -> np.ndarray:
    """Smooth bump that is 0 outside [u0, u1] and 1 in its middle."""
    t = np.clip((u - u0) / max(u1 - u0, 1e-3), 0, 1)
    return (np.sin(np.pi * t) ** 2).astype(F32)


def _lateral(seam: dict, u: np.ndarray, defect: dict | None) -> np.ndarray:
    """Where the stitch rows run across the seam frame: gentle bow, plus a wave for wavy_seam."""
    length = seam["length"]
    d = F32(seam.get("curve", 0.0)) * (F32(4.0) * (u / F32(length)) * (F32(1.0) - u / F32(length)))
    if defect is not None and defect["subtype"] == "wavy_seam":
        d = d + F32(defect["amp"]) * np.sin(
            F32(2 * np.pi) * (u - F32(defect["u0"])) / F32(defect["wave"])
        ) * (_window(u, defect["u0"], defect["u1"]))
    if defect is not None and defect["subtype"] == "puckering":
        d = d + F32(0.25 * defect["amp"]) * np.sin(F32(2 * np.pi) * u / F32(defect["wave"])) * _window(
            u, defect["u0"], defect["u1"]
        )
    return d


def render_seam(img: np.ndarray, origin: tuple[int, int], ppm: float, seam: dict, defect: dict | None):
    """Draw ``seam`` (and its ``defect``, if any) onto ``img`` (float32 RGB) in place.

    ``origin`` is the canvas pixel of img[0, 0], so a region cut out of the canvas renders exactly as the
    canvas would.
    """
    h, w = img.shape[:2]
    x0, y0, ang, length = seam["x"], seam["y"], seam["angle"], seam["length"]
    c, s = math.cos(ang), math.sin(ang)
    reach = seam_reach(seam, defect)
    rows = [_row_geometry(seam, r, defect) for r in range(len(seam["rows"]))]
    chunk_mm = max(384.0 / ppm, 8.0)
    n_chunks = max(1, math.ceil((length + 2 * reach) / chunk_mm))
    for k in range(n_chunks):
        ua = -reach + k * chunk_mm
        ub = min(ua + chunk_mm, length + reach)
        pts = [(x0 + u * c - v * s, y0 + u * s + v * c) for u in (ua, ub) for v in (-reach, reach)]
        xs = [p[0] * ppm - origin[0] for p in pts]
        ys = [p[1] * ppm - origin[1] for p in pts]
        ix0, ix1 = max(int(min(xs)) - 1, 0), min(int(max(xs)) + 2, w)
        iy0, iy1 = max(int(min(ys)) - 1, 0), min(int(max(ys)) + 2, h)
        if ix0 >= ix1 or iy0 >= iy1:
            continue
        gx = (np.arange(ix0, ix1, dtype=F32) + F32(origin[0] + 0.5)) / F32(ppm) - F32(x0)
        gy = (np.arange(iy0, iy1, dtype=F32) + F32(origin[1] + 0.5)) / F32(ppm) - F32(y0)
        uu = gx[None, :] * F32(c) + gy[:, None] * F32(s)
        vv = -gx[None, :] * F32(s) + gy[:, None] * F32(c)
        sel = np.flatnonzero((uu >= ua) & (uu < ub) & (np.abs(vv) < reach))
        if sel.size == 0:
            continue
        region = img[iy0:iy1, ix0:ix1].reshape(-1, 3)
        fabric, thread_a, thread_rgb = _render_flat(uu.ravel()[sel], vv.ravel()[sel], ppm, seam, rows, defect)
        pix = region[sel]
        pix *= (fabric * (F32(1.0) - thread_a))[:, None]
        pix += thread_rgb
        img[iy0:iy1, ix0:ix1] = _put(region, sel, pix).reshape(iy1 - iy0, ix1 - ix0, 3)


def _put(region: np.ndarray, sel: np.ndarray, pix: np.ndarray) -> np.ndarray:
    region[sel] = pix
    return region


def _render_flat(uu, vv, ppm, seam, rows, defect):
    """Fabric shading, thread coverage and premultiplied thread colour for flat arrays of (u, v)."""
    px = F32(1.0 / ppm)
    fabric = np.ones(uu.shape, F32)  # multiplicative shading of the fabric
    lat = _lateral(seam, uu, defect)
    fold = seam.get("fold")
    sub = defect["subtype"] if defect is not None else None
    light = F32(seam.get("light", 0.6))
    # Panel join: a fine dark crease with a raised, lit ridge on the seam-allowance side.
    if fold is not None:
        near = np.flatnonzero((np.abs(vv - F32(fold)) < 5.0) & (uu > 0) & (uu < F32(seam["length"])))
        dv = vv[near] - F32(fold)
        un = uu[near]
        # The join ends with the seam (fading over a millimetre, not cut).
        ends = np.clip(np.minimum(un, F32(seam["length"]) - un), 0, 1)
        side = F32(np.sign(fold) or 1.0)
        f = F32(1.0) - F32(0.35) * np.exp(-((dv / (F32(0.22) + px)) ** 2))
        f *= F32(1.0) + F32(0.07) * np.exp(-(((dv + side * F32(1.6)) / F32(1.3)) ** 2)) * light
        f *= F32(1.0) - F32(0.05) * np.exp(-(((dv - side * F32(1.5)) / F32(1.2)) ** 2))
        fabric[near] *= F32(1.0) + (f - F32(1.0)) * ends
    if sub == "puckering":
        win = _window(uu, defect["u0"], defect["u1"])
        k = F32(2 * np.pi / defect["wave"])
        env = np.exp(-(((vv - lat) / F32(defect["spread"])) ** 2)) * win
        phase = k * uu + F32(defect.get("phase", 0.0)) + F32(0.35) * np.sin(vv * F32(0.5))
        dh_du = F32(defect["amp"]) * k * np.cos(phase) * env
        dh_dv = (
            F32(defect["amp"]) * np.sin(phase) * env * (F32(-2.0) * (vv - lat) / F32(defect["spread"]) ** 2)
        )
        fabric *= F32(1.0) + F32(0.55) * (F32(0.8) * dh_du + F32(0.45) * dh_dv)
    if sub == "open_seam" and fold is not None:
        win = np.clip((uu - F32(defect["u0"])) / F32(defect["u1"] - defect["u0"]), 0, 1)
        gap = F32(defect["gap"]) * np.abs(np.sin(np.pi * win)) ** F32(0.7)
        dv = np.abs(vv - F32(fold) - lat * F32(0.3))
        inside = np.clip((gap * F32(0.5) - dv) * F32(ppm) + F32(0.5), 0, 1) * np.clip(gap * F32(ppm), 0, 1)
        # Inside the opening: the shadowed inner layer; along its lips, a lighter frayed edge.
        lip = np.exp(-(((dv - gap * F32(0.5)) / (F32(0.25) + px)) ** 2)) * (gap > px)
        fabric = fabric * (F32(1.0) - inside * F32(0.78)) * (F32(1.0) + F32(0.25) * lip)
    thread_a = np.zeros(uu.shape, F32)
    thread_rgb = np.zeros((*uu.shape, 3), F32)
    colour = np.asarray(seam["colour"], F32)
    colours = seam.get("colours")
    for r, geo in enumerate(rows):
        col = np.asarray(colours[r], F32) if colours else colour
        # Thread and holes lie within ~1 mm of the row; tails and sagging floats reach further, but only
        # where a defect is, so the band stays the same everywhere else (a defect changes nothing else).
        dist = np.abs(vv - lat - F32(seam["rows"][r]))
        band = dist < F32(1.0) + F32(4) * px
        if defect is not None:
            wide = F32(1.0) + F32(
                np.max(np.abs(geo["slope"]), initial=0) * 5.0 + np.max(np.abs(geo["sag"]), initial=0)
            )
            lo, hi = F32(defect.get("u0", 0.0) - 6.0), F32(defect.get("u1", 0.0) + 6.0)
            band |= (dist < wide + F32(4) * px) & (uu > lo) & (uu < hi)
        near = np.flatnonzero(band)
        if near.size == 0:
            continue
        u = uu[near]
        v_row = vv[near] - lat[near] - F32(seam["rows"][r])
        fab = fabric[near]
        _holes(fab, u, v_row, geo, ppm)
        if len(geo["a"]):
            idx = np.clip(np.searchsorted(geo["a"], u, side="right") - 1, 0, len(geo["a"]) - 1)
            a, b = geo["a"][idx], geo["b"][idx]
            span = np.maximum(b - a, F32(1e-3))
            along = u - a
            on = (along >= 0) & (along <= span)
            t = geo["t"][idx]
            off = v_row - geo["e"][idx] - geo["slope"][idx] * along
            off = off - geo["sag"][idx] * np.sin(np.pi * np.clip(along / span, 0, 1))
            taper = np.sqrt(np.clip(np.minimum(along, span - along) / (F32(0.45) * t), 0, 1))
            half = F32(0.5) * t * taper
            cov = np.clip((half - np.abs(off)) * F32(ppm) + F32(0.5), 0, 1) * on
            # Cast shadow of the thread on the fabric, offset away from the light.
            shadow = np.clip((half * F32(1.5) - np.abs(off - F32(0.3) * t)) * F32(ppm) * F32(0.5), 0, 1) * on
            fab *= F32(1.0) - F32(0.28) * shadow
            n = np.clip(off / np.maximum(half, F32(1e-3)), -1, 1)
            body = F32(0.4) + F32(0.45) * np.sqrt(F32(1.0) - n * n)
            # Plies twisted round each other: bright diagonal ridges along the thread.
            twist = F32(1.0) + F32(0.3) * np.sin(
                F32(2 * np.pi) * (along / (F32(0.9) * t + F32(0.35)) + F32(0.9) * n)
            )
            sheen = F32(0.22) * np.exp(-(((n + F32(0.35)) / F32(0.28)) ** 2)) * (F32(0.7) + F32(0.3) * twist)
            lum = body * twist * geo["shade"][idx]
            ta = thread_a[near]
            a_new = cov * (F32(1.0) - ta)
            thread_rgb[near] += a_new[:, None] * (lum[:, None] * col + (sheen * light)[:, None])
            thread_a[near] = ta + a_new
        fabric[near] = fab
    return fabric, thread_a, thread_rgb


def _holes(fabric, uu, v_row, geo, ppm):
    """Darken the fabric at needle holes (mostly hidden under the thread; plain to see where it is gone)."""
    holes, vis = geo["holes"], geo["hole_vis"]
    j = np.clip(np.searchsorted(holes, uu), 1, len(holes) - 1)
    left, right = holes[j - 1], holes[j]
    use_left = (uu - left) < (right - uu)
    hu = np.where(use_left, left, right)
    hv = np.where(use_left, vis[j - 1], vis[j])
    r = F32(0.22) + F32(0.6 / ppm)
    d2 = ((uu - hu) ** 2 + v_row**2) / (r * r)
    fabric *= F32(1.0) - hv * F32(0.75) * np.exp(-d2)
