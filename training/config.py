"""Training recipes: the pydantic model behind ``configs/train_*.yaml`` and ``configs/finetune_*.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, field_validator, model_validator

from cv.prep import PrepSettings
from datasets.taxonomy import FAMILIES
from models.registry import ModelSpec
from training.calibrate import MIN_LEVEL_PHOTOS

TASKS = ("classifier", "detector")
DEFAULT_CONFIGS = {"classifier": "train_classifier.yaml", "detector": "train_detector.yaml"}


class CacheSettings(BaseModel):
    """How training crops are cut from the working-scale photos (once per dataset version + prep)."""

    model_config = ConfigDict(extra="forbid")

    crops_per_box: int = Field(3, ge=1, description="jittered crops around every defect box")
    negatives_per_photo: int = Field(3, ge=0, description="random crops per photo (most are defect-free)")
    lookalike_crops: int = Field(
        1, ge=0, description="crops per recorded non-defect look-alike (hard negatives)"
    )
    scale_jitter: tuple[float, float] = Field(
        (0.8, 1.25), description="crop side = tile_size × s (log-uniform): the px/mm range the models see"
    )
    centre_jitter: float = Field(
        0.3, ge=0, le=0.5, description="box centre offset, fraction of the crop side"
    )
    min_visible: float = Field(0.5, gt=0, le=1, description="share of a box inside a crop for it to count")
    min_box_px: float = Field(
        6.0,
        ge=0,
        description="a box whose long side is under this many network-input px on a crop is too small to "
        "see there (a coarse pyramid level): its family is ignored on that crop, neither defect nor good",
    )
    max_photos: int | None = Field(None, ge=1, description="cap on training photos (quick runs)")
    mined_negatives: int = Field(
        0,
        ge=0,
        description="with --from: per photo and family, up to this many tiles (a classifier's) or boxes "
        "(a detector's) that the starting model scores at least mine_threshold and that hold no defect "
        "become look-alike crops: the new photos' own false flags, taught as not-defects (training.mining)",
    )
    mine_threshold: float = Field(
        0.5, gt=0, lt=1, description="tile probability (a detector's: box score) that counts as a flag"
    )

    @model_validator(mode="after")
    def _check(self) -> CacheSettings:
        lo, hi = self.scale_jitter
        if not 0 < lo <= hi:
            raise ValueError(
                f"scale_jitter must be (low, high) with 0 < low <= high, got {self.scale_jitter}"
            )
        return self


class CalibrationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_recall: float = Field(0.95, gt=0, le=1, description="'flag' threshold keeps this recall on val")
    review_recall: float = Field(0.99, gt=0, le=1, description="'review' threshold keeps this recall on val")
    per_level: list[str] = Field(
        default_factory=list,
        description="classifier families whose pyramid levels are Platt-calibrated apart before the max "
        "over tiles (training.calibrate.fit_level_calibration)",
    )
    per_level_min_photos: int = Field(
        MIN_LEVEL_PHOTOS,
        ge=2,
        description="per_level is fitted only with this many validation photos with and without the defect",
    )
    per_level_held_out: bool = Field(
        True,
        description="keep a family's per-level fit only where it predicts validation photos it was not "
        "fitted on better than the plain max (leave one out; training.calibrate.held_out_gain)",
    )

    @field_validator("per_level")
    @classmethod
    def _known_families(cls, families: list[str]) -> list[str]:
        unknown = sorted(set(families) - set(FAMILIES))
        if unknown:
            raise ValueError(f"per_level names unknown families {unknown}; families are {list(FAMILIES)}")
        return families


class MemorySettings(BaseModel):
    """A classifier's memory of the good tiles of its training photos (models.memory, training.memory)."""

    model_config = ConfigDict(extra="forbid")

    weights: dict[str, float] = Field(
        description="per family, the logit added per robust standard unit of a tile's surprise"
    )
    max_patches: int = Field(10_000, ge=100, description="patches remembered per pyramid level (random)")
    min_val_tiles: int = Field(
        5, ge=2, description="clean validation tiles a level needs to be scaled, else it is not remembered"
    )

    @field_validator("weights")
    @classmethod
    def _known_families(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(FAMILIES))
        if unknown:
            raise ValueError(f"memory.weights: unknown families {unknown}; families are {list(FAMILIES)}")
        return weights


class DetectorSettings(BaseModel):
    """Decoding and merging of detections, saved with a detector bundle."""

    model_config = ConfigDict(extra="forbid")

    score_threshold: float = Field(0.1, ge=0, le=1)
    top_k: int = Field(50, ge=1, description="peaks kept per tile")
    merge_iou: float = Field(
        0.5, gt=0, le=1, description="tile-border merge threshold (intersection/smaller)"
    )
    loss_weights: dict[str, float] = Field(default_factory=dict, description="heatmap/size/offset/subtype")
    home_level_only: bool = Field(
        False,
        description="keep a box only from the pyramid level it was trained at (the finest where it fits "
        "in a tile): one box per defect instead of one per level",
    )
    mirror: bool = Field(
        False,
        description="also read the photo mirrored left-right and fuse the two views' boxes "
        "(models.photo.fuse_views): twice the detector's time",
    )
    mirror_found_only: bool = Field(
        False,
        description="with mirror: read the mirrored photo only where the plain view has a peak of at "
        "least half the score threshold, at that peak's pyramid level (models.photo.detect_photo)",
    )
    scales: list[float] = Field(
        default_factory=list,
        description="also read the photo resized by each of these factors of the working scale (every "
        "tile, not mirrored) and fuse each view's boxes in turn, as the mirrored view's "
        "(models.photo.detect_photo); each view costs its tiles",
    )
    scales_found_only: bool = Field(
        False,
        description="with scales: read each resized photo only on the tiles over the plain view's peaks "
        "of at least half the score threshold, at their pyramid level (as mirror_found_only)",
    )
    guide_threshold: float = Field(
        0.0,
        ge=0,
        le=1,
        description="paired with a classifier that cuts the same tiles (triage, loupe val): read only "
        "the tiles where it scores some family at least this much (models.photo.guided_tiles); 0: all",
    )

    @field_validator("scales")
    @classmethod
    def _scales_in_range(cls, scales: list[float]) -> list[float]:
        bad = [s for s in scales if not 0.25 <= s <= 4.0 or s == 1.0]
        if bad:
            raise ValueError(
                f"scales {bad}: each a factor between 0.25 and 4 other than 1 (the photo as read)"
            )
        return scales


class EarlyStopping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patience: int = Field(3, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(0.001, ge=0)


class TrainConfig(BaseModel):
    """One training recipe; every field is logged to MLflow and saved in the bundle."""

    model_config = ConfigDict(extra="forbid")

    task: Literal["classifier", "detector"]
    model: ModelSpec
    prep: PrepSettings = PrepSettings()
    cache: CacheSettings = CacheSettings()
    augment: str | None = Field("augment_train", description="augmentation config in configs/, or null")
    epochs: int = Field(8, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1, description="default: one pass over the defect crops")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "onecycle"] = "onecycle"
    positive_fraction: float = Field(0.5, gt=0, lt=1, description="share of crops with a defect per batch")
    early_stopping: EarlyStopping = EarlyStopping()
    wise_ft: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="with --from: the bundle's weights are this far from the starting model towards the "
        "best fine-tuned ones (WiSE-FT, Wortsman et al. 2022: a weight average of the two); null keeps "
        "the fine-tuned weights",
    )
    ensemble_with_start: bool = Field(
        False,
        description="classifier, with --from: the bundle is the starting model and the fine-tuned one in "
        "one tile_ensemble whose logits are averaged (when an epoch beat the start): a few photos correct "
        "the model rather than replace it; every tile is read by both (the stages the fine-tune left as they "
        "were only once, shared), and a fine-tune of such a bundle doubles its members again",
    )
    bag: int = Field(
        1,
        ge=1,
        description="classifier, with --from: train the recipe this many times, at seeds seed, seed+1, ... "
        "(each its own train/validation split of the photos), and ship every split's fine-tuned networks "
        "(and the start's, with ensemble_with_start) in one tile_ensemble, calibrated out of bag "
        "(training.bag); costs as many fine-tunes, and one more set of last stages per tile per split",
    )
    distill: dict[str, NonNegativeFloat] = Field(
        default_factory=dict,
        description="classifier, with --from: per family, the weight of a loss keeping the model's scores "
        "on the training crops near the starting model's (learning without forgetting, Li & Hoiem 2016), "
        "for families a few photos cannot teach better than the model already knows",
    )
    teachers: list[str] = Field(
        default_factory=list,
        description="classifier, with distill: models (default, a path, models:/...) whose mean logits the "
        "scores are held near instead of the starting model's: an ensemble distilled into one network "
        "(Hinton et al. 2015), at one network's inference cost",
    )
    calibration: CalibrationSettings = CalibrationSettings()
    detector: DetectorSettings = DetectorSettings()
    memory: MemorySettings | None = Field(
        None, description="classifier: remember the training photos' good tiles (a buyer's one style)"
    )
    val_fraction: float = Field(0.2, gt=0, lt=1, description="used when the manifest has no val split")
    max_val_photos: int | None = Field(None, ge=1, description="cap on validation photos (quick runs)")
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    num_threads: int = Field(2, ge=1, description="torch threads on the CPU")
    loader_workers: int | None = Field(
        None,
        ge=0,
        description="processes that augment batches; null: 0 on the CPU (they would compete with torch's "
        "threads for the cores), one per core up to 8 on CUDA (augmentation, not the GPU, bounds a step)",
    )
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on the CPU)")
    experiment: str | None = Field(None, description="MLflow experiment; default loupe-<task>")

    @model_validator(mode="after")
    def _classifier_only_settings(self) -> TrainConfig:
        if self.task != "classifier" and self.distill:
            raise ValueError("distill keeps a classifier's family scores; remove it from a detector recipe")
        if self.teachers and not any(self.distill.values()):
            raise ValueError(
                "teachers are distilled with the distill weights: give distill a weight per family"
            )
        if self.task != "classifier" and self.ensemble_with_start:
            raise ValueError(
                "ensemble_with_start averages classifiers' logits; remove it from a detector recipe"
            )
        if self.task != "classifier" and self.bag > 1:
            raise ValueError("bag averages classifiers' logits; remove it from a detector recipe")
        if self.task != "classifier" and self.memory is not None:
            raise ValueError("memory holds a classifier's patch features; remove it from a detector recipe")
        return self

    def model_kwargs(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        return {**self.model.kwargs, **(overrides or {})}


def load_train_config(
    name_or_path: str | Path | None, task: str, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Load a recipe (default ``configs/train_<task>.yaml``) and check it is for ``task``."""
    from configs import ConfigError, load_config

    if task not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
    config = load_config(name_or_path or DEFAULT_CONFIGS[task], TrainConfig, overrides)
    if config.task != task:
        raise ConfigError(
            f"{name_or_path}: is a {config.task} recipe but `loupe train {task}` was asked; "
            f"pass --config {DEFAULT_CONFIGS[task]} or a {task} recipe"
        )
    return config
