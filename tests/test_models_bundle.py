"""The model bundle: save/load round trip, fp16 weights, and clear errors for broken folders."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from models.bundle import ModelBundle, ModelFileError, load_bundle, save_bundle
from models.registry import build_model

PREP = {"work_long_side": 1280, "tile_size": 320, "input_size": 320, "tile_overlap": 32}


def make_bundle(task: str = "classifier", **extra) -> tuple[ModelBundle, torch.nn.Module]:
    torch.manual_seed(0)
    if task == "classifier":
        arch, kwargs = "tile_classifier", {"backbone": "tf_efficientnet_lite0", "pretrained": "imagenet"}
    else:
        arch, kwargs = "tile_detector", {"pretrained": "imagenet", "num_subtypes": 16}
    model = build_model(arch, **kwargs)
    bundle = ModelBundle(
        name=f"loupe-{task}",
        version="3",
        task=task,
        arch=arch,
        arch_kwargs=kwargs,
        prep=PREP,
        thresholds={"stitching": {"flag": 0.6, "review": 0.3}, "label": {"flag": 0.5, "review": 0.5}},
        calibration={"method": "platt", "stitching": {"a": 1.2, "b": -0.3}},
        metrics={"val_ap": {"stitching": 0.71}},
        data_version="synth-v1@abc123",
        config={"epochs": 3},
        card="# loupe-classifier 3\n\nTrained on synthetic photos.\n",
        **extra,
    )
    return bundle, model


@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory):
    bundle, model = make_bundle("classifier")
    folder = save_bundle(bundle, model.state_dict(), tmp_path_factory.mktemp("bundle") / "classifier")
    return folder, model.eval()


def test_round_trip_gives_identical_outputs_and_metadata(saved_classifier):
    folder, model = saved_classifier
    loaded = load_bundle(folder)
    assert loaded.ref == "loupe-classifier@3"
    assert loaded.prep == PREP and loaded.input_size == 320
    assert loaded.thresholds["stitching"] == {"flag": 0.6, "review": 0.3}
    assert loaded.calibration["stitching"] == {"a": 1.2, "b": -0.3}
    assert loaded.card.startswith("# loupe-classifier 3")
    assert (folder / "card.md").read_text().startswith("# loupe-classifier 3")
    assert "card" not in json.loads((folder / "bundle.json").read_text())
    # Rebuilt with pretrained forced to "none": the weights come from the bundle alone.
    rebuilt = loaded.build_module()
    assert not rebuilt.training
    x = torch.randn(3, 3, 320, 320)
    with torch.no_grad():
        # Same weights; the rebuilt module runs channels-last, which only reorders float sums.
        for key, value in model.state_dict().items():
            assert torch.equal(rebuilt.state_dict()[key], value), key
        torch.testing.assert_close(rebuilt(x), model(x), rtol=1e-4, atol=1e-4)


def test_detector_round_trip(tmp_path):
    bundle, model = make_bundle("detector", subtypes=[f"s{i}" for i in range(16)])
    folder = save_bundle(bundle, model, tmp_path / "detector")  # a module is accepted too
    rebuilt = load_bundle(folder).build_module()
    x = torch.randn(2, 3, 320, 320)
    with torch.no_grad():
        want, got = model.eval()(x), rebuilt(x)
    assert set(got) == {"heatmap", "size", "offset", "subtype"}
    for key in want:
        # The rebuilt module runs channels-last (faster on CPU): same weights, another summation order.
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-4, msg=key)


def test_half_precision_weights_are_half_the_size_and_close(tmp_path, saved_classifier):
    folder, model = saved_classifier
    bundle = load_bundle(folder)
    half = save_bundle(bundle, model.state_dict(), tmp_path / "half", half=True)
    assert load_bundle(half).weights_dtype == "float16"
    full_size, half_size = (folder / "weights.pt").stat().st_size, (half / "weights.pt").stat().st_size
    assert half_size < 0.55 * full_size
    rebuilt = load_bundle(half).build_module()
    assert next(rebuilt.parameters()).dtype == torch.float32
    x = torch.randn(4, 3, 320, 320)
    with torch.no_grad():
        diff = (torch.sigmoid(rebuilt(x)) - torch.sigmoid(model(x))).abs().max()
    assert float(diff) < 1e-2  # fp16 rounding of weights; measured 1e-3 to 7e-3 on random tiles


def test_save_refuses_weights_of_another_architecture(tmp_path):
    bundle, _ = make_bundle("classifier")
    other = build_model("tile_classifier", pretrained="none", num_classes=5)
    with pytest.raises(ValueError, match="do not match"):
        save_bundle(bundle, other.state_dict(), tmp_path / "x")
    assert not (tmp_path / "x" / "bundle.json").exists()


def test_save_revalidates_a_bundle_changed_with_model_copy(tmp_path):
    bundle, model = make_bundle("classifier")
    broken = bundle.model_copy(update={"thresholds": {"logo": {"flag": 0.2, "review": 0.9}}})
    with pytest.raises(ValueError, match="review"):
        save_bundle(broken, model, tmp_path / "x")
    assert not (tmp_path / "x" / "weights.pt").exists()


def test_resaving_removes_a_stale_onnx_file(tmp_path, saved_classifier):
    folder, model = saved_classifier
    copy = save_bundle(load_bundle(folder), model.state_dict(), tmp_path / "b")
    (copy / "model.onnx").write_bytes(b"old export")
    save_bundle(load_bundle(copy), model.state_dict(), copy)
    assert not (copy / "model.onnx").exists()


def test_invalid_thresholds_are_refused():
    with pytest.raises(ValueError, match="review"):
        ModelBundle(
            name="m",
            task="classifier",
            arch="tile_classifier",
            thresholds={"logo": {"flag": 0.2, "review": 0.4}},
        )
    with pytest.raises(ValueError, match="num_classes=5"):
        ModelBundle(name="m", task="classifier", arch="tile_classifier", arch_kwargs={"num_classes": 5})
    with pytest.raises(ValueError, match="families"):
        ModelBundle(name="m", task="classifier", arch="tile_classifier", thresholds={"zip": {"flag": 0.5}})


def copy_bundle(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(ModelFileError, match=r"no_such_bundle.*folder not found"):
        load_bundle(tmp_path / "no_such_bundle")
    with pytest.raises(FileNotFoundError):  # also catchable as the builtin
        load_bundle(tmp_path / "no_such_bundle")


def test_missing_weights_names_the_file(tmp_path, saved_classifier):
    folder = copy_bundle(saved_classifier[0], tmp_path / "b")
    (folder / "weights.pt").unlink()
    with pytest.raises(ModelFileError, match=r"weights\.pt: missing"):
        load_bundle(folder)


def test_truncated_weights_name_the_file(tmp_path, saved_classifier):
    folder = copy_bundle(saved_classifier[0], tmp_path / "b")
    data = (folder / "weights.pt").read_bytes()
    (folder / "weights.pt").write_bytes(data[: len(data) // 2])
    bundle = load_bundle(folder)
    with pytest.raises(ModelFileError, match=r"weights\.pt.*corrupt or truncated"):
        bundle.build_module()


@pytest.mark.parametrize(
    "content", ["{not json", "[1, 2]", '{"name": "x"}', '{"name": "x", "task": "segmenter"}']
)
def test_garbage_bundle_json_names_the_file(tmp_path, saved_classifier, content):
    folder = copy_bundle(saved_classifier[0], tmp_path / "b")
    (folder / "bundle.json").write_text(content)
    with pytest.raises(ModelFileError, match=r"bundle\.json"):
        load_bundle(folder)


def test_missing_bundle_json_names_the_file(tmp_path, saved_classifier):
    folder = copy_bundle(saved_classifier[0], tmp_path / "b")
    (folder / "bundle.json").unlink()
    with pytest.raises(ModelFileError, match=r"bundle\.json: missing"):
        load_bundle(folder)


def test_weights_not_matching_the_arch_name_the_file(tmp_path, saved_classifier):
    folder = copy_bundle(saved_classifier[0], tmp_path / "b")
    meta = json.loads((folder / "bundle.json").read_text())
    meta["arch_kwargs"]["backbone"] = "tf_efficientnet_lite1"
    (folder / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=r"weights\.pt: weights do not match"):
        load_bundle(folder).build_module()


def test_reading_a_bundle_does_not_import_torch(saved_classifier):
    code = (
        "import sys; from models.bundle import load_bundle; "
        f"b = load_bundle({str(saved_classifier[0])!r}); assert b.input_size == 320; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
