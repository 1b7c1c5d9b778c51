"""A whole synthetic purchase order: N photos rendered by a small process pool, written as a dataset in
the internal COCO contract (images/*.jpg + annotations.json) with a summary."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import time
from collections import Counter
from pathlib import Path

import cv2

from datasets.synth.config import SynthConfig
from datasets.synth.plan import plan_photo
from datasets.synth.render import render_photo
from datasets.taxonomy import FAMILIES, coco_categories

_JOB: dict = {}


def _init(out_dir: str, seed: int, size, config_json: str):
    cv2.setNumThreads(1)  # one core per worker: threads fighting over 2 cores run far slower
    _JOB.update(out=Path(out_dir), seed=seed, size=size, config=SynthConfig.model_validate_json(config_json))


def _one(index: int) -> dict:
    """Plan, render and write photo ``index``; returns its image record and annotations."""
    plan = plan_photo(_JOB["seed"], index, _JOB["config"], _JOB["size"])
    photo = render_photo(plan)
    name = f"images/po{_JOB['seed']}_{index:05d}.jpg"
    ok, buf = cv2.imencode(".jpg", photo.rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, plan.conditions["jpeg"]])
    if not ok:
        raise RuntimeError(f"could not encode photo {index} as JPEG")
    (_JOB["out"] / name).write_bytes(buf.tobytes())
    families = sorted({a["family"] for a in photo.annotations}, key=FAMILIES.index)
    image = {
        "file_name": name,
        "width": plan.width,
        "height": plan.height,
        "labels": families,
        "scene": plan.setting,
        "product": plan.product,
        "milestone": plan.milestone,
        "shot": plan.shot,
        "px_per_mm": round(photo.px_per_mm, 4),
        "barcodes": photo.barcodes,
        "lookalikes": photo.lookalikes,
        "seed": int(_JOB["seed"]),
        "index": int(index),
    }
    return {"image": image, "annotations": photo.annotations}


# Rendering allocates and frees many 10-40 MB float arrays per photo; by default glibc hands each back to
# the kernel and page-faults it in again, which cost a third of the CPU time here. These settings make the
# spawned workers keep their heap (they only take effect in a process that starts with them).
_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(32 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(1024 * 1024 * 1024),
    "MALLOC_TOP_PAD_": str(256 * 1024 * 1024),
}


@contextlib.contextmanager
def _malloc_env():
    saved = {k: os.environ.get(k) for k in _MALLOC_ENV}
    for k, v in _MALLOC_ENV.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def generate_po(
    out_dir: Path,
    photos: int,
    seed: int,
    size: tuple[int, int] | None = None,
    config: SynthConfig | None = None,
    workers: int = 2,
) -> dict:
    """Write ``photos`` synthetic inspection photos of one PO to ``out_dir``; returns the summary.

    Same (seed, size, config) → byte-identical JPEGs and annotations.json, whatever ``workers`` is.
    """
    if photos < 1:
        raise ValueError(f"photos must be at least 1, got {photos}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    config = config or SynthConfig()
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    args = (str(out_dir), int(seed), size, config.model_dump_json())
    if workers == 1:
        _init(*args)
        results = [_one(i) for i in range(photos)]
    else:
        # Spawned, not forked: a fork of a process whose OpenCV thread pool has run can deadlock.
        with _malloc_env(), mp.get_context("spawn").Pool(workers, initializer=_init, initargs=args) as pool:
            results = pool.map(_one, range(photos), chunksize=1)
    images, annotations = [], []
    for image_id, res in enumerate(results, start=1):
        images.append({"id": image_id, **res["image"]})
        for ann in res["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    coco = {
        "info": {
            "description": "Loupe synthetic inspection photos",
            "seed": int(seed),
            "generator": "datasets.synth",
        },
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }
    (out_dir / "annotations.json").write_text(json.dumps(coco, indent=1), encoding="utf-8")
    summary = summarise(coco)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


def summarise(coco: dict) -> dict:
    """Counts of a dataset in the contract format: photos, good photos, defects per family and subtype."""
    anns = coco["annotations"]
    return {
        "photos": len(coco["images"]),
        "good_photos": sum(1 for im in coco["images"] if not im.get("labels")),
        "defects": len(anns),
        "defects_per_family": dict(Counter(a["family"] for a in anns)),
        "defects_per_subtype": dict(sorted(Counter(a["subtype"] for a in anns).items())),
        "photos_per_product": dict(sorted(Counter(im.get("product", "?") for im in coco["images"]).items())),
        "readable_barcodes": sum(len(im.get("barcodes", [])) for im in coco["images"]),
    }
