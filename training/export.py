"""``loupe export``: a bundle to ONNX, through :func:`models.onnx.export_onnx` (which checks parity)."""

from __future__ import annotations

from pathlib import Path

FORMATS = ("onnx",)


def export_model(
    ref: str, task: str = "classifier", fmt: str = "onnx", out: str | Path | None = None
) -> Path:
    """Export the bundle ``ref`` resolves to; returns the written file."""
    from models.onnx import export_onnx
    from training.validate import _resolve

    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r} is not supported: use one of {FORMATS}")
    folder = _resolve(ref, task)
    return Path(export_onnx(folder, out))
