"""One training run from dataset to bundle: data split, tile caches, the epoch loop, calibration, MLflow.

In the spirit of torchvision's references/detection: an explicit loop calling the task's
``train_one_epoch`` and ``evaluate_crops`` (:mod:`training.classifier_loop`,
:mod:`training.detector_loop`), checkpoints each epoch, early stopping on the validation score, and
the best epoch's weights evaluated on whole validation photos the way serving runs them.
"""

from __future__ import annotations

import json
import math
import os
import random
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from datasets.taxonomy import FAMILIES
from models.refs import loupe_data_dir
from training.config import TrainConfig

CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"


@dataclass
class TrainResult:
    run_dir: Path
    bundle_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    mlflow_run_id: str | None = None
    registered: dict[str, Any] | None = None
    train_cache_dir: Path | None = None


@dataclass
class DataSplit:
    """What a run trains and validates on."""

    train: Any  # datasets.coco.Dataset
    train_ids: list[int]
    val: Any
    val_ids: list[int]
    data_version: str
    split_id: str
    counts: dict[str, Any]


# ----------------------------------------------------------------------------------------- plumbing


def pick_device(name: str = "auto"):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked but torch sees no CUDA device: use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model, lr: float, weight_decay: float):
    import torch

    # No weight decay on norms and biases (the usual AdamW split).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def loader_workers(configured: int | None, device: Any) -> int:
    """Batch-augmenting processes: as configured, else 0 on the CPU and one per spare core (≤ 8) on CUDA."""
    if configured is not None:
        return configured
    return min(8, max(1, (os.cpu_count() or 2) - 1)) if device.type == "cuda" else 0


def optimiser_step(loss, optimizer, scheduler, scaler=None) -> None:
    """Backward pass and one optimiser + scheduler step (loss scaled by AMP's scaler on CUDA)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    scheduler.step()


def make_scheduler(optimizer, schedule: str, lr: float, total_steps: int):
    import torch

    total_steps = max(total_steps, 1)
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=total_steps, pct_start=min(0.3, max(0.05, 50 / total_steps))
        )
    warmup = max(1, min(total_steps // 10, 100))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_steps(cache: Any, batch_size: int, positive_fraction: float) -> int:
    """Steps for one pass over the defect crops at the batch's positive share (negatives are resampled,
    so adding more of them adds variety, not time)."""
    positives = int((cache.labels == 1).any(axis=1).sum()) or len(cache)
    return max(1, math.ceil(positives / max(1.0, batch_size * positive_fraction)))


def save_checkpoint(path: Path, **state: Any) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no checkpoint to resume from; pass the run folder `loupe train` printed"
        )
    return torch.load(path, map_location="cpu", weights_only=False)


def default_run_dir(task: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return loupe_data_dir() / "runs" / f"{task}-{stamp}"


# ---------------------------------------------------------------------------------------------- data


def split_data(data: str | Path, val_data: str | Path | None, val_fraction: float, seed: int) -> DataSplit:
    """Train/val photos: the manifest's split of ``data``, or all of ``data`` vs all of ``val_data``."""
    from datasets.manifest import manifest_of
    from datasets.reader import read_dataset

    dataset = read_dataset(Path(data))
    if not dataset.coco["images"]:
        raise ValueError(f"{data}: the dataset has no photos; generate one with `loupe data synth`")
    if val_data is not None:
        val = read_dataset(Path(val_data))
        m_train, m_val = manifest_of(dataset, 0.0, 0.0, seed), manifest_of(val, 0.0, 0.0, seed)
        version = f"{m_train.version}+{m_val.version}"
        return DataSplit(
            dataset,
            [im["id"] for im in dataset.coco["images"]],
            val,
            [im["id"] for im in val.coco["images"]],
            version,
            f"{m_train.split_id}+{m_val.split_id}",
            {"train": m_train.counts.get("all", {}), "val": m_val.counts.get("all", {})},
        )
    manifest = manifest_of(dataset, val_fraction, 0.0, seed)
    split_of = {m.file_name: m.split for m in manifest.images}
    train_ids = [im["id"] for im in dataset.coco["images"] if split_of.get(im["file_name"]) == "train"]
    val_ids = [im["id"] for im in dataset.coco["images"] if split_of.get(im["file_name"]) == "val"]
    if not train_ids or not val_ids:
        raise ValueError(
            f"{data}: split gave {len(train_ids)} train and {len(val_ids)} val photos; "
            "give more photos, or a separate --val-data dataset"
        )
    return DataSplit(
        dataset, train_ids, dataset, val_ids, manifest.version, manifest.split_id, manifest.counts
    )


# --------------------------------------------------------------------------------------------- model


def build_for_training(
    config: TrainConfig, task: str, from_bundle: Any | None, device
) -> tuple[Any, dict, list]:
    """The network to train, its bundle arch kwargs, and the families it scores.

    ``from_bundle`` (fine-tuning) keeps that model's architecture, families and weights; the recipe
    only decides what is frozen.
    """
    from models.pretrained import read_state_dict
    from models.registry import build_model
    from training.data import SUBTYPE_NAMES

    if from_bundle is not None:
        if from_bundle.task != task:
            raise ValueError(f"--from {from_bundle.folder}: is a {from_bundle.task}, not a {task}")
        kwargs = dict(from_bundle.arch_kwargs)
        for key in ("freeze_stages", "frozen_bn"):  # how to train, from the recipe; the rest is the model's
            if key in config.model.kwargs:
                kwargs[key] = config.model.kwargs[key]
        model = build_model(from_bundle.arch, **{**kwargs, "pretrained": "none"})
        model.load_state_dict(read_state_dict(from_bundle.weights_path), strict=True)
        return to_channels_last(model.to(device)), kwargs, list(from_bundle.families)
    families = list(FAMILIES)
    kwargs = dict(config.model.kwargs)
    kwargs["num_classes"] = len(families)
    if task == "detector" and kwargs.get("num_subtypes"):
        kwargs["num_subtypes"] = len(SUBTYPE_NAMES)
    return to_channels_last(build_model(config.model.arch, **kwargs).to(device)), kwargs, families


def keep_decoding(config: TrainConfig, from_bundle: Any, log: Callable[[str], None]) -> TrainConfig:
    """A fine-tuned detector keeps how its starting model's boxes are decoded and merged.

    Those settings (``score_threshold``, ``top_k``, ``merge_iou``, ``home_level_only``) were chosen on
    validation photos for that model: the default's box threshold is 0.3, and the same weights decoded
    at a recipe's 0.1 scored mAP@0.5 0.33 instead of 0.37 on 240 jersey photos. Loss weights stay the
    recipe's: they are how to train, not how to read the model.
    """
    saved = from_bundle.config.get("detector") or {}
    keys = set(type(config.detector).model_fields) - {"loss_weights"}  # every decoding setting there is
    decoding = {k: v for k, v in saved.items() if k in keys}
    if not decoding:
        return config
    changed = {k: v for k, v in decoding.items() if getattr(config.detector, k) != v}
    if changed:
        log(f"decoding as the starting model does: {changed}")
    return config.model_copy(update={"detector": config.detector.model_copy(update=decoding)})


def to_channels_last(model: Any) -> Any:
    """NHWC weights: oneDNN's depthwise and 1x1 convolutions run ~1.7x faster on this CPU in that layout
    (benchmarks/bench_training.py); inputs follow with :func:`model_input`."""
    import torch

    return model.to(memory_format=torch.channels_last)


def model_input(images: np.ndarray, device: Any) -> Any:
    """A normalised NCHW float32 batch as a channels-last tensor on ``device``."""
    import torch

    return (
        torch.from_numpy(images).to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    )


# ------------------------------------------------------------------------------------------- the run


def mine_for(
    config: TrainConfig,
    from_bundle: Any,
    from_ref: str | None,
    split: Any,
    val_ids: list[int],
    device: Any,
    log: Callable[[str], None],
    cache_root: Path,
) -> dict[str, dict[int, np.ndarray]]:
    """The starting model's false flags on the train and val photos (``cache.mined_negatives``), by
    split; saved under ``cache_root`` and read back when the same model mines the same photos again."""
    per_family = config.cache.mined_negatives
    if not per_family:
        return {}
    if from_bundle is None:
        log("cache.mined_negatives needs a starting model (--from): no false flags mined")
        return {}
    from models.predictor import load_predictor
    from training.mining import load_mined, mine_false_flags, mined_key, save_mined

    threshold = config.cache.mine_threshold
    ids = {"train": split.train_ids, "val": val_ids}
    # Scoring every tile of a thousand photos takes longer than a few epochs: a second recipe from the
    # same model on the same photos reuses its false flags.
    key = mined_key(from_bundle, ids, per_family, threshold)
    saved = cache_root / f"mined-{split.data_version}-{key}.json"
    t0 = time.perf_counter()
    mined = load_mined(saved)
    how = f"read back from {saved}"
    if mined is None:
        predictor = load_predictor(
            from_bundle.folder, "torch", "cuda" if device.type == "cuda" else "cpu", config.num_threads
        )
        data = {"train": split.train, "val": split.val}
        mined = {
            name: mine_false_flags(data[name], ids[name], predictor, per_family, threshold, log)
            for name in ("train", "val")
        }
        save_mined(saved, mined)
        how = f"{time.perf_counter() - t0:.0f} s"
    counts = {name: sum(len(v) for v in boxes.values()) for name, boxes in mined.items()}
    log(
        f"false flags of {from_ref} mined as hard negatives ({how}): "
        f"{counts['train']} on train photos, {counts['val']} on val photos"
    )
    return mined


def check_distill(config: TrainConfig, from_bundle: Any) -> list[Any]:
    """Refuse a ``distill`` family the model will not have, or a teacher that scores other families or
    reads other pixels, before minutes of tile cutting; returns the teachers' bundles."""
    from configs import ConfigError
    from models.bundle import load_bundle
    from models.refs import resolve_model_ref

    families = list(from_bundle.families) if from_bundle is not None else list(FAMILIES)
    unknown = sorted(set(config.distill) - set(families))
    if unknown:
        raise ConfigError(f"distill names {unknown}, not families of this model ({families}); fix the recipe")
    teachers = [load_bundle(resolve_model_ref(ref, "classifier")) for ref in config.teachers]
    for ref, bundle in zip(config.teachers, teachers, strict=True):
        if list(bundle.families) != families:
            raise ConfigError(
                f"teacher {ref} scores {list(bundle.families)}, the model {families}; "
                "distil only from classifiers of the same families"
            )
        if bundle.prep != config.prep.model_dump(mode="json"):
            raise ConfigError(
                f"teacher {ref} reads tiles prepared otherwise than this training ({bundle.prep} against "
                f"{config.prep.model_dump(mode='json')}); distil from models with the student's prep"
            )
    return teachers


def task_loop_kwargs(
    config: TrainConfig,
    model: Any,
    from_bundle: Any,
    families: list[str],
    device: Any,
    log: Callable[[str], None],
    teachers: list[Any] | None = None,
) -> dict[str, Any]:
    """The task loop's extra arguments: the detector's loss weights; for a classifier with ``distill``,
    the teacher (the recipe's ``teachers`` as one ensemble, else the starting model as a frozen copy
    taken before any resumed weights are loaded) and its per-family weights."""
    import copy

    import torch

    if config.task == "detector":
        return {"loss_weights": config.detector.loss_weights}
    if not any(config.distill.values()):  # nothing held: no teacher to run on every batch
        return {}
    if teachers:
        from models.classifier import MeanLogits

        teacher = MeanLogits([bundle.build_module(device) for bundle in teachers]).eval()
        log(f"teacher: the mean logits of {', '.join(f'{b.ref} ({b.folder})' for b in teachers)}")
    elif from_bundle is None:
        log("distill keeps a starting model's scores and needs one (--from): not distilling")
        return {}
    else:
        teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    weights = torch.tensor([config.distill.get(f, 0.0) for f in families], dtype=torch.float32, device=device)
    log(f"distilling the teacher's scores: {config.distill}")
    return {"teacher": teacher, "distill": weights}


def train(
    task: str,
    config: TrainConfig,
    data: str | Path,
    val_data: str | Path | None = None,
    from_ref: str | None = None,
    register: bool = False,
    champion: bool = False,
    resume: str | Path | None = None,
    out: str | Path | None = None,
    config_file: str | Path | None = None,
    track: bool = True,
    epochs: int | None = None,
    prep_from_recipe: bool = False,
    log=print,
) -> TrainResult:
    """Train a classifier or detector end to end; returns the bundle folder and the final metrics.

    ``prep_from_recipe``: with ``from_ref``, train at the recipe's prep (working scale, pyramid levels)
    instead of the source model's, to move a model to new pixels; its calibration is refitted either way.

    ``resume``: a run folder; its checkpointed config is used (``epochs`` may extend it) and training
    continues after the last finished epoch, in the same MLflow run.
    """
    import torch

    from configs import dump_config
    from models.bundle import load_bundle
    from models.refs import resolve_model_ref
    from training import classifier_loop, detector_loop
    from training.data import BatchFeeder, balanced_batches, build_tile_cache

    if config.bag > 1:
        from training.bag import train_bag

        if resume is not None:
            raise ValueError(
                f"{resume}: a bag of fine-tunes resumes by running its command again with the same --out "
                "(the splits it finished are kept)"
            )
        return train_bag(
            task, config, data, val_data, from_ref, register=register, champion=champion, out=out,
            track=track, epochs=epochs, prep_from_recipe=prep_from_recipe, log=log,
        )  # fmt: skip
    loop = classifier_loop if task == "classifier" else detector_loop
    ckpt = None
    if resume is not None:
        run_dir = Path(resume)
        ckpt = load_checkpoint(run_dir / CHECKPOINTS / LAST)
        config = TrainConfig.model_validate(ckpt["config"])
        from_ref = ckpt.get("from_ref")
        if epochs is not None:
            config = config.model_copy(update={"epochs": epochs})
        log(f"resuming {run_dir} after epoch {ckpt['epoch'] + 1}")
    else:
        run_dir = Path(out) if out else default_run_dir(task)
        if epochs is not None:
            config = config.model_copy(update={"epochs": epochs})
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = dump_config(config, run_dir / "config.yaml")

    if config.device == "auto" or config.device == "cpu":
        torch.set_num_threads(config.num_threads)
    device = pick_device(config.device)

    from_bundle = load_bundle(resolve_model_ref(from_ref, task)) if from_ref else None
    prep = config.prep
    if from_bundle is not None and not prep_from_recipe and resume is None:
        from cv.prep import PrepSettings

        prep = PrepSettings(**from_bundle.prep)  # a fine-tuned model keeps the pixels it was trained on
        config = config.model_copy(update={"prep": prep})
    if from_bundle is not None and task == "detector":
        config = keep_decoding(config, from_bundle, log)
    teachers = check_distill(config, from_bundle)

    split = split_data(data, val_data, config.val_fraction, config.seed)
    val_ids = split.val_ids[: config.max_val_photos] if config.max_val_photos else split.val_ids
    log(f"data {split.data_version}: {len(split.train_ids)} train photos, {len(val_ids)} val photos")
    cache_root = loupe_data_dir() / "cache"
    t0 = time.perf_counter()
    mined = mine_for(config, from_bundle, from_ref, split, val_ids, device, log, cache_root)
    train_cache = build_tile_cache(
        split.train, split.train_ids, prep, config.cache, cache_root, split.data_version, config.seed, log,
        mined=mined.get("train"),
    )  # fmt: skip
    val_settings = config.cache.model_copy(update={"max_photos": None})
    val_cache = build_tile_cache(
        split.val, val_ids, prep, val_settings, cache_root, split.data_version, config.seed + 1, log,
        mined=mined.get("val"),
    )  # fmt: skip
    log(
        f"tile cache ({time.perf_counter() - t0:.0f} s): train {train_cache.summary()}, "
        f"val {val_cache.summary()}"
    )

    # Seeded here, not at the start: mining builds the starting model (its random init draws from torch's
    # generator) only when its false flags are not cached yet, and the dropout masks must not depend on
    # that. A seeded fine-tune mining afresh trained other weights than the same run reading them back.
    seed_everything(config.seed)
    model, arch_kwargs, families = build_for_training(config, task, from_bundle, device)
    loop_kwargs = task_loop_kwargs(config, model, from_bundle, families, device, log, teachers)
    steps = config.steps_per_epoch or epoch_steps(train_cache, config.batch_size, config.positive_fraction)
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    scheduler = make_scheduler(optimizer, config.schedule, config.lr, steps * config.epochs)
    workers = loader_workers(config.loader_workers, device)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    log(f"device {device}{' with AMP' if use_amp else ''}, {workers} batch-augmenting workers")
    pipeline = None
    if config.augment:
        from datasets.augment import build_augment

        pipeline = build_augment(config.augment)
    feed = BatchFeeder(train_cache, pipeline, prep, config.cache.min_visible, workers)

    start_epoch, best_score, best_epoch, history = 0, -math.inf, -1, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["config"]["epochs"] == config.epochs:
            scheduler.load_state_dict(ckpt["scheduler"])
        else:  # more epochs than planned: the schedule is stretched, then caught up to where we are
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
                for _ in range((ckpt["epoch"] + 1) * steps):
                    scheduler.step()
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best_score, best_epoch = ckpt["epoch"] + 1, ckpt["best_score"], ckpt["best_epoch"]
        history = ckpt["history"]
    if pipeline is not None:
        # albumentations draws from its own generator, which seed_everything does not reach: unseeded,
        # two runs of one recipe on the CPU (augmenting in this process) trained different models.
        pipeline.set_random_seed(config.seed + 7919 * start_epoch)

    from training import tracking

    experiment = config.experiment or f"loupe-{task}"
    # The resolved recipe is saved in the run folder, so this reproduces the run whatever flags made it.
    command = " ".join(
        ["loupe", "train", task, "--config", shlex.quote(str(config_path)), "--data", shlex.quote(str(data))]
        + (["--val-data", shlex.quote(str(val_data))] if val_data else [])
        + (["--from", shlex.quote(str(from_ref))] if from_ref else [])
        + (["--prep-from-recipe"] if from_ref and prep_from_recipe else [])
    )
    tags = {"loupe.task": task, "loupe.run_dir": str(run_dir.resolve()), "loupe.split_id": split.split_id}
    if from_ref:
        tags["loupe.from"] = str(from_ref)
    run_ctx = (
        tracking.tracked_run(
            experiment,
            run_dir.name,
            config.model_dump(mode="json"),
            config_path,
            split.data_version,
            tags,
            run_id=ckpt.get("mlflow_run_id") if ckpt else None,
        )
        if track
        else _null_run()
    )
    with run_ctx as run:
        run_id = run.info.run_id if run is not None else None
        if track:
            tracking.log_metrics({f"data/{k}": v for k, v in train_cache.summary().items()})
        if from_bundle is not None and ckpt is None:
            # A fine-tune must beat the model it starts from on this data's validation crops; if no
            # epoch does, that model's weights are kept (and only recalibrated below).
            start = loop.evaluate_crops(model, val_cache, prep, device, families)
            best_score = start["score"]
            save_checkpoint(run_dir / CHECKPOINTS / BEST, model=model.state_dict(), epoch=-1)
            log(f"starting model {from_ref}: val score {best_score:.4f}")
            if track:
                tracking.log_metrics(start, step=0)
        rng = np.random.default_rng(config.seed + 7919 * start_epoch)
        for epoch in range(start_epoch, config.epochs):
            batches = list(
                balanced_batches(train_cache, config.batch_size, config.positive_fraction, steps, rng)
            )
            stats = loop.train_one_epoch(
                model, optimizer, scheduler, feed, batches, device, scaler, log=log, **loop_kwargs
            )
            val = loop.evaluate_crops(model, val_cache, prep, device, families)
            row = {"epoch": epoch + 1, **{f"train/{k}": v for k, v in stats.items()}, **val}
            history.append(row)
            improved = val["score"] > best_score + config.early_stopping.min_delta
            if improved:
                best_score, best_epoch = val["score"], epoch
                save_checkpoint(run_dir / CHECKPOINTS / BEST, model=model.state_dict(), epoch=epoch)
            log(
                f"epoch {epoch + 1}/{config.epochs}: loss {stats['loss']:.4f}  val score {val['score']:.4f}"
                f"{'  (best)' if improved else ''}  {stats['crops_per_s']:.1f} crops/s"
            )
            if track:
                tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
            save_checkpoint(
                run_dir / CHECKPOINTS / LAST,
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict() if scaler is not None else None,
                epoch=epoch,
                best_score=best_score,
                best_epoch=best_epoch,
                history=history,
                config=config.model_dump(mode="json"),
                from_ref=from_ref,
                mlflow_run_id=run_id,
            )
            if epoch - best_epoch >= config.early_stopping.patience:
                log(f"early stop: no improvement for {config.early_stopping.patience} epochs")
                break

        best = run_dir / CHECKPOINTS / BEST
        if best_epoch < 0 and from_bundle is not None:
            log(f"no epoch beat the starting model {from_ref}: its weights are kept")
        if best.is_file():
            model.load_state_dict(load_checkpoint(best)["model"])
        if from_bundle is not None and config.wise_ft and best_epoch >= 0:
            from models.pretrained import read_state_dict

            start = read_state_dict(from_bundle.weights_path)  # the weights build_for_training started from
            model.load_state_dict(interpolate_weights(start, model.state_dict(), config.wise_ft))
            log(f"weights: {config.wise_ft:g} of the way from {from_ref} to the best epoch's (WiSE-FT)")
        arch = from_bundle.arch if from_bundle is not None else config.model.arch
        if joins_start(config, from_bundle, best_epoch):
            from training.ensemble import with_starting_members

            model, arch_kwargs = with_starting_members(model, arch, arch_kwargs, from_bundle)
            arch = "tile_ensemble"
            log(f"{from_ref}'s logits averaged with the fine-tune's: {arch_kwargs['members']} members")
        result = finish(
            task, config, model, arch, arch_kwargs, families, split, val_ids, run_dir, history, best_epoch,
            from_bundle, log, track, command,
        )  # fmt: skip
        result.mlflow_run_id = run_id
        result.train_cache_dir = train_cache.folder
        if track:
            result.registered = tracking.log_bundle(
                result.bundle_dir, task, prep.input_size, len(families), register=register, champion=champion
            )
            if result.registered.get("version"):
                log(
                    f"registered {result.registered['registered_name']} "
                    f"version {result.registered['version']}" + (" as @champion" if champion else "")
                )
    return result


def joins_start(config: TrainConfig, from_bundle: Any | None, best_epoch: int) -> bool:
    """Whether the bundle averages the starting model with the fine-tune (``ensemble_with_start``): not
    when no epoch beat the start, whose weights are then the bundle's."""
    return from_bundle is not None and config.ensemble_with_start and best_epoch >= 0


def interpolate_weights(start: dict, tuned: dict, alpha: float) -> dict:
    """``start + alpha * (tuned - start)`` for every floating-point tensor (BatchNorm statistics too);
    integer buffers (BatchNorm's batch counts) keep the tuned value."""
    out = {}
    for key, value in tuned.items():
        if value.is_floating_point():
            base = start[key].to(value.device, value.dtype)
            out[key] = base + alpha * (value - base)
        else:
            out[key] = value
    return out


class _null_run:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def finish(
    task, config, model, arch, arch_kwargs, families, split, val_ids, run_dir, history, best_epoch,
    from_bundle, log, track, command,
) -> TrainResult:  # fmt: skip
    """Evaluate the best weights on whole validation photos, calibrate, write the bundle and the card."""
    from models.bundle import ModelBundle, save_bundle
    from models.predictor import Predictor
    from training import tracking
    from training.calibrate import recipe_fit
    from training.card import model_card
    from training.data import SUBTYPE_NAMES
    from training.evaluate import RUN_FILE, cross_fitted, ground_truth, photo_report, run_on_photos, save_run

    model.eval()
    subtypes = list(SUBTYPE_NAMES) if task == "detector" and arch_kwargs.get("num_subtypes") else []
    bundle = ModelBundle(
        name=f"loupe-{task}",
        version=run_dir.name,
        task=task,
        arch=arch,
        arch_kwargs=arch_kwargs,
        families=families,
        subtypes=subtypes,
        prep=config.prep.model_dump(mode="json"),
        data_version=split.data_version,
        config=config.model_dump(mode="json"),
    )
    device = next(model.parameters()).device
    predictor = Predictor(bundle, "torch", device.type, model)
    memory = None
    if task == "classifier" and config.memory is not None:
        from training.memory import remember_good_tiles

        t0 = time.perf_counter()
        memory = remember_good_tiles(split, val_ids, predictor, config.prep, config.memory, config.seed, log)
        log(f"memory of good tiles built in {time.perf_counter() - t0:.0f} s")
        if memory is not None:
            # Validation photos are scored with the memory, so calibration and thresholds include it.
            bundle = bundle.model_copy(update={"memory": memory.describe()})
            predictor = Predictor(bundle, "torch", device.type, model, memory)
    log(f"evaluating on {len(val_ids)} validation photos")
    t0 = time.perf_counter()
    run = run_on_photos(split.val, val_ids, predictor, config.prep, log=log)

    fit = recipe_fit(config.calibration, families)
    # The shipped calibration and thresholds use every validation photo (a buyer's fine-tune has few);
    # the reported figures are cross-fitted, each half judged at what the other half chose.
    calibration, thresholds = fit(run.raw, run.labels, **run.fit_args())
    cross_fit = cross_fitted(run, fit)
    probs = cross_fit[0]
    gt = ground_truth(split.val, run.image_ids) if task == "detector" else None
    report = photo_report(run, calibration, thresholds, gt, cross_fit=cross_fit)
    log(f"photo evaluation took {time.perf_counter() - t0:.0f} s")
    metrics = {
        **report["flat"],
        "best_epoch": best_epoch + 1,
        "epochs_run": len(history),
        "val_photos": len(run.image_ids),
        "train_photos": len(split.train_ids),
    }
    bundle = bundle.model_copy(
        update={
            "thresholds": thresholds,
            "calibration": calibration,
            "metrics": _jsonable({**metrics, "per_family": report["per_family"], "map": report.get("map")}),
        }
    )
    bundle = bundle.model_copy(
        update={"card": model_card(bundle, report, split, history, from_bundle, command)}
    )
    # An ensemble with its starting model is stored as `loupe ensemble` stores one (and was scored so).
    half = joins_start(config, from_bundle, best_epoch)
    bundle_dir = save_bundle(bundle, model.state_dict(), run_dir / "bundle", half=half)
    if memory is not None:
        memory.save(bundle_dir)
    (run_dir / "metrics.json").write_text(json.dumps(_jsonable(report), indent=1), encoding="utf-8")
    if task == "classifier":
        save_run(run, run_dir / RUN_FILE)  # what a bag of fine-tunes calibrates on (training.bag)
    if track:
        tracking.log_metrics(report["flat"])
        tracking.log_evaluation(report)
        tracking.log_dict_artifact(
            {"thresholds": thresholds, "calibration": calibration}, "evaluation/thresholds.json"
        )
        if run.labels.any():
            tracking.log_figure(tracking.pr_curves_figure(probs, run.labels, families), "pr_curves.png")
        tracking.log_figure(tracking.confusion_figure(report["confusion"]), "confusion.png")
        if run.panels:
            tracking.log_figure(tracking.predictions_grid_figure(run.panels), "val_predictions.png")
        import mlflow

        mlflow.log_artifact(str(bundle_dir / "card.md"), artifact_path="bundle")
    log(f"bundle written: {bundle_dir}")
    return TrainResult(run_dir, bundle_dir, metrics, history)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    return obj
