"""Triage: one photo in, one result out; a PO is a stream of photos.

The path a photo takes (shared/DESIGN.md): cv decodes it (reduced, upright) and runs the quality
gate; the classifier scores every tile at the bundle's working scale and the photo's per-family
score is the calibrated max over tiles; where a family reaches its review threshold the detector
boxes defects on the tiles and the boxes are mapped back to the photo's own pixels; the thresholds
saved with the model turn scores into a verdict. ``loupe predict`` and the API return the same
:class:`PhotoResult`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.photo import Verdict, decide


class TriageSettings(BaseModel):
    """How to triage: which models, on what, and when to run the detector (``configs/triage.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    classifier: str = Field("default", description="model ref: 'default', a bundle folder or models:/...")
    detector: str | None = Field("default", description="model ref, or null for scores only")
    backend: Literal["torch", "onnx"] = "onnx"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    threads: int = Field(1, ge=1, description="intra-op threads per worker process")
    workers: int = Field(2, ge=1, description="worker processes for a PO (one per core on the CPU)")
    # The detector costs several times the classifier; it runs on photos whose score for some family
    # reaches that family's review threshold ("flagged") or on every photo ("all").
    detect: Literal["flagged", "all", "never"] = "flagged"
    quality: str = Field("quality", description="quality-gate config (configs/quality.yaml)")
    max_findings_per_family: int = Field(5, ge=1, description="detector boxes kept per family and photo")


@dataclass
class Finding:
    """One defect located on a photo; ``box`` is x1, y1, x2, y2 in the photo's own (upright) pixels.

    ``subtype`` is None when the evidence is a classifier tile rather than a detector box; its
    ``score`` is then the family's calibrated photo score. A detector box's ``score`` is the
    geometric mean of the box's own score and the classifier's tile score under it
    (:func:`models.photo.supported_detections`)."""

    family: str
    subtype: str | None
    score: float
    box: tuple[float, float, float, float]


@dataclass
class PhotoResult:
    """The per-photo contract shared by ``loupe predict`` and the API."""

    photo: str
    width: int = 0
    height: int = 0
    quality: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    verdict: Verdict | Literal["error"] = "pass"
    model: str = ""
    error: str | None = None
    # The gate's full report, kept for the PO's near-duplicate check; not part of the JSON.
    quality_report: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("quality_report")
        out["findings"] = [{**asdict(f), "box": [round(v, 1) for v in f.box]} for f in self.findings]
        out["scores"] = {k: round(v, 4) for k, v in self.scores.items()}
        if self.error is None:
            out.pop("error")
        return out


class Triage:
    """Loaded models and gate settings; ``photo()`` triages one photo (path or bytes)."""

    def __init__(self, settings: TriageSettings | None = None) -> None:
        from cv.quality import load_quality_config
        from models.predictor import load_predictor

        self.settings = settings or TriageSettings()
        s = self.settings
        self.quality_config = load_quality_config(s.quality)
        self.classifier = load_predictor(s.classifier, s.backend, s.device, s.threads, task="classifier")
        self.detector = (
            load_predictor(s.detector, s.backend, s.device, s.threads, task="detector")
            if s.detector and s.detect != "never"
            else None
        )
        from cv.prep import same_working_photo
        from models.photo import as_prep

        # Each model reads the pixels it was trained on: a detector at another working scale than the
        # classifier gets its own reduced decode of the photo (a few tens of ms, only when it runs).
        self.prep = as_prep(self.classifier.bundle.prep)
        self.detector_prep = as_prep(self.detector.bundle.prep) if self.detector is not None else None
        self.detector_decodes = self.detector_prep is not None and not same_working_photo(
            self.detector_prep, self.prep
        )
        refs = [self.classifier.bundle.ref] + ([self.detector.bundle.ref] if self.detector else [])
        self.model_ref = "+".join(refs)

    @property
    def thresholds(self) -> dict[str, dict[str, float]]:
        return self.classifier.bundle.thresholds

    def photo(self, source: str | Path | bytes, name: str | None = None) -> PhotoResult:
        """Triage one photo. Raises :class:`cv.errors.PhotoError` for an unreadable file."""
        from cv.decode import decode_photo
        from cv.prep import working_photo
        from cv.quality import assess_photo
        from models.photo import (
            calibrate_scores,
            detect_photo,
            guided_tiles,
            score_photo,
            supported_detections,
        )

        # One reduced decode, the same one training cut its crops from, serves the gate and the models.
        wp = working_photo(source, self.prep, max_pixels=self.quality_config.max_pixels, name=name)
        photo, work, to_photo = wp.photo, wp.rgb_work, wp.to_photo  # to_photo: working -> upright px
        gate_photo = photo
        if (
            max(photo.rgb.shape[:2])
            < self.quality_config.analysis_long_side
            < max(photo.original_width, photo.original_height)
        ):
            # A model working below the gate's scale: the gate gets its own decode rather than an
            # enlarged one (enlarging would read as blur).
            gate_photo = decode_photo(
                source, min_long_side=self.quality_config.analysis_long_side,
                max_pixels=self.quality_config.max_pixels, name=name,
            )  # fmt: skip
        report = assess_photo(gate_photo, self.quality_config)

        raw = score_photo(work, self.classifier, self.prep)
        scores = calibrate_scores(raw, self.classifier.bundle.calibration)
        review = {f: t.get("review", 0.5) for f, t in self.thresholds.items()}
        suspect = [f for f in raw.families if scores[f] >= review.get(f, 0.5)]

        findings: list[Finding] = []
        if self.detector is not None and (suspect or self.settings.detect == "all"):
            per_family: dict[str, int] = {}
            det_work, det_to_photo = work, to_photo
            if self.detector_decodes:
                dwp = working_photo(
                    source, self.detector_prep, max_pixels=self.quality_config.max_pixels, name=name
                )
                det_work, det_to_photo = dwp.rgb_work, dwp.to_photo
            # Only where the classifier sees something, when the detector's bundle asks for it.
            tiles = guided_tiles(self.detector, self.detector_prep, raw, self.prep)
            found = detect_photo(det_work, self.detector, self.detector_prep, tiles=tiles)
            # Box scores tempered by the classifier's tiles under them (its working pixels: to_photo).
            found = supported_detections(found, raw, det_to_photo / to_photo)
            for box, score, family, subtype in found:
                wanted = self.settings.detect == "all" or family in suspect
                # Sorted by score: a report needs the strongest few boxes per family, not every peak.
                if wanted and per_family.get(family, 0) < self.settings.max_findings_per_family:
                    per_family[family] = per_family.get(family, 0) + 1
                    findings.append(Finding(family, subtype, score, _scale_box(box, det_to_photo, photo)))
        for family in suspect:
            if not any(f.family == family for f in findings):
                # No box from the detector: the classifier's tile is still seam-level evidence.
                tile = raw.evidence_tile(family, self.classifier.bundle.calibration, review.get(family, 0.5))
                box = tile.xyxy
                findings.append(Finding(family, None, scores[family], _scale_box(box, to_photo, photo)))
        findings.sort(key=lambda f: -f.score)
        return PhotoResult(
            photo=photo.name,
            width=photo.original_width,
            height=photo.original_height,
            quality={"verdict": report.verdict, "reasons": list(report.reasons)},
            scores=scores,
            findings=findings,
            verdict=decide(scores, self.thresholds, report.verdict),
            model=self.model_ref,
            quality_report=report,
        )


def _scale_box(box: Iterable[float], factor: float, photo: Any) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) * factor for v in box)
    w, h = photo.original_width, photo.original_height
    return (max(0.0, min(x1, w)), max(0.0, min(y1, h)), max(0.0, min(x2, w)), max(0.0, min(y2, h)))


# One Triage per worker process, built on first use: loading models once per PO, not per photo.
_WORKER_TRIAGE: dict[str, Triage] = {}


def _triage_in_worker(path: Path, settings_json: str) -> PhotoResult:
    triage = _WORKER_TRIAGE.get(settings_json)
    if triage is None:
        triage = _WORKER_TRIAGE.setdefault(
            settings_json, Triage(TriageSettings.model_validate_json(settings_json))
        )
    return triage.photo(path, name=str(path))


def triage_po(paths: Iterable[str | Path], settings: TriageSettings | None = None) -> Iterator[PhotoResult]:
    """Triage every photo of a PO in order, on ``settings.workers`` processes, memory bounded.

    An unreadable photo yields a result with ``verdict="error"`` and the reason; the others go on.
    Near-duplicates are found here, across the whole PO, since each worker sees only its photos.
    """
    from cv.quality import DuplicateIndex, check_duplicate, load_quality_config
    from cv.stream import list_photos, map_photos

    settings = settings or TriageSettings()
    quality_config = load_quality_config(settings.quality)
    seen = DuplicateIndex()
    # Resolve and read the models before the first photo: a missing model is one clear error up front,
    # not the same error repeated for every photo.
    thresholds = check_models(settings)
    fn = functools.partial(_triage_in_worker, settings_json=settings.model_dump_json())
    for item in map_photos(list_photos(paths), fn, workers=settings.workers):
        if not item.ok:
            yield PhotoResult(photo=str(item.item), verdict="error", error=f"{item.error_type}: {item.error}")
            continue
        result = item.value
        report = check_duplicate(result.quality_report, seen, quality_config)
        result.quality = {"verdict": report.verdict, "reasons": list(report.reasons)}
        result.verdict = decide(result.scores, thresholds, report.verdict)
        yield result


def check_models(settings: TriageSettings) -> dict[str, dict[str, float]]:
    """Resolve the settings' model refs, read their bundles and (ONNX backend) make sure each has its
    ONNX file; return the classifier's thresholds. Raises ModelRefError / ModelFileError naming the
    ref and the fix."""
    from models.bundle import load_bundle
    from models.predictor import ensure_onnx
    from models.refs import resolve_model_ref

    bundles = [load_bundle(resolve_model_ref(settings.classifier, "classifier"))]
    if settings.detector and settings.detect != "never":
        bundles.append(load_bundle(resolve_model_ref(settings.detector, "detector")))
    if settings.backend == "onnx":
        for bundle in bundles:
            ensure_onnx(bundle)  # export once here, not once per worker on first use
    return bundles[0].thresholds


def summarise_po(results: Iterable[PhotoResult], families: Iterable[str]) -> dict[str, Any]:
    """A PO's triage in numbers: photos by verdict and quality, what the photos that are not usable
    need (photos per quality check, by its label: "shaken", "too small", ...), and per family how
    many photos were flagged or sent to review, the highest score and the photos that carry it."""
    from cv.quality import quality_needs

    results = list(results)
    families = list(families)
    judged = [r for r in results if r.verdict != "error"]
    summary: dict[str, Any] = {
        "photos": len(results),
        "unreadable": [{"photo": r.photo, "error": r.error} for r in results if r.verdict == "error"],
        "verdicts": {v: sum(r.verdict == v for r in judged) for v in ("defect", "review", "pass")},
        "quality": {
            v: sum(r.quality.get("verdict") == v for r in judged) for v in ("usable", "warn", "retake")
        },
        "quality_needs": quality_needs(r.quality_report for r in judged if r.quality_report is not None),
        "families": {},
    }
    for family in families:
        ranked = sorted(judged, key=lambda r: -r.scores.get(family, 0.0))
        flagged = [r for r in judged if r.verdict == "defect" and any(f.family == family for f in r.findings)]
        summary["families"][family] = {
            "photos_with_findings": sum(any(f.family == family for f in r.findings) for r in judged),
            "photos_flagged": len(flagged),
            "flag_rate": round(len(flagged) / len(judged), 4) if judged else 0.0,
            "max_score": round(ranked[0].scores.get(family, 0.0), 4) if ranked else 0.0,
            "top_photos": [Path(r.photo).name for r in ranked[:3] if r.scores.get(family, 0.0) > 0],
        }
    return summary
