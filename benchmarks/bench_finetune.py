"""Fine-tuning on a buyer's first few dozen labelled photos: does ``--from`` pay off?

A buyer starts with 30–60 labelled photos of their own products, shot their own way. This benchmark
makes such a set with a look the default model never trained on: a fixed inspection station, whose
monochrome camera and macro lens (45–80 mm across the frame, so threads are 2–4x thicker in pixels
than in any training photo) shoot seams and logos of shoes, balls and bags under a ring light
(hot centre, dark corners, grain) — and compares, on held-out photos of the same look:

  default     the shipped default model as it is (the baseline every buyer starts from)
  scratch     the fine-tuning recipe from ImageNet weights, on the buyer photos only
  fine-tune   the same recipe from the default model (`loupe train classifier --from default`)

It prints per-family image-level AUROC and average precision of each, and the differences against
both baselines. The buyer set is synthetic (no real photos ship with Loupe): treat it as a check that
the fine-tuning path works and helps, not as a promise about a real buyer's photos.

    .venv/bin/python benchmarks/bench_finetune.py [--train-photos 48] [--test-photos 120]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache" / "finetune"
LOOK = "station"  # cache folders are per look: change it when the look changes
# Framing and products the default recipe's data does not have: macro close-ups only.
BUYER_SYNTH = {
    "closeup_rate": 1.0,
    "closeup_fov_mm": (45, 80),
    "defect_rate": 0.7,
    "family_mix": {"stitching": 0.65, "logo": 0.35, "label": 0.0},
    # A monochrome camera cannot show a wrong colour: that subtype is left out for every arm.
    "subtype_mix": {
        s: 1.0
        for s in (
            "skipped_stitch",
            "broken_thread",
            "uneven_stitch_length",
            "open_seam",
            "puckering",
            "wavy_seam",
            "offset_logo",
            "smudged_print",
            "partly_missing_print",
            "missing_logo",
        )
    },
    "milestone_mix": {"IPC": 1, "DUPRO": 1, "PSI": 1, "CLI": 0},
    "product_mix": {
        "IPC": {"shoe": 1, "ball": 1, "bag": 1},
        "DUPRO": {"shoe": 1, "ball": 1, "bag": 1},
        "PSI": {"shoe": 1, "ball": 1, "bag": 1},
        "CLI": {"shoe": 1},
    },
    "size_mix": [{"size": "1600x1200", "weight": 1.0}],
}


def buyer_camera(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The station's camera: monochrome sensor, ring light (bright centre, dark corners), grain."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    h, w = grey.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6)
    r = np.hypot((xx - cx) / w, (yy - cy) / h)
    ring = 1.35 * np.exp(-((r / 0.45) ** 2)) + 0.35  # hot centre, corners at about a third
    img = np.clip(grey * ring, 0, 1) ** 1.25  # the station's harder contrast curve
    img = img + rng.normal(0, 0.02, img.shape).astype(np.float32)
    out = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_GRAY2RGB)


def make_buyer_set(folder: Path, photos: int, seed: int) -> Path:
    """Generate photos in the buyer's look (cached): boxes stay valid, only pixel values change."""
    from datasets.synth import generate_po
    from datasets.synth.config import SynthConfig

    if (folder / "annotations.json").exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    config = SynthConfig.model_validate({**SynthConfig().model_dump(), **BUYER_SYNTH})
    generate_po(tmp, photos=photos, seed=seed, config=config, workers=1)
    rng = np.random.default_rng(seed)
    for path in sorted((tmp / "images").glob("*.jpg")):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        out = cv2.cvtColor(buyer_camera(rgb, rng), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(path), out, [cv2.IMWRITE_JPEG_QUALITY, 85])
    tmp.rename(folder)
    return folder


def evaluate(model: str, data: Path) -> dict[str, dict[str, float]]:
    from training.validate import validate

    report = next(iter(validate(model, data, track=False, log=lambda *_: None).values()))
    return {
        f: {"auroc": m["auroc"], "ap": m["average_precision"], "pos": m["n_positive"]}
        for f, m in report["per_family"].items()
    }


def train(from_ref: str | None, data: Path, out: Path, base: str) -> tuple[str, float]:
    from cv.prep import PrepSettings
    from models.bundle import load_bundle
    from models.refs import resolve_model_ref
    from training.config import load_train_config
    from training.engine import train as train_model

    shutil.rmtree(out, ignore_errors=True)
    config = load_train_config("finetune_classifier", "classifier")
    # Both arms see the same pixels: scratch gets the base model's prep (a fine-tune keeps it anyway).
    base_prep = PrepSettings(**load_bundle(resolve_model_ref(base, "classifier")).prep)
    config = config.model_copy(update={"prep": base_prep})
    started = time.perf_counter()
    result = train_model(
        "classifier", config, data, from_ref=from_ref, out=out, track=False, log=lambda *_: None
    )
    return str(result.bundle_dir), time.perf_counter() - started


def fmt(v: float | None) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-photos", type=int, default=48)
    parser.add_argument("--test-photos", type=int, default=120)
    parser.add_argument("--base", default="default", help="the model to fine-tune from")
    args = parser.parse_args()

    started = time.perf_counter()
    buyer_train = make_buyer_set(CACHE / f"{LOOK}-train-{args.train_photos}", args.train_photos, seed=501)
    buyer_test = make_buyer_set(CACHE / f"{LOOK}-test-{args.test_photos}", args.test_photos, seed=502)
    print(f"buyer photos ready in {time.perf_counter() - started:.0f} s: {buyer_train}, {buyer_test}")

    scratch, t_scratch = train(None, buyer_train, CACHE / "run-scratch", args.base)
    tuned, t_tuned = train(args.base, buyer_train, CACHE / "run-finetune", args.base)
    print(f"training on {args.train_photos} photos: scratch {t_scratch:.0f} s, fine-tune {t_tuned:.0f} s")

    results = {name: evaluate(ref, buyer_test) for name, ref in
               (("default", args.base), ("scratch", scratch), ("fine-tune", tuned))}  # fmt: skip
    print(f"\nheld-out buyer photos: {args.test_photos}")
    print(f"{'family':<10}{'pos':>5}" + "".join(f"{n + ' AUROC':>17}{n + ' AP':>14}" for n in results))
    for family in results["default"]:
        if results["default"][family]["pos"] == 0:
            continue
        row = f"{family:<10}{results['default'][family]['pos']:>5}"
        row += "".join(f"{fmt(r[family]['auroc']):>17}{fmt(r[family]['ap']):>14}" for r in results.values())
        print(row)
    print("\nfine-tune minus baseline (mean over families with positives):")
    for base in ("default", "scratch"):
        for metric in ("auroc", "ap"):
            diffs = [
                results["fine-tune"][f][metric] - results[base][f][metric]
                for f in results["default"]
                if results["default"][f]["pos"] > 0
            ]
            print(f"  vs {base:<8} {metric:<6} {np.mean(diffs):+.3f}")
    (CACHE / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
