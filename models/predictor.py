"""One object to run a bundle on tiles, with torch or ONNX Runtime, on CPU or CUDA.

``run`` gives per-tile family probabilities (N x F) for either task (the detector's is the peak of
each family heatmap); ``detect`` gives per-tile boxes. Sigmoid and decoding are numpy, shared by
both backends, so a model gives the same results whichever runs it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.bundle import ModelBundle, load_bundle
from models.errors import ModelFileError

Backend = Literal["torch", "onnx"]
Device = Literal["cpu", "cuda", "auto"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float32)))).astype(np.float32)


class Predictor:
    """A loaded bundle: ``.bundle``, ``.families``, ``.run(batch)`` and (detector) ``.detect(batch)``."""

    def __init__(
        self, bundle: ModelBundle, backend: Backend, device: str, runner: Any, memory: Any = None
    ) -> None:
        self.bundle = bundle
        self.backend = backend
        self.device = device
        self._runner = runner
        # models.memory.PatchMemory: a buyer's good tiles; raw() then also gives the tiles' "patches".
        self.memory = memory

    def with_bundle(self, bundle: ModelBundle) -> Predictor:
        """The same loaded network, read with ``bundle``'s settings (thresholds, calibration, scoring):
        for trying a setting without loading the weights again."""
        return Predictor(bundle, self.backend, self.device, self._runner, self.memory)

    @property
    def families(self) -> list[str]:
        return list(self.bundle.families)

    @property
    def subtypes(self) -> list[str]:
        return list(self.bundle.subtypes)

    @property
    def task(self) -> str:
        return self.bundle.task

    def _check(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(
                f"expected normalised float32 tiles N x 3 x H x W, got shape {batch.shape}; "
                "prepare them with cv.prep using the bundle's prep settings"
            )
        return batch

    def raw(self, batch: np.ndarray, patches: bool | None = None) -> dict[str, np.ndarray]:
        """The network's raw outputs (logits / maps) as numpy arrays by name; a classifier's also hold
        its tiles' ``patches`` with ``patches`` (default: when it has a memory)."""
        batch = self._check(batch)
        patches = self.memory is not None if patches is None else patches
        if self.backend == "onnx":
            out = self._runner.run(batch)
            if patches and "patches" not in out:
                raise ModelFileError(
                    f"{self._runner.path}: exported without patch features; give the bundle a memory first"
                )
            return out
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
            out = self._runner.forward_with_patches(x) if patches else self._runner(x)
        if isinstance(out, torch.Tensor):
            return {"logits": out.float().cpu().numpy()}
        return {k: v.float().cpu().numpy() for k, v in out.items()}

    def patch_features(self, batch: np.ndarray) -> np.ndarray:
        """A classifier's mid-layer patch features of each tile, N x P x C (:mod:`models.memory`)."""
        return self.raw(batch, patches=True)["patches"]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Per-tile family probabilities, N x F float32."""
        raw = self.raw(batch)
        if self.task == "classifier":
            return _sigmoid(raw["logits"])
        # Detector: a tile's family score is its strongest heatmap peak.
        return _sigmoid(raw["heatmap"].max(axis=(2, 3)))

    def detect(self, batch: np.ndarray, score_threshold: float = 0.05, top_k: int = 100) -> list:
        """Per-tile :class:`models.detector.Detections` (boxes in tile input pixels)."""
        if self.task != "detector":
            raise ValueError(f"{self.bundle.ref} is a {self.task}: detect() needs a detector bundle")
        from models.decode import decode_detections

        batch = self._check(batch)
        stride = int(self.bundle.arch_kwargs.get("stride", 8))
        return decode_detections(
            self.raw(batch),
            score_threshold=score_threshold,
            top_k=top_k,
            input_size=batch.shape[2:],
            stride=stride,
            subtype_family=self.subtype_family,
        )

    @property
    def subtype_family(self) -> list[int] | None:
        """Family index of each of the bundle's subtypes, when all are known to the taxonomy."""
        from datasets.taxonomy import SUBTYPE_FAMILY

        subs, fams = self.bundle.subtypes, self.bundle.families
        if not subs or not all(SUBTYPE_FAMILY.get(s) in fams for s in subs):
            return None
        return [fams.index(SUBTYPE_FAMILY[s]) for s in subs]


def _resolve_folder(folder_or_ref: str | Path, task: str | None) -> Path:
    path = Path(folder_or_ref)
    if path.is_dir():
        return path
    if task is None:
        if str(folder_or_ref) == "default" or str(folder_or_ref).startswith("models:/"):
            raise ValueError(f"model ref {str(folder_or_ref)!r} needs task='classifier' or task='detector'")
        return path  # load_bundle names the missing folder
    from models.refs import resolve_model_ref

    return resolve_model_ref(str(folder_or_ref), task)


def ensure_onnx(bundle: ModelBundle) -> Path:
    """The bundle's model.onnx, exported on first use (into a temp cache if the folder is read-only)."""
    if bundle.onnx_path is not None:
        return bundle.onnx_path
    from models.onnx import export_onnx

    try:
        return export_onnx(bundle.folder)
    except PermissionError:
        stamp = bundle.created_at.replace(":", "")
        cached = Path(tempfile.gettempdir()) / "loupe-onnx" / f"{bundle.name}-{bundle.version}-{stamp}.onnx"
        return cached if cached.is_file() else export_onnx(bundle.folder, cached)


def load_predictor(
    folder_or_ref: str | Path,
    backend: Backend = "torch",
    device: Device = "cpu",
    threads: int = 1,
    task: str | None = None,
) -> Predictor:
    """Load a bundle folder (or a ref such as ``default`` / ``models:/loupe-classifier@champion`` with
    ``task``) for inference.

    ``device="auto"`` uses CUDA when available. ``threads`` pins torch's / ONNX Runtime's intra-op
    threads (1 per worker process on the CPU). The ONNX backend exports ``model.onnx`` if the bundle
    lacks one, and imports no torch when it has one.
    """
    if backend not in ("torch", "onnx"):
        raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
    if device not in ("cpu", "cuda", "auto"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    bundle = load_bundle(_resolve_folder(folder_or_ref, task))
    if task is not None and bundle.task != task:
        raise ModelFileError(f"{bundle.folder}: holds a {bundle.task}, not a {task}; pass a {task} bundle")
    memory = None
    if bundle.memory:
        from models.memory import load_memory

        memory = load_memory(bundle.folder, bundle.memory.get("weights", {}))
    if backend == "onnx":
        import onnxruntime as ort

        available = ort.get_available_providers()
        want_cuda = device in ("cuda", "auto") and "CUDAExecutionProvider" in available
        if device == "cuda" and not want_cuda:
            raise RuntimeError(f"device='cuda' but ONNX Runtime offers only {available}; use device='cpu'")
        from models.onnx import OnnxModel

        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda else ["CPUExecutionProvider"]
        )
        runner = OnnxModel(ensure_onnx(bundle), intra_op_num_threads=threads, providers=providers)
        if memory is not None and "patches" not in runner.output_names:
            raise ModelFileError(
                f"{runner.path}: exported without the patch output its memory needs; delete it and run "
                f"`loupe export --model {bundle.folder}` again"
            )
        return Predictor(bundle, "onnx", "cuda" if want_cuda else "cpu", runner, memory)
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch sees no CUDA device; use device='cpu' or 'auto'")
    resolved = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    if resolved == "cpu":
        torch.set_num_threads(threads)
    return Predictor(bundle, "torch", resolved, bundle.build_module(resolved), memory)
