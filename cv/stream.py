"""Process a PO's photos as a stream: ordered, bounded memory, one bad file loses nothing else.

Work runs in a pool of processes with one OpenCV thread each (two single-threaded workers beat
one process with two threads on this 2-core machine, see shared/reference/cpu-baseline.md). At
most ``workers * prefetch`` photos are in flight, so 300 decoded photos never sit in memory at
once; ``fn`` should return something small (scores, boxes), not the decoded image.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


PHOTO_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".heic", ".heif", ".tif", ".tiff", ".bmp"}
)


def list_photos(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders (recursively, photo suffixes only, sorted) and keep files as given.

    A file named explicitly is kept whatever its suffix, so a mislabelled upload gets its own
    error instead of vanishing; a path that does not exist is kept too, for the same reason.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in PHOTO_SUFFIXES))
        else:
            out.append(p)
    return out


@dataclass
class StreamResult(Generic[T, R]):
    """One item's outcome: ``value`` when ``fn`` returned, ``error`` (its message) when it raised."""

    item: T
    value: R | None = None
    error: str | None = None
    error_type: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)
    # Libraries that read these at import (numpy's BLAS, onnxruntime, torch) also stay on one thread.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def _call(fn: Callable[[T], R], item: T) -> StreamResult[T, R]:
    try:
        return StreamResult(item, fn(item))
    except Exception as exc:  # one bad photo must not stop the PO
        return StreamResult(item, error=str(exc) or repr(exc), error_type=type(exc).__name__)


def map_photos(
    paths: Iterable[T],
    fn: Callable[[T], R],
    workers: int = 2,
    *,
    prefetch: int = 2,
    mp_context: str = "spawn",
) -> Iterator[StreamResult[T, R]]:
    """Apply ``fn`` to every item, yielding results in input order as they complete.

    ``fn`` must be picklable (a module-level function, or ``functools.partial`` of one).
    ``workers <= 1`` runs in this process (for debugging and tiny POs). Errors are returned in
    the result, not raised. ``spawn`` is the default start method because forking a process that
    already holds OpenCV/torch thread pools can deadlock; like any spawn pool it needs the
    ``if __name__ == "__main__":`` guard in a script that calls it.
    """
    if workers <= 1:
        for item in paths:
            yield _call(fn, item)
        return
    ctx = mp.get_context(mp_context)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
        pending: deque[tuple[T, Future]] = deque()
        limit = max(1, workers * prefetch)
        for item in paths:
            pending.append((item, pool.submit(_call, fn, item)))
            if len(pending) >= limit:
                yield _collect(*pending.popleft())
        while pending:
            yield _collect(*pending.popleft())


def _collect(item: T, future: Future) -> StreamResult:
    try:
        return future.result()
    except Exception as exc:  # a worker died (killed for memory, crashed in native code)
        return StreamResult(item, error=f"worker failed: {exc!r}", error_type=type(exc).__name__)
