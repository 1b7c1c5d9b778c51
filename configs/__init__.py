"""YAML configuration: the files in this folder, and the one loader that validates them.

Every room defines the pydantic model for its own settings next to the code that uses them;
this module only finds the YAML, parses it and validates it, so that a typo in a config file
fails at load time with the file and the field named.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

CONFIG_DIR = Path(__file__).resolve().parent

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file is missing, is not YAML, or does not match its schema."""


def config_path(name_or_path: str | Path) -> Path:
    """Resolve a bare name (``synth.yaml`` or ``synth``) to this folder, anything else as a path."""
    p = Path(name_or_path)
    if p.exists():
        return p
    for candidate in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if candidate.exists():
            return candidate
    raise ConfigError(
        f"config {str(name_or_path)!r} not found: give a path to a YAML file, "
        f"or one of {sorted(q.name for q in CONFIG_DIR.glob('*.yaml'))}"
    )


def load_config(name_or_path: str | Path, model: type[M], overrides: dict | None = None) -> M:
    """Load a YAML file, apply shallow ``overrides``, and validate it against ``model``."""
    path = config_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw.update(overrides or {})
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def dump_config(config: BaseModel, path: Path) -> Path:
    """Write a resolved config as YAML next to the output that used it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    return path
