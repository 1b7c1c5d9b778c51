"""The PO stream: ordered results, errors per photo, worker processes pinned to one thread."""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import pytest

from cv.decode import decode_photo
from cv.stream import map_photos


def photo_shape(path: Path, min_side: int | None = None) -> tuple[int, ...]:
    return decode_photo(path, min_side=min_side).rgb.shape


def threads_in_worker(_: object) -> int:
    return cv2.getNumThreads()


@pytest.fixture(scope="module")
def po(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("po")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        img = rng.integers(0, 255, (120 + 10 * i, 160, 3), dtype=np.uint8)
        p = folder / f"IMG_{i:04d}.jpg"
        cv2.imwrite(str(p), img)
        paths.append(p)
    (folder / "broken.jpg").write_bytes(b"%PDF-1.4 not a photo")
    paths.insert(3, folder / "broken.jpg")
    return paths


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_back_in_order_and_a_bad_file_loses_nothing(po, workers):
    results = list(map_photos(po, functools.partial(photo_shape, min_side=None), workers=workers))
    assert [r.item for r in results] == po
    assert [r.ok for r in results] == [True, True, True, False, True, True, True]
    bad = results[3]
    assert bad.error_type == "NotAPhotoError" and "broken.jpg" in bad.error
    assert [r.value[0] for r in results if r.ok] == [120, 130, 140, 150, 160, 170]


def test_workers_run_one_opencv_thread_each():
    results = list(map_photos(range(4), threads_in_worker, workers=2))
    assert all(r.ok and r.value == 1 for r in results)
