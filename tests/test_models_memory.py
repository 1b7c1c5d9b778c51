"""The patch memory's arithmetic on hand-made features: nearest distances, surprise, what it adds."""

from __future__ import annotations

import numpy as np
import pytest

from models.errors import ModelFileError
from models.memory import MemoryBag, PatchMemory, load_memory, nearest_distances, tile_surprise, with_surprise


def test_a_tile_is_as_surprising_as_its_least_familiar_patch():
    bank = np.array([[0.0, 0.0], [10.0, 0.0]], np.float32)
    tiles = np.array(
        [
            [[0.0, 0.0], [10.0, 0.0]],  # every patch remembered
            [[0.0, 3.0], [10.0, 4.0]],  # 3 and 4 away from their nearest
            [[5.0, 0.0], [0.0, 1.0]],  # halfway between the two: 5
        ],
        np.float32,
    )
    assert nearest_distances(tiles, bank) == pytest.approx([0.0, 4.0, 5.0], abs=1e-3)


def test_surprise_is_in_robust_units_of_its_own_level_and_only_weighted_families_move():
    bank = np.zeros((1, 2), np.float32)
    memory = PatchMemory(
        banks={1.0: bank, 0.5: bank},
        centre={1.0: 1.0, 0.5: 2.0},
        spread={1.0: 0.5, 0.5: 2.0},
        weights={"logo": 2.0},
    )
    tiles = np.array([[[3.0, 0.0]], [[3.0, 0.0]], [[3.0, 0.0]]], np.float32)
    scales = np.array([1.0, 0.5, 0.25])  # 0.25 is not remembered: no surprise there
    surprise = tile_surprise(tiles, scales, memory)
    assert surprise == pytest.approx([(3 - 1) / 0.5, (3 - 2) / 2.0, 0.0])
    logits = np.zeros((3, 3), np.float32)
    out = with_surprise(logits, surprise, ("stitching", "logo", "label"), memory.weights)
    assert out[:, 1] == pytest.approx(2.0 * surprise)
    assert not out[:, [0, 2]].any()


def test_a_saved_memory_loads_back_and_a_missing_one_names_its_file(tmp_path):
    rng = np.random.default_rng(0)
    memory = PatchMemory(
        banks={
            1.0: rng.normal(size=(20, 4)).astype(np.float16),
            0.25: rng.normal(size=(5, 4)).astype(np.float16),
        },
        centre={1.0: 1.5, 0.25: 2.5},
        spread={1.0: 0.3, 0.25: 0.7},
        weights={"logo": 0.5},
    )
    memory.save(tmp_path)
    back = load_memory(tmp_path, {"logo": 0.5})
    assert set(back.banks) == {1.0, 0.25}
    assert np.array_equal(back.banks[0.25], memory.banks[0.25].astype(np.float32))
    assert (back.centre, back.spread) == (memory.centre, memory.spread)
    assert memory.describe()["levels"]["0.25"] == {"patches": 5, "centre": 2.5, "spread": 0.7}
    with pytest.raises(ModelFileError, match=r"memory\.npz"):
        load_memory(tmp_path / "elsewhere", {"logo": 0.5})


def test_a_bags_memory_surprises_as_the_mean_of_its_parts_and_loads_back_as_a_bag(tmp_path):
    bank = np.zeros((1, 2), np.float32)
    parts = [
        PatchMemory(banks={1.0: bank}, centre={1.0: 1.0}, spread={1.0: 0.5}, weights={"logo": 1.0}),
        PatchMemory(
            banks={1.0: bank + 1, 0.5: bank}, centre={1.0: 0.0, 0.5: 2.0}, spread={1.0: 1.0, 0.5: 2.0}
        ),
    ]
    bag = MemoryBag(parts=parts, weights={"logo": 1.0})
    tiles = np.array([[[3.0, 0.0]], [[3.0, 0.0]]], np.float32)
    scales = np.array([1.0, 0.5])
    # level 1: (3 - 1) / 0.5 = 4 and |(3, 0) - (1, 1)| = sqrt(5); level 0.5: not in the first part, 0
    expected = [(4.0 + np.sqrt(5.0)) / 2, (0.0 + (3 - 2) / 2.0) / 2]
    assert tile_surprise(tiles, scales, bag) == pytest.approx(expected, abs=1e-3)
    bag.save(tmp_path)
    back = load_memory(tmp_path, {"logo": 1.0})
    assert isinstance(back, MemoryBag) and len(back.parts) == 2
    assert tile_surprise(tiles, scales, back) == pytest.approx(expected, abs=1e-3)
    assert bag.describe()["parts"][1]["0.5"] == {"patches": 1, "centre": 2.0, "spread": 2.0}
