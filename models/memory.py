"""A memory of a buyer's good tiles: how unlike anything seen on the PO's good units a tile is.

A purchase order is one style: every unit carries the same artwork in the same inks. A model trained
on thousands of styles cannot know which crest is this PO's, so it flags the PO's own good crest as
often as a smudged one. A fine-tune (``memory`` in the recipe) keeps the classifier's mid-layer patch
features of the clean tiles of the buyer's photos, per pyramid level (PatchCore, Roth et al. 2022,
with random instead of coreset subsampling). At triage a tile's *surprise* is its patches' largest
distance to their nearest remembered patch, in robust standard units of what clean tiles of held-out
photos score; for the families given a weight it is added to the tile's logit before the max over
tiles. numpy only, so ONNX serving needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.errors import ModelFileError

MEMORY_FILE = "memory.npz"
# Queries per distance block: bounds the (block x memory) distance matrix to ~160 MB at 10k patches.
QUERY_BLOCK = 4096


@dataclass
class PatchMemory:
    """Remembered clean patch features per pyramid level, and how surprising a clean tile is there."""

    banks: dict[float, np.ndarray]  # level -> (M, C) float16 patch features
    centre: dict[float, float]  # level -> median surprise distance of held-out clean tiles
    spread: dict[float, float]  # level -> its robust standard deviation (1.4826 x MAD)
    weights: dict[str, float] = field(default_factory=dict)  # family -> logit added per unit of surprise

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """What ``memory.npz`` holds of it: the banks and each level's centre and spread."""
        stats = np.array([[lv, self.centre[lv], self.spread[lv]] for lv in self.banks], np.float64)
        banks = {f"{prefix}bank_{lv:g}": bank.astype(np.float16) for lv, bank in self.banks.items()}
        return {f"{prefix}stats": stats, **banks}

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / MEMORY_FILE
        np.savez(path, **self.arrays())
        return path

    def describe(self) -> dict:
        """What ``bundle.json`` records (the arrays live in ``memory.npz``)."""
        return {
            "file": MEMORY_FILE,
            "weights": dict(self.weights),
            "levels": {
                f"{lv:g}": {"patches": len(bank), "centre": self.centre[lv], "spread": self.spread[lv]}
                for lv, bank in sorted(self.banks.items())
            },
        }


@dataclass
class MemoryBag:
    """The memories of a bag of fine-tunes (:mod:`training.bag`), each of its own split's training
    photos and scaled on its validation photos: a tile's surprise is the mean of theirs, as the bag's
    logits are the mean of its networks'."""

    parts: list[PatchMemory]
    weights: dict[str, float] = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / MEMORY_FILE
        arrays = {k: v for i, part in enumerate(self.parts) for k, v in part.arrays(f"part{i}_").items()}
        np.savez(path, parts=np.array(len(self.parts)), **arrays)
        return path

    def describe(self) -> dict:
        return {
            "file": MEMORY_FILE,
            "weights": dict(self.weights),
            "parts": [part.describe()["levels"] for part in self.parts],
        }


def _read_part(data: np.lib.npyio.NpzFile, prefix: str, weights: dict[str, float]) -> PatchMemory:
    stats = data[f"{prefix}stats"]
    return PatchMemory(
        banks={float(lv): data[f"{prefix}bank_{lv:g}"].astype(np.float32) for lv, _, _ in stats},
        centre={float(lv): float(c) for lv, c, _ in stats},
        spread={float(lv): float(s) for lv, _, s in stats},
        weights=dict(weights),
    )


def load_memory(folder: str | Path, weights: dict[str, float]) -> PatchMemory | MemoryBag:
    """The memory saved beside a bundle (a bag's, when it has parts); raises :class:`ModelFileError`
    naming the file when unreadable."""
    path = Path(folder) / MEMORY_FILE
    try:
        with np.load(path) as data:
            if "parts" not in data:
                return _read_part(data, "", weights)
            parts = [_read_part(data, f"part{i}_", weights) for i in range(int(data["parts"]))]
    except (OSError, KeyError, ValueError) as exc:
        raise ModelFileError(
            f"{path}: the bundle's patch memory is missing or damaged ({exc}); copy the whole bundle folder "
            "again, or train the fine-tune again"
        ) from exc
    return MemoryBag(parts=parts, weights=dict(weights))


def nearest_distances(patches: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """(T, P, C) tile patches -> (T,) each tile's largest distance from a patch to its nearest in ``bank``."""
    t, p, c = patches.shape
    queries = patches.reshape(-1, c).astype(np.float32)
    bank = np.asarray(bank, np.float32)
    bank_sq = (bank * bank).sum(axis=1)
    best = np.empty(len(queries), np.float32)
    for i in range(0, len(queries), QUERY_BLOCK):
        q = queries[i : i + QUERY_BLOCK]
        d2 = (q * q).sum(axis=1, keepdims=True) + bank_sq[None, :] - 2.0 * (q @ bank.T)
        best[i : i + QUERY_BLOCK] = d2.min(axis=1)
    return np.sqrt(np.clip(best, 0, None)).reshape(t, p).max(axis=1)


def tile_surprise(patches: np.ndarray, scales: np.ndarray, memory: PatchMemory | MemoryBag) -> np.ndarray:
    """(T,) surprise of each tile in robust standard units at its level; 0 at a level not remembered
    (a bag's: the mean of its parts')."""
    if isinstance(memory, MemoryBag):
        return np.mean(
            [tile_surprise(patches, scales, part) for part in memory.parts], axis=0, dtype=np.float32
        )
    scales = np.asarray(scales, np.float64)
    out = np.zeros(len(scales), np.float32)
    for lv, bank in memory.banks.items():
        rows = np.isclose(scales, lv)
        if rows.any():
            dist = nearest_distances(patches[rows], bank)
            out[rows] = (dist - memory.centre[lv]) / memory.spread[lv]
    return out


def with_surprise(
    logits: np.ndarray, surprise: np.ndarray, families: list[str] | tuple[str, ...], weights: dict[str, float]
) -> np.ndarray:
    """(T, F) logits with each weighted family's ``weight x surprise`` added (others unchanged)."""
    out = np.array(logits, np.float32, copy=True)
    for k, family in enumerate(families):
        w = weights.get(family, 0.0)
        if w:
            out[:, k] += np.float32(w) * surprise
    return out
