"""The CUDA paths: training in fp32 and mixed precision, and inference on the GPU.

They skip where torch sees no GPU (CI, the 2-core development machine); run them on a GPU machine
with ``python -m pytest tests/test_cuda.py tests/test_training.py`` (WiSE-FT's test there runs on
both devices). The same tiny runs as tests/test_training.py, on ``cuda``.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

# The tiny runs' settings (pytest puts tests/ on sys.path); their fixtures are in conftest.py.
from test_training import _config as tiny_config  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# The GPU convolves in TF32 where the CPU uses fp32: probabilities agree to about 1e-3, not 1e-6.
PROB_ATOL = 5e-3


def _config(task: str, **over):
    return tiny_config(task, device="cuda", **over)


def _tiles(bundle, n: int = 16, seed: int = 0) -> np.ndarray:
    size = bundle.prep["input_size"]
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, size, size)).astype(np.float32)


def test_classifier_trains_with_amp_on_cuda_and_scores_as_on_the_cpu(po, data_dir):
    from models.bundle import load_bundle
    from models.predictor import load_predictor
    from training.engine import load_checkpoint, train

    quiet = {"track": False, "log": lambda m: None}
    for amp in (False, True):
        # the settings under which test_training.py's run lowers its loss for every seed tried
        result = train(
            "classifier",
            _config("classifier", amp=amp, steps_per_epoch=12),
            po,
            out=data_dir / f"c{amp}",
            **quiet,
        )
        scaler = load_checkpoint(data_dir / f"c{amp}" / "checkpoints" / "last.pt")["scaler"]
        assert (scaler is not None) == amp  # the GradScaler ran exactly when AMP was on
        losses = [h["train/loss"] for h in result.history]
        assert len(losses) == 3 and losses[-1] < 0.7 * losses[0], (amp, losses)

    tiles = _tiles(load_bundle(result.bundle_dir))
    on_gpu = load_predictor(result.bundle_dir, "torch", "cuda")
    on_cpu = load_predictor(result.bundle_dir, "torch", "cpu")
    assert on_gpu.device == "cuda"
    np.testing.assert_allclose(on_gpu.run(tiles), on_cpu.run(tiles), atol=PROB_ATOL)


def test_detector_trains_resumes_and_validates_on_cuda(po, data_dir):
    from models.bundle import load_bundle
    from models.predictor import load_predictor
    from training.engine import train
    from training.validate import validate

    out = data_dir / "runs" / "det"
    quiet = {"track": False, "log": lambda m: None}
    train("detector", _config("detector", epochs=1), po, out=out, **quiet)
    resumed = train("detector", _config("detector"), po, resume=out, epochs=2, **quiet)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert all(np.isfinite(h["train/loss"]) for h in resumed.history)

    bundle = load_bundle(resumed.bundle_dir)
    on_gpu = load_predictor(resumed.bundle_dir, "torch", "cuda")
    on_cpu = load_predictor(resumed.bundle_dir, "torch", "cpu")
    tiles = _tiles(bundle)
    np.testing.assert_allclose(on_gpu.run(tiles), on_cpu.run(tiles), atol=PROB_ATOL)
    assert len(on_gpu.detect(tiles)) == len(tiles)

    (report,) = validate(str(resumed.bundle_dir), po, track=False, log=lambda m: None).values()
    assert report["photos"] == 12 and 0.0 <= report["map"]["map50"] <= 1.0


def test_default_models_triage_a_photo_on_cuda_as_on_the_cpu(tmp_path):
    from datasets.synth import generate_po
    from serving.triage import Triage, TriageSettings

    summary = generate_po(tmp_path / "po", 3, seed=11, size=(2000, 1500), workers=1)
    photos = sorted((tmp_path / "po" / "images").glob("*.jpg"))
    assert len(photos) == summary["photos"] == 3
    gpu = Triage(TriageSettings(backend="torch", device="cuda", detect="all"))
    cpu = Triage(TriageSettings(backend="torch", device="cpu", detect="all"))
    assert gpu.classifier.device == gpu.detector.device == "cuda"
    for path in photos:
        a, b = gpu.photo(path), cpu.photo(path)
        for family, score in b.scores.items():
            assert a.scores[family] == pytest.approx(score, abs=PROB_ATOL), (path.name, family)
        assert len(a.findings) == pytest.approx(len(b.findings), abs=1)
