"""Settings of the synthetic inspection-photo generator (validated from configs/synth.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from datasets.taxonomy import FAMILIES, SUBTYPE_FAMILY

MILESTONES = ("IPC", "DUPRO", "PSI", "CLI")
# "jersey" (a mesh sports jersey) is in no default mix: it is the new product of bench_finetune.py.
PRODUCTS = ("garment_panel", "tshirt", "bag", "shoe", "ball", "carton", "retail_box", "jersey")
SETTINGS = ("table", "floor", "hand")

# Which defect families each product can carry (a carton has no seams or logo print in this generator).
PRODUCT_FAMILIES: dict[str, tuple[str, ...]] = {
    "garment_panel": ("stitching", "logo"),
    "tshirt": ("stitching", "logo", "label"),
    "bag": ("stitching", "logo", "label"),
    "shoe": ("stitching", "logo"),
    "ball": ("stitching", "logo"),
    "carton": ("label",),
    "retail_box": ("logo", "label"),
    "jersey": ("stitching", "logo", "label"),
}


def parse_size(text: str) -> tuple[int, int]:
    """``"2000x1500"`` → (2000, 1500); a clear error otherwise."""
    try:
        w, h = (int(v) for v in str(text).lower().replace("×", "x").split("x"))
    except ValueError as exc:
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 2000x1500") from exc
    if not (320 <= w <= 8000 and 320 <= h <= 8000):
        raise ValueError(f"size {text!r} out of range: each side must be 320..8000 px")
    return w, h


class SizeWeight(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: str
    weight: float = Field(1.0, gt=0)

    @field_validator("size")
    @classmethod
    def _valid(cls, v: str) -> str:
        parse_size(v)
        return v


class Conditions(BaseModel):
    """Photo conditions: ranges drawn per photo."""

    model_config = ConfigDict(extra="forbid")
    perspective: float = Field(0.05, ge=0, le=0.2, description="max corner shift, fraction of the side")
    roll_deg: float = Field(6.0, ge=0, le=30, description="max in-plane camera roll")
    light_gradient: float = Field(0.35, ge=0, le=1)
    vignette: float = Field(0.25, ge=0, le=1)
    shadow_rate: float = Field(0.4, ge=0, le=1, description="share of photos with a cast shadow")
    wb_shift: float = Field(0.12, ge=0, le=0.5, description="max per-channel white-balance gain shift")
    exposure: tuple[float, float] = (0.8, 1.15)
    noise_sigma: tuple[float, float] = (0.004, 0.02)
    defocus_rate: float = Field(0.3, ge=0, le=1)
    defocus_px: tuple[float, float] = (0.4, 1.3)
    motion_rate: float = Field(0.15, ge=0, le=1)
    motion_px: tuple[float, float] = (1.5, 4.0)
    jpeg_quality: tuple[int, int] = (78, 95)


class SynthConfig(BaseModel):
    """Prevalence, mix and photo conditions of a synthetic PO (see configs/synth.yaml)."""

    model_config = ConfigDict(extra="forbid")
    defect_rate: float = Field(0.6, ge=0, le=1, description="share of photos with at least one defect")
    extra_defect_rate: float = Field(0.3, ge=0, le=1, description="chance of each further defect")
    max_defects: int = Field(3, ge=1, le=6)
    lookalike_rate: float = Field(0.5, ge=0, le=1, description="chance of a non-defect look-alike")
    closeup_rate: float = Field(0.5, ge=0, le=1)
    closeup_fov_mm: tuple[float, float] = Field(
        (100.0, 200.0),
        description="close-up field of view, mm across the long side (a phone held close: 100–200; "
        "a macro lens or a fixed inspection station: 40–80)",
    )
    portrait_rate: float = Field(0.15, ge=0, le=1)
    min_defect_area: float = Field(0.001, ge=0, le=0.05, description="smallest defect box, share of photo")
    family_mix: dict[str, float] = {"stitching": 0.45, "logo": 0.25, "label": 0.3}
    subtype_mix: dict[str, float] = {}
    milestone_mix: dict[str, float] = {"IPC": 0.2, "DUPRO": 0.4, "PSI": 0.3, "CLI": 0.1}
    product_mix: dict[str, dict[str, float]] = {
        "IPC": {"garment_panel": 4, "tshirt": 1, "bag": 1, "shoe": 1, "ball": 1},
        "DUPRO": {"garment_panel": 1, "tshirt": 4, "bag": 2, "shoe": 2, "ball": 1},
        "PSI": {"tshirt": 3, "bag": 2, "shoe": 2, "ball": 1, "carton": 2, "retail_box": 2},
        "CLI": {"carton": 1},
    }
    setting_mix: dict[str, float] = {"table": 0.5, "floor": 0.25, "hand": 0.25}
    size_mix: list[SizeWeight] = [
        SizeWeight(size="1280x960", weight=0.25),
        SizeWeight(size="2000x1500", weight=0.35),
        SizeWeight(size="3000x2250", weight=0.2),
        SizeWeight(size="4000x3000", weight=0.2),
    ]
    conditions: Conditions = Conditions()
    distressed_print: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of printed logos with a vintage distressed finish (fine cracks and worn specks "
        "by design, approved, not a defect); drawn per style, so a one-style PO is all or nothing",
    )
    style_seed: int | None = Field(
        None,
        description="one style for the whole PO, as a buyer's order has: every photo's material, "
        "colourway, thread and logo artwork (brand, emblem, font, print or embroidery, inks) are drawn "
        "from this seed, so a wrong colour is wrong against the PO's artwork; None (training data for a "
        "general model) draws them per photo",
    )

    @field_validator("family_mix")
    @classmethod
    def _families(cls, v: dict[str, float]) -> dict[str, float]:
        bad = set(v) - set(FAMILIES)
        if bad:
            raise ValueError(f"family_mix: unknown families {sorted(bad)}; use {list(FAMILIES)}")
        if v and sum(v.values()) <= 0:
            raise ValueError("family_mix: weights must not all be zero")
        return v

    @field_validator("subtype_mix")
    @classmethod
    def _subtypes(cls, v: dict[str, float]) -> dict[str, float]:
        bad = set(v) - set(SUBTYPE_FAMILY)
        if bad:
            raise ValueError(f"subtype_mix: unknown subtypes {sorted(bad)}; use {sorted(SUBTYPE_FAMILY)}")
        return v

    @field_validator("milestone_mix")
    @classmethod
    def _milestones(cls, v: dict[str, float]) -> dict[str, float]:
        bad = set(v) - set(MILESTONES)
        if bad or sum(v.values()) <= 0:
            raise ValueError(f"milestone_mix: use positive weights for {list(MILESTONES)}, got {v}")
        return v

    @field_validator("setting_mix")
    @classmethod
    def _settings(cls, v: dict[str, float]) -> dict[str, float]:
        bad = set(v) - set(SETTINGS)
        if bad or sum(v.values()) <= 0:
            raise ValueError(f"setting_mix: use positive weights for {list(SETTINGS)}, got {v}")
        return v

    @model_validator(mode="after")
    def _products(self) -> SynthConfig:
        for milestone, weight in self.milestone_mix.items():
            mix = self.product_mix.get(milestone)
            if weight > 0 and not mix:
                raise ValueError(f"product_mix: milestone {milestone} has weight but no products")
            bad = set(mix or {}) - set(PRODUCTS)
            if bad:
                raise ValueError(f"product_mix[{milestone}]: unknown products {sorted(bad)}; use {PRODUCTS}")
        lo, hi = self.closeup_fov_mm
        if not 30 <= lo <= hi <= 300:
            raise ValueError(
                f"closeup_fov_mm must be (low, high) mm with 30 <= low <= high <= 300, "
                f"got {self.closeup_fov_mm}"
            )
        return self

    def subtype_weights(self, family: str) -> dict[str, float]:
        """Weights of the subtypes of ``family``; unlisted subtypes weigh 1 unless a mix is given."""
        subs = [s for s, f in SUBTYPE_FAMILY.items() if f == family]
        if not self.subtype_mix:
            return dict.fromkeys(subs, 1.0)
        return {s: self.subtype_mix.get(s, 0.0) for s in subs}
