"""The model bundle: everything needed to run a model, in one folder, so training and serving agree.

A bundle folder holds ``bundle.json`` (architecture, preprocessing settings, thresholds, calibration,
metrics, provenance), ``weights.pt`` (a tensor-only state dict, loaded with ``weights_only=True``),
``card.md`` (the model card) and optionally ``model.onnx`` (see ``models.onnx``). ``prep`` is stored as
a plain dict of ``cv.prep.PrepSettings`` fields so this module does not depend on cv/.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from datasets.taxonomy import FAMILIES
from models.errors import ModelFileError
from models.memory import MEMORY_FILE

if TYPE_CHECKING:  # torch is imported only where weights are touched: ONNX serving runs without it
    import torch
    from torch import nn

BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "weights.pt"
ONNX_FILE = "model.onnx"
CARD_FILE = "card.md"
FORMAT_VERSION = 1

__all__ = [
    "BUNDLE_FILE",
    "CARD_FILE",
    "ONNX_FILE",
    "WEIGHTS_FILE",
    "ModelBundle",
    "ModelFileError",
    "load_bundle",
    "save_bundle",
    "save_bundle_from",
]


class ModelBundle(BaseModel):
    """What a saved model is and how to run it. ``build_module`` rebuilds it from its folder."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format_version: int = FORMAT_VERSION
    name: str = Field(description='e.g. "loupe-classifier"')
    version: str = "0"
    task: Literal["classifier", "detector"]
    arch: str = Field(description="registry name, e.g. tile_classifier")
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    families: list[str] = Field(default_factory=lambda: list(FAMILIES))
    subtypes: list[str] = Field(default_factory=list, description="detector: subtype index -> name")
    prep: dict[str, Any] = Field(default_factory=dict, description="cv.prep.PrepSettings fields")
    thresholds: dict[str, dict[str, float]] = Field(
        default_factory=dict, description='per family {"flag": t_defect, "review": t_review}'
    )
    calibration: dict[str, Any] = Field(
        default_factory=dict, description="per family Platt a,b or temperature"
    )
    metrics: dict[str, Any] = Field(default_factory=dict)
    memory: dict[str, Any] | None = Field(
        None, description="classifier: a patch memory of a buyer's good tiles (models.memory, memory.npz)"
    )
    data_version: str | None = None
    config: dict[str, Any] = Field(default_factory=dict, description="the resolved training config")
    card: str = Field("", description="model card (markdown); stored as card.md")
    weights_dtype: Literal["float32", "float16"] = "float32"
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    _folder: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> ModelBundle:
        if self.format_version > FORMAT_VERSION:
            raise ValueError(
                f"bundle format {self.format_version} is newer than this Loupe reads ({FORMAT_VERSION}): "
                "upgrade Loupe"
            )
        n_classes = self.arch_kwargs.get("num_classes")
        if n_classes is not None and n_classes != len(self.families):
            raise ValueError(
                f"arch_kwargs num_classes={n_classes} but {len(self.families)} families {self.families}"
            )
        n_subtypes = self.arch_kwargs.get("num_subtypes")
        if self.subtypes and n_subtypes is not None and n_subtypes != len(self.subtypes):
            raise ValueError(
                f"arch_kwargs num_subtypes={n_subtypes} but {len(self.subtypes)} subtypes listed"
            )
        for family, t in self.thresholds.items():
            if family not in self.families:
                raise ValueError(f"thresholds for {family!r}, which is not one of families {self.families}")
            if set(t) - {"flag", "review"} or not all(0.0 <= v <= 1.0 for v in t.values()):
                raise ValueError(
                    f"thresholds[{family!r}] must be {{'flag': t, 'review': t}} in [0, 1], got {t}"
                )
            if "flag" in t and "review" in t and t["review"] > t["flag"]:
                raise ValueError(f"thresholds[{family!r}]: review {t['review']} is above flag {t['flag']}")
        return self

    @property
    def ref(self) -> str:
        """``name@version``, as shown next to every result."""
        return f"{self.name}@{self.version}"

    @property
    def folder(self) -> Path:
        if self._folder is None:
            raise ModelFileError(
                f"bundle {self.ref} has no folder yet: save_bundle() or load_bundle() it first"
            )
        return self._folder

    @property
    def weights_path(self) -> Path:
        return self.folder / WEIGHTS_FILE

    @property
    def onnx_path(self) -> Path | None:
        """``model.onnx`` if the bundle has one exported from its current weights.

        An export older than ``weights.pt`` is stale (new weights pulled or copied in since) and is
        ignored, so it is exported again rather than serving the old model under the new name."""
        path = self.folder / ONNX_FILE
        if not path.is_file():
            return None
        for source in (WEIGHTS_FILE, MEMORY_FILE if self.memory else None):
            # A memory added since the export needs its patch output too.
            newer = source and (self.folder / source).is_file()
            if newer and path.stat().st_mtime < (self.folder / source).stat().st_mtime:
                return None
        return path

    @property
    def input_size(self) -> int | None:
        """The network's input side in pixels, from the prep settings."""
        size = self.prep.get("input_size") or self.prep.get("tile_size")
        return int(size) if size else None

    def build_module(self, device: str | torch.device = "cpu") -> nn.Module:
        """The network with this bundle's weights, in eval mode, on ``device``."""
        import torch

        from models.pretrained import read_state_dict

        module = build_untrained(self)
        state = read_state_dict(self.weights_path)
        try:
            # copy_ casts fp16-saved tensors back to the module's fp32.
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelFileError(
                f"{self.weights_path}: weights do not match arch {self.arch!r} with {self.arch_kwargs} "
                f"({str(exc).splitlines()[0]}); the bundle.json and weights.pt come from different models: "
                "save the bundle again from the trained model"
            ) from exc
        # Channels-last: the layout oneDNN's convolutions are fastest in on CPU (training uses it too).
        return module.to(device, memory_format=torch.channels_last).eval()


def build_untrained(bundle: ModelBundle) -> nn.Module:
    """The bundle's architecture, untrained: pretrained is forced to "none" (the bundle has the weights)."""
    from models.registry import build_model

    kwargs = {**bundle.arch_kwargs, "pretrained": "none"}
    return build_model(bundle.arch, **kwargs)


def _atomic_write_bytes(path: Path, write) -> None:
    # Write beside the target and rename, so a crash never leaves a half-written file under the real name.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a shipped model must be readable by the service
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_bundle(
    bundle: ModelBundle,
    state_dict: dict[str, torch.Tensor] | nn.Module,
    folder: str | Path,
    *,
    half: bool = False,
    verify: bool = True,
) -> Path:
    """Write ``bundle`` and its weights to ``folder`` (created; existing files replaced); return it.

    ``half`` stores floating-point weights as float16 (half the size; they load back as float32).
    ``verify`` rebuilds the architecture and loads the weights strictly first, so a bundle that
    cannot be loaded is never written. A stale ``model.onnx`` from an earlier save is removed.
    """
    import torch

    folder = Path(folder)
    if isinstance(state_dict, torch.nn.Module):
        state_dict = state_dict.state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if verify:
        try:
            build_untrained(bundle).load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"weights do not match arch {bundle.arch!r} with {bundle.arch_kwargs}: "
                f"{str(exc).splitlines()[0]}; pass the state dict of the model built with these arguments"
            ) from exc
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    # Validate again: model_copy(update=...) skips validation; never write a bundle that cannot load.
    bundle = ModelBundle.model_validate(
        {**bundle.model_dump(), "weights_dtype": "float16" if half else "float32"}
    )
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(folder / WEIGHTS_FILE, lambda p: torch.save(state, p))
    meta = bundle.model_dump(mode="json", exclude={"card"})
    _atomic_write_bytes(
        folder / BUNDLE_FILE, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    )
    _atomic_write_bytes(folder / CARD_FILE, lambda p: p.write_text(bundle.card, encoding="utf-8"))
    (folder / ONNX_FILE).unlink(missing_ok=True)
    return folder


def save_bundle_from(source: str | Path, bundle: ModelBundle, out: str | Path) -> Path:
    """``bundle``, a changed copy of the one in ``source`` (recalibrated, decoding otherwise), written to
    ``out`` with ``source``'s weights in their stored precision and its patch memory, if it has one."""
    import shutil

    import torch

    source, out = Path(source), Path(out)
    weights = torch.load(source / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    save_bundle(bundle, weights, out, half=bundle.weights_dtype == "float16")
    if bundle.memory:
        shutil.copy2(source / MEMORY_FILE, out / MEMORY_FILE)
    return out


def load_bundle(folder: str | Path) -> ModelBundle:
    """Read a bundle folder's ``bundle.json`` and ``card.md``; check its weights file is there.

    Raises :class:`ModelFileError` naming the file and the fix when something is missing or invalid.
    Weights are read by :meth:`ModelBundle.build_module`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(
            f"{folder}: model bundle folder not found: pass the folder that save_bundle/`loupe train` wrote "
            f"(it holds {BUNDLE_FILE} and {WEIGHTS_FILE})"
        )
    meta_path = folder / BUNDLE_FILE
    if not meta_path.is_file():
        raise ModelFileError(
            f"{meta_path}: missing: {folder} is not a model bundle; pass the folder that holds {BUNDLE_FILE}"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(
            f"{meta_path}: not valid JSON ({exc}): the file is damaged; save the bundle again"
        ) from exc
    if not isinstance(meta, dict):
        raise ModelFileError(
            f"{meta_path}: expected a JSON object, got {type(meta).__name__}; save the bundle again"
        )
    card_path = folder / CARD_FILE
    if card_path.is_file() and "card" not in meta:
        meta["card"] = card_path.read_text(encoding="utf-8")
    try:
        bundle = ModelBundle.model_validate(meta)
    except ValidationError as exc:
        raise ModelFileError(
            f"{meta_path}: invalid bundle: {exc}; fix the field named or save the bundle again"
        ) from exc
    if not (folder / WEIGHTS_FILE).is_file():
        raise ModelFileError(
            f"{folder / WEIGHTS_FILE}: missing: the bundle has no weights; copy the whole bundle folder "
            "or save it again"
        )
    bundle._folder = folder
    return bundle
