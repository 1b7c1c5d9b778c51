"""The shipped defaults' lineages (configs/default_*.yaml) and `loupe reproduce`, which runs one.

The shipped lineages take hours; here they are checked against the bundles they describe, and a tiny
lineage with every kind of stage runs end to end on a dozen generated 400x320 photos.
"""

from __future__ import annotations

import shutil

import pytest
import yaml
from typer.testing import CliRunner

from configs import ConfigError, load_config
from loupe.cli import app
from models.bundle import load_bundle
from models.refs import DEFAULT_DIR
from training.config import TrainConfig
from training.lineage import Lineage, load_lineage, merged


def _bundle_config(lineage: Lineage) -> dict:
    """The config the lineage's last bundle carries: a fine-tuned detector decodes as its starting model
    (training.engine.keep_decoding), a calibrate stage takes its recipe's scoring settings
    (training.validate.recalibrate), a decode stage changes the decoding alone, an ensemble keeps its
    first member's (training.ensemble)."""
    configs: dict[str, dict] = {}
    for i, stage in enumerate(lineage.stages):
        config = configs.get(lineage.start_of(i), {})
        if stage.make == "decode":
            config = merged(config, stage.set)
        elif stage.make == "ensemble":
            config = configs[stage.members[0]]
        else:
            recipe = lineage.recipe_for(stage).model_dump(mode="json")
            if stage.make == "calibrate":
                config = merged(config, {k: recipe[k] for k in ("calibration", "detector")})
            elif config and lineage.task == "detector":
                decoding = {k: v for k, v in config["detector"].items() if k != "loss_weights"}
                config = merged(recipe, {"detector": decoding})
            else:
                config = recipe
        configs[stage.version] = config
    return configs[lineage.stages[-1].version]


def _tiny_recipe(path, task: str, model: dict) -> None:
    """A recipe that trains for seconds on a dozen 400x320 photos, written to ``path``."""
    recipe = {
        "task": task,
        "model": model,
        "prep": {"work_long_side": 320, "tile_size": 128, "tile_overlap": 16, "input_size": 48},
        "cache": {"crops_per_box": 2, "negatives_per_photo": 2},
        "augment": None,
        "epochs": 1,
        "steps_per_epoch": 3,
        "batch_size": 8,
        "schedule": "cosine",
        "val_fraction": 0.3,
        "num_threads": 1,
    }
    path.write_text(yaml.safe_dump(recipe))


@pytest.mark.parametrize("task", ["classifier", "detector"])
def test_the_shipped_lineage_describes_the_shipped_default(task):
    lineage = load_lineage(f"default_{task}")
    shipped = load_bundle(DEFAULT_DIR / task)
    assert lineage.task == task
    assert lineage.stages[-1].version == shipped.version
    # every setting the shipped bundle saved is what its lineage resolves to, stage after stage
    assert _bundle_config(lineage) == TrainConfig.model_validate(shipped.config).model_dump(mode="json")
    last = lineage.stages[-1]
    if last.make == "ensemble":  # the mean of the members' logits: one network per member, no data of its own
        assert (shipped.arch, shipped.arch_kwargs["members"]) == ("tile_ensemble", len(last.members))
        assert shipped.data_version is None
    else:
        last_trained = [s for s in lineage.stages if s.make == "train"][-1]
        assert last_trained.data.version == shipped.data_version


def test_a_lineage_with_a_typo_fails_at_load_time_naming_the_field(tmp_path):
    bad = {
        "task": "detector",
        "stages": [
            {"version": "1", "make": "train", "data": {"seed": 1, "photos": 10}, "set": {"epoch": 2}},
        ],
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="epoch"):
        load_lineage(path)
    bad["stages"] = [
        {"version": "1", "make": "train", "data": {"seed": 1, "photos": 10}},
        {"version": "1.1", "make": "decode", "set": {"epochs": 2}},
    ]
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="a decode stage sets only `detector:`"):
        load_lineage(path)
    bad["stages"] = [{"version": "1", "make": "train"}]
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="a train stage needs `data:"):
        load_lineage(path)
    bad["stages"] = [{"version": "1", "make": "train", "data": {"seed": 1, "photos": 10, "size": "2000"}}]
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="is not WIDTHxHEIGHT"):
        load_lineage(path)
    bad["stages"] = [{"version": "1", "make": "decode", "set": {"detector": {"mirror": True}}}]
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="must train"):
        load_config(path, Lineage)


def test_reproduce_runs_every_kind_of_stage_keeps_what_is_done_and_resumes_a_cut_off_one(
    tmp_path, monkeypatch
):
    from datasets.manifest import build_manifest
    from datasets.synth import generate_po

    monkeypatch.setenv("LOUPE_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    _tiny_recipe(
        tmp_path / "tiny.yaml",
        "detector",
        {"arch": "tile_detector", "kwargs": {"pretrained": "none", "num_subtypes": 16, "channels": 16}},
    )
    # the lineage generates these photos again, byte for byte
    generate_po(tmp_path / "po", 12, seed=5, size=(400, 320), workers=1)
    same = {"seed": 5, "photos": 12, "size": "400x320", "version": build_manifest(tmp_path / "po").version}
    lineage = {
        "task": "detector",
        "recipe": str(tmp_path / "tiny.yaml"),
        "stages": [
            {"version": "1", "make": "train", "data": same, "set": {"detector": {"merge_iou": 0.4}}},
            {
                "version": "1.1",
                "make": "calibrate",
                "data": {"seed": 6, "photos": 6, "size": "400x320", "version": "000000000000"},
                "set": {"calibration": {"target_recall": 0.9}},
            },
            {"version": "1.2", "make": "decode", "set": {"detector": {"mirror": True}}},
            {"version": "2", "make": "train", "data": same, "set": {"epochs": 2}},
        ],
    }
    (tmp_path / "lineage.yaml").write_text(yaml.safe_dump(lineage))
    runner = CliRunner()
    args = ["reproduce", "detector", "--lineage", "lineage.yaml", "--out", "rep", "--no-track"]

    listed = runner.invoke(app, [*args, "--dry-run"])
    assert listed.exit_code == 0, listed.output
    assert len(listed.output.strip().splitlines()) == 4
    assert "1.1: recalibrate 1 on `loupe data synth" in listed.output
    assert not (tmp_path / "rep").exists()  # a dry run makes nothing

    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    rep = tmp_path / "rep"
    bundles = {v: load_bundle(rep / v / "bundle") for v in ("1", "1.1", "1.2", "2")}
    assert [b.version for b in bundles.values()] == ["1", "1.1", "1.2", "2"]
    assert out.output.strip().splitlines()[-1] == "rep/2/bundle"  # the last bundle, as --out was given
    assert (rep / "2" / "bundle" / "model.onnx").is_file()  # exported, as the shipped default is
    # the data: generated once under $LOUPE_DATA, checked against the versions the lineage records
    assert (tmp_path / "data" / "synth-5-12-400x320" / "annotations.json").is_file()
    assert f"data version {same['version']}, as the shipped stage's" in out.output
    assert "differs from the shipped stage's 000000000000: the generator has changed" in out.output
    # calibrate: the same weights, fitted again with the recipe's scoring settings (its target recall
    # and decoding: merge_iou back to the recipe's 0.5); decode: only the decoding moves
    assert bundles["1"].config["detector"]["merge_iou"] == 0.4
    assert bundles["1.1"].config["calibration"]["target_recall"] == 0.9
    assert bundles["1.1"].config["detector"]["merge_iou"] == 0.5
    weights = {v: (rep / v / "bundle" / "weights.pt").read_bytes() for v in ("1", "1.1", "1.2")}
    assert weights["1"] == weights["1.1"] == weights["1.2"]
    assert bundles["1.2"].calibration == bundles["1.1"].calibration
    assert bundles["1.2"].config["detector"] == {**bundles["1.1"].config["detector"], "mirror": True}
    # a fine-tune decodes as the stage it starts from, and ran the stage's own epochs
    assert bundles["2"].config["detector"] == bundles["1.2"].config["detector"]
    assert bundles["2"].config["detector"]["mirror"] is True
    assert bundles["2"].config["epochs"] == 2
    assert yaml.safe_load((rep / "2" / "recipe.yaml").read_text())["epochs"] == 2  # what it ran with

    # run again: every stage is kept as it is
    stamps = {v: (rep / v / "bundle" / "weights.pt").stat().st_mtime_ns for v in bundles}
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert again.output.count("done already") == 4
    assert {v: (rep / v / "bundle" / "weights.pt").stat().st_mtime_ns for v in bundles} == stamps

    # a training stage cut off after its checkpoints were written resumes from them
    shutil.rmtree(rep / "2" / "bundle")
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming rep/2 after epoch" in resumed.output and load_bundle(rep / "2" / "bundle").version == "2"

    # a later stage alone, from a bundle given on the command line
    only = runner.invoke(
        app,
        ["reproduce", "detector", "--lineage", "lineage.yaml", "--out", "only", "--no-track",
         "--start-at", "1.2", "--start", str(rep / "1.1" / "bundle")],
    )  # fmt: skip
    assert only.exit_code == 0, only.output
    assert sorted(p.name for p in (tmp_path / "only").iterdir()) == ["1.2", "2"]
    missing = runner.invoke(app, ["reproduce", "detector", "--lineage", "lineage.yaml", "--out", "none",
                                  "--start-at", "2", "--no-track"])  # fmt: skip
    assert missing.exit_code == 2 and "stage 2 starts from stage 1.2's bundle" in missing.output
    lost = runner.invoke(app, [*args, "--start", str(rep / "1.1" / "bundle")])
    assert lost.exit_code == 2 and "stage 1 starts from ImageNet" in lost.output


def test_a_lineage_branches_from_imagenet_and_ends_in_an_ensemble_of_its_branches(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("LOUPE_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    _tiny_recipe(
        tmp_path / "tiny.yaml", "classifier", {"arch": "tile_classifier", "kwargs": {"pretrained": "none"}}
    )
    photos = {"seed": 5, "photos": 12, "size": "400x320"}
    stages = [
        {"version": "1", "make": "train", "data": photos},
        {"version": "2", "make": "train", "data": photos, "set": {"seed": 1}},
        {"version": "b1", "make": "train", "data": photos, "start": "imagenet", "set": {"seed": 2}},
        {"version": "3", "make": "ensemble", "data": {**photos, "seed": 6}, "members": ["2", "b1"]},
    ]
    lineage = {"task": "classifier", "recipe": str(tmp_path / "tiny.yaml"), "stages": stages}
    (tmp_path / "lineage.yaml").write_text(yaml.safe_dump(lineage))
    runner = CliRunner()
    args = ["reproduce", "classifier", "--lineage", "lineage.yaml", "--out", "rep", "--no-track"]

    listed = runner.invoke(app, [*args, "--dry-run"])
    assert listed.exit_code == 0, listed.output
    assert "2: train from 1 on" in listed.output and "b1: train from ImageNet on" in listed.output
    assert "3: average 2 + b1, calibrated on `loupe data synth" in listed.output

    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    rep = tmp_path / "rep"
    bundles = {v: load_bundle(rep / v / "bundle") for v in ("1", "2", "b1", "3")}
    assert (bundles["3"].arch, bundles["3"].version) == ("tile_ensemble", "3")
    assert (rep / "3" / "bundle" / "model.onnx").is_file()
    # the ensemble averages the two branches' networks: b1 did not start from stage 2's weights
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        two, branch, whole = (bundles[v].build_module()(x) for v in ("2", "b1", "3"))
    assert torch.allclose(whole, (two + branch) / 2, atol=2e-2)
    assert not torch.allclose(two, branch, atol=2e-2)
    # stage 2 started from stage 1, the branch from a new network (a bundle's card says where it began)
    assert f"fine-tuned from `{bundles['1'].ref}`" in bundles["2"].card
    assert "fine-tuned from" not in bundles["b1"].card

    # the ensemble alone, its members read from --out; a member that is not there is named
    shutil.rmtree(rep / "3")
    again = runner.invoke(app, [*args, "--start-at", "3"])
    assert again.exit_code == 0, again.output
    assert load_bundle(rep / "3" / "bundle").version == "3" and "1: done" not in again.output
    assert "loupe reproduce classifier --start-at 3" in load_bundle(rep / "3" / "bundle").card
    shutil.rmtree(rep / "b1")
    shutil.rmtree(rep / "3")
    lost = runner.invoke(app, [*args, "--start-at", "3"])
    assert lost.exit_code == 2 and "stage 3 averages stage b1's bundle, which is not there" in lost.output

    # wrong branches fail at load time
    for bad, message in [
        ([*stages[:3], {**stages[3], "members": ["2", "4"]}], r"each must be a stage before it"),
        ([*stages[:3], {**stages[3], "members": ["2"]}], "averages 2 or more stages"),
        ([stages[0], {**stages[1], "start": "b1"}], "each must be a stage before it"),
        ([*stages[:3], {**stages[3], "make": "calibrate"}], "an ensemble stage, and only one"),
    ]:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**lineage, "stages": bad}))
        with pytest.raises(ConfigError, match=message):
            load_lineage(tmp_path / "bad.yaml")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**lineage, "task": "detector"}))
    with pytest.raises(ConfigError, match="ensemble stages average classifiers"):
        load_lineage(tmp_path / "bad.yaml")
