"""The triage pipeline and ``loupe predict``: the per-photo contract, verdicts from the thresholds saved
with the model, boxes in the photo's own (upright) pixels, and a PO that survives a bad file.

The classifier here is a real bundle whose head is set by hand (zero weights, chosen biases), so every
tile scores a known probability and the expected verdicts and boxes can be computed in the test.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from models.bundle import ModelBundle, load_bundle, save_bundle
from models.refs import resolve_model_ref
from models.registry import build_model
from serving.triage import Triage, TriageSettings, decide, summarise_po, triage_po

PREP = {"work_long_side": 640, "tile_size": 320, "tile_overlap": 32, "input_size": 160}
# Logits per family: stitching clearly flagged, logo in the review band, label clean.
LOGITS = {"stitching": 3.0, "logo": -0.5, "label": -4.0}
THRESHOLDS = {
    "stitching": {"flag": 0.8, "review": 0.3},
    "logo": {"flag": 0.8, "review": 0.3},
    "label": {"flag": 0.8, "review": 0.3},
}


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    kwargs = {"backbone": "tf_efficientnet_lite0", "pretrained": "none", "num_classes": 3}
    model = build_model("tile_classifier", **kwargs)
    head = model.net.classifier
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([LOGITS[f] for f in ("stitching", "logo", "label")]))
    bundle = ModelBundle(
        name="loupe-classifier",
        version="7",
        task="classifier",
        arch="tile_classifier",
        arch_kwargs=kwargs,
        prep=PREP,
        thresholds=THRESHOLDS,
    )
    return save_bundle(bundle, model, tmp_path_factory.mktemp("models") / "classifier")


def write_photo(path: Path, size=(1200, 900), orientation: int | None = None, seed: int = 0) -> Path:
    """A textured photo (so the quality gate sees a sharp, well-exposed picture)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = cv2.resize(rng.integers(40, 215, (h // 8, w // 8, 3), dtype=np.uint8), (w, h))
    grain = rng.normal(0, 18, (h, w, 3))
    pixels = np.clip(base + grain, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(path, quality=92, exif=exif.tobytes())
    return path


def settings(classifier: Path, **extra) -> TriageSettings:
    base = {"classifier": str(classifier), "detector": None, "backend": "torch", "workers": 1}
    return TriageSettings(**{**base, **extra})


@pytest.mark.parametrize(
    ("scores", "quality", "expected"),
    [
        ({"stitching": 0.85, "logo": 0.1, "label": 0.0}, "usable", "defect"),
        ({"stitching": 0.79, "logo": 0.1, "label": 0.0}, "usable", "review"),
        ({"stitching": 0.29, "logo": 0.1, "label": 0.0}, "usable", "pass"),
        ({"stitching": 0.29, "logo": 0.1, "label": 0.0}, "retake", "review"),
        ({"stitching": 0.29, "logo": 0.1, "label": 0.95}, "retake", "defect"),
    ],
)
def test_verdict_follows_the_thresholds_saved_with_the_model(scores, quality, expected):
    assert decide(scores, THRESHOLDS, quality) == expected


def test_photo_result_has_the_contract_shape_and_known_scores(classifier, tmp_path):
    result = Triage(settings(classifier)).photo(write_photo(tmp_path / "a.jpg"))
    out = result.to_dict()
    assert set(out) == {"photo", "width", "height", "quality", "scores", "findings", "verdict", "model"}
    assert out["model"] == "loupe-classifier@7"
    assert (out["width"], out["height"]) == (1200, 900)
    for family, logit in LOGITS.items():
        assert out["scores"][family] == pytest.approx(sigmoid(logit), abs=1e-3)
    assert out["verdict"] == "defect"
    assert out["quality"]["verdict"] in ("usable", "warn", "retake") and isinstance(
        out["quality"]["reasons"], list
    )
    # Stitching (flag) and logo (review band) carry evidence; label (clean) does not.
    assert sorted(f["family"] for f in out["findings"]) == ["logo", "stitching"]
    json.dumps(out)  # JSON-ready


def test_tile_evidence_is_in_the_photo_pixels_after_exif_orientation(classifier, tmp_path):
    # Stored 1200x900 with orientation 6 (rotate 90° clockwise): upright it is 900 wide, 1200 high.
    result = Triage(settings(classifier)).photo(write_photo(tmp_path / "r.jpg", orientation=6))
    assert (result.width, result.height) == (900, 1200)
    # Every tile scores the same, so the evidence is the first tile: working px 0..320 of a photo whose
    # long side (1200) was shrunk to 640, i.e. 0..600 photo px.
    box = next(f.box for f in result.findings if f.family == "stitching")
    assert box == pytest.approx((0.0, 0.0, 600.0, 600.0), abs=2.0)
    assert all(0 <= v <= 1200 for v in box)


def test_a_detector_at_another_working_scale_reads_its_own_decode(classifier, tmp_path):
    from cv.prep import working_photo
    from datasets.synth import generate_po
    from models.photo import as_prep, detect_photo
    from models.predictor import load_predictor

    generate_po(tmp_path / "po", 4, seed=11, size=(1600, 1200), workers=1)
    detector = load_predictor("default", backend="torch", task="detector")
    prep = as_prep(detector.bundle.prep)
    assert prep.work_long_side != PREP["work_long_side"]  # the point of the test: 1280 against 640
    triage = Triage(settings(classifier, detector="default", detect="all", max_findings_per_family=50))
    boxed = 0
    for path in sorted((tmp_path / "po" / "images").glob("*.jpg")):
        wp = working_photo(path, prep)
        w, h = wp.photo.original_width, wp.photo.original_height
        # Every tile of this classifier scores sigmoid(LOGITS[family]), so each box's score becomes
        # the geometric mean of its own and that (models.photo.supported_detections).
        expected = sorted(
            (
                family,
                round(math.sqrt(score * sigmoid(LOGITS[family])), 4),
                *(
                    round(min(max(v * wp.to_photo, 0), lim), 1)
                    for v, lim in zip(box, (w, h, w, h), strict=True)
                ),
            )
            for box, score, family, _ in detect_photo(wp.rgb_work, detector, prep)
        )
        found = sorted(
            (f.family, round(f.score, 4), *(round(v, 1) for v in f.box))
            for f in triage.photo(path).findings
            if f.subtype is not None  # the detector's boxes, not the classifier's evidence tiles
        )
        assert found == expected
        boxed += len(found)
    assert boxed > 0  # the default detector found something on these generated photos


def test_calibration_saved_with_the_model_is_applied(classifier, tmp_path):
    calibrated = tmp_path / "calibrated"
    shutil.copytree(classifier, calibrated)
    meta = json.loads((calibrated / "bundle.json").read_text())
    meta["calibration"] = {"stitching": {"a": 1.0, "b": -3.0}}  # shifts the logit 3 down
    (calibrated / "bundle.json").write_text(json.dumps(meta))
    result = Triage(settings(calibrated)).photo(write_photo(tmp_path / "a.jpg"))
    assert result.scores["stitching"] == pytest.approx(sigmoid(LOGITS["stitching"] - 3.0), abs=1e-3)
    assert result.verdict == "review"  # 0.5: below flag 0.8, above review 0.3


def test_a_po_with_a_bad_file_and_a_duplicate_loses_nothing(classifier, tmp_path):
    po = tmp_path / "po"
    po.mkdir()
    write_photo(po / "01.jpg", seed=1)
    shutil.copy(po / "01.jpg", po / "02.jpg")  # the inspector uploaded the same shot twice
    (po / "03.jpg").write_bytes(b"%PDF-1.4 not a photo")
    write_photo(po / "04.jpg", seed=4)
    (po / "05.jpg").write_bytes(b"")
    results = list(triage_po([po], settings(classifier, workers=2)))
    assert [Path(r.photo).name for r in results] == ["01.jpg", "02.jpg", "03.jpg", "04.jpg", "05.jpg"]
    assert [r.verdict for r in results] == ["defect", "defect", "error", "defect", "error"]
    assert "03.jpg" in results[2].error and "05.jpg" in results[4].error
    assert any("near-duplicate of 01.jpg" in reason for reason in results[1].quality["reasons"])
    assert not any("near-duplicate" in reason for reason in results[3].quality["reasons"])
    summary = summarise_po(results, LOGITS)
    assert summary["photos"] == 5 and len(summary["unreadable"]) == 2
    assert summary["verdicts"] == {"defect": 3, "review": 0, "pass": 0}
    assert summary["families"]["stitching"]["photos_flagged"] == 3
    assert summary["families"]["label"]["photos_flagged"] == 0
    assert summary["quality_needs"].get("near-duplicate") == 1  # 02.jpg, and nothing for the errors


def run_loupe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loupe", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_predict_command_writes_jsonl_and_annotated_photos(classifier, tmp_path):
    write_photo(tmp_path / "a.jpg", seed=1)
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out, annotated = tmp_path / "results.jsonl", tmp_path / "annotated"
    proc = run_loupe(
        "predict", str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"), "--model", str(classifier),
        "--detector", "none", "--backend", "torch", "--workers", "1",
        "--out", str(out), "--annotated", str(annotated),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # one photo could not be read
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["photo"]).name for r in lines] == ["a.jpg", "b.jpg"]
    assert lines[0]["verdict"] == "defect" and lines[1]["verdict"] == "error"
    assert "b.jpg" in lines[1]["error"]
    assert [p.name for p in annotated.iterdir()] == ["a.jpg"]
    assert "PO summary: 2 photos" in proc.stdout


def test_predict_with_a_missing_model_names_it(tmp_path):
    write_photo(tmp_path / "a.jpg")
    proc = run_loupe("predict", str(tmp_path / "a.jpg"), "--model", str(tmp_path / "nope"), "--workers", "1")
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "not found" in proc.stderr


def test_demo_triages_a_generated_po_with_the_shipped_default_and_checks_it_against_the_truth(tmp_path):
    import re

    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "loupe", "demo", "--photos", "6", "--out", str(out), "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # Serving names results after the shipped bundles it loaded: "classifier ref+detector ref".
    shipped = "+".join(load_bundle(resolve_model_ref("default", t)).ref for t in ("classifier", "detector"))
    assert len(lines) == 6 and all(r["model"] == shipped for r in lines)
    counts = re.findall(
        r"(defective|good) photos\s+(\d+): (\d+) defect, (\d+) review, (\d+) pass", done.stdout
    )
    assert len(counts) == 2
    assert sum(int(c[1]) for c in counts) == 6
    assert all(int(c[1]) == int(c[2]) + int(c[3]) + int(c[4]) for c in counts)


class CountingTiles:
    """A real predictor that counts the tiles it is asked to detect on."""

    def __init__(self, predictor) -> None:
        self.predictor, self.tiles = predictor, 0

    def __getattr__(self, name):
        return getattr(self.predictor, name)

    def detect(self, batch, score_threshold, top_k):
        self.tiles += len(batch)
        return self.predictor.detect(batch, score_threshold, top_k)


def test_a_detector_asking_for_guidance_reads_only_the_tiles_the_classifier_points_at(tmp_path):
    from cv.prep import working_photo
    from datasets.synth import generate_po
    from models.photo import guided_tiles, score_photo

    generate_po(tmp_path / "po", 3, seed=12, size=(1600, 1200), workers=1)
    shipped = resolve_model_ref("default", "detector")

    def detector(name: str, guide: float) -> Triage:
        # The shipped detector read once (no mirrored view: every tile read is then the plain
        # view's), paired with the shipped classifier, which cuts the same tiles.
        folder = shutil.copytree(shipped, tmp_path / name, ignore=shutil.ignore_patterns("*.onnx"))
        bundle = json.loads((folder / "bundle.json").read_text())
        bundle["config"]["detector"].update(mirror=False, guide_threshold=guide)
        (folder / "bundle.json").write_text(json.dumps(bundle))
        triage = Triage(TriageSettings(detector=str(folder), backend="torch", detect="all", workers=1))
        triage.detector = CountingTiles(triage.detector)
        return triage

    everywhere, guided = detector("everywhere", 0.0), detector("guided", 0.3)
    pointed = 0
    for path in sorted((tmp_path / "po" / "images").glob("*.jpg")):
        scores = score_photo(working_photo(path, guided.prep).rgb_work, guided.classifier, guided.prep)
        pointed += len(guided_tiles(guided.detector, guided.detector_prep, scores, guided.prep))
        guided.photo(path)
        everywhere.photo(path)
    assert guided.detector.tiles == pointed  # exactly the tiles the classifier points at
    assert 0 < pointed < everywhere.detector.tiles
