"""Procedural surface textures in millimetres: fabric weave and knit, leather, rubber, cardboard, floors.

Every function returns a float32 luminance-times-colour image (h, w, 3) in 0..1-ish, drawn from its own
``numpy.random.Generator`` so that a texture depends only on its seed. Detail finer than a pixel is not
drawn (it would alias); a grain takes its place.
"""

from __future__ import annotations

import cv2
import numpy as np

F32 = np.float32

# Drawing millions of normals per texture dominates the cost of a photo, so white noise is read from a
# per-process bank (built once from a fixed seed) at an offset drawn from the caller's generator: still
# a pure function of the seed, and about 20x cheaper.
_BANK_SIZE = 1 << 24
_bank: np.ndarray | None = None


def white_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Standard-normal float32 noise of shape (h, w), deterministic in ``rng``."""
    global _bank
    if _bank is None:
        _bank = np.random.default_rng(20261122).standard_normal(_BANK_SIZE, dtype=F32)
    n = h * w
    if n > _BANK_SIZE:
        return rng.standard_normal((h, w), dtype=F32)
    off = int(rng.integers(0, _BANK_SIZE - n + 1))
    view = _bank[off : off + n].reshape(h, w)
    return -view if rng.random() < 0.5 else view


def smooth_noise(rng: np.random.Generator, h: int, w: int, cell_px: float) -> np.ndarray:
    """Band-limited noise (std ≈ 1) with features about ``cell_px`` pixels wide."""
    cell = max(float(cell_px), 1.0)
    if cell <= 1.0:
        return white_noise(rng, h, w)
    return _upscale(_grid_noise(rng, h, w, cell), h, w)


def _grid_noise(rng, h, w, cell):
    gh, gw = max(2, int(np.ceil(h / cell)) + 2), max(2, int(np.ceil(w / cell)) + 2)
    # A light blur on the coarse grid hides the diamond pattern of bilinear upscaling.
    return cv2.GaussianBlur(white_noise(rng, gh, gw), (0, 0), 0.6) * F32(1.9)


def _upscale(small: np.ndarray, h: int, w: int) -> np.ndarray:
    """Upscale a coarse field to cover (h, w) exactly (bilinear is 4x cheaper than bicubic here)."""
    gh, gw = small.shape[:2]
    cell_y, cell_x = h / max(gh - 2, 1), w / max(gw - 2, 1)
    big = cv2.resize(small, (int(gw * cell_x), int(gh * cell_y)), interpolation=cv2.INTER_LINEAR)
    return big[:h, :w]


def fbm(rng: np.random.Generator, h: int, w: int, cell_px: float, octaves: int = 3, gain: float = 0.5):
    """Sum of noise octaves, largest first (clouds, mottling, concrete), summed small and upscaled once."""
    cells = [max(cell_px / 2**k, 1.0) for k in range(octaves)]
    finest = cells[-1]
    if finest <= 1.0:
        finest = 1.0
    sh, sw = max(2, int(np.ceil(h / finest)) + 2), max(2, int(np.ceil(w / finest)) + 2)
    out = np.zeros((sh, sw), F32)
    amp, total = 1.0, 0.0
    for cell in cells:
        rel = cell / finest
        if rel <= 1.0:
            layer = (
                white_noise(rng, sh, sw)
                if finest <= 1.0
                else _grid_noise(rng, sh * finest, sw * finest, finest)[:sh, :sw]
            )
        else:
            layer = _upscale(_grid_noise(rng, sh, sw, rel), sh, sw)
        out += F32(amp) * layer[:sh, :sw]
        total += amp
        amp *= gain
    out /= F32(total)
    if finest <= 1.0:
        return out[:h, :w]
    return _upscale(out, h, w)


def _colourise(lum: np.ndarray, colour, rng: np.random.Generator, tint: float = 0.02) -> np.ndarray:
    """Multiply a luminance field by an RGB colour (colour drift is added once per photo, in lighting)."""
    out = rgb3(lum)
    out *= np.asarray(colour, F32)
    return out


def gray(img: np.ndarray) -> np.ndarray:
    """Mean of the three channels (numpy's reductions over a length-3 axis are ~20x slower)."""
    return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)


def rgb3(a: np.ndarray) -> np.ndarray:
    """A single-channel float32 field repeated on three channels (fast, for multiplying images)."""
    return cv2.cvtColor(np.ascontiguousarray(a, dtype=F32), cv2.COLOR_GRAY2RGB)


def channel_max(img: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(img[..., 0], img[..., 1]), img[..., 2])


def _grid(h: int, w: int):
    return np.arange(w, dtype=F32)[None, :], np.arange(h, dtype=F32)[:, None]


def _tile_grid(ppx_x: float, ppx_y: float, mult: int = 1, target: int = 640):
    """Pixel grid of a tile holding a whole number of thread periods (so tiling shows no seam)."""
    nx = max(mult, round(target / ppx_x / mult) * mult)
    ny = max(mult, round(target / ppx_y / mult) * mult)
    tw, th = max(round(nx * ppx_x), 4), max(round(ny * ppx_y), 4)
    x = (np.arange(tw, dtype=F32)[None, :] + F32(0.5)) * F32(nx / tw)
    y = (np.arange(th, dtype=F32)[:, None] + F32(0.5)) * F32(ny / th)
    return x, y, nx, ny


def _lay_tile(rng, tile: np.ndarray, h: int, w: int, wobble_px: float, cell_px: float) -> np.ndarray:
    """Repeat a tile over (h, w) from a random offset, then bend it gently (threads are never straight)."""
    th, tw = tile.shape
    reps = (h // th + 2, w // tw + 2)
    oy, ox = int(rng.integers(th)), int(rng.integers(tw))
    big = np.tile(tile, reps)[oy : oy + h, ox : ox + w]
    if wobble_px < 0.3:
        return np.ascontiguousarray(big)
    dx = smooth_noise(rng, h, w, cell_px) * F32(wobble_px)
    dy = smooth_noise(rng, h, w, cell_px) * F32(wobble_px)
    dx += np.arange(w, dtype=F32)[None, :]
    dy += np.arange(h, dtype=F32)[:, None]
    return cv2.remap(big, dx, dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def woven(rng, h, w, ppm, colour, pitch_mm=0.35, twill=False) -> np.ndarray:
    """Woven fabric: warp and weft threads interlacing (plain or 2/2 twill), slubs and mottling."""
    ppx = pitch_mm * ppm
    if ppx < 2.2:
        lum = 0.9 + 0.035 * white_noise(rng, h, w) + 0.03 * smooth_noise(rng, h, w, max(ppx * 3, 1.5))
    else:
        period = 4 if twill else 2
        fx, fy, nx, ny = _tile_grid(ppx, ppx * rng.uniform(0.9, 1.1), period)
        ix, iy = np.floor(fx), np.floor(fy)
        px = np.sqrt(np.sin(np.pi * (fx - ix)))
        py = np.sqrt(np.sin(np.pi * (fy - iy)))
        sx = (1 + 0.05 * rng.standard_normal(nx)).astype(F32)[ix.astype(np.int64) % nx]
        sy = (1 + 0.05 * rng.standard_normal(ny)).astype(F32)[iy.astype(np.int64) % ny]
        over = ((ix + iy) % period) < (period / 2)
        tile = np.where(over, px * (0.8 + 0.2 * py) * sx, py * (0.8 + 0.2 * px) * sy).astype(F32)
        tile = F32(0.6) + F32(0.4) * tile
        lum = _lay_tile(rng, tile, h, w, 0.35 * ppx, 25 * ppx)
        lum += F32(0.025) * white_noise(rng, h, w)
    lum *= F32(1.0) + F32(0.05) * fbm(rng, h, w, 30 * ppm, 2)
    return _colourise(lum.astype(F32), colour, rng)


def knit(rng, h, w, ppm, colour, wale_mm=0.9) -> np.ndarray:
    """Single jersey: columns of V-shaped loops (the face of most T-shirts)."""
    wpx, cpx = wale_mm * ppm, wale_mm * 0.75 * ppm
    if wpx < 3.0:
        lum = 0.9 + 0.03 * white_noise(rng, h, w) + 0.025 * smooth_noise(rng, h, w, max(wpx, 1.5))
    else:
        fx, fy, nx, _ = _tile_grid(wpx, cpx)
        rx, ry = fx - np.floor(fx), fy - np.floor(fy)
        v = np.abs(rx - 0.5) * 2
        leg = 0.5 + 0.3 * (ry - 0.5)
        loops = np.exp(-(((v - leg) / 0.3) ** 2))
        col = (1 + 0.08 * rng.standard_normal(nx)).astype(F32)[np.floor(fx).astype(np.int64) % nx]
        tile = (F32(0.62) + F32(0.38) * loops * col).astype(F32)
        lum = _lay_tile(rng, tile, h, w, 0.3 * wpx, 30 * wpx)
        lum += F32(0.02) * white_noise(rng, h, w)
    lum *= F32(1.0) + F32(0.05) * fbm(rng, h, w, 30 * ppm, 2)
    return _colourise(lum.astype(F32), colour, rng)


def mesh(rng, h, w, ppm, colour, pitch_mm=1.6) -> np.ndarray:
    """Sports mesh (jerseys, shoe uppers): a knit ground pierced by round holes in staggered rows; the
    holes show the darker lining. A product the default recipe never shoots (benchmarks/bench_finetune)."""
    ppx = pitch_mm * rng.uniform(0.85, 1.2) * ppm
    if ppx < 3.0:  # holes closer than 3 px: a darker, grainier knit
        lum = 0.8 + 0.06 * white_noise(rng, h, w) + 0.04 * smooth_noise(rng, h, w, max(ppx, 1.5))
    else:
        fx, fy, _, _ = _tile_grid(ppx, ppx * 0.866, 2)  # hexagonal packing: rows 0.866 of the pitch apart
        row = np.floor(fy)
        rx = fx + F32(0.5) * (row % 2) - np.floor(fx + F32(0.5) * (row % 2)) - F32(0.5)
        ry = (fy - row - F32(0.5)) * F32(0.866)
        r = np.sqrt(rx * rx + ry * ry)
        hole_r = F32(rng.uniform(0.22, 0.32))
        hole = np.clip((hole_r - r) / F32(0.06), 0, 1)
        rim = np.exp(-(((r - hole_r - F32(0.05)) / F32(0.05)) ** 2))
        ground = F32(0.9) + F32(0.05) * np.cos(F32(2 * np.pi * 3) * fx)  # fine knit ribs between holes
        tile = (ground + F32(0.06) * rim) * (F32(1.0) - F32(0.6) * hole)
        lum = _lay_tile(rng, tile.astype(F32), h, w, 0.15 * ppx, 20 * ppx)
        lum += F32(0.02) * white_noise(rng, h, w)
    lum *= F32(1.0) + F32(0.04) * fbm(rng, h, w, 30 * ppm, 2)
    return _colourise(lum.astype(F32), colour, rng)


def leather(rng, h, w, ppm, colour) -> np.ndarray:
    """Grain leather: a net of fine creases and pores over a mottled base."""
    crease_n = fbm(rng, h, w, 0.9 * ppm, 2)
    crease = np.exp(-((crease_n / 0.09) ** 2))
    pores = np.clip(smooth_noise(rng, h, w, max(0.25 * ppm, 1.0)) - 1.8, 0, 1)
    lum = 0.95 - 0.07 * crease - 0.2 * pores + 0.06 * fbm(rng, h, w, 25 * ppm, 3)
    lum += 0.015 * smooth_noise(rng, h, w, 1.0)
    return _colourise(lum.astype(F32), colour, rng, 0.03)


def rubber(rng, h, w, ppm, colour) -> np.ndarray:
    lum = 0.92 + 0.04 * fbm(rng, h, w, 10 * ppm, 2) + 0.03 * smooth_noise(rng, h, w, max(0.4 * ppm, 1.0))
    return _colourise(lum.astype(F32), colour, rng)


def cardboard(rng, h, w, ppm, colour) -> np.ndarray:
    """Kraft liner: fibres streaked along one direction, faint flute ridges, blotches."""
    gh, gw = max(2, int(h / max(0.35 * ppm, 1))), max(2, int(w / max(5 * ppm, 1)))
    streak = cv2.resize(white_noise(rng, gh, gw), (w, h), interpolation=cv2.INTER_LINEAR)
    x, _ = _grid(h, w)
    flute = np.sin(2 * np.pi * x / F32(4.0 * ppm))
    lum = 0.93 + 0.035 * streak + 0.015 * flute + 0.05 * fbm(rng, h, w, 40 * ppm, 3)
    lum += 0.02 * smooth_noise(rng, h, w, 1.0)
    return _colourise(lum.astype(F32), colour, rng, 0.03)


def paper(rng, h, w, ppm, colour) -> np.ndarray:
    lum = 0.97 + 0.012 * smooth_noise(rng, h, w, max(0.2 * ppm, 1.0)) + 0.01 * fbm(rng, h, w, 20 * ppm, 2)
    return _colourise(lum.astype(F32), colour, rng, 0.01)


def wood(rng, h, w, ppm, colour) -> np.ndarray:
    """A wooden table top: long grain streaks along x, a few soft growth bands, planks."""
    gh, gw = max(2, int(h / max(0.5 * ppm, 1))), max(2, int(w / max(40 * ppm, 1)))
    grain = cv2.resize(white_noise(rng, gh, gw), (w, h), interpolation=cv2.INTER_LINEAR)
    gh2, gw2 = max(2, int(h / max(6 * ppm, 1))), max(2, int(w / max(150 * ppm, 1)))
    bands = cv2.resize(white_noise(rng, gh2, gw2), (w, h), interpolation=cv2.INTER_CUBIC)
    lum = 0.82 + 0.035 * grain + 0.06 * bands + 0.04 * fbm(rng, h, w, 80 * ppm, 2)
    plank = 120 * ppm * rng.uniform(0.8, 1.3)
    y = np.arange(h, dtype=F32)[:, None]
    seam = np.exp(-((((y % F32(plank)) - F32(1.0)) / F32(max(0.4 * ppm, 1.0))) ** 2))
    lum = lum * (F32(1.0) - F32(0.25) * seam)
    return _colourise(lum.astype(F32), colour, rng, 0.04)


def laminate(rng, h, w, ppm, colour) -> np.ndarray:
    lum = 0.95 + 0.02 * fbm(rng, h, w, 50 * ppm, 3) + 0.012 * smooth_noise(rng, h, w, 1.0)
    return _colourise(lum.astype(F32), colour, rng, 0.01)


def concrete(rng, h, w, ppm, colour) -> np.ndarray:
    """A factory floor: multi-scale mottling, specks of aggregate and stains."""
    lum = 0.85 + 0.1 * fbm(rng, h, w, 80 * ppm, 4) + 0.04 * smooth_noise(rng, h, w, max(1.5 * ppm, 1.0))
    specks = np.clip(smooth_noise(rng, h, w, max(0.8 * ppm, 1.0)) - 1.8, 0, 1)
    lum = lum - 0.2 * specks + 0.02 * smooth_noise(rng, h, w, 1.0)
    return _colourise(lum.astype(F32), colour, rng, 0.02)


def skin(rng, h, w, ppm, colour) -> np.ndarray:
    lum = 0.95 + 0.04 * fbm(rng, h, w, 15 * ppm, 3) + 0.01 * smooth_noise(rng, h, w, max(0.3 * ppm, 1.0))
    return _colourise(lum.astype(F32), colour, rng, 0.05)


MATERIALS = {
    "woven": woven,
    "twill": lambda rng, h, w, ppm, colour: woven(rng, h, w, ppm, colour, 0.45, True),
    "canvas": lambda rng, h, w, ppm, colour: woven(rng, h, w, ppm, colour, 0.8, False),
    "knit": knit,
    "mesh": mesh,
    "leather": leather,
    "rubber": rubber,
    "cardboard": cardboard,
    "paper": paper,
    "wood": wood,
    "laminate": laminate,
    "concrete": concrete,
    "skin": skin,
}


def material(name: str, seed: int, h: int, w: int, ppm: float, colour) -> np.ndarray:
    """The texture ``name`` (a key of MATERIALS) drawn from ``seed``."""
    if name not in MATERIALS:
        raise ValueError(f"unknown material {name!r}; use one of {sorted(MATERIALS)}")
    return MATERIALS[name](np.random.default_rng(seed), h, w, ppm, colour)
