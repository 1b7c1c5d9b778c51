"""``loupe quality PATH... [--json]``: the photo-quality gate on photos or folders."""

from __future__ import annotations

from pathlib import Path

import typer

from loupe.apps import app


@app.command("quality")
def quality(
    paths: list[Path] = typer.Argument(
        ..., help="Photos or folders of photos (one PO: duplicates are checked)."
    ),
    json_lines: bool = typer.Option(False, "--json", help="One JSON object per photo instead of text."),
    config: str = typer.Option(
        "quality", "--config", help="Gate thresholds: a name in configs/ or a YAML path."
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Worker processes (one thread each)."),
) -> None:
    """Check whether each photo is fit to judge: usable, warn or retake, with reasons.

    Exit status 1 when any photo could not be read (each such photo gets its own line).
    """
    import functools
    import json
    import sys

    from configs import ConfigError
    from cv.quality import DuplicateIndex, assess_file, check_duplicate, load_quality_config, quality_needs
    from cv.stream import list_photos, map_photos

    try:
        cfg = load_quality_config(config)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    photos = list_photos(paths)
    if not photos:
        typer.echo(f"error: no photos found in {', '.join(map(str, paths))}", err=True)
        raise typer.Exit(2)
    index = DuplicateIndex()
    counts = {"usable": 0, "warn": 0, "retake": 0, "unreadable": 0}
    reports = []
    check = functools.partial(assess_file, config=cfg)
    for result in map_photos(photos, check, workers=min(workers, len(photos))):
        if not result.ok:
            counts["unreadable"] += 1
            if json_lines:
                line = {"photo": str(result.item), "error": result.error, "error_type": result.error_type}
                typer.echo(json.dumps(line, ensure_ascii=False))
            else:
                typer.echo(f"{result.item}\tunreadable\t{result.error}")
            continue
        report = check_duplicate(result.value, index, cfg)
        counts[report.verdict] += 1
        reports.append(report)
        if json_lines:
            typer.echo(json.dumps(report.to_dict(), ensure_ascii=False))
        else:
            reasons = "; ".join(report.reasons)
            typer.echo(
                f"{report.photo}\t{report.width}x{report.height}\t{report.verdict}\t{reasons}".rstrip()
            )
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    # What the photos need, check by check: the inspector sees what to retake before leaving.
    needs = ", ".join(f"{label} {n}" for label, n in quality_needs(reports).items())
    print(f"{len(photos)} photos: {summary}" + (f"; {needs}" if needs else ""), file=sys.stderr)
    if counts["unreadable"]:
        raise typer.Exit(1)
