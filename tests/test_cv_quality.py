"""The photo-quality gate: each check fires on a photo made to fail it, and a good photo passes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from configs import ConfigError
from cv.decode import Photo, decode_photo
from cv.quality import (
    DuplicateIndex,
    QualityConfig,
    assess_file,
    assess_photo,
    hamming,
    load_quality_config,
    perceptual_hash,
    streak_kernel,
)


def fabric(h: int = 750, w: int = 1000, seed: int = 0) -> np.ndarray:
    """A sharp, well-exposed inspection-like scene: multi-scale fabric texture (its detail scales
    with the photo, as a real scene's does), a seam, a label, and a little sensor noise."""
    rng = np.random.default_rng(seed)
    tex = np.zeros((h, w), np.float32)
    for sigma, amp in ((1, 10), (3, 14), (9, 20), (27, 30)):
        px = sigma * w / 2000
        # Coarse octaves are drawn at low resolution and enlarged: same look, a fraction of the cost.
        f = max(1, int(px / 2))
        n = rng.normal(0, 1, (h // f + 1, w // f + 1)).astype(np.float32)
        n = cv2.resize(cv2.GaussianBlur(n, (0, 0), px / f), (w, h), interpolation=cv2.INTER_LINEAR)
        tex += amp * n / n.std()
    img = np.stack([tex * 0.9 + 120, tex + 130, tex * 1.1 + 150], -1)
    cv2.rectangle(img, (int(w * 0.6), int(h * 0.15)), (int(w * 0.85), int(h * 0.35)), (225, 225, 220), -1)
    cv2.line(img, (0, h // 2), (w, h // 2 + h // 40), (60, 60, 70), max(1, w // 300))
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def photo(rgb: np.ndarray, name: str = "p.jpg", original: tuple[int, int] = (4000, 3000)) -> Photo:
    return Photo(rgb, name, original[0], original[1], 1, rgb.shape[1] / original[0])


@pytest.fixture(scope="module")
def config() -> QualityConfig:
    return load_quality_config()


def test_good_photo_is_usable(config):
    report = assess_photo(photo(fabric()), config)
    assert report.verdict == "usable", report.reasons
    assert report.reasons == []
    assert set(report.checks) == {
        "blur",
        "noise",
        "shake",
        "underexposure",
        "overexposure",
        "glare",
        "resolution",
        "uniform",
        "screenshot",
        "duplicate",
    }


def fails(report, check: str, level: str = "retake") -> bool:
    return report.outcomes[check] == level and report.verdict in (level, "retake")


def test_blurred_photo_is_retaken_with_a_readable_reason(config):
    report = assess_photo(photo(cv2.GaussianBlur(fabric(), (0, 0), 5)), config)
    assert fails(report, "blur")
    assert any(r.startswith("blurred: sharpness") and r.endswith("— retake") for r in report.reasons)


def test_dark_photo(config):
    report = assess_photo(photo((fabric() * 0.1).astype(np.uint8)), config)
    assert fails(report, "underexposure")
    assert any("too dark: highlight brightness" in r for r in report.reasons)


def test_overexposed_photo(config):
    report = assess_photo(photo(cv2.add(fabric(), np.full((750, 1000, 3), 130, np.uint8))), config)
    assert fails(report, "overexposure")


def test_glare_hot_spot(config):
    img = fabric()
    cv2.circle(img, (300, 300), 90, (255, 255, 255), -1)  # a specular reflection on a shiny bag
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    img[220:380, 220:380][np.hypot(*np.mgrid[-80:80, -80:80]) < 75] = 255
    report = assess_photo(photo(img), config)
    assert fails(report, "glare")
    assert report.outcomes["overexposure"] == "usable"  # local, not the whole photo


def test_small_photo(config):
    small = fabric(480, 640)
    report = assess_photo(photo(small, original=(640, 480)), config)
    assert fails(report, "resolution")
    assert any("too small: shorter side px 480 < 720" in r for r in report.reasons)
    mid = assess_photo(photo(fabric(), original=(1600, 1200)), config)
    assert mid.verdict == "warn" and mid.outcomes["resolution"] == "warn"


def test_noisy_photo_warns_and_a_colourful_print_does_not(tmp_path, config):
    """A 12 MP photo at high gain (independent noise in each channel) warns as noisy through the real
    decode; the same scene with a many-coloured print across a third of it stays usable."""
    rng = np.random.default_rng(1)
    clean = fabric(3000, 4000)
    noisy = np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    printed = clean.copy()
    for y in range(0, 1000, 25):  # a striped multicolour print over the top third
        printed[y : y + 12] = rng.integers(0, 256, 3)
    scores = {}
    for name, img in (("clean", clean), ("noisy", noisy), ("printed", printed)):
        path = tmp_path / f"{name}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        report = assess_file(path, config)
        scores[name] = report.checks["noise"]
        if name == "noisy":
            assert report.outcomes["noise"] == "warn" and report.verdict == "warn", report.reasons
            assert any(r.startswith("noisy: chroma noise") and "use more light" in r for r in report.reasons)
        else:
            assert report.outcomes["noise"] == "usable", (name, scores)
    assert scores["noisy"] > 2 * scores["clean"], scores


def streak(img: np.ndarray, length: int, degrees: float) -> np.ndarray:
    """The photo as a hand that moved ``length`` px during the exposure took it."""
    return cv2.filter2D(img, -1, streak_kernel(length, degrees))


def with_barcode(img: np.ndarray, seed: int = 3) -> np.ndarray:
    """A white label with a barcode across the middle of the photo."""
    rng = np.random.default_rng(seed)
    out = img.copy()
    h, w = out.shape[:2]
    x0, y0, bw, bh = int(w * 0.2), int(h * 0.25), int(w * 0.6), int(h * 0.5)
    cv2.rectangle(out, (x0, y0), (x0 + bw, y0 + bh), (245, 245, 240), -1)
    x, module, black = x0 + bw // 10, max(2, w // 400), True
    while x < x0 + bw * 0.9:
        width = module * int(rng.integers(1, 5))
        if black:
            out[y0 + bh // 8 : y0 + bh * 7 // 8, x : x + width] = 20
        x, black = x + width, not black
    return out


def test_hand_shake_warns_and_ribs_that_run_one_way_do_not(tmp_path, config):
    """A 12 MP photo streaked 37 px by a moving hand warns as shaken through the real decode, with a
    barcode in it too (its bars, with detail only across them, would hide the streak); the sharp
    scene, the scene with ribs running one way (as a knit or a seam has), the sharp barcode and an
    evenly defocused copy (the blur check's case, not this one's) do not."""
    clean = fabric(3000, 4000)
    ribs = (18 * np.sin(np.arange(4000) * 2 * np.pi / 14)).astype(np.float32)[None, :, None]
    photos = {
        "clean": clean,
        "shaken": streak(clean, 37, 30.0),
        "barcode": with_barcode(clean),
        "barcode shaken": streak(with_barcode(clean), 37, 30.0),
        "ribbed": np.clip(clean + ribs, 0, 255).astype(np.uint8),
        "defocused": cv2.GaussianBlur(clean, (0, 0), 6),
    }
    scores = {}
    for name, img in photos.items():
        path = tmp_path / f"{name.replace(' ', '_')}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        report = assess_file(path, config)
        scores[name] = report.checks["shake"]
        if "shaken" in name:
            assert report.outcomes["shake"] == "warn", (name, report.reasons, scores)
            reason = next(r for r in report.reasons if r.startswith("shaken: steadiness"))
            assert f"< {config.shake.warn:g} — hold the phone steady" in reason, reason
        else:
            assert report.outcomes["shake"] == "usable", (name, scores)
    assert scores["shaken"] < scores["clean"] - 0.2, scores


def test_blank_frame(config):
    rng = np.random.default_rng(0)
    blank = np.clip(rng.normal(128, 1.0, (750, 1000, 3)), 0, 255).astype(np.uint8)
    report = assess_photo(photo(blank), config)
    assert fails(report, "uniform")


def test_screenshot(config):
    shot = np.full((750, 1000, 3), 255, np.uint8)
    shot[:60] = (33, 99, 200)  # title bar
    shot[60:750, :200] = (240, 240, 240)  # side panel
    for y in range(100, 700, 40):
        cv2.putText(
            shot, "PO 4512 DUPRO - stitching 2.5 AQL", (230, y), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 2
        )
    report = assess_photo(photo(shot), config)
    assert fails(report, "screenshot")
    assert report.outcomes["uniform"] == "usable"


def test_blur_score_is_scale_normalised(tmp_path, config):
    big = fabric(3000, 4000)
    s_big = assess_photo(photo(big), config).checks["blur"]
    for w, h in ((2000, 1500), (1000, 750)):
        small = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)
        s_small = assess_photo(photo(small), config).checks["blur"]
        assert abs(s_big - s_small) / s_big < 0.2, (w, s_big, s_small)
    # Through the real path (reduced decode of the files) a 12 MP and a 3 MP photo agree closely.
    scores = []
    for w, h in ((4000, 3000), (2000, 1500)):
        path = tmp_path / f"{w}.jpg"
        img = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        scores.append(assess_file(path, config).checks["blur"])
    assert abs(scores[0] - scores[1]) / scores[0] < 0.08, scores
    # Blur of 6 and 12 px on the 12 MP photo, applied to its 3 MP copy (half the px, a quarter the cost).
    mid = cv2.resize(big, (2000, 1500), interpolation=cv2.INTER_AREA)
    soft = assess_photo(photo(cv2.GaussianBlur(mid, (0, 0), 3)), config)
    assert soft.outcomes["blur"] == "warn", soft.checks
    blurred = assess_photo(photo(cv2.GaussianBlur(mid, (0, 0), 6)), config)
    assert blurred.outcomes["blur"] == "retake", blurred.checks


def test_near_duplicates_in_a_po(config):
    index = DuplicateIndex()
    first = assess_photo(photo(fabric(seed=1), "IMG_0001.jpg"), config, seen_hashes=index)
    other = fabric(seed=2)[:, ::-1].copy()  # a different shot of the product
    cv2.rectangle(other, (50, 50), (400, 300), (200, 40, 40), -1)
    second = assess_photo(photo(other, "IMG_0002.jpg"), config, seen_hashes=index)
    again = cv2.imdecode(cv2.imencode(".jpg", fabric(seed=1), [cv2.IMWRITE_JPEG_QUALITY, 70])[1], 1)
    third = assess_photo(photo(cv2.resize(again, (900, 675)), "IMG_0003.jpg"), config, seen_hashes=index)
    assert first.checks["duplicate"] is None and first.verdict == "usable"
    assert second.outcomes["duplicate"] == "usable", second.checks
    assert third.outcomes["duplicate"] == "warn" and third.verdict == "warn"
    assert any(r.startswith("near-duplicate of IMG_0001.jpg") for r in third.reasons)
    assert len(index) == 3


def test_perceptual_hash_is_stable_under_rescale():
    gray = cv2.cvtColor(fabric(seed=4), cv2.COLOR_RGB2GRAY)
    assert hamming(perceptual_hash(gray), perceptual_hash(cv2.resize(gray, (500, 375)))) <= 3


def test_gate_runs_on_a_reduced_decode_and_agrees_with_the_full_one(tmp_path, config):
    path = tmp_path / "shot.jpg"
    big = fabric(1500, 2000)
    cv2.imwrite(str(path), cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    reduced = assess_file(path, config)
    full = assess_photo(decode_photo(path), config)
    assert reduced.width == 2000 and reduced.height == 1500
    assert reduced.verdict == full.verdict
    assert abs(reduced.checks["blur"] - full.checks["blur"]) / full.checks["blur"] < 0.15
    assert reduced.to_dict()["checks"]["blur"] == reduced.checks["blur"]


def test_yaml_and_code_defaults_agree():
    assert load_quality_config() == QualityConfig()


def test_config_validation(tmp_path):
    with pytest.raises(ValidationError, match="retake limit"):
        QualityConfig(blur={"warn": 40, "retake": 100})
    bad = tmp_path / "q.yaml"
    bad.write_text("blurr: {warn: 1}\n")
    with pytest.raises(ConfigError, match="blurr"):
        load_quality_config(bad)
    assert load_quality_config(overrides={"blur": {"retake": 10}}).blur.warn is None
