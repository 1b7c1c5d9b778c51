"""Robustness to how real inspection photos are taken and sent: what each capture fault costs.

Real photos reach Loupe through phones and messaging apps, shot by inspectors in warehouses. This
benchmark takes one PO (a dataset `datasets/` reads; the held-out synthetic test PO by default) and
re-takes every photo under one fault at a time, at a strength an inspector would still send:

  messenger    sent through a messaging app: long side 1600 px, JPEG quality 70 (about what such
               apps' standard quality does to a 12 MP photo)
  jpeg40       re-saved at JPEG quality 40, full size (a report tool's or an upload form's squeeze)
  defocus      missed focus: Gaussian blur of sigma 2.5 px per 4000 px of long side
  shake        hand shake: a 12-px motion streak per 4000 px of long side, in a random direction
  dim          a dim warehouse: a quarter of the light, the phone's gain making it up, with the
               shot and read noise that gain brings
  tungsten     a warm lamp the phone's white balance did not correct (linear R x1.2, B x0.65)
  bright       overexposed by one stop (linear x2), white fabric and labels clipping
  defocus_strong, shake_strong, dim_strong   the same, past what a careful inspector sends: sigma
               8 px, a 36-px streak, 8 % of the light

The clean photos are the baseline, run in the same call. For each fault it prints, for the default
classifier (or ``--model``): per-family photo AUROC and the mean's difference from the clean photos
with a 95 % paired-bootstrap interval (the same photos, so the interval is about the fault, not the
draw of photos), recall and false-flag rate at the model's flag thresholds, and what the
photo-quality gate (configs/quality.yaml) says of the faulty photos: whether it asks for a retake
where the model loses. ``--detector`` adds the detector's mAP@0.5 under each fault.

The faulty copies are cached under benchmarks/.cache/robustness/ (delete it after changing a fault).

    .venv/bin/python benchmarks/bench_robustness.py [--data data/test-synth] [--model default]
        [--detector default] [--faults messenger defocus ...] [--photos N] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache" / "robustness"
REFERENCE_LONG_SIDE = 4000.0  # fault strengths are given for a 12 MP photo and scale with the photo


def _to_linear(rgb: np.ndarray) -> np.ndarray:
    return (rgb.astype(np.float32) / 255.0) ** 2.2


def _to_srgb(linear: np.ndarray) -> np.ndarray:
    return (np.clip(linear, 0, 1) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)


def messenger(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    h, w = rgb.shape[:2]
    s = min(1.0, 1600 / max(h, w))
    size = (max(round(w * s), 1), max(round(h * s), 1))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), 70


def jpeg40(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    return rgb, 40


def defocus(rgb: np.ndarray, rng: np.random.Generator, sigma_px: float = 2.5) -> tuple[np.ndarray, int]:
    sigma = sigma_px * max(rgb.shape[:2]) / REFERENCE_LONG_SIDE
    return cv2.GaussianBlur(rgb, (0, 0), sigma), 92


def shake(rgb: np.ndarray, rng: np.random.Generator, streak_px: float = 12) -> tuple[np.ndarray, int]:
    from cv.quality import streak_kernel

    k = max(round(streak_px * max(rgb.shape[:2]) / REFERENCE_LONG_SIDE) | 1, 3)
    return cv2.filter2D(rgb, -1, streak_kernel(k, float(rng.uniform(0, 180)))), 92


def dim(rgb: np.ndarray, rng: np.random.Generator, light: float = 0.25) -> tuple[np.ndarray, int]:
    signal = _to_linear(rgb) * light
    # Shot noise grows with the signal, read noise does not; the phone's gain amplifies both.
    sigma = np.sqrt(signal * 4e-4 + 1.5e-3**2)
    noisy = signal + rng.standard_normal(signal.shape).astype(np.float32) * sigma
    return _to_srgb(noisy / light), 92


def tungsten(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    return _to_srgb(_to_linear(rgb) * np.array([1.2, 1.0, 0.65], np.float32)), 92


def bright(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    return _to_srgb(_to_linear(rgb) * 2.0), 92


# fault -> the faulty photo and the JPEG quality it is saved at
FAULTS: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, int]]] = {
    "messenger": messenger,
    "jpeg40": jpeg40,
    "defocus": defocus,
    "shake": shake,
    "dim": dim,
    "tungsten": tungsten,
    "bright": bright,
    # the same faults, past what a careful inspector sends: where does the model break, and does the
    # gate ask for a retake there?
    "defocus_strong": partial(defocus, sigma_px=8.0),
    "shake_strong": partial(shake, streak_px=36),
    "dim_strong": partial(dim, light=0.08),
}


def make_faulty_sets(data: Path, faults: list[str], photos: int | None, seed: int = 0) -> dict[str, Path]:
    """Each fault's copy of the PO (cached): the same annotations, boxes scaled where the photo is."""
    from cv.decode import decode_photo
    from datasets.reader import read_dataset
    from training.evaluate import restricted

    dataset = read_dataset(data)
    coco = restricted(dataset.coco, sorted(im["id"] for im in dataset.coco["images"])[:photos])
    key = f"{data.resolve().name}-{len(coco['images'])}"
    folders = {f: CACHE / key / f for f in faults}
    todo = [f for f in faults if not (folders[f] / "annotations.json").exists()]
    if not todo:
        return folders
    tmp = {f: folders[f].with_name(f + ".tmp") for f in todo}
    for f in todo:
        shutil.rmtree(tmp[f], ignore_errors=True)
        (tmp[f] / "images").mkdir(parents=True)
    outs = {f: copy.deepcopy(coco) for f in todo}
    t0 = time.perf_counter()
    for n, image in enumerate(coco["images"]):
        rgb = decode_photo(dataset.image_path(image)).rgb  # upright, as the boxes are
        for f in todo:
            rng = np.random.default_rng([seed, int(image["id"]), list(FAULTS).index(f)])
            out, quality = FAULTS[f](rgb, rng)
            name = Path(image["file_name"]).with_suffix(".jpg").name
            cv2.imwrite(
                str(tmp[f] / "images" / name),
                cv2.cvtColor(out, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, quality],
            )
            _rescale(outs[f], outs[f]["images"][n], f"images/{name}", out.shape[1], out.shape[0])
        if (n + 1) % 50 == 0:
            print(f"  faulty copies: {n + 1}/{len(coco['images'])} photos ({time.perf_counter() - t0:.0f} s)")
    for f in todo:
        (tmp[f] / "annotations.json").write_text(json.dumps(outs[f]))
        shutil.rmtree(folders[f], ignore_errors=True)
        tmp[f].rename(folders[f])
    return folders


def _rescale(coco: dict, image: dict, file_name: str, width: int, height: int) -> None:
    """Point ``image`` (one of ``coco``'s) at its faulty copy and scale its boxes to the copy's size."""
    sx, sy = width / image["width"], height / image["height"]
    image.update(file_name=file_name, width=width, height=height)
    if sx == 1 and sy == 1:
        return
    for a in coco["annotations"]:
        if a["image_id"] == image["id"]:
            x, y, w, h = a["bbox"]
            a["bbox"] = [x * sx, y * sy, w * sx, h * sy]
            a["area"] = a["bbox"][2] * a["bbox"][3]


def gate_shares(dataset, ids: list[int]) -> dict[str, float]:
    """The shares of the photos ``ids`` the quality gate calls usable / warn / retake."""
    from cv.quality import assess_file, load_quality_config

    config = load_quality_config()
    images = {im["id"]: im for im in dataset.coco["images"]}
    verdicts = [assess_file(dataset.image_path(images[i]), config).verdict for i in ids]
    return {v: verdicts.count(v) / len(verdicts) for v in ("usable", "warn", "retake")}


def evaluate(data: Path, classifier, detector, photos: int | None) -> dict:
    """The classifier's run and report on ``data`` (and the detector's mAP@0.5 when given one)."""
    from datasets.reader import read_dataset
    from training.evaluate import detection_map, ground_truth, photo_report, run_on_photos

    dataset = read_dataset(data)
    ids = sorted(im["id"] for im in dataset.coco["images"])[:photos]
    run = run_on_photos(dataset, ids, classifier, classifier.bundle.prep, n_panels=0)
    b = classifier.bundle
    out = {
        "run": run,
        "report": photo_report(run, b.calibration, b.thresholds),
        "gate": gate_shares(dataset, ids),
    }
    if detector is not None:
        det = run_on_photos(dataset, ids, detector, detector.bundle.prep, n_panels=0)
        out["map50"] = detection_map(ground_truth(dataset, ids), det.detections).map50
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "test-synth")
    parser.add_argument("--model", default="default", help="the classifier")
    parser.add_argument("--detector", default=None, help="a detector as well (e.g. default): its mAP@0.5")
    parser.add_argument("--faults", nargs="+", choices=sorted(FAULTS), default=list(FAULTS))
    parser.add_argument("--photos", type=int, default=None, help="the PO's first N photos only")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(
            f"{args.data}: no such dataset. The default PO is made by "
            "`loupe data synth --out data/test-synth --photos 200 --seed 9001`"
        )

    from models.predictor import load_predictor
    from training.compare import compare_photo_scores

    classifier = load_predictor(
        args.model, backend="torch", device="auto", threads=args.threads, task="classifier"
    )
    detector = (
        load_predictor(args.detector, backend="torch", device="auto", threads=args.threads, task="detector")
        if args.detector
        else None
    )
    print(f"faulty copies of {args.data} ({', '.join(args.faults)})")
    sets = {"clean": args.data, **make_faulty_sets(args.data, args.faults, args.photos)}
    results = {}
    for name, folder in sets.items():
        t0 = time.perf_counter()
        results[name] = evaluate(folder, classifier, detector, args.photos)
        print(f"  {name}: {time.perf_counter() - t0:.0f} s")

    clean = results["clean"]
    families = clean["run"].families
    n = len(clean["run"].image_ids)
    print(f"\n{classifier.bundle.ref} on {n} photos of {args.data}; baseline: the clean photos")
    head = " ".join(f"{f:>9}" for f in families)
    print(
        f"{'photos':<14} {head}  {'mean':>8}   {'mean - clean [95 %]':<32}  {'recall':<19}  "
        f"{'false-flag':<15}  gate usable/warn/retake" + ("   mAP@0.5" if detector else "")
    )
    for name, r in results.items():
        fam = r["report"]["per_family"]
        aurocs = [fam[f]["auroc"] for f in families]
        if name == "clean":
            diff = " " * 32
        else:
            # both runs in photo-id order: the paired bootstrap resamples the same photos
            assert r["run"].image_ids == clean["run"].image_ids
            d = compare_photo_scores(r["run"].raw, clean["run"].raw, clean["run"].labels, families)
            m = d["auroc"]["mean"]
            diff = f"{m['diff']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}]".ljust(32)
        recall = "/".join(f"{fam[f]['recall']:.2f}" for f in families)
        false_flag = "/".join(f"{fam[f]['false_flag_rate']:.2f}" for f in families)
        g = r["gate"]
        print(
            f"{name:<14} " + " ".join(f"{a:>9.3f}" for a in aurocs) + f"  {np.nanmean(aurocs):8.3f}   {diff}"
            f"  {recall:<19}  {false_flag:<15}  {g['usable']:.2f}/{g['warn']:.2f}/{g['retake']:.2f}"
            + (f"{r['map50']:>19.3f}" if detector else "")
        )
    print(
        "\nAUROC ranks the photos by score, which calibration does not change; recall and false-flag "
        "rate are at the model's shipped flag thresholds, per family in the order above: a fault "
        "that lowers every photo's scores can keep AUROC and lose recall."
    )
    aurocs = [r["report"]["per_family"][f]["auroc"] for r in results.values() for f in families]
    if any(math.isnan(a) for a in aurocs):
        print("(nan: a family with no photos of one class on this PO)")


if __name__ == "__main__":
    main()
