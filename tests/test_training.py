"""Tiny end-to-end training runs on generated photos, with a real MLflow SQLite store in tmp_path.

Everything is shrunk (a dozen 400×300 photos, 48-px network input, untrained backbones) so a run
takes seconds; the point is the plumbing: loss goes down, the bundle is complete, MLflow has the run
and the registered champion resolves back to the bundle.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest

from configs import ConfigError, load_config
from training.config import TrainConfig, load_train_config

PREP = {"work_long_side": 320, "tile_size": 128, "tile_overlap": 16, "input_size": 48}


def _config(task: str, **over) -> TrainConfig:
    model = (
        {"arch": "tile_classifier", "kwargs": {"pretrained": "none"}}
        if task == "classifier"
        else {"arch": "tile_detector", "kwargs": {"pretrained": "none", "num_subtypes": 16, "channels": 16}}
    )
    raw = {
        "task": task,
        "model": model,
        "prep": PREP,
        "cache": {"crops_per_box": 2, "negatives_per_photo": 2},
        "augment": None,  # no augmentation: the same crops every epoch, so the loss must fall
        "epochs": 3,
        "steps_per_epoch": 4,
        "batch_size": 8,
        "lr": 0.003,
        "schedule": "cosine",
        "val_fraction": 0.3,
        "num_threads": 1,
        "early_stopping": {"patience": 5},
        **over,
    }
    return TrainConfig.model_validate(raw)


def test_classifier_run_lowers_loss_logs_to_mlflow_and_registers_champion(po, data_dir, tmp_path):
    import mlflow

    from models.bundle import load_bundle
    from models.predictor import load_predictor
    from models.refs import resolve_model_ref
    from training.data import load_tile_cache
    from training.engine import train

    # 12 steps an epoch on the same crops (no augmentation): the third epoch's mean training loss is at
    # most 0.56 of the first's for each of seeds 0-9. The trained network's eval-mode loss on those
    # crops is no measure here: a random-init network's BatchNorm statistics from 36 batches of eight
    # 48-px crops are too rough (measured 2026-11-30: worse than untrained for 4 of seeds 0-4).
    config = _config("classifier", steps_per_epoch=12)
    result = train("classifier", config, po, register=True, champion=True, log=lambda m: None)
    losses = [h["train/loss"] for h in result.history]
    assert len(losses) == 3 and losses[-1] < 0.7 * losses[0]

    cache = load_tile_cache(result.train_cache_dir)
    # the cache round-trips the boxes each crop ignores, inside the crop, one family each
    assert len(cache.ignore_boxes) == len(cache.ignore_families) == len(cache)
    ignored = np.concatenate(cache.ignore_boxes)
    assert len(ignored) == sum(len(f) for f in cache.ignore_families)
    assert ignored.min(initial=0) >= 0 and ignored.max(initial=0) <= config.prep.input_size

    bundle = load_bundle(result.bundle_dir)
    assert bundle.task == "classifier" and bundle.families == ["stitching", "logo", "label"]
    assert set(bundle.thresholds) == set(bundle.families)
    assert all(0 <= t["review"] <= t["flag"] <= 1 for t in bundle.thresholds.values())
    assert set(bundle.calibration) >= set(bundle.families)
    assert bundle.prep["input_size"] == 48 and bundle.data_version
    for section in ("## Data", "## Validation", "## Thresholds", "## Known limits", "## Reproduce"):
        assert section in bundle.card
    assert (
        "Platt scaling on the max tile score" in bundle.card and "classifier's thresholds" not in bundle.card
    )

    # The MLflow run: config as params and artifact, per-epoch losses, final metrics, plots, the model.
    uri = f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("loupe-classifier")
    assert experiment.artifact_location.startswith((data_dir / "mlartifacts").resolve().as_uri())
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["lr"] == "0.003" and run.data.params["data_version"] == bundle.data_version
    assert run.data.tags["loupe.data_version"] == bundle.data_version
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 3
    assert "val/mean_auroc" in run.data.metrics or "val/stitching/average_precision" in run.data.metrics
    assert {"val/triage/defective_flagged", "val/triage/good_flagged"} <= set(run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "plots", "evaluation"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/confusion.png", "plots/val_predictions.png"} <= plots
    # the validation photos one by one, as a spreadsheet opens them
    table = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/evaluation/photos.csv").splitlines()
    assert table[0].split(",")[:4] == ["photo", "shot", "product", "defects"]
    assert (
        len(table) - 1
        == bundle.metrics["per_family"]["stitching"]["n_positive"]
        + bundle.metrics["per_family"]["stitching"]["n_negative"]
    )
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()

    # The registry: version 1 is the champion, and it resolves back to this bundle from $LOUPE_DATA
    # alone, even with MLflow's process-wide store pointed elsewhere (as a fresh `loupe predict` is).
    assert str(client.get_model_version_by_alias("loupe-classifier", "champion").version) == "1"
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the run did not leave MLflow pointed at its store
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # set_tracking_uri exports it; $LOUPE_DATA must decide
    try:
        folder = resolve_model_ref("models:/loupe-classifier@champion", "classifier")
    finally:
        mlflow.set_tracking_uri(previous)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    assert folder.resolve().is_relative_to(data_dir.resolve())
    assert load_bundle(folder).version == bundle.version
    assert resolve_model_ref("models:/loupe-classifier/1", "classifier") == folder
    predictor = load_predictor(folder)
    tiles = np.random.default_rng(0).normal(size=(2, 3, 48, 48)).astype(np.float32)
    probs = predictor.run(tiles)
    assert probs.shape == (2, 3) and np.all((probs >= 0) & (probs <= 1))

    # The MLflow pyfunc wraps the same bundle: float32 tiles in, the same probabilities out.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model("models:/loupe-classifier@champion")
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    assert tuple(pyfunc.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, 48, 48)
    assert np.allclose(pyfunc.predict(tiles), probs, atol=1e-5)


def test_fine_tune_that_never_beats_its_starting_model_keeps_that_models_weights(po, data_dir):
    import torch

    from models.bundle import load_bundle
    from models.pretrained import read_state_dict
    from training.engine import train

    source = train("classifier", _config("classifier", epochs=1), po, track=False, log=lambda m: None)
    lines: list[str] = []
    # No epoch can beat a crop AP by more than 1: the fine-tune has to fall back to where it started
    # (and has no fine-tuned weights to average with them, ensemble_with_start or not).
    config = _config(
        "classifier", lr=0.01, early_stopping={"patience": 2, "min_delta": 1.0}, ensemble_with_start=True
    )
    tuned = train(
        "classifier", config, po, from_ref=str(source.bundle_dir), out=data_dir / "ft", track=False,
        log=lines.append,
    )  # fmt: skip
    assert len(tuned.history) == 2 and tuned.metrics["best_epoch"] == 0
    assert any(line.startswith("starting model") for line in lines)
    assert any(line.startswith("no epoch beat the starting model") for line in lines)
    before = read_state_dict(load_bundle(source.bundle_dir).weights_path)
    after = read_state_dict(load_bundle(tuned.bundle_dir).weights_path)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_fine_tuned_detector_decodes_its_boxes_as_its_starting_model_does(po, data_dir):
    from models.bundle import load_bundle
    from training.engine import train

    quiet = {"track": False, "log": lambda m: None}
    decoding = {"score_threshold": 0.3, "top_k": 20, "merge_iou": 0.4, "home_level_only": True}
    decoding.update(mirror=True, mirror_found_only=True, guide_threshold=0.2)
    source = train("detector", _config("detector", epochs=1, detector=decoding), po, **quiet)
    lines: list[str] = []
    # The recipe decodes at other settings and trains with its own loss weights.
    recipe = _config("detector", epochs=1, detector={"score_threshold": 0.1, "loss_weights": {"size": 2.0}})
    tuned = train(
        "detector", recipe, po, from_ref=str(source.bundle_dir), out=data_dir / "ft", track=False,
        log=lines.append,
    )  # fmt: skip
    saved = load_bundle(tuned.bundle_dir).config["detector"]
    assert {k: saved[k] for k in decoding} == decoding
    assert saved["loss_weights"] == {"size": 2.0}
    assert any(line.startswith("decoding as the starting model does") for line in lines)
    # Without --from the recipe's own settings apply.
    fresh = train("detector", recipe, po, out=data_dir / "fresh", **quiet)
    assert load_bundle(fresh.bundle_dir).config["detector"]["score_threshold"] == 0.1


def test_calibrate_refits_a_models_thresholds_at_a_recipes_targets_and_leaves_the_model_as_it_was(
    po, data_dir, tmp_path
):
    import mlflow
    import torch
    import yaml
    from typer.testing import CliRunner

    from datasets.reader import read_dataset
    from loupe.cli import app
    from models.bundle import load_bundle
    from models.predictor import load_predictor
    from training.calibrate import fit_thresholds
    from training.engine import train
    from training.evaluate import run_on_photos

    # Stitching, logo and label calibrated per pyramid level, as in the per-level test below (the
    # held-out check off, as there).
    per_level = {
        "per_level": ["stitching", "logo", "label"],
        "per_level_min_photos": 3,
        "per_level_held_out": False,
    }
    config = _config(
        "classifier", steps_per_epoch=36, calibration=per_level, prep={**PREP, "levels": [1.0, 0.5]}
    )
    source = train("classifier", config, po, val_data=po, track=False, log=lambda m: None)
    before = {p.name: p.read_bytes() for p in source.bundle_dir.iterdir()}
    assert load_bundle(source.bundle_dir).calibration.get("levels")
    targets = {"target_recall": 0.8, "review_recall": 0.9}
    recipe = config.model_copy(update={"calibration": config.calibration.model_copy(update=targets)})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json")), encoding="utf-8")
    out = tmp_path / "recalibrated"
    args = ["calibrate", "--model", str(source.bundle_dir), "--data", str(po), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--config", str(tmp_path / "recipe.yaml"), "--version", "1.1"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(str(out))

    bundle = load_bundle(out)
    original = load_bundle(source.bundle_dir)
    assert bundle.version == "1.1" and bundle.config["calibration"]["target_recall"] == 0.8
    assert original.config["calibration"]["target_recall"] == 0.95
    assert bundle.config["lr"] == original.config["lr"]  # the training record stays
    weights = torch.load(out / "weights.pt", weights_only=True)
    trained = torch.load(source.bundle_dir / "weights.pt", weights_only=True)
    assert weights.keys() == trained.keys() and all(torch.equal(weights[k], trained[k]) for k in trained)
    assert {p.name: p.read_bytes() for p in source.bundle_dir.iterdir()} == before
    assert "## Recalibrated as version 1.1" in bundle.card and "loupe calibrate --model" in bundle.card

    # Its calibration and thresholds are what the recipe's targets give on the 12 photos as the network
    # scores them, per level before the max, uncalibrated (the old per-level fits play no part).
    dataset = read_dataset(po)
    ids = [im["id"] for im in dataset.coco["images"]]
    network = load_predictor(out).with_bundle(bundle.model_copy(update={"calibration": {}}))
    plain = run_on_photos(dataset, ids, network, bundle.prep, n_panels=0)
    calibration, thresholds = fit_thresholds(
        plain.raw, plain.labels, plain.families, 0.8, 0.9, level_raw=plain.level_raw, levels=plain.levels,
        level_families=per_level["per_level"], level_min_photos=3, level_held_out=False,
    )  # fmt: skip
    fitted = bundle.calibration["levels"]
    assert fitted.keys() == calibration["levels"].keys() and fitted != original.calibration["levels"]
    for family, per_level_fit in calibration["levels"].items():
        for level, platt in per_level_fit.items():
            assert fitted[family][level] == pytest.approx(platt, rel=1e-4)
    for family, t in thresholds.items():
        assert bundle.thresholds[family] == pytest.approx(t, rel=1e-5)
        assert bundle.calibration[family] == pytest.approx(calibration[family], rel=1e-5)
    assert bundle.thresholds != original.thresholds
    assert bundle.metrics["val_photos"] == 12

    uri = f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("loupe-calibrate").experiment_id])
    assert run.data.params["recipe"] == str(tmp_path / "recipe.yaml") and run.data.metrics

    # Its own folder is refused: the model it reads would be overwritten.
    again = CliRunner().invoke(app, ["calibrate", "--model", str(out), "--data", str(po), "--out", str(out)])
    assert again.exit_code == 2 and "own folder" in again.output


@pytest.mark.parametrize("task", ["classifier", "detector"])
def test_a_recipe_with_augmentation_trains_the_same_model_twice_from_one_seed(po, data_dir, task):
    import torch

    from models.bundle import load_bundle
    from models.pretrained import read_state_dict
    from training.engine import train

    def weights(name: str, seed: int) -> dict:
        config = _config(task, epochs=1, augment="augment_finetune", seed=seed)
        result = train(task, config, po, out=data_dir / name, track=False, log=lambda m: None)
        return read_state_dict(load_bundle(result.bundle_dir).weights_path)

    first, again, other = weights("a", 0), weights("b", 0), weights("c", 1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


ON_CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not _cuda(), reason="needs a CUDA device"))


# On CUDA too: the starting weights are read back on the CPU and averaged with the GPU-trained ones.
@pytest.mark.parametrize("device", ["cpu", ON_CUDA])
def test_wise_ft_ships_the_average_of_the_starting_and_the_best_fine_tuned_weights(po, data_dir, device):
    import torch

    from models.bundle import load_bundle
    from models.pretrained import read_state_dict
    from training.engine import load_checkpoint, train

    quiet = {"track": False, "log": lambda m: None}
    # A barely trained start, so that the fine-tune's epochs beat it and there is something to average.
    source = train(
        "classifier", _config("classifier", epochs=1, lr=1e-6, device=device), po, out=data_dir / "s", **quiet
    )
    tuned = train(
        "classifier", _config("classifier", wise_ft=0.25, device=device), po, from_ref=str(source.bundle_dir),
        out=data_dir / "w", **quiet,
    )  # fmt: skip
    assert tuned.metrics["best_epoch"] >= 1
    start = read_state_dict(load_bundle(source.bundle_dir).weights_path)
    best = load_checkpoint(data_dir / "w" / "checkpoints" / "best.pt")["model"]
    shipped = read_state_dict(load_bundle(tuned.bundle_dir).weights_path)
    moved = 0
    for key, value in shipped.items():
        if not value.is_floating_point():
            continue
        expected = start[key] + 0.25 * (best[key].float() - start[key])
        assert torch.allclose(value, expected, atol=1e-6), key
        moved += int(not torch.equal(best[key].float(), start[key]))
    assert moved > 0  # the fine-tune changed weights, and the bundle holds neither end
    assert "WiSE-FT" in load_bundle(tuned.bundle_dir).card


def test_a_fine_tune_ensembled_with_its_start_averages_the_starting_and_the_fine_tuned_logits(po, data_dir):
    import torch

    from models.bundle import load_bundle
    from models.predictor import load_predictor
    from models.pretrained import read_state_dict
    from models.registry import build_model
    from training.engine import load_checkpoint, train
    from training.ensemble import with_starting_members

    quiet = {"track": False, "log": lambda m: None}
    source = train("classifier", _config("classifier", epochs=1, lr=1e-6), po, out=data_dir / "s", **quiet)
    lines: list[str] = []
    frozen = {"arch": "tile_classifier", "kwargs": {"pretrained": "none", "freeze_stages": 2}}
    tuned = train(
        "classifier", _config("classifier", model=frozen, ensemble_with_start=True), po,
        from_ref=str(source.bundle_dir), out=data_dir / "j", track=False, log=lines.append,
    )  # fmt: skip
    assert tuned.metrics["best_epoch"] >= 1
    assert any("logits averaged with the fine-tune's: 2 members" in line for line in lines)
    bundle = load_bundle(tuned.bundle_dir)
    assert bundle.arch == "tile_ensemble" and bundle.arch_kwargs["members"] == 2
    assert bundle.weights_dtype == "float16"  # as `loupe ensemble` stores an ensemble
    # The stem and the 2 frozen stages are the start's: the fine-tuned member reads the start's.
    assert (bundle.arch_kwargs["trunk_of"], bundle.arch_kwargs["shared_stages"]) == ([0, 0], 2)
    assert "ensemble_with_start" in bundle.card and set(bundle.thresholds) == set(bundle.families)

    kwargs = {
        k: v for k, v in bundle.arch_kwargs.items() if k not in ("members", "trunk_of", "shared_stages")
    }
    fine_tuned = build_model("tile_classifier", **{**kwargs, "pretrained": "none"})
    fine_tuned.load_state_dict(load_checkpoint(data_dir / "j" / "checkpoints" / "best.pt")["model"])
    x = torch.randn(3, 3, PREP["input_size"], PREP["input_size"])
    with torch.no_grad():
        start = load_bundle(source.bundle_dir).build_module()(x)
        tuned_logits = fine_tuned.eval()(x)
        whole = bundle.build_module()(x)
    assert torch.allclose(whole, (start + tuned_logits) / 2, atol=2e-2)  # half-precision weights
    assert not torch.allclose(whole, start, atol=2e-2) and not torch.allclose(whole, tuned_logits, atol=2e-2)
    # Reading the shared parts once scores as reading them once per member, patches included; and so
    # does the ONNX export.
    unshared = build_model("tile_ensemble", **{**bundle.arch_kwargs, "trunk_of": None, "shared_stages": 0})
    unshared.load_state_dict(bundle.build_module().state_dict())
    with torch.no_grad():
        a, b = bundle.build_module().forward_with_patches(x), unshared.eval().forward_with_patches(x)
    assert torch.allclose(a["logits"], b["logits"], atol=1e-5) and torch.allclose(
        a["patches"], b["patches"], atol=1e-5
    )
    onnx = load_predictor(tuned.bundle_dir, backend="onnx", task="classifier", threads=1).run(x.numpy())
    assert np.allclose(onnx, torch.sigmoid(whole).numpy(), atol=1e-4)
    # Fine-tuned again, an ensemble keeps its members as they were and adds as many fine-tuned ones.
    retuned = bundle.build_module()
    with torch.no_grad():
        retuned.members[1].net.classifier.bias.add_(1.0)
    joined, kwargs = with_starting_members(retuned, "tile_ensemble", dict(bundle.arch_kwargs), bundle)
    assert kwargs["members"] == 4 and (kwargs["trunk_of"], kwargs["shared_stages"]) == ([0, 0, 0, 0], 2)
    saved = read_state_dict(bundle.weights_path)
    assert all(torch.equal(joined.state_dict()[k], saved[k].float()) for k in saved)
    with torch.no_grad():
        assert torch.allclose(joined(x), (whole + retuned(x)) / 2, atol=2e-2)

    with pytest.raises(ValueError, match="ensemble_with_start"):
        _config("detector", ensemble_with_start=True)


def test_a_bag_of_fine_tunes_averages_each_splits_networks_with_the_start_and_calibrates_out_of_bag(
    po, data_dir
):
    import mlflow
    import torch

    from models.bundle import load_bundle
    from models.memory import MemoryBag, load_memory, tile_surprise
    from models.predictor import load_predictor
    from models.pretrained import read_state_dict
    from training.bag import SPLIT_DIR
    from training.calibrate import recipe_fit
    from training.engine import split_data, train
    from training.ensemble import member_states
    from training.evaluate import RUN_FILE, joined_runs, load_run

    source = train(
        "classifier", _config("classifier", epochs=1, lr=1e-6), po, track=False, log=lambda m: None
    )
    frozen = {"arch": "tile_classifier", "kwargs": {"pretrained": "none", "freeze_stages": 2}}
    memory = {"weights": {"logo": 1.0}, "min_val_tiles": 2}
    config = _config("classifier", model=frozen, ensemble_with_start=True, bag=2, epochs=2, memory=memory)
    lines: list[str] = []
    bag = train(
        "classifier", config, po, from_ref=str(source.bundle_dir), out=data_dir / "bag", register=True,
        log=lines.append,
    )  # fmt: skip
    splits = [data_dir / "bag" / SPLIT_DIR.format(k) for k in range(2)]
    runs = [load_run(d / RUN_FILE) for d in splits]
    # Each split is the recipe at its own seed: its own validation photos, scored by its own model.
    assert [sorted(r.image_ids) for r in runs] == [
        sorted(split_data(po, None, 0.3, k).val_ids) for k in range(2)
    ]
    assert runs[0].image_ids != runs[1].image_ids
    passed = [d for d in splits if load_bundle(d / "bundle").metrics["best_epoch"] >= 1]
    assert passed, "no split beat the start: nothing to bag"

    bundle = load_bundle(bag.bundle_dir)
    assert bundle.arch == "tile_ensemble" and bundle.arch_kwargs["members"] == 1 + len(passed)
    # Every fine-tuned network reads the start's stem and 2 frozen stages.
    assert (bundle.arch_kwargs["trunk_of"], bundle.arch_kwargs["shared_stages"]) == (
        [0] * (1 + len(passed)),
        2,
    )
    x = torch.randn(3, 3, PREP["input_size"], PREP["input_size"])
    with torch.no_grad():
        start = load_bundle(source.bundle_dir).build_module()(x)
        tuned = []
        for d in passed:  # a split's bundle is its start then its fine-tuned network
            split_bundle = load_bundle(d / "bundle")
            one = member_states(read_state_dict(split_bundle.weights_path), split_bundle.arch)[1]
            net = load_bundle(source.bundle_dir).build_module()
            net.load_state_dict({k: v.float() for k, v in one.items()})
            tuned.append(net.eval()(x))
        whole = bundle.build_module()(x)
    assert torch.allclose(whole, torch.stack([start, *tuned]).mean(0), atol=2e-2)

    # Calibrated out of bag: on both splits' validation photos as their own models scored them.
    joined = joined_runs(runs)
    _, thresholds = recipe_fit(config.calibration, bundle.families)(
        joined.raw, joined.labels, **joined.fit_args()
    )
    assert all(bundle.thresholds[f] == pytest.approx(thresholds[f]) for f in bundle.families)
    assert bundle.metrics["val_photos"] == len(joined.image_ids)
    assert "a bag of 2 fine-tunes" in bundle.card and "out of bag" in bundle.card

    # The splits' memories, each of its own training photos, averaged.
    saved = load_memory(bag.bundle_dir, bundle.memory["weights"])
    assert isinstance(saved, MemoryBag) and len(saved.parts) == len(bundle.memory["parts"]) == 2
    parts = [load_memory(d / "bundle", {"logo": 1.0}) for d in splits]
    predictor = load_predictor(bag.bundle_dir, task="classifier")
    patches = predictor.patch_features(x.numpy())
    scales = np.ones(len(x))
    assert np.allclose(
        tile_surprise(patches, scales, saved), np.mean([tile_surprise(patches, scales, p) for p in parts], 0)
    )
    onnx = load_predictor(bag.bundle_dir, backend="onnx", task="classifier")
    assert np.allclose(onnx.run(x.numpy()), torch.sigmoid(whole).numpy(), atol=1e-4)

    # Tracked as its own MLflow run and registered; run again, it keeps the splits it finished.
    uri = f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("loupe-classifier").experiment_id], "attributes.run_name = 'bag'"
    )
    assert (
        run.data.tags["loupe.from"] == str(source.bundle_dir)
        and "val/triage/good_flagged" in run.data.metrics
    )
    assert bag.registered["version"]
    before = read_state_dict(bundle.weights_path)
    again: list[str] = []
    train("classifier", config, po, from_ref=str(source.bundle_dir), out=data_dir / "bag", track=False,
          log=again.append)  # fmt: skip
    assert sum("already trained" in line for line in again) == 2
    after = read_state_dict(bundle.weights_path)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)

    with pytest.raises(ValueError, match="bag"):
        _config("detector", bag=2)
    with pytest.raises(ValueError, match="--from"):
        train("classifier", config, po, out=data_dir / "nofrom", track=False, log=lambda m: None)


def test_fine_tune_keeps_the_source_prep_unless_told_to_take_the_recipes(po, data_dir):
    from models.bundle import load_bundle
    from training.engine import train

    quiet = {"track": False, "log": lambda m: None}
    source = train("classifier", _config("classifier", epochs=1), po, out=data_dir / "src", **quiet)
    # A recipe at twice the working scale: a plain fine-tune ignores it, --prep-from-recipe takes it.
    sharper = _config("classifier", epochs=1, prep={**PREP, "work_long_side": 640, "levels": [1.0, 0.5]})
    kept = train("classifier", sharper, po, from_ref=str(source.bundle_dir), out=data_dir / "a", **quiet)
    moved = train(
        "classifier", sharper, po, from_ref=str(source.bundle_dir), out=data_dir / "b",
        prep_from_recipe=True, **quiet,
    )  # fmt: skip
    assert load_bundle(kept.bundle_dir).prep == load_bundle(source.bundle_dir).prep
    prep = load_bundle(moved.bundle_dir).prep
    assert prep["work_long_side"] == 640 and prep["levels"] == [1.0, 0.5]
    assert "--prep-from-recipe" in load_bundle(moved.bundle_dir).card


def test_detector_run_resume_and_validate(po, data_dir):
    from models.bundle import load_bundle
    from training.engine import train
    from training.evaluate import format_report
    from training.validate import validate

    out = data_dir / "runs" / "det"
    # two batch-augmenting worker processes (the resumed run takes the setting from the checkpoint);
    # they reopen the tile cache from its folder
    config = _config("detector", epochs=1, loader_workers=2)
    first = train("detector", config, po, out=out, track=False, log=lambda m: None)
    assert len(first.history) == 1
    resumed = train(
        "detector", _config("detector"), po, resume=out, epochs=2, track=False, log=lambda m: None
    )
    assert [h["epoch"] for h in resumed.history] == [1, 2]  # continued, not restarted
    bundle = load_bundle(resumed.bundle_dir)
    assert bundle.task == "detector" and len(bundle.subtypes) == 16
    assert "Platt scaling on the best box's score" in bundle.card and "classifier's thresholds" in bundle.card
    assert "| AUROC (95 %) |" in bundle.card
    assert 0.0 <= bundle.metrics["val/map50"] <= 1.0 and "stitching" in bundle.metrics["map"]["per_family"]

    reports = validate(str(resumed.bundle_dir), po, track=False, log=lambda m: None)
    (report,) = reports.values()
    assert report["photos"] == 12 and set(report["per_family"]) == {"stitching", "logo", "label"}
    assert 0.0 <= report["map"]["map50"] <= 1.0
    assert "map_supported" not in report  # no classifier given
    # mAP by framing: each defect box is scored once, with the photos of its own shot
    annotations = json.loads((po / "annotations.json").read_text())["annotations"]
    by_shot = report["map_by_group"]["shot"]
    assert sum(g["boxes"] for g in by_shot.values()) == len(annotations)
    assert all(0.0 <= g["map50"] <= 1.0 for g in by_shot.values())

    # With a classifier, the detector's boxes are also scored as triage scores them; judged against
    # the shipped detector on the same photos, each figure comes with its paired-bootstrap interval.
    both = validate(
        "default", po, detector_ref=str(resumed.bundle_dir), against_detector="default", track=False,
        log=lambda m: None,
    )  # fmt: skip
    report = both[bundle.ref]
    assert report["map"] == reports[bundle.ref]["map"]  # the detector's own mAP does not change
    against = report["against"]
    assert against["ref"].startswith("loupe-detector@") and against["photos"] == 12
    everything = against["map50"]["all"]
    assert everything["model"] == pytest.approx(report["map"]["map50"])
    # two epochs on 12 photos box less than the shipped detector does
    assert everything["baseline"] > everything["model"] and everything["low"] <= everything["diff"]
    assert report["flat"]["val/against/all/map50_diff"] == everything["diff"]
    # photo by photo, the baseline's scores beside the model's
    assert len(report["photo_rows"]) == 12
    assert all(0.0 <= r[f"{f}_against"] <= 1.0 for r in report["photo_rows"] for f in bundle.families)
    alone = reports[bundle.ref]["photo_rows"]
    assert [r["photo"] for r in report["photo_rows"]] == [r["photo"] for r in alone]
    assert f"against {against['ref']} on the same 12 photos" in format_report(report)
    (classifier_report,) = [r for name, r in both.items() if name != bundle.ref]
    assert "against" not in classifier_report  # no --against: the classifier is judged alone
    assert not any(key.endswith("_against") for key in classifier_report["photo_rows"][0])
    with pytest.raises(ValueError, match="compare a classifier with --against"):
        validate(str(resumed.bundle_dir), po, against="default", track=False, log=lambda m: None)
    assert 0.0 <= report["map_supported"]["map50"] <= 1.0
    assert report["flat"]["val/supported/map50"] == report["map_supported"]["map50"]
    assert "boxes as triage scores them" in format_report(report)
    assert "best box per family" in format_report(report)
    assert "best box" not in format_report(classifier_report)
    # The breakdown by framing reads each photo's shot from the PO's annotations.
    shots = Counter(im["shot"] for im in json.loads((po / "annotations.json").read_text())["images"])
    assert len(shots) == 2, "seed 5's 12 photos hold whole-product shots and close-ups"
    by_shot = classifier_report["per_group"]["shot"]
    assert {v: g["photos"] for v, g in by_shot.items()} == dict(shots)
    # photo by photo, in the dataset's order, under their own file names
    images = json.loads((po / "annotations.json").read_text())["images"]
    rows = classifier_report["photo_rows"]
    assert [r["photo"] for r in rows] == [im["file_name"] for im in images]
    assert [r["shot"] for r in rows] == [im["shot"] for im in images]


def _paired_runs(po, guide_threshold: float):
    """The shipped classifier's and detector's runs on 6 photos, the detector guided at ``guide_threshold``
    (its bundle's decoding settings changed; the same network): the dataset, ids, both predictors and runs."""
    from datasets.reader import read_dataset
    from models.predictor import load_predictor
    from training.evaluate import run_on_photos

    dataset = read_dataset(po)
    ids = [im["id"] for im in dataset.coco["images"]][:6]
    classifier = load_predictor("default", backend="onnx", task="classifier")
    shipped = load_predictor("default", backend="onnx", task="detector")
    config = shipped.bundle.config
    decoding = {**config["detector"], "guide_threshold": guide_threshold}
    detector = shipped.with_bundle(
        shipped.bundle.model_copy(update={"config": {**config, "detector": decoding}})
    )
    cls_run = run_on_photos(dataset, ids, classifier, classifier.bundle.prep)
    det_run = run_on_photos(dataset, ids, detector, detector.bundle.prep, support=cls_run)
    return dataset, ids, classifier, detector, cls_run, det_run


def test_supported_boxes_are_the_detectors_scored_with_a_tile_of_the_classifier(po):
    # On every tile, as the detector alone reads them (the guided read is the next test's).
    *_, cls_run, det_run = _paired_runs(po, guide_threshold=0.0)
    assert det_run.detections and len(det_run.supported_detections) == len(det_run.detections)
    key = ("image_id", "category_id")
    own = sorted((d[key[0]], d[key[1]], tuple(np.round(d["bbox"], 3))) for d in det_run.detections)
    supported = sorted(
        (d[key[0]], d[key[1]], tuple(np.round(d["bbox"], 3))) for d in det_run.supported_detections
    )
    assert own == supported  # the same boxes, in the photo's pixels
    by_box = {
        (d["image_id"], d["category_id"], tuple(np.round(d["bbox"], 3))): d["score"]
        for d in det_run.detections
    }
    for d in det_run.supported_detections:
        score = by_box[(d["image_id"], d["category_id"], tuple(np.round(d["bbox"], 3)))]
        tile_scores = cls_run.photo_scores[d["image_id"]][0].tile_scores[:, d["category_id"] - 1]
        # sqrt(box score * support): the support is one of that photo's tile scores for the family
        assert np.min(np.abs(tile_scores - d["score"] ** 2 / score)) < 1e-4


def test_val_scores_the_boxes_triage_finds_on_the_tiles_its_classifier_points_at(po):
    from models.photo import as_prep, detect_photo, guided_tiles, supported_detections
    from training.data import load_working_photo
    from training.evaluate import _coco_results

    # A high guide threshold: on these few photos the detector then skips tiles that hold boxes.
    dataset, ids, classifier, detector, cls_run, det_run = _paired_runs(po, guide_threshold=0.5)

    def boxes(results: list[dict], image_id: int) -> list:
        return sorted(
            (d["category_id"], tuple(np.round(d["bbox"], 2)), round(d["score"], 4))
            for d in results
            if d["image_id"] == image_id
        )

    images = {im["id"]: im for im in dataset.coco["images"]}
    prep = as_prep(detector.bundle.prep)
    differs = 0
    for image_id in ids:
        rgb = load_working_photo(dataset.image_path(images[image_id]), prep)
        scores, to_photo = cls_run.photo_scores[image_id]
        tiles = guided_tiles(detector, prep, scores, classifier.bundle.prep)
        guided = supported_detections(detect_photo(rgb, detector, prep, tiles=tiles), scores)
        everywhere = supported_detections(detect_photo(rgb, detector, prep), scores)
        expected = boxes(_coco_results(image_id, guided, to_photo), image_id)
        assert boxes(det_run.supported_detections, image_id) == expected
        differs += expected != boxes(_coco_results(image_id, everywhere, to_photo), image_id)
    assert differs  # on some photo the tiles it skipped held boxes


def test_recipes_in_configs_load_and_wrong_task_is_refused():
    for name, task in [
        ("train_classifier", "classifier"),
        ("train_detector", "detector"),
        ("finetune_classifier", "classifier"),
        ("finetune_detector", "detector"),
    ]:
        assert load_train_config(name, task).task == task
    with pytest.raises(ConfigError, match="detector recipe"):
        load_train_config("train_detector", "classifier")
    with pytest.raises(ConfigError, match="scale_jitter"):
        load_config("train_classifier", TrainConfig, {"cache": {"scale_jitter": [2.0, 1.0]}})
    with pytest.raises(ConfigError, match="per_level names unknown families"):
        load_config("finetune_classifier", TrainConfig, {"calibration": {"per_level": ["seams"]}})


def test_fine_tuning_keeps_the_source_model_weights_prep_and_families(tmp_path):
    import torch

    from models.bundle import ModelBundle, load_bundle, save_bundle
    from models.registry import build_model
    from training.engine import build_for_training

    kwargs = {"pretrained": "none", "num_classes": 3, "freeze_stages": 0}
    source = build_model("tile_classifier", **kwargs)
    prep = {**PREP, "input_size": 64}
    folder = save_bundle(
        ModelBundle(
            name="loupe-classifier", task="classifier", arch="tile_classifier", arch_kwargs=kwargs, prep=prep
        ),
        source,
        tmp_path / "src",
    )
    recipe = load_train_config("finetune_classifier", "classifier")
    model, arch_kwargs, families = build_for_training(
        recipe, "classifier", load_bundle(folder), torch.device("cpu")
    )
    assert families == ["stitching", "logo", "label"] and arch_kwargs["freeze_stages"] == 5
    for (name, a), b in zip(source.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".blocks.4." in n for n in frozen) and any("classifier" in n for n in trainable)
    assert not any(".blocks.5." in n for n in frozen)
    with pytest.raises(ValueError, match="is a classifier, not a detector"):
        build_for_training(recipe, "detector", load_bundle(folder), torch.device("cpu"))


def test_per_level_calibration_is_fitted_with_the_bundle_and_scores_photos_as_it_was_fitted(po, data_dir):
    from datasets.reader import read_dataset
    from models.bundle import load_bundle
    from models.predictor import Predictor, load_predictor
    from training.calibrate import combine_levels
    from training.engine import train
    from training.evaluate import run_on_photos

    # All 12 photos validate, so some families have enough photos with and without a defect; the
    # network trains on them long enough to rank them the right way round at some level (at 12 steps an
    # epoch it ranked stitching backwards at both levels, and nothing was left to calibrate). The
    # held-out check is off: this tests that the fit ships and serves as fitted, not that it pays on
    # a network trained for seconds (test_evaluate tests the check).
    config = _config(
        "classifier", steps_per_epoch=36,
        calibration={"per_level": ["stitching", "logo", "label"], "per_level_min_photos": 3,
                     "per_level_held_out": False},
        prep={**PREP, "levels": [1.0, 0.5]},
    )  # fmt: skip
    result = train("classifier", config, po, val_data=po, track=False, log=lambda m: None)
    bundle = load_bundle(result.bundle_dir)
    dataset = read_dataset(po)
    ids = [im["id"] for im in dataset.coco["images"]]

    # The same weights without the per-level parameters: the plain max over tiles, per level.
    plain_bundle = bundle.model_copy(update={"calibration": {}})
    plain_bundle._folder = bundle.folder
    plain_predictor = Predictor(plain_bundle, "torch", "cpu", plain_bundle.build_module())
    plain = run_on_photos(dataset, ids, plain_predictor, bundle.prep, n_panels=0)
    assert plain.levels == (0.5, 1.0) and plain.level_raw.shape == (12, 2, 3)
    np.testing.assert_allclose(plain.raw, plain.level_raw.max(axis=1), rtol=1e-6)

    counts = plain.labels.sum(axis=0)
    fitted = {f for f, n in zip(plain.families, counts, strict=True) if min(n, 12 - n) >= 3}
    assert fitted, f"the generated PO has no family with 3 photos each way: {counts}"
    levels = bundle.calibration["levels"]
    assert set(levels) == fitted and all(set(levels[f]) == {"0.5", "1"} for f in fitted)
    assert f"Per pyramid level first ({', '.join(sorted(fitted))})" in bundle.card
    assert ("Asked for but not fitted" in bundle.card) == (len(fitted) < 3)

    # Served as saved: each photo's score is the max over its levels after each level's own Platt fit,
    # which is not the plain max.
    served = run_on_photos(dataset, ids, load_predictor(bundle.folder), bundle.prep, n_panels=0)
    expected = combine_levels(plain.level_raw, plain.families, plain.levels, levels)
    np.testing.assert_allclose(served.raw, expected, rtol=1e-5, atol=1e-6)
    k = plain.families.index(sorted(fitted)[0])
    assert not np.allclose(served.raw[:, k], plain.raw[:, k])


def test_pick_false_flags_takes_the_strongest_clean_tiles_per_family_once():
    from training.mining import clean_tiles, pick_false_flags

    tiles = np.array([[0, 0, 100, 100], [80, 0, 180, 100], [160, 0, 260, 100], [0, 80, 100, 180]], np.float32)
    # the defect box lies 70 % in tile 1 (it holds it) and 30 % in tile 2 (clean)
    clean = clean_tiles(tiles, np.array([[120, 40, 170, 60]], np.float32))
    assert clean.tolist() == [True, False, True, True]
    scores = np.array([[0.9, 0.6], [0.95, 0.1], [0.7, 0.8], [0.4, 0.2]], np.float32)
    # family 0: tile 0 then 2 (1 holds the defect, 3 is under the threshold); family 1: 2 then 0
    assert pick_false_flags(scores, clean, per_family=2, threshold=0.5) == [0, 2]
    assert pick_false_flags(scores, clean, per_family=1, threshold=0.5) == [0, 2]
    assert pick_false_flags(scores, clean, per_family=1, threshold=0.85) == [0]
    assert pick_false_flags(scores, clean, per_family=3, threshold=0.99) == []


def test_a_photo_labelled_with_a_family_no_box_locates_has_no_tile_known_clean():
    from training.mining import known_clean

    tiles = np.array([[0, 0, 100, 100], [100, 0, 200, 100]], np.float64)
    box = {"bbox": [10, 10, 20, 20], "family": "logo", "category_id": 2}
    image = {"width": 200, "height": 100, "labels": ["logo"]}
    assert known_clean(image, [box], tiles, (100, 200, 3)).tolist() == [False, True]
    # Labelled stitching too, but no stitching box: the skipped stitch could be in either tile.
    image = {**image, "labels": ["logo", "stitching"]}
    assert not known_clean(image, [box], tiles, (100, 200, 3)).any()
    assert not known_clean({**image, "labels": ["label"]}, [], tiles, (100, 200, 3)).any()
    assert known_clean({**image, "labels": []}, [], tiles, (100, 200, 3)).all()


def test_a_fine_tune_mines_its_starting_models_false_flags_as_hard_negatives(po, data_dir):
    import torch

    from datasets.coco import annotations_by_image
    from datasets.reader import read_dataset
    from models.photo import as_prep
    from models.predictor import load_predictor
    from models.pretrained import read_state_dict
    from training.data import load_working_photo, photo_boxes_work
    from training.engine import train
    from training.mining import clean_tiles, mine_false_flags

    source = train("classifier", _config("classifier", epochs=1), po, track=False, log=lambda m: None)
    # An untrained network's scores sit near 0.5: a low threshold makes every clean tile a candidate.
    predictor = load_predictor(source.bundle_dir, task="classifier")
    dataset = read_dataset(po)
    ids = [im["id"] for im in dataset.coco["images"]]
    mined = mine_false_flags(dataset, ids, predictor, per_family=1, threshold=0.01)
    anns, images = annotations_by_image(dataset.coco), {im["id"]: im for im in dataset.coco["images"]}
    for image_id, boxes in mined.items():
        assert 1 <= len(boxes) <= 3  # one per family, a tile flagged for two families taken once
        rgb = load_working_photo(dataset.image_path(images[image_id]), as_prep(predictor.bundle.prep))
        defects = photo_boxes_work(images[image_id], anns.get(image_id, []), rgb.shape)[0]
        h, w = rgb.shape[:2]
        assert (boxes >= 0).all() and (boxes <= 1).all()  # fractions of the photo
        # no tile that holds a defect is taught as good
        assert clean_tiles(boxes * np.array([w, h, w, h], np.float32), defects).all()
    assert not any(len(b) for b in mine_false_flags(dataset, ids, predictor, 1, threshold=0.999).values())

    def lookalikes(lines: list[str]) -> int:
        return int(
            next(li for li in lines if li.startswith("tile cache")).split("'lookalike': ")[1].split(",")[0]
        )

    plain, tuned = [], []
    train("classifier", _config("classifier", epochs=1), po, from_ref=str(source.bundle_dir),
          out=data_dir / "plain", track=False, log=plain.append)  # fmt: skip
    cache = {"crops_per_box": 2, "negatives_per_photo": 2, "mined_negatives": 1, "mine_threshold": 0.01}
    train("classifier", _config("classifier", epochs=1, cache=cache), po, from_ref=str(source.bundle_dir),
          out=data_dir / "mined", track=False, log=tuned.append)  # fmt: skip
    line = next(li for li in tuned if li.startswith("false flags of"))
    on_train = int(line.split("): ")[1].split(" on train")[0])
    # one look-alike crop per mined tile (lookalike_crops: 1), beside the generator's named look-alikes
    assert on_train > 0 and lookalikes(tuned) >= on_train and lookalikes(tuned) > lookalikes(plain)
    # The same seeded fine-tune again reads its mined tiles back instead of scoring the photos, and
    # still ends at the same weights: what ran before the first step (mining builds a network, whose
    # random init draws from torch's generator) does not change the dropout masks it trains with.
    again: list[str] = []
    train("classifier", _config("classifier", epochs=1, cache=cache), po, from_ref=str(source.bundle_dir),
          out=data_dir / "mined-again", track=False, log=again.append)  # fmt: skip
    assert any("read back from" in li for li in again)
    first, second = (
        read_state_dict(data_dir / run / "bundle" / "weights.pt") for run in ("mined", "mined-again")
    )
    assert all(torch.equal(first[k], second[k]) for k in first)
    # Without a starting model there is nothing to mine.
    scratch: list[str] = []
    train("classifier", _config("classifier", epochs=1, cache=cache), po, out=data_dir / "s", track=False,
          log=scratch.append)  # fmt: skip
    assert any("needs a starting model" in li for li in scratch)


def test_a_detector_fine_tune_mines_its_starting_detectors_boxes_that_hold_no_defect(po, data_dir):
    from datasets.coco import annotations_by_image
    from datasets.reader import read_dataset
    from models.photo import as_prep, detect_photo
    from models.predictor import load_predictor
    from training.data import load_working_photo, photo_boxes_work
    from training.engine import train
    from training.mining import clean_tiles, mine_false_flags

    source = train("detector", _config("detector", epochs=1), po, track=False, log=lambda m: None)
    predictor = load_predictor(source.bundle_dir, task="detector")
    prep = as_prep(predictor.bundle.prep)
    dataset = read_dataset(po)
    ids = [im["id"] for im in dataset.coco["images"]]
    # An untrained heatmap sits near its prior (0.1): a low threshold turns up boxes on every photo.
    mined = mine_false_flags(dataset, ids, predictor, per_family=1, threshold=0.02)
    anns, images = annotations_by_image(dataset.coco), {im["id"]: im for im in dataset.coco["images"]}
    assert sum(len(b) for b in mined.values()) > len(ids)
    for image_id, boxes in mined.items():
        assert len(boxes) <= 3  # the strongest per family
        rgb = load_working_photo(dataset.image_path(images[image_id]), prep)
        h, w = rgb.shape[:2]
        pixels = boxes * np.array([w, h, w, h], np.float32)
        defects = photo_boxes_work(images[image_id], anns.get(image_id, []), rgb.shape)[0]
        assert clean_tiles(pixels, defects).all()  # no box that holds a defect is taught as good
        # they are the boxes the detector reports on that photo, the strongest clean one of each family
        found = detect_photo(rgb, predictor, prep, score_threshold=0.02)
        clean = clean_tiles(np.array([d[0] for d in found], np.float32).reshape(-1, 4), defects)
        strongest = {}
        for (box, score, family, _), ok in zip(found, clean, strict=True):
            if ok and score > strongest.get(family, (None, -1.0))[1]:
                strongest[family] = (box, score)
        expected = sorted(tuple(b) for b, _ in strongest.values())
        assert np.allclose(sorted(map(tuple, pixels)), expected, atol=0.05)
    assert not any(len(b) for b in mine_false_flags(dataset, ids, predictor, 1, threshold=0.999).values())

    log: list[str] = []
    cache = {"crops_per_box": 2, "negatives_per_photo": 2, "mined_negatives": 1, "mine_threshold": 0.02}
    train("detector", _config("detector", epochs=1, cache=cache), po, from_ref=str(source.bundle_dir),
          out=data_dir / "mined", track=False, log=log.append)  # fmt: skip
    line = next(li for li in log if li.startswith("false flags of"))
    on_train = int(line.split("): ")[1].split(" on train")[0])
    lookalikes = next(li for li in log if li.startswith("tile cache")).split("'lookalike': ")[1]
    assert on_train > 0 and int(lookalikes.split(",")[0]) >= on_train  # a crop around each

    # Saved beside the tile caches, and read back by a second recipe from the same model on the same
    # photos (emptied here, so a second mining would show)
    (saved,) = (data_dir / "cache").glob("mined-*.json")
    rows = json.loads(saved.read_text())
    assert sum(len(b) for b in rows["train"].values()) == on_train
    saved.write_text(json.dumps({**rows, "train": {i: [] for i in rows["train"]}}))
    again: list[str] = []
    train("detector", _config("detector", epochs=1, cache=cache), po, from_ref=str(source.bundle_dir),
          out=data_dir / "again", track=False, log=again.append)  # fmt: skip
    line = next(li for li in again if li.startswith("false flags of"))
    assert f"read back from {saved}" in line and " 0 on train photos" in line
    # another threshold is another set of false flags
    other = {**cache, "mine_threshold": 0.03}
    train("detector", _config("detector", epochs=1, cache=other), po, from_ref=str(source.bundle_dir),
          out=data_dir / "other", track=False, log=lambda m: None)  # fmt: skip
    assert len(list((data_dir / "cache").glob("mined-*.json"))) == 2


def test_a_fine_tune_remembers_its_good_tiles_and_scores_logos_against_them(po, data_dir):
    import mlflow.pyfunc

    from cv.prep import prepare_tiles
    from models.bundle import load_bundle
    from models.errors import ModelFileError
    from models.memory import MEMORY_FILE, load_memory, tile_surprise
    from models.photo import as_prep, score_photo
    from models.predictor import _sigmoid, load_predictor
    from training.engine import split_data, train
    from training.memory import clean_tile_patches

    source = train("classifier", _config("classifier", epochs=1), po, track=False, log=lambda m: None)
    lines: list[str] = []
    memory = {"weights": {"logo": 1.5}, "min_val_tiles": 2}
    config = _config("classifier", epochs=1, memory=memory)
    tuned = train("classifier", config, po, from_ref=str(source.bundle_dir), out=data_dir / "tuned",
                  register=True, log=lines.append)  # fmt: skip
    bundle = load_bundle(tuned.bundle_dir)
    assert bundle.memory["weights"] == {"logo": 1.5} and (tuned.bundle_dir / MEMORY_FILE).is_file()
    saved = load_memory(tuned.bundle_dir, bundle.memory["weights"])
    assert any(li.startswith("memory: level") for li in lines)

    # The memory holds the patches of the training photos' clean tiles and nothing else.
    torch_pred = load_predictor(tuned.bundle_dir, task="classifier")
    split = split_data(po, None, 0.3, 0)  # the run's own split (same recipe seed and fraction)
    dataset = split.train
    clean = clean_tile_patches(dataset, split.train_ids, torch_pred, bundle.prep)
    assert set(saved.banks) <= set(clean)
    for level, bank in saved.banks.items():
        expected = np.concatenate(clean[level]).astype(np.float16)
        assert len(bank) == len(expected)  # under max_patches: all of them
        assert {r.tobytes() for r in bank.astype(np.float16)} == {r.tobytes() for r in expected}

    # Serving adds weight x surprise to logo's logits only; ONNX Runtime agrees with torch.
    onnx_pred = load_predictor(tuned.bundle_dir, backend="onnx", task="classifier")
    plain = load_predictor(tuned.bundle_dir, task="classifier")
    plain.memory = None
    prep = as_prep(bundle.prep)
    from training.data import load_working_photo

    image = dataset.coco["images"][0]
    rgb = load_working_photo(dataset.image_path(image), prep)
    with_memory, without = score_photo(rgb, torch_pred, prep), score_photo(rgb, plain, prep)
    assert np.allclose(with_memory.tile_scores[:, [0, 2]], without.tile_scores[:, [0, 2]], atol=1e-5)
    batch, tiles = prepare_tiles(rgb, prep)
    surprise = tile_surprise(torch_pred.patch_features(batch), np.array([t.scale for t in tiles]), saved)
    assert np.abs(surprise).max() > 0.1
    logits = torch_pred.raw(batch)["logits"][:, 1]
    assert np.allclose(with_memory.tile_scores[:, 1], _sigmoid(logits + 1.5 * surprise), atol=1e-5)
    assert np.allclose(score_photo(rgb, onnx_pred, prep).tile_scores, with_memory.tile_scores, atol=2e-3)

    # The registered MLflow pyfunc scores tiles as triage does when told their levels; without them it
    # gives the network's own probabilities, which leave the memory out.
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    uri = f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(tuned.registered["model_uri"])
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    levels = [float(t.scale) for t in tiles]
    by_level = pyfunc.predict(batch, params={"levels": levels})
    assert np.allclose(by_level, with_memory.tile_scores, atol=1e-5)
    assert np.allclose(pyfunc.predict(batch), torch_pred.run(batch), atol=1e-5)
    assert not np.allclose(by_level[:, 1], torch_pred.run(batch)[:, 1], atol=1e-3)
    with pytest.raises(ValueError, match="one pyramid level per tile"):
        pyfunc.predict(batch, params={"levels": levels[:-1]})

    # A damaged memory names its file; a detector recipe cannot ask for one.
    (tuned.bundle_dir / MEMORY_FILE).write_bytes(b"not an npz")
    with pytest.raises(ModelFileError, match=r"memory\.npz"):
        load_predictor(tuned.bundle_dir, task="classifier")
    with pytest.raises(ValueError, match="memory"):
        _config("detector", memory=memory)


def test_distilling_a_family_adds_its_cross_entropy_against_the_starting_models_scores(po, data_dir):
    import math

    import torch

    from configs import ConfigError
    from models.bundle import load_bundle
    from training.classifier_loop import classifier_loss
    from training.engine import load_checkpoint, train

    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, -1.0], [0.0, -1.0, 1.0]])  # -1: the crop cannot answer
    kept = torch.tensor([[0.2, 0.5, 0.9], [0.7, 0.1, 0.5]])

    def bce(z: float, t: float) -> float:
        p = 1 / (1 + math.exp(-z))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    plain = (bce(0, 1) + bce(2, 0) + bce(1, 0) + bce(0, 1)) / 4
    assert classifier_loss(logits, labels).item() == pytest.approx(plain, rel=1e-6)
    held = plain + 3.0 * (bce(0, 0.2) + bce(1, 0.7)) / 2  # stitching only, every crop, ignore or not
    weights = torch.tensor([3.0, 0.0, 0.0])
    assert classifier_loss(logits, labels, kept, weights).item() == pytest.approx(held, rel=1e-6)
    # held hard enough, a stitching score is pulled towards the starting model's 0.2, against its
    # label 1 (a positive gradient lowers it: gradient descent steps against it)
    z = logits.clone().requires_grad_(True)
    classifier_loss(z, labels, kept, torch.tensor([30.0, 0.0, 0.0])).backward()
    assert z.grad[0, 0] > 0

    quiet = {"track": False, "log": lambda m: None}
    source = train("classifier", _config("classifier", epochs=1), po, out=data_dir / "src", **quiet)
    lines: list[str] = []
    config = _config("classifier", epochs=1, distill={"stitching": 3.0})
    tuned = train("classifier", config, po, from_ref=str(source.bundle_dir), out=data_dir / "h",
                  track=False, log=lines.append)  # fmt: skip
    assert any(li.startswith("distilling the teacher's scores") for li in lines)
    assert "learning without forgetting" in load_bundle(tuned.bundle_dir).card
    # the loop trains with it: the same seeded run without it ends at other weights
    plain = train("classifier", _config("classifier", epochs=1), po, from_ref=str(source.bundle_dir),
                  out=data_dir / "p", **quiet)  # fmt: skip
    last = [load_checkpoint(r.bundle_dir.parent / "checkpoints" / "last.pt")["model"] for r in (tuned, plain)]
    assert any(not torch.equal(last[0][k], last[1][k]) for k in last[0])
    lines.clear()
    train("classifier", config, po, out=data_dir / "s", track=False, log=lines.append)
    assert any("needs one (--from): not distilling" in li for li in lines)
    lines.clear()
    with pytest.raises(ConfigError, match="not families of this model"):
        wrong = _config("classifier", distill={"seams": 1.0})
        train("classifier", wrong, po, from_ref=str(source.bundle_dir), out=data_dir / "bad", track=False,
              log=lines.append)  # fmt: skip
    assert not any("tile cache" in li for li in lines)  # refused before the crops are cut
    with pytest.raises(ValueError, match="distill"):
        _config("detector", distill={"stitching": 1.0})


def test_an_ensemble_of_teachers_is_distilled_into_one_classifier(po, data_dir):
    import torch

    from configs import ConfigError
    from models.bundle import load_bundle
    from models.classifier import MeanLogits
    from training.engine import load_checkpoint, train

    quiet = {"track": False, "log": lambda m: None}
    sources = [
        train("classifier", _config("classifier", epochs=1, seed=n), po, out=data_dir / f"t{n}", **quiet)
        for n in (0, 1)
    ]
    members = [load_bundle(s.bundle_dir).build_module() for s in sources]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = (members[0](x) + members[1](x)) / 2
        assert torch.allclose(MeanLogits(members)(x), expected, atol=1e-6)
        assert not torch.allclose(members[0](x), members[1](x))  # two teachers, two opinions

    refs = [str(s.bundle_dir) for s in sources]
    lines: list[str] = []
    every = {"stitching": 1.0, "logo": 1.0, "label": 1.0}
    config = _config("classifier", epochs=1, distill=every, teachers=refs)
    # no --from: the teachers, not a starting model, hold the scores
    student = train("classifier", config, po, out=data_dir / "student", track=False, log=lines.append)
    assert any(li.startswith("teacher: the mean logits of") for li in lines)
    assert not any("not distilling" in li for li in lines)
    assert "an ensemble distilled" in load_bundle(student.bundle_dir).card
    plain = train("classifier", _config("classifier", epochs=1), po, out=data_dir / "alone", **quiet)
    last = [
        load_checkpoint(r.bundle_dir.parent / "checkpoints" / "last.pt")["model"] for r in (student, plain)
    ]
    assert any(not torch.equal(last[0][k], last[1][k]) for k in last[0])

    # A teacher that reads other tiles is refused, naming it, before any crop is cut.
    other = _config("classifier", epochs=1, distill={"logo": 1.0}, teachers=refs[:1],
                    prep={**PREP, "input_size": PREP["input_size"] // 2})  # fmt: skip
    lines.clear()
    with pytest.raises(ConfigError, match="reads tiles prepared otherwise"):
        train("classifier", other, po, out=data_dir / "bad", track=False, log=lines.append)
    assert not any("tile cache" in li for li in lines)
    with pytest.raises(ValueError, match="teachers are distilled"):
        _config("classifier", teachers=refs)


def test_an_ensemble_bundle_averages_its_members_logits_and_is_calibrated_exported_and_fine_tuned(
    po, data_dir
):
    import numpy as np
    import torch

    from models.bundle import load_bundle
    from models.predictor import load_predictor
    from training.engine import train
    from training.ensemble import ensemble_bundle

    quiet = {"track": False, "log": lambda m: None}
    sources = [
        train("classifier", _config("classifier", epochs=1, seed=n), po, out=data_dir / f"m{n}", **quiet)
        for n in (0, 1)
    ]
    refs = [str(s.bundle_dir) for s in sources]
    out = ensemble_bundle(refs, po, data_dir / "ensemble", version="e1", **quiet)
    bundle = load_bundle(out)
    assert (bundle.arch, bundle.arch_kwargs["members"], bundle.version) == ("tile_ensemble", 2, "e1")
    assert bundle.weights_dtype == "float16"
    assert set(bundle.thresholds) == set(bundle.families) and bundle.calibration  # fitted afresh
    assert "The mean logits of 2 tile classifiers" in bundle.card and "as version e1" in bundle.card

    x = torch.randn(3, 3, PREP["input_size"], PREP["input_size"])
    with torch.no_grad():
        members = [load_bundle(r).build_module()(x) for r in refs]
        whole = load_bundle(out).build_module()(x)
    assert torch.allclose(whole, (members[0] + members[1]) / 2, atol=2e-2)  # half-precision weights
    assert not torch.allclose(whole, members[0], atol=2e-2)
    batch = x.numpy()
    onnx = load_predictor(out, backend="onnx", task="classifier", threads=1).run(batch)
    assert np.allclose(onnx, load_predictor(out, backend="torch", task="classifier").run(batch), atol=1e-4)

    # A buyer fine-tunes an ensemble as any classifier (--from); what it writes is still an ensemble.
    tuned = train(
        "classifier", _config("classifier", epochs=1), po, from_ref=str(out), out=data_dir / "ft", **quiet
    )
    assert load_bundle(tuned.bundle_dir).arch == "tile_ensemble"

    with pytest.raises(ValueError, match="at least 2 classifiers"):
        ensemble_bundle(refs[:1], po, data_dir / "one", **quiet)
    other = train("classifier", _config("classifier", epochs=1, prep={**PREP, "tile_overlap": 8}), po,
                  out=data_dir / "other", **quiet)  # fmt: skip
    with pytest.raises(ValueError, match=r"differs from .* in prep"):
        ensemble_bundle([refs[0], str(other.bundle_dir)], po, data_dir / "bad", **quiet)
    assert not (data_dir / "bad").exists()
