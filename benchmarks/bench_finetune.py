"""Fine-tuning on a buyer's first few dozen labelled photos: does ``--from`` pay off?

A buyer starts with 30–60 labelled photos of their own products, shot their own way. This benchmark
makes such a set in one of two looks the default model never trained on (``--look``):

  jersey   a new product: one team's mesh sports jersey (a knit pierced by rows of round holes, the
           lining showing through; one colourway and crest for the PO), shot the generator's usual
           way. The default recipe's data has no mesh.
  station  a new camera: a fixed inspection station whose monochrome camera and macro lens (45–80 mm
           across the frame, so threads are 2–4x thicker in pixels than in any training photo) shoot
           seams and logos of shoes, balls and bags under a ring light (hot centre, dark corners, grain)
  vintage  a new finish: a tee line whose prints are distressed by design (fine cracks and worn specks,
           the buyer's approved look; one style for the PO), which the default's data never shows

and compares, on held-out photos of the same look:

  default     the shipped default model as it is (the baseline every buyer starts from)
  scratch     the fine-tuning recipe from ImageNet weights, on the buyer photos only
  fine-tune   the same recipe from the default model, one split of the photos (`bag: 1`)
  bag         (classifier, two seeds or more) the seeds' fine-tunes joined as the recipe's `bag: K` ships
              them (training.bag; `loupe train classifier --from default` with the buyer recipe)

It prints per-family image-level AUROC and average precision of each, and the fine-tune's differences
against both baselines with a 95 % paired-bootstrap interval over the held-out photos: "better" only
when the whole interval is above zero (on 120 photos, one draw of the test set moved the difference
against the default by 0.03 AUROC). The two trained arms run once per recipe seed (``--seeds``; each
seed is also its own train/val split of the buyer's photos, and one seed's fine-tune scored 0.08
stitching AUROC below another's): their figures are the mean over seeds, judged on the same
resampled photos in each bootstrap round. The buyer set is synthetic (no real photos ship with Loupe):
treat it as a check that the fine-tuning path works and helps, not as a promise about a real buyer's
photos.

``--task detector`` runs the same three arms for the detector (`configs/finetune_detector.yaml`) and
compares the mAP@0.5 of their boxes on the held-out photos (pycocotools), overall and per family, with
the same kind of paired-bootstrap interval (200 rounds by default: each round is a COCO evaluation).

    .venv/bin/python benchmarks/bench_finetune.py [--look jersey|station|vintage] [--train-photos 48]
                                                  [--test-photos 240] [--test-seed 502]
                                                  [--seeds 0 1 2] [--task classifier|detector]
                                                  [--judge-only]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from datasets.synth.config import MILESTONES
from models.bundle import BUNDLE_FILE
from training.compare import (
    box_figures,
    family_figures,
    interval,
    paired_bootstrap,
    paired_box_bootstrap,
    scored_columns,
)

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache" / "finetune"


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


@dataclass(frozen=True)
class Look:
    """A buyer's photos: generator settings over the defaults, and a camera applied after rendering."""

    synth: dict
    camera: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None


LOOKS = {
    # The product the default's data never has (datasets/synth: "jersey", on "mesh"), all families.
    "jersey": Look(
        synth={
            "product_mix": {m: {"jersey": 1} for m in MILESTONES},
            "size_mix": [{"size": "2000x1500", "weight": 1.0}],
            "style_seed": 11,  # one team's jersey: one colourway and crest across the PO
        }
    ),
    # A finish the default's data never has: a vintage tee line whose prints are distressed by design
    # (fine cracks, worn specks: approved, not defects), one style for the PO. The default reads the
    # wear as print and label damage; the buyer's labels say it is not.
    "vintage": Look(
        synth={
            "product_mix": {m: {"tshirt": 1} for m in MILESTONES},
            "size_mix": [{"size": "2000x1500", "weight": 1.0}],
            "style_seed": 12,
            "distressed_print": 1.0,
        }
    ),
    # Framing and products the default recipe's data does not have: macro close-ups only.
    "station": Look(
        synth={
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
            "product_mix": {m: {"shoe": 1, "ball": 1, "bag": 1} for m in MILESTONES},
            "size_mix": [{"size": "1600x1200", "weight": 1.0}],
        },
        camera=buyer_camera,
    ),
}


def make_buyer_set(folder: Path, look: Look, photos: int, seed: int) -> Path:
    """Generate photos in the buyer's look (cached): boxes stay valid, only pixel values change."""
    from datasets.synth import generate_po
    from datasets.synth.config import SynthConfig

    if (folder / "annotations.json").exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    config = SynthConfig.model_validate({**SynthConfig().model_dump(), **look.synth})
    generate_po(tmp, photos=photos, seed=seed, config=config, workers=2)
    if look.camera is not None:
        rng = np.random.default_rng(seed)
        for path in sorted((tmp / "images").glob("*.jpg")):
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            out = cv2.cvtColor(look.camera(rgb, rng), cv2.COLOR_RGB2BGR)
            cv2.imwrite(str(path), out, [cv2.IMWRITE_JPEG_QUALITY, 85])
    tmp.rename(folder)
    return folder


def run_model(model: str, data: Path, task: str, threads: int = 2):
    """``model`` run over every photo of ``data`` the way `loupe val` runs it: the run
    (:class:`training.evaluate.PhotoRun`) and the ground truth of its photos."""
    from datasets.reader import read_dataset
    from models.predictor import load_predictor
    from training.evaluate import ground_truth, run_on_photos

    predictor = load_predictor(model, backend="torch", device="auto", threads=threads, task=task)
    dataset = read_dataset(data)
    ids = [im["id"] for im in dataset.coco["images"]]
    return run_on_photos(dataset, ids, predictor, predictor.bundle.prep, n_panels=0), ground_truth(
        dataset, ids
    )


def photo_scores(model: str, data: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-photo raw family scores and labels of the classifier ``model`` on ``data``, kept under
    benchmarks/.cache/scores by the content of the bundle, the photos (their dataset version: pixels
    and labels) and the code that reads photos (an ensemble fine-tune takes minutes to read 240
    photos; a --judge-only run after a new seed reads only the new arms)."""
    from datasets.manifest import build_manifest
    from models.refs import resolve_model_ref

    bundle = Path(resolve_model_ref(model, "classifier"))
    code = sorted(p for room in ("cv", "models", "datasets", "training") for p in (ROOT / room).rglob("*.py"))
    digest = hashlib.sha256(build_manifest(data).content_sha256.encode())
    for path in (*sorted(p for p in bundle.iterdir() if p.is_file()), *code):
        digest.update(path.name.encode() + path.read_bytes())
    cached = CACHE.parent / "scores" / f"{digest.hexdigest()[:24]}.npz"
    if cached.exists():
        with np.load(cached) as saved:
            return saved["raw"], saved["labels"], [str(f) for f in saved["families"]]
    run, _ = run_model(model, data, "classifier")
    cached.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cached, raw=run.raw, labels=run.labels, families=np.array(run.families))
    return run.raw, run.labels, run.families


def photo_boxes(model: str, data: Path) -> tuple[list[dict], dict]:
    """The detector ``model``'s boxes on ``data`` (COCO results in photo pixels) and its ground truth."""
    run, gt = run_model(model, data, "detector")
    return run.detections, gt


def train(
    from_ref: str | None, data: Path, out: Path, base: str, seed: int, task: str = "classifier"
) -> tuple[str, float, bool]:
    """Train one arm with ``task``'s fine-tuning recipe at ``seed``: its bundle, seconds, and whether
    it kept the starting model's weights (no epoch beat them on the validation crops)."""
    from cv.prep import PrepSettings
    from models.bundle import load_bundle
    from models.refs import resolve_model_ref
    from training.config import load_train_config
    from training.engine import keep_decoding
    from training.engine import train as train_model

    shutil.rmtree(out, ignore_errors=True)
    config = load_train_config(f"finetune_{task}", task)
    # Both arms see the same pixels and read boxes alike: scratch gets the base model's prep and
    # decoding (a fine-tune keeps both anyway).
    base_bundle = load_bundle(resolve_model_ref(base, task))
    # One fine-tune an arm: a recipe's bag is judged as its own arm, joined from these (bag_arm).
    update = {"prep": PrepSettings(**base_bundle.prep), "seed": seed}
    if task == "classifier":
        update["bag"] = 1
    config = config.model_copy(update=update)
    lines: list[str] = []
    if task == "detector":
        config = keep_decoding(config, base_bundle, lines.append)
    started = time.perf_counter()
    result = train_model(task, config, data, from_ref=from_ref, out=out, track=False, log=lines.append)
    kept = any(line.startswith("no epoch beat the starting model") for line in lines)
    return str(result.bundle_dir), time.perf_counter() - started, kept


def bag_arm(runs: list[Path], base: str, parser: argparse.ArgumentParser) -> str:
    """The fine-tune arms' seeds as one bag (training.bag: what the recipe's ``bag: K`` ships from K
    splits at those seeds), calibrated out of bag on their validation photos' scores."""
    from models.bundle import load_bundle
    from models.refs import resolve_model_ref
    from training.bag import join_bag
    from training.config import load_train_config
    from training.evaluate import RUN_FILE

    missing = [str(run) for run in runs if not (run / RUN_FILE).is_file()]
    if missing:
        parser.error(f"no validation photo scores ({RUN_FILE}) in {', '.join(missing)}: train them again")
    config = load_train_config("finetune_classifier", "classifier").model_copy(update={"bag": len(runs)})
    out = CACHE / f"{runs[0].name}-bag{len(runs)}"
    seeds = " ".join(run.name.rsplit("seed", 1)[1] for run in runs)
    start = load_bundle(resolve_model_ref(base, "classifier"))
    join_bag(runs, start, config, out, out.name, f"benchmarks/bench_finetune.py --seeds {seeds}", log=print)
    return str(out)


def fmt(v: float | None) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--look", choices=sorted(LOOKS), default="jersey", help="the buyer's photos")
    parser.add_argument("--train-photos", type=int, default=48)
    parser.add_argument("--test-photos", type=int, default=240)
    parser.add_argument(
        "--test-seed",
        type=int,
        default=502,
        help="seed of the held-out photos: a new one judges a recipe on photos that did not choose it",
    )
    parser.add_argument(
        "--task",
        choices=("classifier", "detector"),
        default="classifier",
        help="the model to fine-tune: photo AUROC/AP (classifier) or mAP@0.5 of its boxes (detector)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=None,
        help="resampling rounds for the intervals (1000; 200 for the detector, each round a COCO evaluation)",
    )
    parser.add_argument("--base", default="default", help="the model to fine-tune from")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="recipe seeds for the trained arms"
    )
    parser.add_argument(
        "--judge-only",
        action="store_true",
        help="judge the arms an earlier run trained (same look, --train-photos, --seeds, --task and "
        "--base) on these held-out photos, without training them again",
    )
    args = parser.parse_args()

    started = time.perf_counter()
    look = LOOKS[args.look]
    buyer_train = make_buyer_set(
        CACHE / f"{args.look}-train-{args.train_photos}", look, args.train_photos, 501
    )
    test_name = f"{args.look}-test-{args.test_photos}"
    test_name += "" if args.test_seed == 502 else f"-seed{args.test_seed}"
    buyer_test = make_buyer_set(CACHE / test_name, look, args.test_photos, args.test_seed)
    print(f"buyer photos ready in {time.perf_counter() - started:.0f} s: {buyer_train}, {buyer_test}")

    arms: dict[str, list[str]] = {"default": [args.base], "scratch": [], "fine-tune": []}
    suffix = "" if args.task == "classifier" else f"-{args.task}"
    for seed in args.seeds:
        for name, from_ref in (("scratch", None), ("fine-tune", args.base)):
            run = CACHE / f"{args.look}-{args.train_photos}-run-{name}-seed{seed}{suffix}"
            if args.judge_only:
                if not (run / "bundle" / BUNDLE_FILE).exists():
                    parser.error(f"no trained {name} arm in {run}: run once without --judge-only")
                arms[name].append(str(run / "bundle"))
                continue
            bundle, seconds, kept = train(from_ref, buyer_train, run, args.base, seed, args.task)
            arms[name].append(bundle)
            note = ": no epoch beat the starting model, its weights kept (recalibrated)" if kept else ""
            print(f"seed {seed}: {name} trained on {args.train_photos} photos in {seconds:.0f} s{note}")
    if args.task == "classifier" and len(args.seeds) > 1:
        runs = [CACHE / f"{args.look}-{args.train_photos}-run-fine-tune-seed{seed}" for seed in args.seeds]
        arms["bag"] = [bag_arm(runs, args.base, parser)]
    results_file = CACHE / f"{test_name}-{args.train_photos}{suffix}-results.json"
    if args.task == "detector":
        report_boxes(arms, buyer_test, args, results_file)
    else:
        report_photos(arms, buyer_test, args, results_file)


def report_boxes(arms: dict[str, list[str]], buyer_test: Path, args, results_file: Path) -> None:
    """The detector arms' mAP@0.5 on the held-out photos and the fine-tune's paired differences."""
    from datasets.taxonomy import FAMILIES

    families = list(FAMILIES)
    boxes = {name: [photo_boxes(ref, buyer_test) for ref in refs] for name, refs in arms.items()}
    gt = boxes["default"][0][1]
    dets = {name: [d for d, _ in runs] for name, runs in boxes.items()}
    per_seed = {name: [box_figures(gt, d, families) for d in runs] for name, runs in dets.items()}
    figures = {name: np.mean(runs, axis=0) for name, runs in per_seed.items()}
    names = {c["id"]: c["name"] for c in gt["categories"]}
    counts = {f: sum(names.get(a["category_id"]) == f for a in gt["annotations"]) for f in families}
    print(f"\nheld-out buyer photos ({args.look} look): {len(gt['images'])}; trained arms: mean over seeds")
    print(f"{'mAP@0.5':<10}{'boxes':>6}" + "".join(f"{n:>12}" for n in arms))
    for j, name in enumerate(["all", *families]):
        n = len(gt["annotations"]) if name == "all" else counts[name]
        print(f"{name:<10}{n:>6}" + "".join(f"{fmt(f[j]):>12}" for f in figures.values()))
    for name in ("scratch", "fine-tune"):
        for seed, f in zip(args.seeds, per_seed[name], strict=True):
            print(f"  {name} seed {seed}: mAP@0.5 {fmt(f[0])} ({' / '.join(fmt(v) for v in f[1:])})")
    rounds = args.bootstrap or 200
    print(
        f"\nfine-tune minus baseline, mAP@0.5 (95 % interval: paired bootstrap over photos, {rounds} rounds):"
    )
    differences = {}
    for base in ("default", "scratch"):
        diffs = paired_box_bootstrap(dets["fine-tune"], dets[base], gt, families, rounds)
        gap = figures["fine-tune"] - figures[base]
        for j, name in enumerate(["all", *families]):
            if name != "all" and not counts[name]:  # no defect box of it (the station look has no labels)
                continue
            d = interval(diffs[:, j], gap[j])
            differences[f"vs_{base}_{name}_map50"] = d.as_dict()
            print(f"  vs {base:<8} {name:<10} {d}")
    results = {name: dict(zip(["all", *families], map(float, f), strict=True)) for name, f in figures.items()}
    results_file.write_text(json.dumps({"map50": results, "differences": differences}, indent=2))


def report_photos(arms: dict[str, list[str]], buyer_test: Path, args, results_file: Path) -> None:
    """The classifier arms' photo AUROC and AP on the held-out photos and the fine-tune's differences."""
    scored = {name: [photo_scores(ref, buyer_test) for ref in refs] for name, refs in arms.items()}
    _, labels, families = scored["default"][0]
    columns = scored_columns(labels)
    raws = {name: [raw for raw, *_ in runs] for name, runs in scored.items()}
    per_seed = {
        name: [family_figures(raw, labels, families, columns) for raw in runs] for name, runs in raws.items()
    }
    figures = {name: np.mean(runs, axis=0) for name, runs in per_seed.items()}
    print(f"\nheld-out buyer photos ({args.look} look): {len(labels)}; trained arms: mean over seeds")
    print(f"{'family':<10}{'pos':>5}" + "".join(f"{n + ' AUROC':>17}{n + ' AP':>14}" for n in arms))
    for j, i in enumerate(columns):
        row = f"{families[i]:<10}{int(labels[:, i].sum()):>5}"
        row += "".join(f"{fmt(f[0, j]):>17}{fmt(f[1, j]):>14}" for f in figures.values())
        print(row)
    for name in ("scratch", "fine-tune"):
        for seed, f in zip(args.seeds, per_seed[name], strict=True):
            aurocs = " / ".join(fmt(v) for v in f[0])
            print(f"  {name} seed {seed}: AUROC {aurocs}")
    rounds = args.bootstrap or 1000
    print(
        f"\narm minus baseline, mean over families with positives "
        f"(95 % interval: paired bootstrap over photos, {rounds} rounds):"
    )
    summary = {}
    per_family = {}
    pairs = [("fine-tune", "default"), ("fine-tune", "scratch")]
    if "bag" in raws:  # the recipe's bag of the seeds' fine-tunes, against each
        pairs += [("bag", "default"), ("bag", "scratch"), ("bag", "fine-tune")]
    for arm, base in pairs:
        if base == "default":
            print(f"  {arm}:")
        diffs = paired_bootstrap(raws[arm], raws[base], labels, families, columns, rounds)
        gap = figures[arm] - figures[base]
        key = f"vs_{base}" if arm == "fine-tune" else f"{arm}_vs_{base}"
        for k, metric in enumerate(("auroc", "ap")):
            mean_diffs = np.nanmean(diffs[:, k], axis=1)
            d = interval(mean_diffs, np.nanmean(gap[k]))
            summary[f"{key}_{metric}"] = d.as_dict()
            print(f"  vs {base:<9} {metric:<6} {d}")
        for j, i in enumerate(columns):  # a family can gain while the mean hides it
            d = interval(diffs[:, 0, j], gap[0, j])
            per_family[f"{key}_{families[i]}_auroc"] = d.as_dict()
            print(f"    {families[i]:<10} auroc {d}")
    results = {
        name: {families[i]: {"auroc": f[0, j], "ap": f[1, j]} for j, i in enumerate(columns)}
        for name, f in figures.items()
    }
    results_file.write_text(
        json.dumps({"figures": results, "differences": summary, "per_family": per_family}, indent=2)
    )


if __name__ == "__main__":
    main()
