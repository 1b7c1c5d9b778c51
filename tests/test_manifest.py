"""Dataset versions: the hash moves with any label or photo byte; the split is stable and stratified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_formats import make_dataset, write_photo
from typer.testing import CliRunner

from datasets.coco import make_annotation, make_image
from datasets.manifest import build_manifest, read_manifest, write_manifest
from loupe.cli import app


def edit_coco(root: Path, change) -> None:
    coco = json.loads((root / "annotations.json").read_text())
    change(coco)
    (root / "annotations.json").write_text(json.dumps(coco))


def add_photos(root: Path, n: int, labels: list[str], seed0: int, prefix: str) -> None:
    """Append ``n`` photos with ``labels`` (and a box per family) to a dataset."""

    def change(coco: dict) -> None:
        for k in range(n):
            image_id = max(i["id"] for i in coco["images"]) + 1
            name = f"images/{prefix}{k}.jpg"
            write_photo(root / name, 32, 24, seed0 + k)
            coco["images"].append(make_image(image_id, name, 32, 24, labels))
            for family in labels:
                ann_id = max([a["id"] for a in coco["annotations"]] or [0]) + 1
                coco["annotations"].append(make_annotation(ann_id, image_id, family, [1, 1, 8, 8]))

    edit_coco(root, change)


@pytest.fixture
def ds(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds")


def test_version_is_stable_and_ignores_order_and_ids(ds: Path) -> None:
    first = build_manifest(ds)
    assert first == build_manifest(ds)
    assert len(first.version) == 12 and first.content_sha256.startswith(first.version)

    def shuffle(coco: dict) -> None:
        coco["images"].reverse()
        coco["annotations"].reverse()
        for ann in coco["annotations"]:
            ann["id"] += 100

    edit_coco(ds, shuffle)
    again = build_manifest(ds)
    assert (again.version, again.split_id) == (first.version, first.split_id)


def test_version_changes_with_a_label(ds: Path) -> None:
    before = build_manifest(ds).version
    edit_coco(ds, lambda coco: coco["annotations"][0].update(subtype="broken_thread"))
    after_subtype = build_manifest(ds).version
    assert after_subtype != before
    edit_coco(ds, lambda coco: coco["annotations"][0]["bbox"].__setitem__(0, 11.5))
    assert build_manifest(ds).version not in (before, after_subtype)


def test_version_changes_with_one_photo_byte(ds: Path) -> None:
    before = build_manifest(ds)
    photo = ds / "images/a.jpg"
    data = bytearray(photo.read_bytes())
    data[-3] ^= 0x01  # inside the JPEG data, before the end marker
    photo.write_bytes(bytes(data))
    after = build_manifest(ds)
    assert after.version != before.version
    assert [i.sha256 for i in after.images if i.file_name == "images/a.jpg"] != [
        i.sha256 for i in before.images if i.file_name == "images/a.jpg"
    ]


def test_split_is_deterministic_and_stable_when_photos_are_added(ds: Path) -> None:
    add_photos(ds, 30, ["stitching"], seed0=100, prefix="s")
    add_photos(ds, 30, [], seed0=200, prefix="g")
    before = {i.file_name: i.split for i in build_manifest(ds, seed=3).images}
    assert before == {i.file_name: i.split for i in build_manifest(ds, seed=3).images}
    add_photos(ds, 40, ["label"], seed0=300, prefix="new_label")  # unrelated photos arrive
    after = {i.file_name: i.split for i in build_manifest(ds, seed=3).images}
    assert {k: after[k] for k in before} == before
    assert before != {i.file_name: i.split for i in build_manifest(ds, seed=4).images}


def test_split_is_stratified_by_family(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [("images/x.jpg", 32, 24, [], [], {})])
    add_photos(root, 2, ["logo"], seed0=10, prefix="logo")  # a rare family: 2 photos
    add_photos(root, 3, ["label"], seed0=20, prefix="label")
    add_photos(root, 200, ["stitching"], seed0=30, prefix="st")
    add_photos(root, 100, [], seed0=500, prefix="good")
    manifest = build_manifest(root, val_fraction=0.2)
    for family in ("logo", "label", "stitching", "good"):
        splits = [i.split for i in manifest.images if (i.labels or ["good"]) == [family]]
        assert "val" in splits and "train" in splits, family
    stitching_val = manifest.counts["val"]["stitching"] / manifest.counts["all"]["stitching"]
    assert 0.12 < stitching_val < 0.28  # about val_fraction, from the hash threshold
    assert (
        sum(c["images"] for k, c in manifest.counts.items() if k != "all") == manifest.counts["all"]["images"]
    )


def test_identical_photos_share_a_split(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [("images/x.jpg", 32, 24, [], [], {})])
    add_photos(root, 60, [], seed0=0, prefix="p")
    for k in range(60):  # every photo gets a byte-identical twin with another name
        (root / f"images/twin{k}.jpg").write_bytes((root / f"images/p{k}.jpg").read_bytes())
    edit_coco(
        root,
        lambda coco: coco["images"].extend(
            make_image(1000 + k, f"images/twin{k}.jpg", 32, 24, []) for k in range(60)
        ),
    )
    splits = {i.file_name: i.split for i in build_manifest(root, val_fraction=0.3).images}
    assert all(splits[f"images/twin{k}.jpg"] == splits[f"images/p{k}.jpg"] for k in range(60))


def test_test_fraction_and_bad_fractions(ds: Path) -> None:
    add_photos(ds, 100, [], seed0=50, prefix="g")
    counts = build_manifest(ds, val_fraction=0.2, test_fraction=0.2).counts
    assert counts["test"]["images"] > 0 and counts["val"]["images"] > 0
    with pytest.raises(ValueError, match=r"val_fraction=0\.7 and test_fraction=0\.5"):
        build_manifest(ds, val_fraction=0.7, test_fraction=0.5)


def test_recorded_splits_are_kept(ds: Path) -> None:
    edit_coco(ds, lambda coco: [img.update(split="test") for img in coco["images"]])
    assert {i.split for i in build_manifest(ds).images} == {"test"}


def test_write_read_and_command(ds: Path) -> None:
    manifest = build_manifest(ds)
    path = write_manifest(manifest, ds)
    assert path == ds / "manifest.json"
    assert read_manifest(ds) == manifest
    assert manifest.classes == {"stitching": 1, "logo": 2, "label": 3}
    result = CliRunner().invoke(app, ["data", "version", str(ds), "--no-write"])
    assert result.exit_code == 0, result.output
    assert f"dataset version {manifest.version}" in result.output
    # The dataset still reads as COCO with manifest.json next to annotations.json.
    assert build_manifest(ds).version == manifest.version


def test_a_manifest_does_not_change_how_a_dataset_is_read(tmp_path: Path) -> None:
    root = tmp_path / "cls"
    write_photo(root / "train/logo/a.jpg", 20, 20, 1)
    write_photo(root / "val/good/b.jpg", 20, 20, 2)
    before = build_manifest(root)
    write_manifest(before, root)
    assert build_manifest(root) == before
