"""``loupe quality``: one line per photo, JSON shape, unreadable files reported, exit status."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_cv_quality import fabric  # the same synthetic scene as the gate's own tests
from typer.testing import CliRunner

import loupe.commands.quality  # noqa: F401  (registers the verb)
from loupe.apps import app


@pytest.fixture(scope="module")
def po(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("po")
    good = cv2.cvtColor(fabric(1500, 2000, seed=11), cv2.COLOR_RGB2BGR)
    # Stored sideways with EXIF orientation 6: the JSON must give the upright size.
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(good[..., ::-1]).transpose(Image.Transpose.ROTATE_90).save(
        folder / "IMG_0001.jpg", quality=90, exif=exif.tobytes()
    )
    cv2.imwrite(str(folder / "IMG_0002.jpg"), cv2.GaussianBlur(good, (0, 0), 10))
    (folder / "IMG_0003.jpg").write_bytes(b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n")
    (folder / "notes.txt").write_text("not a photo, not listed")
    cv2.imwrite(str(folder / "IMG_0004.png"), np.full((1500, 2000, 3), 127, np.uint8))
    return folder


@pytest.mark.parametrize("workers", ["1", "2"])
def test_json_lines_for_a_folder(po, workers):
    result = CliRunner().invoke(app, ["quality", str(po), "--json", "--workers", workers])
    assert result.exit_code == 1  # one photo could not be read
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["photo"]).name for r in lines] == [
        "IMG_0001.jpg",
        "IMG_0002.jpg",
        "IMG_0003.jpg",
        "IMG_0004.png",
    ]
    first, blurred, pdf, blank = lines
    assert (first["width"], first["height"]) == (2000, 1500)
    assert first["verdict"] == "usable" and first["reasons"] == []
    assert set(first["checks"]) >= {
        "blur",
        "underexposure",
        "overexposure",
        "glare",
        "resolution",
        "duplicate",
    }
    assert blurred["verdict"] == "retake" and any(r.startswith("blurred") for r in blurred["reasons"])
    assert pdf["error_type"] == "NotAPhotoError" and "IMG_0003.jpg" in pdf["error"]
    assert blank["verdict"] == "retake"


def test_text_output_and_clean_exit_when_all_read(po):
    result = CliRunner().invoke(
        app, ["quality", str(po / "IMG_0001.jpg"), str(po / "IMG_0002.jpg"), "--workers", "1"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].split("\t")[1:3] == ["2000x1500", "usable"]
    assert "retake" in lines[1] and "blurred: sharpness" in lines[1]
    # The summary tallies what the photos need, check by check.
    assert result.stderr.strip().splitlines()[-1].startswith("2 photos: 1 usable, 1 retake; blurred 1")


def test_missing_file_gets_its_own_line(po, tmp_path):
    result = CliRunner().invoke(
        app, ["quality", str(tmp_path / "gone.jpg"), str(po / "IMG_0001.jpg"), "--json"]
    )
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert "no such file" in lines[0]["error"] and lines[1]["verdict"] == "usable"
