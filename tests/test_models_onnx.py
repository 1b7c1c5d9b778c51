"""ONNX export and the predictor: ONNX Runtime agrees with torch, for both models."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from models.bundle import ModelBundle, ModelFileError, save_bundle
from models.onnx import OnnxModel, export_onnx
from models.predictor import load_predictor
from models.registry import build_model

# Stated tolerances: probabilities within 1e-4, raw maps/logits within 1e-3 (float32 kernels differ).
PROB_ATOL = 1e-4
RAW_ATOL = 1e-3


def saved(folder, task: str):
    torch.manual_seed(1)
    arch = "tile_classifier" if task == "classifier" else "tile_detector"
    kwargs = (
        {"pretrained": "imagenet"} if task == "classifier" else {"pretrained": "imagenet", "num_subtypes": 16}
    )
    model = build_model(arch, **kwargs)
    if task == "detector":
        with torch.no_grad():  # a heatmap bias that gives a few confident peaks, as a trained model has
            model.heatmap[-1].bias.fill_(0.0)
    bundle = ModelBundle(
        name=f"loupe-{task}", version="1", task=task, arch=arch, arch_kwargs=kwargs, prep={"input_size": 160}
    )
    return save_bundle(bundle, model, folder)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for task in ("classifier", "detector"):
        folder = saved(root / task, task)
        export_onnx(folder)
        out[task] = folder
    return out


def tiles(n: int, size: int = 160) -> np.ndarray:
    return np.random.default_rng(n).normal(0, 0.5, (n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("task", ["classifier", "detector"])
def test_onnx_matches_torch_at_several_batch_and_tile_sizes(bundles, task):
    torch_p = load_predictor(bundles[task], backend="torch")
    onnx_p = load_predictor(bundles[task], backend="onnx")
    assert onnx_p.backend == "onnx" and torch_p.backend == "torch"
    for n, size in ((1, 160), (5, 160), (2, 224)):  # dynamic batch and spatial axes
        batch = tiles(n, size)
        probs = onnx_p.run(batch)
        assert probs.shape == (n, 3) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, torch_p.run(batch), atol=PROB_ATOL, rtol=0)
        want, got = torch_p.raw(batch), onnx_p.raw(batch)
        assert set(want) == set(got)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], atol=RAW_ATOL, rtol=0, err_msg=key)


def test_detections_decode_identically_from_both_backends(bundles):
    torch_p = load_predictor(bundles["detector"], backend="torch")
    onnx_p = load_predictor(bundles["detector"], backend="onnx")
    batch = tiles(3)
    want, got = torch_p.detect(batch, score_threshold=0.3), onnx_p.detect(batch, score_threshold=0.3)
    assert sum(len(d.boxes) for d in want) > 0
    for a, b in zip(want, got, strict=True):
        assert len(a.boxes) == len(b.boxes)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)
        np.testing.assert_allclose(a.scores, b.scores, atol=PROB_ATOL)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert np.all(a.boxes >= 0) and np.all(a.boxes <= 160)


def test_onnx_file_carries_the_model_name_and_families(bundles):
    meta = OnnxModel(bundles["classifier"] / "model.onnx").metadata
    assert meta["loupe_model"] == "loupe-classifier@1"
    assert meta["input_size"] == "160"
    assert "stitching" in meta["families"]


def test_onnx_predictor_exports_when_the_bundle_has_no_onnx(tmp_path):
    folder = saved(tmp_path / "c", "classifier")
    assert not (folder / "model.onnx").exists()
    predictor = load_predictor(folder, backend="onnx", threads=1)
    assert (folder / "model.onnx").is_file()
    assert predictor.run(tiles(2)).shape == (2, 3)


def test_an_export_older_than_the_weights_is_not_served(tmp_path):
    import os

    folder = saved(tmp_path / "c", "classifier")
    export_onnx(folder)
    old = load_predictor(folder, backend="onnx", threads=1).run(tiles(2))
    # New weights arrive (a pulled default, a copied bundle): the old export must not answer for them.
    model = build_model("tile_classifier", pretrained="imagenet")
    with torch.no_grad():
        model.net.classifier.bias.fill_(3.0)
    torch.save(model.state_dict(), folder / "weights.pt")
    onnx_time = (folder / "model.onnx").stat().st_mtime
    os.utime(folder / "weights.pt", (onnx_time + 10, onnx_time + 10))
    new = load_predictor(folder, backend="onnx", threads=1).run(tiles(2))
    want = load_predictor(folder, backend="torch", threads=1).run(tiles(2))
    np.testing.assert_allclose(new, want, atol=PROB_ATOL)
    assert np.abs(new - old).max() > 0.1


def test_serving_with_onnx_needs_no_torch(bundles):
    code = (
        "import sys, numpy as np; from models.predictor import load_predictor; "
        f"p = load_predictor({str(bundles['detector'])!r}, backend='onnx'); "
        "d = p.detect(np.zeros((1, 3, 160, 160), np.float32)); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_predictor_errors(bundles, tmp_path):
    with pytest.raises(ValueError, match="detector bundle"):
        load_predictor(bundles["classifier"]).detect(tiles(1))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        load_predictor(bundles["classifier"]).run(np.zeros((3, 160, 160), np.float32))
    with pytest.raises(ValueError, match="backend"):
        load_predictor(bundles["classifier"], backend="tensorrt")
    with pytest.raises(ValueError, match="needs task="):
        load_predictor("default")
    with pytest.raises(ModelFileError, match="not a detector"):
        load_predictor(bundles["classifier"], task="detector")
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"\x00not onnx")
    with pytest.raises(ModelFileError, match=r"model\.onnx"):
        OnnxModel(garbage)
