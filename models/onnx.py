"""Export a bundle to ONNX and run it with ONNX Runtime (no torch needed to run).

The classifier exports its logits, the detector its raw maps (``models.detector.OUTPUT_NAMES``);
sigmoid and peak decoding stay in numpy so both backends share them. Batch, height and width are
dynamic axes, so one file serves any tile size.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import ONNX_FILE, ModelBundle, load_bundle
from models.errors import ModelFileError

INPUT_NAME = "input"
CLASSIFIER_OUTPUTS = ("logits",)
# A classifier with a patch memory (models.memory) also exports its tiles' patch features.
MEMORY_OUTPUTS = ("logits", "patches")
# Parity check after export: raw outputs (logits/maps) of torch and ONNX Runtime on the same input.
PARITY_ATOL = 1e-3


def output_names(bundle: ModelBundle) -> tuple[str, ...]:
    from models.decode import OUTPUT_NAMES

    if bundle.task == "classifier":
        return MEMORY_OUTPUTS if bundle.memory else CLASSIFIER_OUTPUTS
    has_subtypes = int(bundle.arch_kwargs.get("num_subtypes", 0) or 0) > 0
    return OUTPUT_NAMES if has_subtypes else OUTPUT_NAMES[:3]


def _as_tuple_module(module: Any, names: tuple[str, ...]) -> Any:
    import torch

    class _Outputs(torch.nn.Module):
        # ONNX graphs return a flat tuple; fix the order of the detector's dict once, here.
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.inner.forward_with_patches(x) if "patches" in names else self.inner(x)
            return (out,) if isinstance(out, torch.Tensor) else tuple(out[n] for n in names)

    return _Outputs().eval()


def export_onnx(
    bundle_folder: str | Path,
    out_path: str | Path | None = None,
    opset: int = 17,
    input_size: int | None = None,
    check: bool = True,
) -> Path:
    """Export the bundle's network to ONNX (default ``<bundle>/model.onnx``) and return the path.

    ``input_size`` (default: the bundle's prep input size) is the tracing size; the graph accepts
    any batch and size. ``check`` runs torch and ONNX Runtime on the same random batch and raises if
    any output differs by more than ``PARITY_ATOL``.
    """
    import torch

    bundle = load_bundle(bundle_folder)
    size = input_size or bundle.input_size
    if not size:
        raise ValueError(
            f"{bundle.folder}: bundle prep has no input_size/tile_size; pass export_onnx(..., input_size=320)"
        )
    out = Path(out_path) if out_path is not None else bundle.folder / ONNX_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    names = output_names(bundle)
    wrapped = _as_tuple_module(bundle.build_module("cpu"), names)
    example = torch.zeros(1, 3, size, size)
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, **{n: {0: "batch"} for n in names}}
    if "patches" in names:
        axes["patches"] = {0: "batch", 1: "patches"}  # the patch grid follows the tile size
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".onnx")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated but honours opset 17 and exports in seconds; the
            # torch.export-based one needs opset >= 18 for this graph and takes several times longer.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                wrapped,
                (example,),
                tmp,
                input_names=[INPUT_NAME],
                output_names=list(names),
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
        _stamp_metadata(Path(tmp), bundle, size)
        if check:
            _check_parity(wrapped, Path(tmp), size, names)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _stamp_metadata(path: Path, bundle: ModelBundle, size: int) -> None:
    import onnx

    model = onnx.load(str(path))
    meta = {
        "loupe_model": bundle.ref,
        "task": bundle.task,
        "families": json.dumps(bundle.families),
        "subtypes": json.dumps(bundle.subtypes),
        "input_size": str(size),
    }
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(path))


def _check_parity(wrapped: Any, path: Path, size: int, names: tuple[str, ...]) -> None:
    import torch

    batch = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = [t.numpy() for t in wrapped(batch)]
    got = OnnxModel(path).run(batch.numpy())
    for name, ref in zip(names, expected, strict=True):
        diff = float(np.abs(got[name] - ref).max())
        if diff > PARITY_ATOL:
            raise RuntimeError(
                f"ONNX export of {path.name}: output {name!r} differs from torch by {diff:.2e} "
                f"(> {PARITY_ATOL}); the export is wrong, do not ship it"
            )


class OnnxModel:
    """An ONNX Runtime session on one thread by default (run one worker process per core)."""

    def __init__(
        self, path: str | Path, intra_op_num_threads: int = 1, providers: list[str] | None = None
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(
                f"{self.path}: ONNX model not found: run models.onnx.export_onnx(<bundle folder>) first"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_num_threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ModelFileError(
                f"{self.path}: not a loadable ONNX model ({type(exc).__name__}: {exc}); export it again"
            ) from exc
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs by name for a float32 NCHW batch."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outputs = self.session.run(None, {self.input_name: batch})
        return dict(zip(self.output_names, outputs, strict=True))
