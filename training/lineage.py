"""How a shipped default model was made, stage by stage, and the one command that makes it again.

The defaults were not trained in one run: each is a chain of stages (train from nothing, continue
``--from`` the last stage on new generated photos, recalibrate, change how boxes are decoded, average
two branches' scores), run over several days while the recipe grew. ``configs/default_<task>.yaml``
holds that chain as data: for every stage the generated PO it used (seed, photos, size, and the data
version the shipped stage recorded), and what its recipe differed in from today's
``configs/train_<task>.yaml`` (taken from the ``config`` each shipped bundle saved).
:func:`reproduce` runs it: ``loupe reproduce classifier``.

A stage whose bundle is already in the output folder is kept (delete its folder to make it again), and
a training stage that was cut off resumes from its last checkpoint, so the command can be run again
after an interruption.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from datasets.synth.config import parse_size
from training.config import DEFAULT_CONFIGS, DetectorSettings, TrainConfig, load_train_config

DEFAULT_LINEAGES = {"classifier": "default_classifier.yaml", "detector": "default_detector.yaml"}
RECIPE_FILE = "recipe.yaml"
IMAGENET = "imagenet"  # a train stage's `start:` for a new network


class SynthPO(BaseModel):
    """A PO from the generator (``loupe data synth``): same seed, size and generator, same photos."""

    model_config = ConfigDict(extra="forbid")

    seed: int
    photos: int = Field(ge=1)
    size: str | None = Field(None, description="WIDTHxHEIGHT for every photo; null: the generator's size mix")
    version: str | None = Field(
        None,
        description="the data version (content hash) the shipped stage recorded; another one means the "
        "generator has changed since that stage ran",
    )

    @field_validator("size")
    @classmethod
    def _size(cls, size: str | None) -> str | None:
        if size is not None:
            parse_size(size)  # a typo fails at load time
        return size

    @property
    def folder_name(self) -> str:
        return f"synth-{self.seed}-{self.photos}" + (f"-{self.size}" if self.size else "")

    def command(self, folder: Path) -> str:
        size = f" --size {self.size}" if self.size else ""
        return f"loupe data synth --out {folder} --photos {self.photos} --seed {self.seed}{size}"


class Stage(BaseModel):
    """One step of a lineage. ``train``: the recipe with ``set`` merged in, on ``data``, from the previous
    stage (the first starts from ImageNet; ``start`` names another). ``calibrate``: the previous stage's
    weights, calibration and thresholds fitted again on ``data`` with the scoring settings of that recipe
    (``loupe calibrate``). ``decode``: the previous stage with its bundle's ``set`` changed (a detector's
    decoding only). ``ensemble``: the classifiers of the stages ``members`` as one bundle, their logits
    averaged, calibrated on ``data`` (``loupe ensemble``)."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, description="the bundle's version, and its folder's name")
    make: Literal["train", "calibrate", "decode", "ensemble"]
    data: SynthPO | None = None
    set: dict[str, Any] = Field(
        default_factory=dict, description="what differs from the recipe (nested, as in its YAML)"
    )
    start: str | None = Field(
        None,
        description=f"a train stage: the stage it starts from (default: the one before it); "
        f"`{IMAGENET}`: a new network, a second branch of the lineage",
    )
    members: list[str] = Field(default_factory=list, description="an ensemble stage: the stages it averages")
    note: str = Field("", description="what the stage did then that today's code does not repeat")

    @model_validator(mode="after")
    def _check(self) -> Stage:
        if self.start is not None and self.make != "train":
            raise ValueError(f"stage {self.version}: only a train stage has a `start:`")
        if (self.make == "ensemble") != bool(self.members):
            raise ValueError(f"stage {self.version}: an ensemble stage, and only one, names its `members:`")
        if self.make == "ensemble" and (len(set(self.members)) < 2 or self.set):
            raise ValueError(
                f"stage {self.version}: an ensemble stage averages 2 or more stages' classifiers "
                f"(got {self.members}) and sets nothing (got {sorted(self.set)})"
            )
        if self.make == "decode" and self.data is not None:
            raise ValueError(f"stage {self.version}: a decode stage reads no photos; remove its `data:`")
        if self.make != "decode" and self.data is None:
            raise ValueError(f"stage {self.version}: a {self.make} stage needs `data: {{seed, photos}}`")
        if self.make == "decode":
            bad = set(self.set) - {"detector"}
            if bad or not self.set:
                raise ValueError(
                    f"stage {self.version}: a decode stage sets only `detector:` (how boxes are read), "
                    f"got {sorted(self.set) or 'nothing'}"
                )
            DetectorSettings.model_validate(self.set["detector"])  # a typo fails at load time
        return self


class Lineage(BaseModel):
    """The stages that made a shipped default, first to last (``configs/default_<task>.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    task: Literal["classifier", "detector"]
    recipe: str | None = Field(None, description="the recipe every stage starts from (default train_<task>)")
    stages: list[Stage] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Lineage:
        if self.stages[0].make != "train":
            raise ValueError(f"the first stage ({self.stages[0].version}) must train: nothing precedes it")
        versions = [s.version for s in self.stages]
        if len(set(versions)) != len(versions):
            raise ValueError(f"stage versions must be unique (they name the folders), got {versions}")
        if self.task != "detector" and any(s.make == "decode" for s in self.stages):
            raise ValueError("decode stages change a detector's decoding; a classifier has none")
        if self.task != "classifier" and any(s.make == "ensemble" for s in self.stages):
            raise ValueError("ensemble stages average classifiers; a detector's boxes are not averaged")
        for i, stage in enumerate(self.stages):
            earlier = versions[:i]
            named = [stage.start] if stage.start not in (None, IMAGENET) else list(stage.members)
            if any(v not in earlier for v in named):
                raise ValueError(
                    f"stage {stage.version} names {named}: each must be a stage before it ({earlier})"
                )
        for stage in self.stages:
            if stage.make != "decode":
                self.recipe_for(stage)  # a wrong key or value in `set` fails here, at load time
        return self

    @property
    def recipe_name(self) -> str:
        return self.recipe or DEFAULT_CONFIGS[self.task]

    def recipe_for(self, stage: Stage) -> TrainConfig:
        """The recipe ``stage`` ran with: the lineage's recipe with the stage's ``set`` merged in."""
        base = load_train_config(self.recipe_name, self.task).model_dump(mode="json")
        return TrainConfig.model_validate(merged(base, stage.set))

    def start_of(self, i: int) -> str | None:
        """The stage version stage ``i`` starts from; None for a new network (ImageNet)."""
        stage = self.stages[i]
        if stage.start is not None:
            return None if stage.start == IMAGENET else stage.start
        return self.stages[i - 1].version if i > 0 else None

    def index(self, version: str) -> int:
        for i, stage in enumerate(self.stages):
            if stage.version == version:
                return i
        versions = [s.version for s in self.stages]
        raise ValueError(f"no stage {version!r} in this lineage: its stages are {versions}")


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged in: nested mappings key by key, anything else replaced."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def load_lineage(name_or_path: str | Path) -> Lineage:
    """Load and check a lineage (``default_classifier`` or a path)."""
    from configs import load_config

    return load_config(name_or_path, Lineage)


def describe(lineage: Lineage, out: Path, data_root: Path) -> list[str]:
    """One line per stage: what it makes from what, on which photos, with which recipe changes."""
    lines = []
    for i, stage in enumerate(lineage.stages):
        verb = {"train": "train from", "calibrate": "recalibrate", "decode": "change the decoding of"}
        if stage.make == "ensemble":
            line = f"{stage.version}: average {' + '.join(stage.members)}, calibrated"
        else:
            line = f"{stage.version}: {verb[stage.make]} {lineage.start_of(i) or 'ImageNet'}"
        if stage.data is not None:
            line += f" on `{stage.data.command(data_root / stage.data.folder_name)}`"
        if stage.set:
            line += f"; {'the bundle' if stage.make == 'decode' else lineage.recipe_name} with {stage.set}"
        lines.append(f"{line} -> {out / stage.version / 'bundle'}")
    return lines


def synth_po(po: SynthPO, data_root: Path, log: Callable[[str], None] = print) -> Path:
    """The stage's generated PO, made once under ``data_root`` and reused after that."""
    from configs import dump_config
    from datasets.synth import generate_po, load_synth_config

    folder = data_root / po.folder_name
    if (folder / "annotations.json").is_file():
        log(f"photos: {folder} (already generated)")
        return folder
    log(f"photos: {po.command(folder)}")
    config = load_synth_config()
    generate_po(folder, po.photos, po.seed, parse_size(po.size) if po.size else None, config)
    dump_config(config, folder / "synth.yaml")
    return folder


def redecode(source: Path, out: Path, detector: dict[str, Any], version: str) -> Path:
    """``source`` with its detector decoding changed (weights, calibration, thresholds as they were)."""
    from models.bundle import load_bundle, save_bundle_from

    bundle = load_bundle(source)
    config = merged(bundle.config, {"detector": detector})
    DetectorSettings.model_validate(config["detector"])
    card = (
        f"# {bundle.name} {version}\n\n{bundle.name} {version} is version {bundle.version} (weights, "
        f"calibration and thresholds unchanged) decoding its boxes with {detector}.\n\n{bundle.card}"
    )
    bundle = bundle.model_copy(update={"config": config, "version": version, "card": card})
    return save_bundle_from(source, bundle, out)


def reproduce(
    lineage: Lineage,
    out: Path,
    data_root: Path,
    start_at: str | None = None,
    start: str | None = None,
    track: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Run ``lineage`` into ``out/<version>/bundle``, one stage after another; returns the last bundle.

    ``start_at`` begins at that stage, from ``start`` (a model ref: the bundle of the stage it starts
    from) or else from that bundle in ``out``; an ensemble's members made before ``start_at`` are read
    from ``out``. The last bundle is exported to ONNX, as shipped.
    """
    from configs import dump_config
    from datasets.manifest import build_manifest
    from models.bundle import BUNDLE_FILE, ONNX_FILE
    from training.engine import CHECKPOINTS, LAST, train
    from training.ensemble import ensemble_bundle
    from training.export import export_model
    from training.validate import _resolve, recalibrate

    first = lineage.index(start_at) if start_at else 0
    opening = lineage.stages[first]
    source = None if opening.make == "ensemble" else lineage.start_of(first)
    if start and source is None:
        what = "averages stages of its own" if opening.make == "ensemble" else "starts from ImageNet"
        raise ValueError(
            f"stage {opening.version} {what}: --start names the model that a later stage (--start-at) "
            "starts from"
        )
    made = {source: _resolve(start, lineage.task)} if start else {}  # stage version -> its bundle

    def bundle_of(version: str) -> Path:
        return made.get(version, out / version / "bundle")

    done = {s.version for s in lineage.stages[first:]}
    for i, stage in enumerate(lineage.stages[first:], first):
        ensemble = stage.make == "ensemble"
        for version in stage.members if ensemble else [lineage.start_of(i)]:
            if version is None or version in done:
                continue
            bundle = bundle_of(version)
            if not (bundle / BUNDLE_FILE).is_file():
                raise FileNotFoundError(
                    f"{bundle}: stage {stage.version} {'averages' if ensemble else 'starts from'} stage "
                    f"{version}'s bundle, which is not there; pass --start with that model, or run the "
                    "lineage from its first stage"
                )
    last = out  # the last stage's bundle, once the loop has run
    for i, stage in enumerate(lineage.stages[first:], first):
        folder = out / stage.version
        bundle = folder / "bundle"
        made[stage.version] = last = bundle
        if (bundle / BUNDLE_FILE).is_file():
            log(f"== {stage.version}: done already ({bundle})")
            continue
        log(f"== {stage.version}: {stage.make}" + (f" ({stage.note})" if stage.note else ""))
        photos = synth_po(stage.data, data_root, log) if stage.data else None
        begin = lineage.start_of(i)
        previous = bundle_of(begin) if begin is not None else None
        if stage.make == "decode":
            redecode(previous, bundle, stage.set["detector"], stage.version)
        elif stage.make == "ensemble":
            members = [str(bundle_of(v)) for v in stage.members]
            ensemble_bundle(
                members, photos, bundle, version=stage.version, track=track, log=log,
                command=f"loupe reproduce {lineage.task} --start-at {stage.version}",
            )  # fmt: skip
        else:
            config = lineage.recipe_for(stage)
            recipe = dump_config(config, folder / RECIPE_FILE)
            if stage.make == "train":
                cut_off = (folder / CHECKPOINTS / LAST).is_file()
                train(
                    lineage.task, config, photos,
                    from_ref=str(previous) if previous else None, resume=folder if cut_off else None,
                    out=folder, config_file=recipe, track=track, log=log,
                )  # fmt: skip
            else:
                recalibrate(
                    str(previous), photos, bundle, task=lineage.task, recipe=str(recipe),
                    version=stage.version, track=track, log=log,
                )  # fmt: skip
        if stage.data is not None and stage.data.version:
            got = build_manifest(photos).version
            if got == stage.data.version:
                log(f"data version {got}, as the shipped stage's")
            else:
                log(
                    f"data version {got} differs from the shipped stage's {stage.data.version}: the "
                    "generator has changed since that stage ran, so its photos are not the same"
                )
    onnx = last / ONNX_FILE  # save_bundle removes a stale one, so one that is there is current
    log(f"ONNX: {onnx if onnx.is_file() else export_model(str(last), lineage.task)}")
    return last
