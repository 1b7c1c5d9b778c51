"""A bag of fine-tunes: the recipe trained on several splits of a buyer's few photos, shipped as one model.

A buyer's 30-60 photos leave a fine-tune a dozen validation photos and a few dozen to learn from, and
which photos land where moves it: on the benchmark's buyers one recipe's three seeds differ by up to
0.06 AUROC in a family (benchmarks/README.md). ``bag: K`` trains the recipe K times, at seeds seed ...
seed+K-1, each its own train/validation split, and ships the starting model's networks (with
``ensemble_with_start``) and every split's fine-tuned ones in one ``tile_ensemble``, their logits
averaged, and the splits' memories of good tiles averaged alike (bagging, Breiman 1996). The stages the
recipe freezes are the start's in every split, so they are read once per tile.

Its calibration and thresholds are fitted out of bag: on each split's validation photos as that split's
own model (the start and that split's networks, with its memory) scored them in training, so no photo
is scored by networks that learnt from it. The bag averages more networks than any split's model, so
its scores are a little less spread than those it is calibrated on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPLIT_DIR = "split-{}"


def train_bag(
    task: str,
    config: Any,
    data: str | Path,
    val_data: str | Path | None,
    from_ref: str | None,
    register: bool = False,
    champion: bool = False,
    out: str | Path | None = None,
    track: bool = True,
    epochs: int | None = None,
    prep_from_recipe: bool = False,
    log=print,
) -> Any:
    """Train ``config``'s recipe ``config.bag`` times from ``from_ref`` on ``data`` and write the bag;
    returns its :class:`training.engine.TrainResult`. Splits already finished in ``out`` are kept."""
    from configs import dump_config
    from models.bundle import load_bundle
    from models.refs import resolve_model_ref
    from training import tracking
    from training.engine import TrainResult, _jsonable, default_run_dir, train
    from training.evaluate import RUN_FILE

    if from_ref is None:
        raise ValueError("bag: trains several fine-tunes of one model; give it with --from")
    run_dir = Path(out) if out else default_run_dir(task)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = dump_config(config, run_dir / "config.yaml")
    split_dirs = []
    for k in range(config.bag):
        split_dir = run_dir / SPLIT_DIR.format(k)
        split_dirs.append(split_dir)
        if (split_dir / "bundle" / "bundle.json").is_file() and (split_dir / RUN_FILE).is_file():
            log(f"bag: split {k + 1}/{config.bag} already trained in {split_dir}")
            continue
        log(f"bag: split {k + 1}/{config.bag} (seed {config.seed + k})")
        train(
            task, config.model_copy(update={"bag": 1, "seed": config.seed + k}), data, val_data, from_ref,
            out=split_dir, track=track, epochs=epochs, prep_from_recipe=prep_from_recipe, log=log,
        )  # fmt: skip
    from_bundle = load_bundle(resolve_model_ref(from_ref, task))
    command = f"loupe train {task} --config {config_path} --data {data} --from {from_ref} --out {run_dir}"
    if val_data:
        command += f" --val-data {val_data}"
    bundle_dir, report = join_bag(
        split_dirs, from_bundle, config, run_dir / "bundle", run_dir.name, command, log
    )
    bundle = load_bundle(bundle_dir)
    metrics = {**report["flat"], "val_photos": report["photos"], "splits": len(split_dirs)}
    (run_dir / "metrics.json").write_text(json.dumps(_jsonable(report), indent=1), encoding="utf-8")
    result = TrainResult(run_dir, bundle_dir, metrics)
    if track:
        tags = {"loupe.task": task, "loupe.run_dir": str(run_dir.resolve()), "loupe.from": str(from_ref)}
        with tracking.tracked_run(
            config.experiment or f"loupe-{task}", run_dir.name, config.model_dump(mode="json"), config_path,
            bundle.data_version, tags,
        ) as run:  # fmt: skip
            tracking.log_metrics(report["flat"])
            tracking.log_evaluation(report)
            tracking.log_dict_artifact(
                {"thresholds": bundle.thresholds, "calibration": bundle.calibration},
                "evaluation/thresholds.json",
            )
            result.mlflow_run_id = run.info.run_id
            result.registered = tracking.log_bundle(
                bundle_dir, task, bundle.prep["input_size"], len(bundle.families), register=register,
                champion=champion,
            )  # fmt: skip
    log(f"bag written: {bundle_dir}")
    return result


def join_bag(
    split_dirs: list[Path], start: Any, config: Any, out: Path, version: str, command: str, log=print
) -> tuple[Path, dict]:
    """Write the bag of the fine-tunes trained in ``split_dirs`` (run folders of ``start``'s fine-tunes,
    each with its bundle and its validation photos' scores) to ``out``; returns it and its out-of-bag
    photo report."""
    from models.bundle import load_bundle, save_bundle
    from models.memory import MemoryBag, load_memory
    from models.pretrained import read_state_dict
    from training.calibrate import recipe_fit
    from training.card import bag_card
    from training.engine import _jsonable
    from training.ensemble import in_half, joined_state, member_states
    from training.evaluate import RUN_FILE, cross_fitted, joined_runs, load_run, photo_report

    starting = member_states(in_half(read_state_dict(start.weights_path)), start.arch)
    tuned, memories, kept, runs, template = [], [], [], [], None
    for split_dir in split_dirs:
        bundle = load_bundle(split_dir / "bundle")
        if template is None:
            template = bundle  # the bag keeps the first split's names, prep and families
        runs.append(load_run(split_dir / RUN_FILE))
        if bundle.memory:
            memories.append(load_memory(bundle.folder, bundle.memory["weights"]))
        if bundle.metrics.get("best_epoch", 1) == 0:
            kept.append(split_dir.name)  # no epoch beat the start: its weights are the start's
            continue
        members = member_states(in_half(read_state_dict(bundle.weights_path)), bundle.arch)
        tuned += members[len(starting) :] if config.ensemble_with_start else members
    arch, n = "tile_ensemble", len(starting)
    if not tuned:  # no split beat the start: the bag is the start's weights, calibrated out of bag
        arch, state, kwargs = start.arch, read_state_dict(start.weights_path), dict(start.arch_kwargs)
    elif config.ensemble_with_start:
        state, kwargs = joined_state(starting, tuned, start.arch_kwargs, template.arch_kwargs)
    else:  # the first fine-tune's networks lend their trunks as the start's would
        state, kwargs = joined_state(tuned[:n], tuned[n:], template.arch_kwargs, template.arch_kwargs)
    run = joined_runs(runs)
    fit = recipe_fit(config.calibration, template.families)
    calibration, thresholds = fit(run.raw, run.labels, **run.fit_args())
    report = photo_report(run, calibration, thresholds, cross_fit=cross_fitted(run, fit))
    memory = MemoryBag(parts=memories, weights=dict(memories[0].weights)) if memories else None
    log(
        f"bag of {len(split_dirs)} fine-tunes: {kwargs['members']} networks"
        + (f" ({', '.join(kept)} kept the start's weights)" if kept else "")
        + f", calibrated out of bag on {len(run.image_ids)} validation photos"
    )
    bundle = template.model_copy(
        update={
            "arch": arch,
            "arch_kwargs": kwargs,
            "config": config.model_dump(mode="json"),
            "version": version,
            "calibration": calibration,
            "thresholds": thresholds,
            "memory": memory.describe() if memory else None,
            "metrics": _jsonable(
                {**report["flat"], "val_photos": len(run.image_ids), "per_family": report["per_family"]}
            ),
        }
    )
    bundle = bundle.model_copy(update={"card": bag_card(bundle, report, split_dirs, kept, start, command)})
    bundle_dir = save_bundle(bundle, state, out, half=True)
    if memory is not None:
        memory.save(bundle_dir)
    return bundle_dir, report
