"""Registry, pretrained EfficientNet-Lite weights, forward shapes and freezing."""

from __future__ import annotations

import pytest
import timm
import torch

from models.errors import ModelFileError
from models.pretrained import (
    backbone_normalisation,
    efficientnet_pytorch_to_timm,
    imagenet_weights_path,
    read_state_dict,
)
from models.registry import available_models, build_model, load_model_spec


@pytest.fixture(scope="module")
def lite0_source() -> dict[str, torch.Tensor]:
    return read_state_dict(imagenet_weights_path("tf_efficientnet_lite0"))


def test_pretrained_mapping_is_complete_and_loads_strictly(lite0_source):
    mapped = efficientnet_pytorch_to_timm(lite0_source, "tf_efficientnet_lite0")
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    # Every source key used once, every target key filled, same shapes.
    assert len(mapped) == len(lite0_source)
    assert set(mapped) == set(net.state_dict())
    result = net.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        logits = net(torch.zeros(1, 3, 224, 224))
    assert logits.shape == (1, 1000)
    # Values come from the file (not timm's init): spot-check a block in a later stage.
    assert torch.equal(net.blocks[5][3].conv_pwl.weight, lite0_source["_blocks.14._project_conv.weight"])


def test_pretrained_weights_differ_from_random_init(lite0_source):
    pretrained = build_model("tile_classifier", pretrained="imagenet").net
    random = build_model("tile_classifier", pretrained="none").net
    for name in ("conv_stem.weight", "blocks.3.1.conv_dw.weight", "bn2.running_var", "conv_head.weight"):
        got = pretrained.state_dict()[name]
        assert not torch.allclose(got, random.state_dict()[name]), name
    src = efficientnet_pytorch_to_timm(lite0_source, "tf_efficientnet_lite0")
    assert torch.equal(pretrained.conv_head.weight, src["conv_head.weight"])
    # The new 3-family head is freshly initialised, not the ImageNet one.
    assert pretrained.classifier.weight.shape == (3, 1280)


def test_mapping_rejects_unknown_keys(lite0_source):
    bad = dict(lite0_source)
    bad["_blocks.3._se_reduce.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="_se_reduce"):
        efficientnet_pytorch_to_timm(bad, "tf_efficientnet_lite0")
    with pytest.raises(ValueError, match="tf_efficientnet_lite0"):
        efficientnet_pytorch_to_timm(lite0_source, "resnet18")


def test_lite_normalisation_is_half_half():
    assert backbone_normalisation("tf_efficientnet_lite0") == {
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
    }
    assert backbone_normalisation("mobilenetv3_large_100")["mean"] == pytest.approx((0.485, 0.456, 0.406))


def test_registry_lists_and_builds_each_name():
    assert {"tile_classifier", "tile_detector"} <= set(available_models())
    for name in ("tile_classifier", "tile_detector"):
        for pretrained in ("none", "imagenet"):
            assert isinstance(build_model(name, pretrained=pretrained), torch.nn.Module)


def test_registry_errors_name_the_choices():
    with pytest.raises(ValueError, match="tile_classifier"):
        build_model("tile_classifer")
    with pytest.raises(ValueError, match="bad arguments"):
        build_model("tile_classifier", pretrained="none", num_clases=3)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model("tile_classifier", backbone="no_such_net", pretrained="none")
    with pytest.raises(ValueError, match="offline ImageNet"):
        build_model("tile_classifier", backbone="resnet18", pretrained="imagenet")


def test_local_weights_file_loads_in_any_known_naming(tmp_path):
    trained = build_model("tile_classifier", pretrained="none")
    with torch.no_grad():
        trained.net.conv_stem.weight.add_(1.0)  # something no init produces
    path = tmp_path / "tile_classifier.pt"
    torch.save(trained.state_dict(), path)  # "net." prefixed keys, 3-class head
    reused = build_model("tile_detector", pretrained=str(path))
    assert torch.equal(reused.backbone.conv_stem.weight, trained.net.conv_stem.weight)
    # The package's EfficientNet-PyTorch-named file works as a plain path too.
    lite = build_model("tile_classifier", pretrained=str(imagenet_weights_path("tf_efficientnet_lite0")))
    assert torch.equal(lite.net.conv_stem.weight, build_model("tile_classifier").net.conv_stem.weight)


def test_local_weights_errors_name_the_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"nothing\.pt"):
        build_model("tile_classifier", pretrained=str(tmp_path / "nothing.pt"))
    wrong = tmp_path / "mobilenet.pt"
    torch.save(timm.create_model("mobilenetv3_small_100", pretrained=False).state_dict(), wrong)
    with pytest.raises(ModelFileError, match=r"mobilenet\.pt"):
        build_model("tile_classifier", pretrained=str(wrong))


@pytest.mark.parametrize("size", [320, 384])
def test_classifier_forward_shape(size):
    model = build_model("tile_classifier", pretrained="none").eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, size, size)).shape == (2, 3)


@pytest.mark.parametrize(("stride", "size", "cells"), [(8, 320, 40), (8, 384, 48), (4, 320, 80)])
def test_detector_forward_shapes(stride, size, cells):
    model = build_model("tile_detector", pretrained="none", stride=stride, num_subtypes=16).eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, size, size))
    assert out["heatmap"].shape == (2, 3, cells, cells)
    assert out["size"].shape == out["offset"].shape == (2, 2, cells, cells)
    assert out["subtype"].shape == (2, 16, cells, cells)
    no_subtypes = build_model("tile_detector", pretrained="none").eval()
    with torch.no_grad():
        assert "subtype" not in no_subtypes(torch.zeros(1, 3, size, size))


def test_freeze_stages_freezes_stem_and_early_stages_and_keeps_their_batchnorm_stats():
    model = build_model("tile_classifier", pretrained="none", freeze_stages=2).train()
    net = model.net
    assert not net.conv_stem.weight.requires_grad
    assert not any(p.requires_grad for p in net.blocks[1].parameters())
    assert all(p.requires_grad for p in net.blocks[2].parameters())
    assert not net.blocks[1][0].bn1.training and net.blocks[2][0].bn1.training
    before = net.blocks[1][0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(net.blocks[1][0].bn1.running_mean, before)

    probe = build_model("tile_classifier", pretrained="none", freeze_stages=-1)
    trainable = {n for n, p in probe.named_parameters() if p.requires_grad}
    assert trainable == {"net.classifier.weight", "net.classifier.bias"}

    detector = build_model("tile_detector", pretrained="none", freeze_stages=-1)
    assert not any(p.requires_grad for p in detector.backbone.parameters())
    assert all(p.requires_grad for p in detector.heatmap.parameters())
    with pytest.raises(ValueError, match="stages"):
        build_model("tile_classifier", pretrained="none", freeze_stages=9)


@pytest.mark.parametrize("arch", ["tile_classifier", "tile_detector"])
def test_frozen_bn_keeps_every_batchnorm_statistic_while_its_weights_learn(arch):
    model = build_model(arch, pretrained="none", frozen_bn=True).train()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert all(m.weight.requires_grad for m in norms)
    before = [m.running_var.clone() for m in norms]
    out = model(torch.randn(2, 3, 64, 64) * 3)
    loss = out.sum() if arch == "tile_classifier" else out["heatmap"].sum()
    loss.backward()
    assert all(torch.equal(m.running_var, b) for m, b in zip(norms, before, strict=True))
    assert any(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in norms)
    # Without frozen_bn, the same step moves the statistics.
    plain = build_model(arch, pretrained="none").train()
    first = next(m for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d))
    start = first.running_var.clone()
    plain(torch.randn(2, 3, 64, 64) * 3)
    assert not torch.equal(first.running_var, start)


def test_model_recipes_in_configs_build():
    for name, cls in (("model_classifier", "TileClassifier"), ("model_detector", "TileDetector")):
        spec = load_model_spec(name, overrides={"pretrained": "none"})
        assert spec.kwargs["pretrained"] == "none"
        assert type(spec.build()).__name__ == cls
