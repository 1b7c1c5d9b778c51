"""Per-photo CPU latency of triage with the shipped default models, stage by stage.

For each photo of a generated PO (cached under benchmarks/.cache): one reduced decode to the working
scale, the quality gate, the classifier on every tile of the pyramid, and the detector on every tile
(triage runs it only on suspect photos; this measures the worst case). Each model runs on ONNX Runtime
(what `loupe predict` uses) and on torch eager (the baseline), at 1 and 2 threads. Median milliseconds
per photo; the machine may be shared, so run it when nothing else is.

    .venv/bin/python benchmarks/bench_triage.py [--photos 24] [--threads 1 2] [--memory BUNDLE]
        [--classifier BUNDLE ...] [--classifiers-only]

The detector is also timed reading every tile once (the baseline), with the photo mirrored too
(``detector.mirror``) everywhere and only near the plain view's peaks (``detector.mirror_found_only``),
with views at 0.8 and 1.25 of the working scale as well (``detector.scales``) everywhere and near
the plain view's peaks (``detector.scales_found_only``),
and that only on the tiles the classifier points at (``detector.guide_threshold`` 0.1; off in the
shipped detector).

``--memory`` also times a classifier bundle that has a memory of a buyer's good tiles (a fine-tune
with ``memory`` in its recipe, models.memory) against --model's classifier, both on ONNX Runtime;
``--ensemble`` likewise an ensemble of classifiers (``loupe ensemble``), and ``--classifier`` any
other classifier bundle (one network of the shipped ensemble, to see what the second one costs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

CACHE = Path(__file__).resolve().parent / ".cache" / "triage-po"


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="default", help="classifier/detector bundle ref")
    parser.add_argument("--memory", help="a classifier bundle with a memory, timed against --model's")
    parser.add_argument("--ensemble", help="a classifier ensemble (loupe ensemble), timed against --model's")
    parser.add_argument(
        "--classifier",
        action="append",
        default=[],
        help="any other classifier bundle (one network of the shipped ensemble, say), timed against "
        "--model's; repeatable",
    )
    parser.add_argument(
        "--classifiers-only", action="store_true", help="time the classifiers only (no detector runs)"
    )
    args = parser.parse_args()

    from cv.prep import working_photo
    from cv.quality import QualityConfig, assess_photo
    from datasets.synth import generate_po
    from models.bundle import load_bundle
    from models.photo import as_prep, detect_photo, score_photo
    from models.predictor import load_predictor
    from models.refs import resolve_model_ref

    folder = CACHE / f"po-{args.photos}"
    if not (folder / "annotations.json").exists():
        generate_po(folder, photos=args.photos, seed=4242)  # the config's size mix: 1.2 to 12 MP
    paths = sorted((folder / "images").glob("*.jpg"))
    quality = QualityConfig()
    refs = {task: resolve_model_ref(args.model, task) for task in ("classifier", "detector")}
    prep = as_prep(load_bundle(refs["classifier"]).prep)
    print(f"{len(paths)} photos of {folder}; prep: work {prep.work_long_side} px, tile {prep.tile_size}, "
          f"input {prep.input_size}, levels {list(prep.levels)}")  # fmt: skip

    decode_ms, gate_ms, works = [], [], []
    for path in paths:
        wp, ms = timed(working_photo, path, prep)
        decode_ms.append(ms)
        _, ms = timed(assess_photo, wp.photo, quality)
        gate_ms.append(ms)
        works.append(wp.rgb_work)
    tiles = len(score_photo(works[0], load_predictor(refs["classifier"], "onnx", "cpu", 1), prep).tiles)
    decode, gate = statistics.median(decode_ms), statistics.median(gate_ms)
    print(f"decode to working scale {decode:7.1f} ms/photo   quality gate {gate:6.1f} ms/photo")
    h, w = works[0].shape[:2]
    print(f"({tiles} tiles on the first photo, {w}x{h} at working scale)\n")

    print(f"{'model':<11}{'backend':<9}{'threads':>8}{'ms/photo':>10}{'vs torch':>10}")
    tasks = (("classifier", score_photo),) + (() if args.classifiers_only else (("detector", detect_photo),))
    for task, run in tasks:
        for threads in args.threads:
            per_backend = {}
            for backend in ("torch", "onnx"):
                predictor = load_predictor(refs[task], backend, "cpu", threads)
                run(works[0], predictor, prep)  # warm-up (ONNX session, oneDNN kernels)
                per_backend[backend] = statistics.median(timed(run, w, predictor, prep)[1] for w in works)
            for backend, ms in per_backend.items():
                ratio = per_backend["torch"] / ms
                print(f"{task:<11}{backend:<9}{threads:>8}{ms:>10.0f}{ratio:>9.2f}x")
    if not args.classifiers_only:
        time_detector_reads(refs, works, prep, args.threads)
    time_other_classifiers(args, refs, works, prep)


def time_detector_reads(refs: dict, works: list, prep, threads_list: list[int]) -> None:
    """How the detector reads a photo, against reading every tile once (ONNX Runtime): the mirrored view
    everywhere (detector.mirror) or only near the plain view's peaks (mirror_found_only), that on the
    tiles the classifier points at (guide_threshold 0.1, the setting tried in
    configs/train_detector.yaml), and with the photo read at 0.8 and 1.25 of the working scale as well
    (detector.scales)."""
    from models.bundle import load_bundle
    from models.photo import detect_photo, guided_tiles, score_photo
    from models.predictor import load_predictor

    shipped = load_bundle(refs["detector"])  # its settings only: no network loaded twice
    decoding = shipped.config.get("detector") or {}

    def variant(**change):
        return shipped.model_copy(update={"config": {**shipped.config, "detector": {**decoding, **change}}})

    scaled = {"mirror": True, "mirror_found_only": True, "guide_threshold": 0.0, "scales": [0.8, 1.25]}
    arms = {
        "one view": variant(mirror=False, guide_threshold=0.0, scales=[]),
        "mirrored everywhere": variant(mirror=True, mirror_found_only=False, guide_threshold=0.0, scales=[]),
        "mirrored near peaks": variant(mirror=True, mirror_found_only=True, guide_threshold=0.0, scales=[]),
        "near peaks, at 0.8 and 1.25 everywhere": variant(**scaled, scales_found_only=False),
        "near peaks, guided at 0.1": variant(
            mirror=True, mirror_found_only=True, guide_threshold=0.1, scales=[]
        ),
        "near peaks, at 0.8 and 1.25 near peaks": variant(**scaled, scales_found_only=True),
    }
    classifier = load_predictor(refs["classifier"], "onnx", "cpu", 1)
    guides = [score_photo(w, classifier, prep) for w in works]
    print(f"\n{'detector (ONNX Runtime)':<40}{'threads':>8}{'ms/photo':>10}{'vs one view':>14}")
    for threads in threads_list:
        predictor = load_predictor(refs["detector"], "onnx", "cpu", threads)
        per_arm = {}
        for name, bundle in arms.items():
            arm = predictor.with_bundle(bundle)

            def read(w, scores, arm=arm):
                return detect_photo(w, arm, prep, tiles=guided_tiles(arm, prep, scores, prep))

            read(works[0], guides[0])  # warm-up
            per_arm[name] = statistics.median(
                timed(read, w, g)[1] for w, g in zip(works, guides, strict=True)
            )
        for name, ms in per_arm.items():
            print(f"{name:<40}{threads:>8}{ms:>10.0f}{ms / per_arm['one view']:>13.2f}x")


def time_other_classifiers(args, refs: dict, works: list, prep) -> None:
    """--memory, --ensemble and --classifier bundles against --model's classifier (ONNX Runtime)."""
    from models.photo import score_photo
    from models.predictor import load_predictor

    others = [(name, ref) for name, ref in (("with memory", args.memory), ("ensemble", args.ensemble)) if ref]
    others += [(Path(ref).name if Path(ref).exists() else ref, ref) for ref in args.classifier]
    if others:
        print(f"\n{'classifier':<28}{'threads':>8}{'ms/photo':>10}{'vs ' + args.model:>14}")
        for threads in args.threads:
            per_model = {}
            for name, ref in ((args.model, refs["classifier"]), *others):
                predictor = load_predictor(ref, "onnx", "cpu", threads, task="classifier")
                score_photo(works[0], predictor, prep)  # warm-up
                per_model[name] = statistics.median(timed(score_photo, w, predictor, prep)[1] for w in works)
            for name, ms in per_model.items():
                print(f"{name:<28}{threads:>8}{ms:>10.0f}{ms / per_model[args.model]:>13.2f}x")


if __name__ == "__main__":
    main()
