"""``loupe data import | export | check | version``: label formats, checks and dataset versions."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from loupe.apps import data_app

FORMATS_HELP = "coco, yolo, labelstudio, cvat, folders (folder-per-class) or csv (file,label)"


@data_app.command("import")
def import_cmd(
    src: Path = typer.Argument(..., help="Dataset folder or label file to import."),
    out: Path = typer.Option(..., "--out", "-o", help="New Loupe dataset folder to write."),
    fmt: str = typer.Option("auto", "--format", "-f", help=f"Source format: auto, {FORMATS_HELP}."),
) -> None:
    """Convert a labelled dataset into a Loupe dataset folder (annotations.json + images/)."""
    from datasets.coco import LabelFileError
    from datasets.reader import import_dataset

    try:
        path = import_dataset(src, out, fmt)
    except (LabelFileError, FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    coco = json.loads((path / "annotations.json").read_text(encoding="utf-8"))
    typer.echo(f"imported {len(coco['images'])} photos, {len(coco['annotations'])} boxes into {path}")


@data_app.command("export")
def export_cmd(
    dataset: Path = typer.Argument(..., help="Loupe dataset folder (or any readable dataset)."),
    fmt: str = typer.Option(..., "--format", "-f", help=f"Target format: {FORMATS_HELP}."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder to write the export into."),
) -> None:
    """Write a dataset in another tool's format (photos are copied alongside)."""
    from datasets.coco import LabelFileError
    from datasets.reader import export_dataset

    try:
        path = export_dataset(dataset, out, fmt)
    except (LabelFileError, FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"exported to {path}")


@data_app.command("check")
def check_cmd(
    dataset: Path = typer.Argument(..., help="Dataset folder or label file to check."),
    fmt: str = typer.Option("auto", "--format", "-f", help=f"Format: auto, {FORMATS_HELP}."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Counts per family and subtype, box sizes, and every problem; exit status 1 when there are problems."""
    from datasets.check import check_dataset

    report = check_dataset(dataset, fmt)
    typer.echo(json.dumps(report.to_dict(), indent=1) if as_json else report.summary())
    if not report.ok:
        raise typer.Exit(1)


@data_app.command("version")
def version_cmd(
    dataset: Path = typer.Argument(..., help="Dataset folder."),
    val_fraction: float = typer.Option(0.2, "--val", help="Fraction of photos for validation."),
    test_fraction: float = typer.Option(0.0, "--test", help="Fraction of photos held out for test."),
    seed: int = typer.Option(0, "--seed", help="Split seed."),
    write: bool = typer.Option(True, "--write/--no-write", help="Write DIR/manifest.json."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
) -> None:
    """Print the dataset version (content hash), class map and split counts; write manifest.json."""
    from datasets.coco import LabelFileError
    from datasets.manifest import build_manifest, write_manifest

    try:
        manifest = build_manifest(dataset, val_fraction, test_fraction, seed)
    except (LabelFileError, FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(manifest.model_dump_json(indent=1) if as_json else manifest.summary())
    if write:
        if not dataset.is_dir():
            typer.echo("error: --write needs a dataset folder; use --no-write for a label file", err=True)
            raise typer.Exit(2)
        path = write_manifest(manifest, dataset)
        if not as_json:
            typer.echo(f"wrote {path}")
