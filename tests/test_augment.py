"""Augmentation pipelines from YAML: validated at load time, boxes follow the transformed objects."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from configs import ConfigError
from datasets.augment import augment_sample, build_augment
from datasets.coco import make_annotation


def photo_with_patch(x: int, y: int, w: int, h: int, size: tuple[int, int] = (120, 160)) -> np.ndarray:
    """A grey photo with one bright 'defect' patch, so a box's content can be checked after a transform."""
    image = np.full((*size, 3), 60, dtype=np.uint8)
    image[y : y + h, x : x + w] = 250
    return image


def write_config(tmp_path: Path, transforms: list, **extra) -> Path:
    path = tmp_path / "augment_test.yaml"
    path.write_text(yaml.safe_dump({"transforms": transforms, **extra}))
    return path


def test_flip_moves_the_box_to_the_mirrored_place(tmp_path: Path) -> None:
    pipeline = build_augment(write_config(tmp_path, [{"name": "HorizontalFlip", "params": {"p": 1.0}}]))
    image = photo_with_patch(10, 20, 30, 15)
    ann = make_annotation(1, 1, "logo", [10, 20, 30, 15], "offset_logo")
    out, [moved] = augment_sample(pipeline, image, [ann])
    assert moved["bbox"] == pytest.approx([160 - 10 - 30, 20, 30, 15])
    assert (moved["family"], moved["subtype"], moved["category_id"]) == ("logo", "offset_logo", 2)
    x, y, w, h = (int(v) for v in moved["bbox"])
    assert out[y : y + h, x : x + w].min() == 250  # the box sits on the patch in the flipped photo


def test_an_empty_pipeline_passes_the_photo_and_boxes_through_without_warnings(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # albumentations warned "Got processor for bboxes" here
        pipeline = build_augment(write_config(tmp_path, []))
    image = photo_with_patch(10, 20, 30, 15)
    ann = make_annotation(1, 1, "label", [10, 20, 30, 15], "torn_label")
    out, [kept] = augment_sample(pipeline, image, [ann])
    assert np.array_equal(out, image)
    assert kept["bbox"] == pytest.approx([10, 20, 30, 15])


def test_rotation_keeps_the_box_on_the_patch(tmp_path: Path) -> None:
    spec = [{"name": "Affine", "params": {"rotate": [90, 90], "rotate_method": "ellipse", "p": 1.0}}]
    pipeline = build_augment(write_config(tmp_path, spec))
    out, [moved] = augment_sample(
        pipeline, photo_with_patch(70, 50, 20, 20), [make_annotation(1, 1, "label", [70, 50, 20, 20])]
    )
    x, y, w, h = moved["bbox"]
    cx, cy = x + w / 2, y + h / 2
    assert out[int(cy), int(cx)].min() > 200  # the centre of the moved box is still on the bright patch


@pytest.mark.parametrize("name", ["augment_train", "augment_finetune"])
def test_shipped_pipelines_keep_boxes_inside_and_on_their_objects(name: str) -> None:
    pipeline = build_augment(name)
    pipeline.set_random_seed(7)
    kept = 0
    for _ in range(40):
        image = photo_with_patch(60, 40, 24, 18)
        out, moved = augment_sample(pipeline, image, [make_annotation(1, 1, "stitching", [60, 40, 24, 18])])
        for ann in moved:
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and x + w <= out.shape[1] + 1e-6 and y + h <= out.shape[0] + 1e-6
            patch = out[int(y + h / 2) - 1 : int(y + h / 2) + 2, int(x + w / 2) - 1 : int(x + w / 2) + 2]
            assert patch.mean() > 120  # still the bright patch, after lighting and noise changes
        kept += len(moved)
    assert kept >= 36  # crops are box-safe: defects are rarely dropped


def test_unknown_transform_names_it(tmp_path: Path) -> None:
    path = write_config(tmp_path, [{"name": "HorizontalFlip"}, {"name": "RandomSmudge", "params": {"p": 1}}])
    with pytest.raises(ConfigError, match=r"(?s)augment_test\.yaml.*unknown transform 'RandomSmudge'"):
        build_augment(path)


def test_bad_params_name_the_transform(tmp_path: Path) -> None:
    path = write_config(tmp_path, [{"name": "MotionBlur", "params": {"blur_limit": [3, 7], "strength": 2}}])
    with pytest.raises(ConfigError, match=r"transform 'MotionBlur' has no parameter\(s\) strength"):
        build_augment(path)


def test_nested_one_of_and_visibility_validation(tmp_path: Path) -> None:
    inner = [{"name": "GaussianBlur", "params": {"p": 1}}, {"name": "Blurr"}]
    with pytest.raises(ConfigError, match="unknown transform 'Blurr'"):
        build_augment(write_config(tmp_path, [{"name": "OneOf", "transforms": inner}]))
    with pytest.raises(ConfigError, match="min_visibility"):
        build_augment(write_config(tmp_path, [{"name": "HorizontalFlip"}], min_visibility=1.5))
    with pytest.raises(ConfigError, match="takes no nested 'transforms'"):
        build_augment(write_config(tmp_path, [{"name": "HorizontalFlip", "transforms": [{"name": "Blur"}]}]))


def test_boxes_mostly_cut_off_are_dropped(tmp_path: Path) -> None:
    spec = [{"name": "Crop", "params": {"x_min": 0, "y_min": 0, "x_max": 80, "y_max": 120, "p": 1.0}}]
    pipeline = build_augment(write_config(tmp_path, spec, min_visibility=0.5))
    anns = [
        make_annotation(1, 1, "logo", [72, 10, 20, 10]),  # 40 % visible after the crop: dropped
        make_annotation(2, 1, "label", [5, 5, 10, 10]),
        make_annotation(3, 1, "stitching", [65, 30, 20, 10]),  # 75 % visible: kept, clipped
    ]
    _, moved = augment_sample(pipeline, photo_with_patch(0, 0, 1, 1), anns)
    assert [a["id"] for a in moved] == [2, 3]
    assert moved[1]["bbox"] == pytest.approx([65, 30, 15, 10])


def test_bad_param_values_name_the_transform(tmp_path: Path) -> None:
    path = write_config(tmp_path, [{"name": "ImageCompression", "params": {"quality_range": [95, 300]}}])
    with pytest.raises(ConfigError, match="transform 'ImageCompression' with params"):
        build_augment(path)
