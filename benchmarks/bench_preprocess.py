"""Benchmark: decode + quality gate + model-input preparation for a 300-photo PO.

    .venv/bin/python benchmarks/bench_preprocess.py [--photos 300] [--input-size 512] [--workers 2]

Makes (once, cached under benchmarks/.cache/) a PO of 4000x3000 JPEGs with the synthetic
generator, then times, in one run:
  loupe  - cv.stream.map_photos over ``--workers`` single-threaded processes: reduced (DCT-scaled)
           decode, the quality gate on it, to_working_scale + letterbox + normalise to the input;
           near-duplicates checked in the parent, in PO order.
  naive  - one process: full cv2.imread + cv2.resize, the same gate and the same preparation.
Prints photos/s and peak memory (RSS of the process and its workers, sampled) for both.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from cv.decode import Photo, decode_photo  # noqa: E402
from cv.prep import PrepSettings, letterbox, normalise, to_working_scale  # noqa: E402
from cv.quality import DuplicateIndex, QualityConfig, assess_photo, check_duplicate, load_quality_config  # noqa: E402
from cv.stream import map_photos  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache"


# --- the PO -------------------------------------------------------------------------------------


def make_po(photos: int, size: tuple[int, int], seed: int) -> list[Path]:
    """Generate the PO once with datasets.synth.generate_po and reuse it from the cache."""
    folder = CACHE / f"po_{photos}_{size[0]}x{size[1]}_seed{seed}"
    done = folder / ".complete"
    if not done.exists():
        from datasets.synth import generate_po

        t0 = time.perf_counter()
        print(f"generating {photos} photos of {size[0]}x{size[1]} into {folder} (once) ...", flush=True)
        generate_po(folder, photos, seed, size=size, workers=2)
        done.write_text("ok\n")
        print(f"  generated in {time.perf_counter() - t0:.0f} s", flush=True)
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if len(paths) < photos:
        raise SystemExit(
            f"{folder}: expected {photos} JPEGs, found {len(paths)} - delete the folder to regenerate"
        )
    return paths[:photos]


# --- memory ---------------------------------------------------------------------------------------


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    """Direct children of every thread of ``pid`` (the pool's workers), from /proc; cheap."""
    out: list[int] = []
    for task in os.scandir(f"/proc/{pid}/task"):
        try:
            with open(f"{task.path}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


class PeakMemory:
    """Samples the RSS of this process plus its worker processes every 50 ms (sum of RSS: shared
    pages such as the numpy/cv2 libraries are counted once per process, so this over-states)."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            total = _rss_kb(me) + sum(_rss_kb(c) for c in _children(me))
            self.peak_kb = max(self.peak_kb, total)
            self._stop.wait(0.05)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024


# --- the two pipelines ----------------------------------------------------------------------------


@dataclass
class Prepared:
    """What a worker sends back: small, so the stream stays bounded (the tensor stays in the worker,
    where the model would run)."""

    report: object
    input_shape: tuple[int, ...]
    checksum: float
    cpu_ms: float = 0.0  # this photo's CPU time in the worker (steady state, no start-up)


def _model_input(photo: Photo, prep: PrepSettings) -> np.ndarray:
    work, _ = to_working_scale(photo.rgb, prep)
    boxed, _ = letterbox(work, prep.input_size)
    return normalise(boxed, prep)


def loupe_one(path: Path, prep: PrepSettings, gate: QualityConfig) -> Prepared:
    c0 = time.process_time()
    photo = decode_photo(
        path, min_long_side=max(prep.work_long_side, gate.analysis_long_side), max_pixels=gate.max_pixels
    )
    report = assess_photo(photo, gate)
    x = _model_input(photo, prep)
    return Prepared(report, x.shape, float(x[:, ::64, ::64].sum()), 1000 * (time.process_time() - c0))


def naive_one(path: Path, prep: PrepSettings, gate: QualityConfig) -> Prepared:
    c0 = time.process_time()
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)  # full decode, EXIF applied by OpenCV
    h, w = bgr.shape[:2]
    scale = max(prep.work_long_side, gate.analysis_long_side) / max(h, w)
    small = cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    photo = Photo(cv2.cvtColor(small, cv2.COLOR_BGR2RGB), str(path), w, h, 1, scale)
    report = assess_photo(photo, gate)
    x = _model_input(photo, prep)
    return Prepared(report, x.shape, float(x[:, ::64, ::64].sum()), 1000 * (time.process_time() - c0))


def _cpu_s() -> float:
    """CPU seconds used by this process and its finished workers (immune to other load)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_loupe(paths: list[Path], prep: PrepSettings, gate: QualityConfig, workers: int) -> dict:
    index = DuplicateIndex()
    verdicts: dict[str, int] = {}
    errors = 0
    per_photo: list[float] = []
    fn = functools.partial(loupe_one, prep=prep, gate=gate)
    with PeakMemory() as mem:
        t0, c0 = time.perf_counter(), _cpu_s()
        for res in map_photos(paths, fn, workers=workers):
            if not res.ok:
                errors += 1
                print(f"  unreadable: {res.item}: {res.error}", file=sys.stderr)
                continue
            report = check_duplicate(res.value.report, index, gate)
            verdicts[report.verdict] = verdicts.get(report.verdict, 0) + 1
            per_photo.append(res.value.cpu_ms)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return {
        "wall": wall,
        "cpu": cpu,
        "photo_ms": float(np.median(per_photo)) if per_photo else 0.0,
        "peak_mb": mem.peak_mb,
        "verdicts": verdicts,
        "errors": errors,
    }


def run_naive(paths: list[Path], prep: PrepSettings, gate: QualityConfig) -> dict:
    index = DuplicateIndex()
    verdicts: dict[str, int] = {}
    with PeakMemory() as mem:
        t0, c0 = time.perf_counter(), _cpu_s()
        per_photo = []
        for p in paths:
            out = naive_one(p, prep, gate)
            report = check_duplicate(out.report, index, gate)
            verdicts[report.verdict] = verdicts.get(report.verdict, 0) + 1
            per_photo.append(out.cpu_ms)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return {
        "wall": wall,
        "cpu": cpu,
        "photo_ms": float(np.median(per_photo)),
        "peak_mb": mem.peak_mb,
        "verdicts": verdicts,
        "errors": 0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=300)
    ap.add_argument("--size", default="4000x3000", help="photo size WxH")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--input-size", type=int, default=512, help="model input side (letterboxed)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--baseline-photos", type=int, default=None, help="photos for the naive run (default: all)"
    )
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    paths = make_po(args.photos, (w, h), args.seed)
    prep = PrepSettings(work_long_side=args.input_size, tile_size=args.input_size, input_size=args.input_size)
    gate = load_quality_config()
    size_mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
    print(
        f"PO: {len(paths)} JPEGs {w}x{h}, mean {size_mb:.1f} MB; "
        f"model input {args.input_size}; {os.cpu_count()} cores"
    )

    fast = run_loupe(paths, prep, gate, args.workers)
    base_paths = paths[: args.baseline_photos] if args.baseline_photos else paths
    naive = run_naive(base_paths, prep, gate)

    fast_rate = len(paths) / fast["wall"]
    naive_rate = len(base_paths) / naive["wall"]
    print(
        f"{'pipeline':<44} {'photos':>6} {'wall s':>7} {'photos/s':>9} {'CPU ms/photo':>13} "
        f"{'median ms':>10} {'peak MB':>8}"
    )
    for label, res, n, rate in (
        (f"loupe: reduced decode, {args.workers} workers x 1 thread", fast, len(paths), fast_rate),
        ("naive: full imread + resize, 1 process", naive, len(base_paths), naive_rate),
    ):
        cpu_ms = 1000 * res["cpu"] / n
        print(
            f"{label:<44} {n:>6} {res['wall']:>7.1f} {rate:>9.1f} {cpu_ms:>13.0f} "
            f"{res['photo_ms']:>10.0f} {res['peak_mb']:>8.0f}"
        )
    print(f"speed-up {fast_rate / naive_rate:.2f}x (target >= 3x); {fast_rate:.1f} photos/s (target >= 20)")
    print(f"verdicts loupe {fast['verdicts']}  naive {naive['verdicts']}  unreadable {fast['errors']}")
    print(
        "CPU ms/photo: all CPU of the run (workers' start-up included) per photo; median ms: one "
        "photo's CPU in its worker. On idle cores the loupe rate would be about "
        f"{args.workers * 1000 / fast['photo_ms']:.0f} photos/s, the naive one "
        f"{1000 / naive['photo_ms']:.1f} photos/s (single thread; OpenCV may use a 2nd core in resize)."
    )
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) + 0.5:
        print(
            f"note: load average {load:.1f} on {os.cpu_count()} cores - other work shared the CPU; "
            "wall-clock rates are pessimistic, CPU ms/photo is not"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
