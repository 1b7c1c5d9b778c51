"""Architectures built by name, as timm and torchvision do: ``build_model("tile_classifier", ...)``.

A recipe in configs/ names an architecture and its keyword arguments (``ModelSpec``); the bundle
stores the same pair, so a saved model is rebuilt exactly the way it was trained.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a module class or factory buildable as ``build_model(name, **kwargs)``."""

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"model name {name!r} is already registered to {_REGISTRY[name]!r}")
        _REGISTRY[name] = factory
        return factory

    return decorate


def _load_builtin() -> None:
    # Imported here, not at the top: those modules import this one for the decorator.
    import models.classifier
    import models.detector  # noqa: F401


def available_models() -> list[str]:
    """Registered architecture names, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered architecture; unknown names and arguments fail with the choices listed."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}: choose one of {sorted(_REGISTRY)}")
    factory = _REGISTRY[name]
    try:
        # Check the arguments up front so a TypeError inside the constructor is not mistaken for a typo.
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        accepted = [p for p in inspect.signature(factory).parameters if p != "self"]
        raise ValueError(
            f"model {name!r}: bad arguments {sorted(kwargs)} ({exc}); it accepts {accepted}"
        ) from exc
    return factory(**kwargs)


class ModelSpec(BaseModel):
    """An architecture and its arguments, as written in ``configs/model_*.yaml``."""

    model_config = ConfigDict(extra="forbid")

    arch: str = Field(description="registered architecture name, e.g. tile_classifier")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="arguments for build_model")

    def build(self, **overrides: Any) -> nn.Module:
        return build_model(self.arch, **{**self.kwargs, **overrides})


def load_model_spec(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> ModelSpec:
    """Read a model recipe (``model_classifier`` or a path); ``overrides`` update its kwargs."""
    from configs import load_config

    spec = load_config(name_or_path, ModelSpec)
    if overrides:
        spec = spec.model_copy(update={"kwargs": {**spec.kwargs, **overrides}})
    return spec
