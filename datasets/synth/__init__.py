"""The synthetic inspection-photo generator: scenes as inspectors shoot them, rendered to thread scale,
with exact ground truth for stitching, logo/print and label defects.

Public API: ``generate_po``, ``plan_photo``, ``render_photo``, ``SynthConfig``, ``load_synth_config``.
"""

from __future__ import annotations

from pathlib import Path

from datasets.synth.config import SynthConfig, parse_size
from datasets.synth.plan import PhotoPlan, plan_photo
from datasets.synth.po import generate_po, summarise
from datasets.synth.render import RenderedPhoto, render_photo


def load_synth_config(name_or_path: str | Path = "synth.yaml", overrides: dict | None = None) -> SynthConfig:
    """Load and validate a generator config (default: configs/synth.yaml)."""
    from configs import load_config

    return load_config(name_or_path, SynthConfig, overrides)


__all__ = [
    "PhotoPlan",
    "RenderedPhoto",
    "SynthConfig",
    "generate_po",
    "load_synth_config",
    "parse_size",
    "plan_photo",
    "render_photo",
    "summarise",
]
