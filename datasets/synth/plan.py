"""Planning a photo: every random choice (scene, product, parts, defects, look-alikes, conditions) is drawn
here from the photo's own generator, derived from (seed, index) with numpy SeedSequence. Rendering only
reads the plan (and seeds stored in it), so a photo can be re-rendered with a defect left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from datasets.synth.barcode import make_ean13
from datasets.synth.config import PRODUCT_FAMILIES, SynthConfig, parse_size
from datasets.synth.logos import BRANDS, EMBLEMS
from datasets.taxonomy import SUBTYPE_FAMILY

# Field of view (mm across the long side of the photo) of whole-product shots (close-ups: the config's).
WHOLE_FOV = {
    "garment_panel": (450, 650),
    "tshirt": (550, 750),
    "bag": (420, 600),
    "shoe": (330, 450),
    "ball": (280, 380),
    "carton": (650, 950),
    "retail_box": (300, 420),
    "jersey": (550, 750),
}

FABRICS = {
    "garment_panel": ("woven", "twill", "knit"),
    "tshirt": ("knit", "knit", "woven"),
    "bag": ("canvas", "leather", "twill"),
    "shoe": ("leather", "leather", "canvas"),
    "ball": ("leather",),
    "carton": ("cardboard",),
    "retail_box": ("paper",),
    "jersey": ("mesh",),
}
GARMENT_COLOURS = (
    (0.12, 0.16, 0.3),
    (0.55, 0.1, 0.12),
    (0.85, 0.85, 0.82),
    (0.2, 0.2, 0.22),
    (0.35, 0.45, 0.3),
    (0.75, 0.65, 0.45),
    (0.45, 0.55, 0.7),
    (0.8, 0.5, 0.2),
    (0.5, 0.3, 0.45),
    (0.9, 0.8, 0.3),
)
INKS = (
    (0.85, 0.1, 0.1),
    (0.95, 0.95, 0.92),
    (0.05, 0.05, 0.07),
    (0.1, 0.3, 0.75),
    (0.95, 0.75, 0.1),
    (0.1, 0.55, 0.3),
    (0.9, 0.45, 0.1),
    (0.5, 0.1, 0.5),
)
THREADS = ((0.92, 0.9, 0.85), (0.08, 0.08, 0.1), (0.85, 0.7, 0.3), (0.6, 0.15, 0.1), (0.3, 0.35, 0.6))


@dataclass
class PhotoPlan:
    """Everything needed to render one photo; plain data so it pickles to worker processes."""

    seed: int
    index: int
    width: int
    height: int
    ppm: float
    milestone: str
    product: str
    setting: str
    shot: str
    background: dict
    regions: list[dict]
    parts: list[dict]
    defects: list[dict]
    conditions: dict
    hand: dict | None = None
    lookalikes: list[str] = field(default_factory=list)


def photo_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of photo ``index`` in a PO made with ``seed`` (independent of worker count)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def _pick(rng: np.random.Generator, weights: dict):
    keys = [k for k, v in weights.items() if v > 0]
    p = np.asarray([weights[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _seed(rng) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _colour(rng, palette, jitter=0.04):
    c = np.asarray(palette[int(rng.integers(len(palette)))], float)
    return tuple(float(v) for v in np.clip(c + rng.normal(0, jitter, 3), 0.02, 0.97))


def _size(rng, config: SynthConfig, size):
    if size is not None:
        return int(size[0]), int(size[1])
    weights = {i: sw.weight for i, sw in enumerate(config.size_mix)}
    w, h = parse_size(config.size_mix[_pick(rng, weights)].size)
    if rng.random() < config.portrait_rate:
        w, h = h, w
    return w, h


def plan_photo(seed: int, index: int, config: SynthConfig, size: tuple[int, int] | None) -> PhotoPlan:
    """Draw every random choice of photo ``index`` of a PO generated with ``seed``."""
    rng = photo_rng(seed, index)
    width, height = _size(rng, config, size)
    # Defects first, so that the product and shot can carry them.
    families: list[str] = []
    fam_w = {
        f: w for f, w in config.family_mix.items() if w > 0 and sum(config.subtype_weights(f).values()) > 0
    }
    if fam_w and rng.random() < config.defect_rate:
        families.append(_pick(rng, fam_w))
        while len(families) < config.max_defects and rng.random() < config.extra_defect_rate:
            families.append(_pick(rng, fam_w))
    milestone = _pick(rng, config.milestone_mix)
    products = dict(config.product_mix.get(milestone, {}))
    if families:
        fit = {p: w for p, w in products.items() if families[0] in PRODUCT_FAMILIES[p]}
        if not fit:  # this milestone shoots nothing that carries the family: take another milestone's
            shot_at = {p: 1.0 for mix in config.product_mix.values() for p in mix}
            fit = {p: 1.0 for p in shot_at if families[0] in PRODUCT_FAMILIES[p]}
            fit = fit or {p: 1.0 for p in PRODUCT_FAMILIES if families[0] in PRODUCT_FAMILIES[p]}
        products = fit
    product = _pick(rng, products)
    # Further defects fall on what this product carries (a carton has no seams to open).
    carried = {f: w for f, w in fam_w.items() if f in PRODUCT_FAMILIES[product]}
    families = [f if f in carried else _pick(rng, carried) for f in families] if carried else []
    shot = "closeup" if rng.random() < config.closeup_rate else "whole"
    setting = _pick(rng, config.setting_mix)
    if setting == "hand" and product in ("carton",):
        setting = "floor"
    long_mm = rng.uniform(*(config.closeup_fov_mm if shot == "closeup" else WHOLE_FOV[product]))
    ppm = max(width, height) / long_mm
    wm, hm = width / ppm, height / ppm
    style_rng = rng if config.style_seed is None else np.random.default_rng(config.style_seed)
    scene = Scene(rng, product, shot, wm, hm, families, style_rng)
    regions, parts = scene.build()
    defects = _plan_defects(rng, config, families, parts, shot, wm, hm)
    lookalikes = _plan_lookalikes(rng, config, parts, regions, shot, wm, hm, product)
    hand = _plan_hand(rng, wm, hm, parts, defects) if setting == "hand" else None
    plan = PhotoPlan(
        seed=int(seed),
        index=int(index),
        width=width,
        height=height,
        ppm=float(ppm),
        milestone=milestone,
        product=product,
        setting=setting,
        shot=shot,
        background=_plan_background(rng, setting),
        regions=regions,
        parts=parts,
        defects=defects,
        conditions=_plan_conditions(rng, config, width),
        hand=hand,
        lookalikes=lookalikes,
    )
    if config.distressed_print > 0:  # drawn last, so every other draw is the same as without it
        # A style's finish is the style's: its own generator, not the photo's nor the shared style
        # stream (whose position depends on what the photo shows).
        frng = rng if config.style_seed is None else np.random.default_rng([config.style_seed, 1])
        finish = "distressed" if frng.random() < config.distressed_print else "clean"
        for part in parts:
            if part["kind"] == "logo" and part["style"] == "print":
                part["finish"] = finish
    return plan


def _plan_background(rng, setting: str) -> dict:
    if setting == "table":
        kind = str(rng.choice(["wood", "laminate", "laminate"]))
        colour = (
            (0.62, 0.45, 0.3) if kind == "wood" else _colour(rng, ((0.85, 0.85, 0.83), (0.6, 0.62, 0.64)))
        )
    elif setting == "floor":
        kind = "concrete"
        colour = _colour(rng, ((0.55, 0.55, 0.53), (0.42, 0.5, 0.45), (0.6, 0.58, 0.5)))
    else:
        kind = str(rng.choice(["concrete", "laminate", "wood"]))
        colour = _colour(rng, ((0.5, 0.5, 0.5), (0.7, 0.68, 0.62), (0.55, 0.42, 0.3)))
    return {"material": kind, "colour": colour, "seed": _seed(rng), "defocus": setting == "hand"}


def _plan_conditions(rng, config: SynthConfig, width: int) -> dict:
    c = config.conditions
    scale = width / 2000.0  # blur in pixels grows with resolution
    return {
        "corners": (rng.uniform(-1, 1, (4, 2)) * c.perspective).tolist(),
        "roll": float(np.radians(rng.uniform(-c.roll_deg, c.roll_deg))),
        "light_dir": float(rng.uniform(0, 2 * np.pi)),
        "gradient": float(rng.uniform(0, c.light_gradient)),
        "vignette": float(rng.uniform(0, c.vignette)),
        "shadow": bool(rng.random() < c.shadow_rate),
        "shadow_seed": _seed(rng),
        "wb": (1 + rng.uniform(-c.wb_shift, c.wb_shift, 3)).tolist(),
        "exposure": float(rng.uniform(*c.exposure)),
        "noise": float(rng.uniform(*c.noise_sigma)),
        "defocus": float(rng.uniform(*c.defocus_px) * scale) if rng.random() < c.defocus_rate else 0.0,
        "motion": float(rng.uniform(*c.motion_px) * scale) if rng.random() < c.motion_rate else 0.0,
        "motion_angle": float(rng.uniform(0, 180)),
        "jpeg": int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1)),
        "noise_seed": _seed(rng),
        "tint_seed": _seed(rng),
        "min_area": float(config.min_defect_area),
    }


class Scene:
    """Lays out one product (regions with materials) and the parts that carry defects, in canvas mm."""

    def __init__(self, rng, product: str, shot: str, wm: float, hm: float, families: list[str], style_rng):
        self.rng, self.product, self.shot, self.wm, self.hm = rng, product, shot, wm, hm
        # The style's choices (material, colourway, thread, logo artwork) are drawn from ``style_rng``:
        # the PO's when it has one (SynthConfig.style_seed), else the photo's own ``rng``.
        self.style_rng = srng = style_rng
        self.focus = families[0] if families else None
        self.extras = list(families[1:])
        self.regions: list[dict] = []
        self.parts: list[dict] = []
        self.material = str(srng.choice(FABRICS[product]))
        if product == "carton":
            self.colour = _colour(srng, ((0.72, 0.56, 0.38), (0.78, 0.64, 0.46)), 0.03)
        elif product == "retail_box":
            self.colour = _colour(srng, (*GARMENT_COLOURS, (0.95, 0.95, 0.93)))
        else:
            self.colour = _colour(srng, GARMENT_COLOURS)
        dark = float(np.mean(self.colour)) < 0.45
        tonal = srng.random() < 0.45  # tonal thread: low contrast, the hard case
        self.thread = (
            tuple(float(v) for v in np.clip(np.asarray(self.colour) * srng.uniform(0.75, 1.3), 0, 1))
            if tonal
            else _colour(srng, THREADS[:1] if dark else THREADS[1:], 0.03)
        )

    # -- parts -------------------------------------------------------------------------------------
    def seam(self, x, y, angle, length, rows=(0.0,), fold=None, stitch=None, thick=None, **extra) -> dict:
        rng = self.rng
        s = {
            "kind": "seam",
            "x": float(x),
            "y": float(y),
            "angle": float(angle),
            "length": float(length),
            "rows": [float(r) for r in rows],
            "fold": None if fold is None else float(fold),
            "stitch": float(stitch or rng.uniform(2.5, 4.0)),
            "thick": float(thick or rng.uniform(0.25, 0.5)),
            "colour": self.thread,
            "seed": _seed(rng),
            "curve": float(extra.pop("curve", 0.0)),
            "light": float(rng.uniform(0.3, 0.9)),
        }
        s.update(extra)
        self.parts.append(s)
        return s

    def logo(self, x, y, w, style=None, angle=0.0) -> dict:
        rng, srng = self.rng, self.style_rng
        brand = str(srng.choice(BRANDS))
        emblem = str(srng.choice(EMBLEMS))
        h = w * srng.uniform(0.28, 0.4) if emblem == "none" else w * srng.uniform(0.3, 0.45)
        style = style or ("embroidery" if srng.random() < 0.3 else "print")
        c1 = _colour(srng, INKS, 0.02)
        c2 = c1 if srng.random() < 0.5 else _colour(srng, INKS, 0.02)
        lg = {
            "kind": "logo",
            "x": float(x),
            "y": float(y),
            "w": float(w),
            "h": float(h),
            "angle": float(angle),
            "brand": brand,
            "emblem": emblem,
            "font": int(srng.integers(0, 4)),
            "style": style,
            "colours": [c1, c2],
            "seed": _seed(rng),
            "opacity": float(rng.uniform(0.8, 0.95)),
        }
        self.parts.append(lg)
        return lg

    def label(self, kind: str, x, y, angle=0.0, on_fabric=True) -> dict:
        rng = self.rng
        ean = None
        lines: list[str] = []
        symbols: list[int] = []
        overprint = None
        if kind == "care":
            w, h = rng.uniform(28, 36), rng.uniform(45, 60)
            lines = [
                str(rng.choice(["100% COTTON", "95% COTTON 5% ELASTANE", "60% COTTON 40% POLYESTER"])),
                "MADE IN " + str(rng.choice(["VIETNAM", "BANGLADESH", "INDIA", "CHINA", "TURKEY"])),
                "RN " + str(rng.integers(10000, 99999)),
                "SIZE " + str(rng.choice(["S", "M", "L", "XL"])),
            ]
            symbols = [int(v) for v in rng.permutation(5)[: int(rng.integers(3, 6))]]
            material, bg, ink, cap = (
                "satin",
                _colour(rng, ((0.95, 0.95, 0.93), (0.9, 0.88, 0.82)), 0.01),
                (0.1, 0.1, 0.12),
                rng.uniform(1.5, 2.0),
            )
        elif kind == "brand":
            w, h = rng.uniform(40, 55), rng.uniform(14, 20)
            lines = [str(rng.choice(BRANDS)), "SIZE " + str(rng.choice(["S", "M", "L", "XL"]))]
            material, bg, ink, cap = (
                "woven",
                _colour(rng, ((0.08, 0.08, 0.1), (0.9, 0.88, 0.8), (0.5, 0.1, 0.1))),
                None,
                rng.uniform(2.5, 3.5),
            )
            ink = (0.92, 0.88, 0.7) if np.mean(bg) < 0.5 else (0.1, 0.1, 0.12)
        else:  # price sticker or carton label: paper with a barcode and a lot/date overprint
            big = kind == "carton"
            w, h = (
                (rng.uniform(90, 110), rng.uniform(65, 80))
                if big
                else (rng.uniform(38, 50), rng.uniform(28, 36))
            )
            ean = make_ean13(rng)
            lines = (
                [
                    "PO " + str(rng.integers(4500000000, 4599999999)),
                    "STYLE " + str(rng.integers(10000, 99999)),
                    "QTY " + str(rng.integers(6, 48)) + " PCS",
                ]
                if big
                else [str(rng.choice(BRANDS)) + " " + str(rng.choice(["TEE", "BAG", "CAP", "SHOE", "BALL"]))]
            )
            overprint = (
                "LOT " + str(rng.integers(10000, 99999)) + " " + str(rng.integers(1, 13)).zfill(2) + "/27"
            )
            material, bg, ink, cap = (
                "paper",
                _colour(rng, ((0.97, 0.97, 0.95), (0.95, 0.93, 0.85)), 0.01),
                (0.05, 0.05, 0.06),
                (rng.uniform(3.5, 4.5) if big else rng.uniform(1.8, 2.4)),
            )
        module = 0.0
        bar_h = 0.0
        if ean:
            room_w = w * 0.86
            module = min(room_w / 95, (0.6 if kind == "carton" else 0.33) * rng.uniform(0.9, 1.25))
            bar_h = min(h * 0.42, module * 60)
        lb = {
            "kind": "label",
            "type": kind,
            "x": float(x),
            "y": float(y),
            "w": float(w),
            "h": float(h),
            "angle": float(angle),
            "material": material,
            "bg": bg,
            "ink": ink,
            "cap": float(cap),
            "lines": lines,
            "symbols": symbols,
            "ean": ean,
            "module": float(module),
            "bar_h": float(bar_h),
            "overprint": overprint,
            "over_x": float(rng.uniform(0.1, 0.3)),
            "over_y": 0.95,
            "over_ink": _colour(rng, ((0.1, 0.1, 0.4), (0.1, 0.1, 0.1))),
            "sewn": on_fabric and kind in ("care", "brand"),
            "thread": bg,
            "seed": _seed(rng),
            "font": int(rng.integers(0, 2)),
        }
        self.parts.append(lb)
        return lb

    def region(
        self, poly, material=None, colour=None, shade=1.0, round_mm=15.0, kind="product", smooth=0
    ) -> dict:
        pts = np.asarray(poly, float)
        for _ in range(smooth):  # Chaikin corner cutting: sewn and moulded goods have no sharp corners
            nxt = np.roll(pts, -1, axis=0)
            pts = np.stack([0.75 * pts + 0.25 * nxt, 0.25 * pts + 0.75 * nxt], axis=1).reshape(-1, 2)
        r = {
            "poly": pts.round(3).tolist(),
            "material": material or self.material,
            "colour": colour or self.colour,
            "seed": _seed(self.rng),
            "shade": float(shade),
            "round": float(round_mm),
            "kind": kind,
        }
        self.regions.append(r)
        return r

    # -- layouts -----------------------------------------------------------------------------------
    def build(self) -> tuple[list[dict], list[dict]]:
        if self.shot == "closeup":
            self._closeup()
        else:
            getattr(self, "_" + self.product)()
        return self.regions, self.parts

    def _centre(self, w, h):
        rng = self.rng
        return self.wm / 2 + rng.uniform(-0.05, 0.05) * self.wm, self.hm / 2 + rng.uniform(
            -0.05, 0.05
        ) * self.hm

    def _closeup(self):
        rng, wm, hm = self.rng, self.wm, self.hm
        big = max(wm, hm) * 1.5
        focus = self.focus or str(rng.choice(PRODUCT_FAMILIES[self.product]))
        self.region([(-big, -big), (wm + big, -big), (wm + big, hm + big), (-big, hm + big)], round_mm=0.0)
        if focus == "stitching":
            ang = rng.uniform(-0.5, 0.5) + (np.pi / 2 if rng.random() < 0.3 else 0.0)
            cx, cy = wm / 2 + rng.uniform(-0.15, 0.15) * wm, hm / 2 + rng.uniform(-0.15, 0.15) * hm
            length = math.hypot(wm, hm) * 1.3
            x0, y0 = cx - math.cos(ang) * length / 2, cy - math.sin(ang) * length / 2
            double = rng.random() < 0.6
            side = 1 if rng.random() < 0.5 else -1
            rows = (0.0, side * rng.uniform(5.5, 7.0)) if double else (0.0,)
            fold = -side * rng.uniform(2.5, 5.0)
            # The panel beyond the join is a shade apart (cut on another grain, or a second ply).
            nx, ny = -math.sin(ang), math.cos(ang)
            far = [
                (x0 + nx * fold, y0 + ny * fold),
                (x0 + math.cos(ang) * length + nx * fold, y0 + math.sin(ang) * length + ny * fold),
            ]
            far += [
                (far[1][0] - nx * side * big, far[1][1] - ny * side * big),
                (far[0][0] - nx * side * big, far[0][1] - ny * side * big),
            ]
            self.region(far, shade=rng.uniform(0.85, 1.1), round_mm=0.0, kind="shade")
            self.seam(
                x0,
                y0,
                ang,
                length,
                rows,
                fold=fold,
                stitch=rng.uniform(2.5, 4.0),
                thick=rng.uniform(0.25, 0.5),
            )
        elif focus == "logo":
            w = min(wm, hm) * rng.uniform(0.45, 0.75) * (max(wm, hm) / min(wm, hm)) ** 0.5
            w = min(w, wm * 0.7) * (0.7 if self.extras else 1.0)
            cx, cy = self._centre(w, w)
            self.logo(cx, cy, w, style="print" if self.product == "retail_box" else None)
        else:
            kind = (
                "carton"
                if self.product == "carton"
                else (
                    "price" if self.product == "retail_box" else str(rng.choice(["care", "brand", "price"]))
                )
            )
            cx, cy = self._centre(0, 0)
            lb = self.label(
                kind, cx, cy, rng.normal(0, 0.02), on_fabric=self.product not in ("carton", "retail_box")
            )
            room = 0.42 if self.extras else 0.7
            self._fit_label(lb, min(wm * room / lb["w"], hm * room / lb["h"], 1.0))
        self._closeup_extras(focus)

    @staticmethod
    def _fit_label(lb: dict, scale: float):
        """Shrink a label to fit the frame (a carton label in a tight close-up is shot from further away)."""
        if scale < 1:
            for key in ("w", "h", "cap", "module", "bar_h"):
                lb[key] *= scale

    def _closeup_extras(self, focus: str):
        """Carriers for a close-up's further defects: a second seam, or a small logo or label in the corner
        farthest from the main part (so that several defects can share one close-up)."""
        rng, wm, hm = self.rng, self.wm, self.hm
        main = self.parts[-1] if self.parts else None
        mx, my = (main["x"], main["y"]) if main is not None else (wm / 2, hm / 2)
        if main is not None and main["kind"] == "seam":  # the middle of the seam, not its start
            mx = main["x"] + math.cos(main["angle"]) * main["length"] / 2
            my = main["y"] + math.sin(main["angle"]) * main["length"] / 2
        for family in self.extras:
            if family == "stitching":
                if main is not None and main["kind"] == "seam":
                    side = 1 if rng.random() < 0.5 else -1
                    off = side * min(wm, hm) * rng.uniform(0.25, 0.32)
                    ang = main["angle"] + rng.normal(0, 0.03)
                    x0 = main["x"] - math.sin(main["angle"]) * off
                    y0 = main["y"] + math.cos(main["angle"]) * off
                    self.seam(x0, y0, ang, main["length"], (0.0,), fold=side * rng.uniform(3, 5))
                else:
                    y = hm * (0.85 if my < hm / 2 else 0.15)
                    self.seam(-0.2 * wm, y, rng.normal(0, 0.05), wm * 1.4, (0.0,), fold=rng.uniform(3, 5))
                continue
            # Far enough in that the camera's zoom and roll do not crop it.
            corners = [
                (0.27 * wm, 0.27 * hm),
                (0.73 * wm, 0.27 * hm),
                (0.27 * wm, 0.73 * hm),
                (0.73 * wm, 0.73 * hm),
            ]
            cx, cy = max(corners, key=lambda c: math.hypot(c[0] - mx, c[1] - my))
            size = min(wm, hm) * 0.22
            if family == "logo":
                self.logo(cx, cy, size, style="print" if self.product == "retail_box" else None)
            else:
                kind = (
                    "carton"
                    if self.product == "carton"
                    else ("price" if self.product == "retail_box" else "care")
                )
                lb = self.label(
                    kind, cx, cy, rng.normal(0, 0.02), on_fabric=self.product not in ("carton", "retail_box")
                )
                self._fit_label(lb, min(size * 1.2 / lb["w"], size * 1.2 / lb["h"], 1.0))

    def _garment_panel(self):
        rng, wm, hm = self.rng, self.wm, self.hm
        pw, ph = wm * rng.uniform(0.55, 0.75), hm * rng.uniform(0.6, 0.8)
        cx, cy = self._centre(pw, ph)
        x0, y0, x1, y1 = cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2
        taper = pw * rng.uniform(0.05, 0.15)
        self.region([(x0 + taper, y0), (x1 - taper, y0), (x1, y1), (x0, y1)])
        join = y0 + ph * rng.uniform(0.35, 0.6)
        self.region(
            [(x0 + taper * 0.5, join), (x1 - taper * 0.5, join), (x1, y1), (x0, y1)],
            shade=rng.uniform(0.85, 1.05),
            round_mm=0.0,
        )
        self.seam(x0 + taper * 0.5 + 5, join + 5, 0.0, pw - taper - 10, (0.0, 6.4), fold=-5.0)
        self.seam(x0 + 8, y1 - 12, 0.0, pw - 16, (0.0,), fold=9.0)
        if rng.random() < 0.5:
            self.logo(cx, y0 + (join - y0) * 0.5, pw * rng.uniform(0.3, 0.5), style="print")

    def _tshirt(self):
        rng, wm, hm = self.rng, self.wm, self.hm
        th = min(hm * rng.uniform(0.8, 0.95), wm * 0.95)
        bw = th * rng.uniform(0.68, 0.78)
        cx, cy = self._centre(bw, th)
        top, bot = cy - th / 2, cy + th / 2
        sl = bw * 0.38  # sleeve reach
        neck = bw * 0.2
        arm = top + th * 0.32
        poly = [
            (cx - neck, top),
            (cx - bw / 2 - 10, top + th * 0.06),
            (cx - bw / 2 - sl * 0.7, top + th * 0.3),
            (cx - bw / 2 - sl * 0.45, top + th * 0.42),
            (cx - bw / 2, arm),
            (cx - bw / 2, bot),
            (cx + bw / 2, bot),
            (cx + bw / 2, arm),
            (cx + bw / 2 + sl * 0.45, top + th * 0.42),
            (cx + bw / 2 + sl * 0.7, top + th * 0.3),
            (cx + bw / 2 + 10, top + th * 0.06),
            (cx + neck, top),
        ]
        depth = th * 0.12
        xs = np.linspace(-neck, neck, 17)
        neckline = [(cx + x, top + depth * (1 - (x / neck) ** 2)) for x in xs[::-1]]
        self.region(poly + neckline[1:-1], round_mm=25.0, smooth=1)
        rib = [(cx + x * 1.0, top + depth * (1 - (x / neck) ** 2)) for x in xs]
        rib_in = [(cx + x * 0.9, top + (depth - 14) * (1 - (x / (neck * 0.9)) ** 2) + 0.0) for x in xs[::-1]]
        self.region(rib + rib_in, shade=0.9, round_mm=4.0)
        self.seam(cx - neck, top + 2, 0.0, 2 * neck, (0.0,), fold=None, curve=depth - 2, stitch=3.0)
        self.seam(cx - bw / 2 + 8, bot - 14, 0.0, bw - 16, (0.0, 6.4), fold=10.0)
        # Side seams sit just inside the flat-lying edges; the join is the edge itself.
        self.seam(cx - bw / 2 + 5, arm + 8, np.pi / 2, bot - arm - 30, (0.0,), fold=3.5)
        self.seam(cx + bw / 2 - 5, arm + 8, np.pi / 2, bot - arm - 30, (0.0,), fold=-3.5)
        neck_pt = np.array([cx, top])
        for sgn in (-1, 1):  # sleeve hems: parallel to the sleeve opening, 15 mm in from it
            p = np.array([cx + sgn * (bw / 2 + sl * 0.7), top + th * 0.3])
            q = np.array([cx + sgn * (bw / 2 + sl * 0.45), top + th * 0.42])
            d = q - p
            length = float(np.linalg.norm(d))
            n = np.array([-d[1], d[0]]) / length  # the seam frame's +v
            inward = 1.0 if np.dot(n, neck_pt - p) > 0 else -1.0
            a0 = p + n * inward * 15 + d * 0.08
            self.seam(a0[0], a0[1], math.atan2(d[1], d[0]), length * 0.84, (0.0,), fold=-inward * 12.0)
        self.logo(
            cx + rng.uniform(-0.02, 0.02) * bw, top + th * rng.uniform(0.3, 0.38), bw * rng.uniform(0.3, 0.5)
        )
        if rng.random() < 0.8:
            self.label("brand", cx - bw / 2 + 40 + rng.uniform(0, 40), bot - 32, 0.0)

    _jersey = _tshirt  # a T-shirt's cut and seams, on mesh

    def _bag(self):
        rng, wm, hm = self.rng, self.wm, self.hm
        bw, bh = wm * rng.uniform(0.55, 0.7), hm * rng.uniform(0.5, 0.62)
        cx, cy = self._centre(bw, bh)
        cy += bh * 0.12
        x0, y0, x1, y1 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
        for sgn in (-1, 1):  # handles: two straps arcing above the body
            t = np.linspace(0, np.pi, 20)
            hx = cx + sgn * bw * 0.22
            outer = [(hx + math.cos(a) * bw * 0.12, y0 + 5 - math.sin(a) * bh * 0.45) for a in t]
            inner = [
                (hx + math.cos(a) * (bw * 0.12 - 22), y0 + 5 - math.sin(a) * (bh * 0.45 - 22))
                for a in t[::-1]
            ]
            self.region(outer + inner, shade=0.9, round_mm=6.0)
        self.region([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], round_mm=20.0)
        self.seam(x0 + 10, y0 + 14, 0.0, bw - 20, (0.0,), fold=-9.0)
        self.seam(x0 + 12, y0 + 20, np.pi / 2, bh - 30, (0.0,), fold=-8.0)
        self.seam(x1 - 12, y0 + 20, np.pi / 2, bh - 30, (0.0,), fold=8.0)
        self.logo(cx, cy - bh * 0.05, bw * rng.uniform(0.35, 0.55))
        if rng.random() < 0.6:
            self.label("brand", cx, y1 - 30, 0.0)

    def _shoe(self):
        rng, wm, hm = self.rng, self.wm, self.hm
        sw, sh = wm * rng.uniform(0.65, 0.8), hm * rng.uniform(0.35, 0.45)
        cx, cy = self._centre(sw, sh)
        x0, y0, x1, y1 = cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2
        sole_h = sh * 0.22
        upper = [
            (x0 + sw * 0.02, y1 - sole_h),
            (x0, y0 + sh * 0.25),
            (x0 + sw * 0.12, y0),
            (x0 + sw * 0.38, y0 + sh * 0.05),
            (x0 + sw * 0.55, y0 + sh * 0.35),
            (x1 - sw * 0.12, y0 + sh * 0.5),
            (x1, y1 - sole_h * 1.2),
            (x1 - 5, y1 - sole_h * 0.5),
            (x0 + sw * 0.02, y1 - sole_h * 0.5),
        ]
        self.region(upper, round_mm=20.0, smooth=2)
        # The collar opening shows the darker lining inside the shoe.
        collar = [
            (x0 + sw * 0.04, y0 + sh * 0.2),
            (x0 + sw * 0.12, y0 + sh * 0.06),
            (x0 + sw * 0.36, y0 + sh * 0.1),
            (x0 + sw * 0.3, y0 + sh * 0.2),
            (x0 + sw * 0.12, y0 + sh * 0.26),
        ]
        self.region(
            collar, colour=tuple(float(v) * 0.35 for v in self.colour), shade=0.8, round_mm=6.0, smooth=3
        )
        toe = [
            (x1 - sw * 0.3, y0 + sh * 0.42),
            (x1 - sw * 0.12, y0 + sh * 0.5),
            (x1, y1 - sole_h * 1.2),
            (x1 - 5, y1 - sole_h),
            (x1 - sw * 0.32, y1 - sole_h),
        ]
        self.region(toe, shade=0.93, round_mm=10.0, smooth=3)
        sole = [(x0 - 4, y1 - sole_h), (x1 + 2, y1 - sole_h), (x1 - 8, y1), (x0 + 8, y1)]
        self.region(
            sole,
            material="rubber",
            colour=_colour(self.rng, ((0.92, 0.92, 0.9), (0.15, 0.15, 0.15))),
            shade=1.0,
            round_mm=5.0,
        )
        self.seam(x0 + 10, y1 - sole_h - 6, 0.0, sw - 25, (0.0,), fold=6.0, stitch=3.5, thick=0.5)
        ang = math.atan2(sh * 0.15, sw * 0.33)  # along the top line of the vamp, inside it
        self.seam(x0 + sw * 0.45, y0 + sh * 0.33, ang, sw * 0.33, (0.0, 4.0), fold=None)
        self.logo(x0 + sw * 0.3, y0 + sh * 0.5, sw * rng.uniform(0.18, 0.26), angle=-0.1)

    def _ball(self):
        rng, wm, hm = self.rng, self.wm, self.hm
        r = min(wm, hm) * rng.uniform(0.35, 0.42)
        cx, cy = self._centre(r, r)
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        self.region(
            [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in t], round_mm=r * 0.9, kind="sphere"
        )
        # Panel seams: a pentagon at the centre with spokes out to the rim.
        pr = r * 0.32
        corners = [
            (cx + pr * math.cos(a), cy + pr * math.sin(a)) for a in np.arange(5) * 2 * np.pi / 5 - np.pi / 2
        ]
        for i in range(5):
            (ax, ay), (bx, by) = corners[i], corners[(i + 1) % 5]
            self.seam(
                ax,
                ay,
                math.atan2(by - ay, bx - ax),
                math.hypot(bx - ax, by - ay),
                (0.0,),
                fold=0.0,
                stitch=4.0,
                thick=0.45,
            )
            spoke = math.atan2(ay - cy, ax - cx)
            self.seam(ax, ay, spoke, r * 0.55, (0.0,), fold=0.0, stitch=4.0, thick=0.45)
        self.logo(cx + rng.uniform(-0.1, 0.1) * r, cy + r * 0.55, r * 0.6, style="print")

    def _carton(self):
        rng, wm, hm = self.rng, self.wm, self.hm
        fw, fh = wm * rng.uniform(0.5, 0.65), hm * rng.uniform(0.45, 0.6)
        cx, cy = self._centre(fw, fh)
        cy += fh * 0.12
        x0, y0, x1, y1 = cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2
        depth, skew = fh * rng.uniform(0.25, 0.4), fw * rng.uniform(0.1, 0.2)
        self.region(
            [(x0, y0), (x0 + skew, y0 - depth), (x1 + skew, y0 - depth), (x1, y0)], shade=1.12, round_mm=2.0
        )
        self.region(
            [(x1, y0), (x1 + skew, y0 - depth), (x1 + skew, y1 - depth), (x1, y1)], shade=0.75, round_mm=2.0
        )
        self.region([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], round_mm=2.0)
        tape = 48
        mid = (x0 + x1) / 2
        self.region(
            [
                (mid - tape / 2, y0),
                (mid - tape / 2 + skew, y0 - depth),
                (mid + tape / 2 + skew, y0 - depth),
                (mid + tape / 2, y0),
            ],
            material="paper",
            colour=(0.62, 0.45, 0.28),
            shade=1.1,
            round_mm=0.5,
            kind="tape",
        )
        marks = self.label("carton", x0 + fw * 0.33, cy, 0.0, on_fabric=False)
        marks.update(
            {
                "type": "marks",
                "material": "print",
                "w": fw * 0.55,
                "h": fh * 0.62,
                "ean": None,
                "cap": min(fh * 0.05, 14.0),
                "overprint": "CTN " + str(rng.integers(1, 60)) + " OF 240",
                "over_y": 0.93,
                "over_x": 0.08,
                "ink": (0.08, 0.08, 0.1),
                "lines": [
                    "PO " + str(rng.integers(4500000000, 4599999999)),
                    "STYLE " + str(rng.integers(10000, 99999)),
                    "MADE IN VIETNAM",
                    "N.W. " + str(rng.integers(8, 16)) + " KG",
                    "MEAS 60X40X35 CM",
                ],
            }
        )
        self.label("carton", x0 + fw * 0.75, cy + fh * 0.05, rng.normal(0, 0.01), on_fabric=False)

    def _retail_box(self):
        rng, wm, hm = self.rng, self.wm, self.hm
        bw, bh = wm * rng.uniform(0.45, 0.6), hm * rng.uniform(0.55, 0.7)
        cx, cy = self._centre(bw, bh)
        x0, y0, x1, y1 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
        side = bw * rng.uniform(0.15, 0.25)
        self.region(
            [(x1, y0), (x1 + side, y0 - side * 0.4), (x1 + side, y1 - side * 0.4), (x1, y1)],
            shade=0.72,
            round_mm=2.0,
        )
        self.region([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], round_mm=2.0)
        self.logo(cx, y0 + bh * 0.28, bw * rng.uniform(0.5, 0.7), style="print")
        self.label("price", x0 + bw * 0.7, y1 - bh * 0.2, 0.0, on_fabric=False)


def _visible_span(part: dict, wm: float, hm: float, margin: float) -> tuple[float, float] | None:
    """The stretch of a seam (u, mm) that lies inside the photo with ``margin`` (mm) to spare."""
    us = np.linspace(0, part["length"], 200)
    xs = part["x"] + us * math.cos(part["angle"])
    ys = part["y"] + us * math.sin(part["angle"])
    ok = (xs > margin) & (xs < wm - margin) & (ys > margin) & (ys < hm - margin)
    if not ok.any():
        return None
    return float(us[ok].min()), float(us[ok].max())


def _plan_defects(rng, config, families, parts, shot, wm, hm) -> list[dict]:
    defects: list[dict] = []
    used: set[int] = set()
    carriers = {"stitching": "seam", "logo": "logo", "label": "label"}
    margin = max(wm, hm) * 0.1
    for family in families:
        cands = [i for i, p in enumerate(parts) if p["kind"] == carriers[family] and i not in used]
        weights = config.subtype_weights(family)
        for _ in range(6):
            if not cands:
                break
            i = cands[int(rng.integers(len(cands)))]
            part = parts[i]
            allowed = {s: w for s, w in weights.items() if _fits(s, part)}
            if not allowed or sum(allowed.values()) <= 0:
                cands.remove(i)
                continue
            subtype = _pick(rng, allowed)
            d = _defect_params(rng, subtype, part, shot, wm, hm, margin)
            if d is None:
                cands.remove(i)
                continue
            d.update({"part": i, "subtype": subtype, "family": SUBTYPE_FAMILY[subtype]})
            defects.append(d)
            used.add(i)
            break
    return defects


def _fits(subtype: str, part: dict) -> bool:
    if part["kind"] == "seam":
        return subtype != "open_seam" or part.get("fold") is not None
    if part["kind"] == "label":
        if part["material"] == "print":
            return subtype in ("misplaced_overprint", "unreadable_label")
        if subtype == "misplaced_overprint":
            return bool(part.get("overprint"))
        return True
    return True


def _defect_params(rng, subtype, part, shot, wm, hm, margin) -> dict | None:
    whole = shot == "whole"
    if part["kind"] == "seam":
        span = _visible_span(part, wm, hm, margin)
        if span is None:
            return None
        lo, hi = span
        s = part["stitch"]
        want = {
            "skipped_stitch": s * 3,
            "broken_thread": rng.uniform(25, 50) if whole else s * rng.uniform(3, 7),
            "uneven_stitch_length": s * rng.uniform(7, 12),
            "wavy_seam": rng.uniform(80, 160) if whole else rng.uniform(35, 70),
            "open_seam": rng.uniform(30, 70) if whole else rng.uniform(10, 30),
            "puckering": rng.uniform(70, 150) if whole else rng.uniform(25, 60),
        }[subtype]
        want = min(want, (hi - lo) * 0.8)
        if want < s * 2.5:
            return None
        u0 = float(rng.uniform(lo, hi - want))
        d = {"u0": u0, "u1": u0 + want, "row": int(rng.integers(len(part["rows"])))}
        if subtype == "skipped_stitch":
            d.update(
                skips=int(rng.integers(1, 3)) + (1 if whole else 0),
                sag=float(rng.uniform(0.3, 0.7)) * (2 if whole else 1),
            )
        elif subtype in ("broken_thread", "open_seam"):
            d.update(
                tails=(float(rng.uniform(2, 5)), float(rng.uniform(2, 5))),
                tail_slope=float(rng.uniform(0.3, 0.8) * rng.choice([-1, 1])),
            )
            if subtype == "open_seam":
                d.update(row=-1, gap=float(rng.uniform(4, 8) if whole else rng.uniform(1.5, 4)))
        elif subtype == "uneven_stitch_length":
            d["jitter"] = (rng.uniform(0.25, 0.45, 8) * np.tile([1, -1], 4) * rng.choice([-1, 1])).tolist()
        elif subtype == "wavy_seam":
            d.update(
                amp=float(rng.uniform(3, 6) if whole else rng.uniform(1.0, 2.5)),
                wave=float(want / rng.uniform(1.0, 2.0)),
            )
        elif subtype == "puckering":
            d.update(
                amp=float(rng.uniform(0.5, 1.0) * (1.6 if whole else 1)),
                wave=float(rng.uniform(8, 14) if whole else rng.uniform(4, 8)),
                spread=float(rng.uniform(8, 14) if whole else rng.uniform(4, 8)),
                phase=float(rng.uniform(0, 6.28)),
            )
        return d
    if part["kind"] == "logo":
        if subtype == "offset_logo":
            mag = rng.uniform(0.08, 0.2) * part["w"]
            a = rng.uniform(0, 2 * np.pi)
            rot = float(np.radians(rng.uniform(6, 15)) * rng.choice([-1, 1])) if rng.random() < 0.6 else 0.0
            k = 0.4 if rot else 1.0
            return {"dx": float(mag * math.cos(a) * k), "dy": float(mag * math.sin(a) * k), "dangle": rot}
        if subtype in ("smudged_print", "partly_missing_print"):
            return {
                "fx": float(rng.uniform(0.25, 0.75)),
                "fy": float(rng.uniform(0.3, 0.7)),
                "radius": float(rng.uniform(0.35, 0.6)),
                "seed": _seed(rng),
                "direction": float(rng.uniform(0, 2 * np.pi)),
                "length": float(part["w"] * rng.uniform(0.03, 0.07)),
            }
        if subtype == "wrong_colour":
            cols = []
            for c in part["colours"]:
                far = [ink for ink in INKS if np.abs(np.asarray(ink) - np.asarray(c)).sum() > 0.6]
                cols.append(_colour(rng, far, 0.02))
            return {"colours": cols}
        return {}
    # labels
    if subtype == "crooked_label":
        rot = float(np.radians(rng.uniform(7, 18)) * rng.choice([-1, 1]))
        return {
            "dangle": rot,
            "dx": float(rng.uniform(-0.15, 0.15) * part["w"]),
            "dy": float(rng.uniform(-0.1, 0.1) * part["h"]),
        }
    if subtype == "torn_label":
        return {
            "corner": int(rng.integers(4)),
            "fa": float(rng.uniform(0.3, 0.55)),
            "fb": float(rng.uniform(0.35, 0.6)),
            "mode": str(rng.choice(["fold", "tear"])),
            "seed": _seed(rng),
            "back": tuple(float(v) for v in np.asarray(part["bg"]) * 0.82),
        }
    if subtype == "unreadable_label":
        return {
            "f0": float(rng.uniform(0.15, 0.45)),
            "width": float(rng.uniform(0.3, 0.45)),
            "spread": float(rng.uniform(0.6, 1.4) * max(part.get("module", 0.33) / 0.33, 1.0)),
            "scuff": float(rng.uniform(0.8, 1.8)),
        }
    if subtype == "misplaced_overprint":
        return {
            # Shifted into the text or barcode, never off the label (where it would not print at all).
            "dx": float(rng.uniform(0.2, 0.4) * part["w"] * (1 if part["over_x"] < 0.35 else -1)),
            "dy": float(-rng.uniform(0.12, 0.3) * part["h"]),
            "dangle": float(rng.uniform(-0.25, 0.25)),
        }
    return {}


def _plan_lookalikes(rng, config, parts, regions, shot, wm, hm, product) -> list[str]:
    """Things that are not defects but look like one: decorative stitches, wrinkles, reflections."""
    out = []
    if rng.random() >= config.lookalike_rate:
        return out
    kind = str(rng.choice(["decorative", "wrinkle", "reflection"]))
    seams = [p for p in parts if p["kind"] == "seam" and len(p["rows"]) == 1]
    if kind == "decorative" and seams:
        p = seams[int(rng.integers(len(seams)))]
        side = 1 if (p.get("fold") or 0) <= 0 else -1
        p["rows"].append(float(side * rng.uniform(4, 8)))
        p["patterns"] = ["lock", str(rng.choice(["saddle", "pick"]))]
        p["colours"] = [p["colour"], _colour(rng, THREADS, 0.02)]
        out.append("decorative_stitch")
    elif kind in ("wrinkle", "decorative") and product not in ("carton", "retail_box", "ball"):
        x, y = rng.uniform(0.2, 0.8) * wm, rng.uniform(0.2, 0.8) * hm
        parts.append(
            {
                "kind": "wrinkle",
                "x": float(x),
                "y": float(y),
                "angle": float(rng.uniform(0, np.pi)),
                "length": float(max(wm, hm) * rng.uniform(0.3, 0.6)),
                "width": float(max(wm, hm) * rng.uniform(0.01, 0.03)),
                "amp": float(rng.uniform(0.5, 1.0)),
                "seed": _seed(rng),
            }
        )
        out.append("wrinkle")
    else:
        x, y = rng.uniform(0.2, 0.8) * wm, rng.uniform(0.2, 0.8) * hm
        parts.append(
            {
                "kind": "glare",
                "x": float(x),
                "y": float(y),
                "angle": float(rng.uniform(0, np.pi)),
                "rx": float(max(wm, hm) * rng.uniform(0.03, 0.1)),
                "ry": float(max(wm, hm) * rng.uniform(0.01, 0.03)),
                "strength": float(rng.uniform(0.25, 0.6)),
                "seed": _seed(rng),
            }
        )
        out.append("reflection")
    return out


def _plan_hand(rng, wm, hm, parts, defects) -> dict:
    """A hand holding the product at the photo edge farthest from any defect."""
    pts = []
    for d in defects:
        p = parts[d["part"]]
        if p["kind"] == "seam":  # where along the seam the defect is
            um = (d["u0"] + d["u1"]) / 2
            pts.append((p["x"] + math.cos(p["angle"]) * um, p["y"] + math.sin(p["angle"]) * um))
        else:
            pts.append((p["x"], p["y"]))
    sides = ["bottom", "left", "right", "top"]
    if pts:
        dist = {
            "bottom": min(hm - y for _, y in pts),
            "left": min(x for x, _ in pts),
            "right": min(wm - x for x, _ in pts),
            "top": min(y for _, y in pts),
        }
        side = max(sides, key=lambda s: dist[s])
    else:
        side = sides[int(rng.integers(3))]
    tone = _colour(rng, ((0.85, 0.66, 0.55), (0.62, 0.45, 0.33), (0.42, 0.29, 0.2), (0.9, 0.75, 0.62)), 0.03)
    return {
        "side": side,
        "pos": float(rng.uniform(0.25, 0.75)),
        "size": float(min(wm, hm) * rng.uniform(0.25, 0.4)),
        "tone": tone,
        "seed": _seed(rng),
        "angle": float(rng.uniform(-0.3, 0.3)),
    }
