"""``loupe predict`` (triage photos with a model) and ``loupe demo`` (the README's main job)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from loupe.apps import app

BackendOpt = Annotated[str, typer.Option(help="onnx (fast on the CPU) or torch")]


def _settings(model: str, detector: str, backend: str, device: str, workers: int, detect: str):
    from configs import load_config
    from serving.triage import TriageSettings

    overrides = {
        "classifier": model,
        "detector": None if detector == "none" else detector,
        "backend": backend,
        "device": device,
        "workers": workers,
        "detect": detect,
    }
    return load_config("triage", TriageSettings, overrides)


def _annotate(result, out_dir: Path) -> None:
    import cv2

    from cv.decode import decode_photo
    from cv.draw import draw_findings

    photo = decode_photo(result.photo, min_long_side=1600)
    findings = [
        {**f.__dict__, "box": [v * photo.scale for v in f.box]}  # photo px -> decoded px
        for f in result.findings
    ]
    drawn = draw_findings(photo.rgb, findings)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{Path(result.photo).stem}.jpg"
    cv2.imwrite(str(target), cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])


def _short_line(result) -> str:
    if result.verdict == "error":
        return f"{Path(result.photo).name:<28} ERROR   {result.error}"
    scores = " ".join(f"{f}={s:.2f}" for f, s in result.scores.items())
    found = ", ".join(f"{f.family}/{f.subtype or 'tile'} {f.score:.2f}" for f in result.findings[:3])
    quality = "" if result.quality["verdict"] == "usable" else f" [{result.quality['verdict']}]"
    return f"{Path(result.photo).name:<28} {result.verdict:<7} {scores}{quality}  {found}"


def run_triage(
    paths: list[Path],
    settings,
    out: Path | None,
    annotated: Path | None,
    as_json: bool,
) -> tuple[list, int]:
    """Triage ``paths``, stream each result as it comes, return (results, unreadable count)."""
    from serving.triage import triage_po

    results = []
    sink = out.open("w", encoding="utf-8") if out else None
    try:
        for result in triage_po(paths, settings):
            results.append(result)
            line = json.dumps(result.to_dict())
            if sink:
                sink.write(line + "\n")
                sink.flush()
            typer.echo(line if as_json else _short_line(result))
            if annotated and result.verdict != "error":
                _annotate(result, annotated)
    finally:
        if sink:
            sink.close()
    return results, sum(r.verdict == "error" for r in results)


def _print_summary(summary: dict) -> None:
    v, q = summary["verdicts"], summary["quality"]
    needs = ", ".join(f"{label} {n}" for label, n in summary["quality_needs"].items())
    typer.echo(
        f"\nPO summary: {summary['photos']} photos — defect {v['defect']}, review {v['review']}, "
        f"pass {v['pass']}, unreadable {len(summary['unreadable'])}; quality: usable {q['usable']}, "
        f"warn {q['warn']}, retake {q['retake']}" + (f" ({needs})" if needs else "")
    )
    for family, s in summary["families"].items():
        typer.echo(
            f"  {family:<10} flagged {s['photos_flagged']:>3} ({s['flag_rate']:.0%})  "
            f"max score {s['max_score']:.2f}  top: {', '.join(s['top_photos'])}"
        )


@app.command()
def predict(
    paths: Annotated[list[Path], typer.Argument(help="photos or folders of photos")],
    model: Annotated[str, typer.Option(help="classifier: 'default', a bundle or models:/...")] = "default",
    detector: Annotated[str, typer.Option(help="detector ref, or 'none' for scores only")] = "default",
    out: Annotated[Path | None, typer.Option(help="write one JSON object per photo here (JSONL)")] = None,
    annotated: Annotated[Path | None, typer.Option(help="write photos with findings drawn here")] = None,
    backend: BackendOpt = "onnx",
    device: Annotated[str, typer.Option(help="cpu, cuda or auto")] = "cpu",
    workers: Annotated[int, typer.Option(help="worker processes (one per core)")] = 2,
    detect: Annotated[str, typer.Option(help="run the detector on: flagged, all or never")] = "flagged",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines instead of a table")] = False,
    summary: Annotated[bool, typer.Option(help="print a PO summary at the end")] = True,
) -> None:
    """Triage photos: per-family scores, located findings and a verdict (defect / review / pass).

    Example: loupe predict data/demo-po/images --out results.jsonl --annotated annotated/

    Exit status 1 when any photo could not be read (its line says why; the others are still triaged).
    """
    from serving.triage import summarise_po

    settings = _settings(model, detector, backend, device, workers, detect)
    try:
        results, unreadable = run_triage(paths, settings, out, annotated, as_json)
    except (FileNotFoundError, ValueError) as exc:  # a missing or corrupt model: say which and how to fix
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if summary and not as_json and results:
        families = results[0].scores.keys() if results[0].scores else []
        _print_summary(summarise_po(results, families or ("stitching", "logo", "label")))
    raise typer.Exit(1 if unreadable else 0)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="where the demo PO is generated")] = Path("data/demo-po"),
    photos: Annotated[int, typer.Option(help="photos in the demo PO")] = 60,
    seed: Annotated[int, typer.Option(help="generator seed (never used in training)")] = 2026,
    size: Annotated[str, typer.Option(help="photo size WxH")] = "2000x1500",
    workers: Annotated[int, typer.Option(help="worker processes")] = 2,
) -> None:
    """The main job: generate a demo PO, draw its contact sheet, triage it with the default model.

    Prints per-photo results, a PO summary and the verdicts against the PO's ground truth; writes
    results.jsonl, summary.json and annotated photos.

    Example: loupe demo --photos 60
    """
    from datasets.synth import generate_po
    from datasets.synth.config import parse_size
    from datasets.synth.preview import contact_sheet
    from models.refs import ModelRefError, resolve_model_ref
    from serving.triage import summarise_po

    if not (out / "annotations.json").exists():
        typer.echo(f"generating a demo PO of {photos} photos in {out} (seed {seed}) ...")
        generate_po(out, photos=photos, seed=seed, size=parse_size(size), workers=workers)
    sheet = contact_sheet(out, out / "contact_sheet.png")
    typer.echo(f"contact sheet of the ground truth: {sheet}")
    try:
        resolve_model_ref("default", "classifier")
    except ModelRefError as exc:
        typer.echo(f"no model to triage with: {exc}", err=True)
        raise typer.Exit(2) from None
    settings = _settings("default", "default", "onnx", "cpu", workers, "flagged")
    results, _ = run_triage([out / "images"], settings, out / "results.jsonl", out / "annotated", False)
    families = results[0].scores.keys() if results and results[0].scores else ()
    summary = summarise_po(results, families)
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    _print_summary(summary)
    _print_against_truth(out, results, tuple(families))
    typer.echo(f"\nresults: {out / 'results.jsonl'}  annotated photos: {out / 'annotated'}")


def _print_against_truth(out: Path, results: list, families: tuple[str, ...]) -> None:
    """The demo PO carries exact ground truth: show what triage caught and what it sent to a person
    needlessly, so the demo is honest about the model rather than only showing its output."""
    from collections import Counter

    from datasets.coco import annotations_by_image
    from datasets.reader import read_dataset
    from training.evaluate import photo_labels

    coco = read_dataset(out).coco
    anns = annotations_by_image(coco)
    defective = {
        Path(im["file_name"]).name: bool(photo_labels(im, anns.get(im["id"], []), families).any())
        for im in coco["images"]
    }
    typer.echo("\nagainst the generator's ground truth:")
    for truth, name in ((True, "defective photos"), (False, "good photos")):
        verdicts = Counter(r.verdict for r in results if defective.get(Path(r.photo).name) is truth)
        parts = ", ".join(f"{verdicts.get(v, 0)} {v}" for v in ("defect", "review", "pass"))
        typer.echo(f"  {name:<17}{sum(verdicts.values()):>4}: {parts}")
