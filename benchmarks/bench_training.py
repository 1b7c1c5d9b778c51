"""Training throughput of the default recipes on this machine: seconds per step, crops per second.

Runs the real ``train_one_epoch`` (augmentation, target encoding, AdamW) on synthetic crops for a few
steps per task, plus photo-level inference cost, so a recipe's epochs can be sized to the time budget:

    .venv/bin/python benchmarks/bench_training.py [--steps 6] [--positives-per-photo 1.7] [--photos 480]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def fake_cache(n: int, size: int, rng: np.random.Generator):
    from training.data import POSITIVE, RANDOM, TileCache

    labels = np.zeros((n, 3), np.uint8)
    boxes, fams, subs = [], [], []
    for i in range(n):
        if i % 2:
            labels[i, i % 3] = 1
            x, y = rng.uniform(0, size * 0.7, 2)
            boxes.append(np.array([[x, y, x + size * 0.2, y + size * 0.1]], np.float32))
            fams.append(np.array([i % 3]))
            subs.append(np.array([0]))
        else:
            boxes.append(np.zeros((0, 4), np.float32))
            fams.append(np.zeros(0, np.int64))
            subs.append(np.zeros(0, np.int64))
    return TileCache(
        crops=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
        labels=labels,
        kinds=np.where(labels.any(axis=1), POSITIVE, RANDOM),
        photo_ids=np.zeros(n, np.int64),
        boxes=boxes,
        box_families=fams,
        box_subtypes=subs,
    )


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `loupe train` does, before torch loads
    import torch

    from datasets.augment import build_augment
    from training import classifier_loop, detector_loop
    from training.config import load_train_config
    from training.data import BatchFeeder, balanced_batches
    from training.engine import build_for_training, make_optimizer, make_scheduler

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--photos", type=int, default=480, help="training photos, to turn s/step into minutes")
    ap.add_argument(
        "--positives-per-photo", type=float, default=1.7, help="defect crops per photo (a real cache: 87/52)"
    )
    args = ap.parse_args()
    for task, loop in (("classifier", classifier_loop), ("detector", detector_loop)):
        cfg = load_train_config(None, task)
        torch.set_num_threads(cfg.num_threads)
        rng = np.random.default_rng(0)
        cache = fake_cache(256, cfg.prep.input_size, rng)
        model, *_ = build_for_training(cfg, task, None, torch.device("cpu"))
        opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
        sched = make_scheduler(opt, cfg.schedule, cfg.lr, 1000)
        pipeline = build_augment(cfg.augment) if cfg.augment else None
        batches = list(balanced_batches(cache, cfg.batch_size, cfg.positive_fraction, args.steps + 1, rng))
        feed = BatchFeeder(cache, pipeline, cfg.prep, cfg.cache.min_visible)
        loop.train_one_epoch(model, opt, sched, feed, batches[:1], torch.device("cpu"))  # warm
        cpu0 = time.process_time()
        stats = loop.train_one_epoch(model, opt, sched, feed, batches[1:], torch.device("cpu"))
        cpu_per_step = (time.process_time() - cpu0) / args.steps
        s_per_step = stats["seconds"] / args.steps
        steps_per_epoch = args.photos * args.positives_per_photo / (cfg.batch_size * cfg.positive_fraction)
        minutes = cfg.epochs * steps_per_epoch * s_per_step / 60
        model.eval()
        with torch.inference_mode():
            x = torch.randn(16, 3, cfg.prep.input_size, cfg.prep.input_size)
            model(x)
            t0 = time.perf_counter()
            model(x)
            tile_ms = (time.perf_counter() - t0) / 16 * 1000
        print(
            f"{task}: input {cfg.prep.input_size}, batch {cfg.batch_size}: {s_per_step:.2f} s/step "
            f"({cpu_per_step:.2f} CPU s/step, load {os.getloadavg()[0]:.1f}), "
            f"{stats['crops_per_s']:.1f} crops/s; {args.photos} photos, {steps_per_epoch:.0f} steps × "
            f"{cfg.epochs} epochs ≈ {minutes:.0f} min; eval {tile_ms:.1f} ms/tile (torch, batch 16)"
        )


if __name__ == "__main__":
    main()
