"""``loupe data synth`` and ``loupe data preview``: make a synthetic PO, draw a dataset's ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from loupe.apps import data_app


@data_app.command("synth")
def synth(
    out: Path = typer.Option(
        ..., "--out", help="Folder to write images/, annotations.json and summary.json to."
    ),
    photos: int = typer.Option(300, "--photos", min=1, help="Number of photos in the PO."),
    seed: int = typer.Option(7, "--seed", help="Same seed and config give byte-identical output."),
    size: str | None = typer.Option(
        None, "--size", help="WIDTHxHEIGHT, e.g. 2000x1500 (default: the config's mix)."
    ),
    config: str = typer.Option(
        "synth.yaml", "--config", help="Generator config: a name in configs/ or a path."
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Worker processes."),
) -> None:
    """Generate a synthetic PO of inspection photos with exact defect boxes, masks and subtypes."""
    from configs import ConfigError, dump_config
    from datasets.synth import generate_po, load_synth_config, parse_size

    try:
        cfg = load_synth_config(config)
        wh = parse_size(size) if size else None
    except (ConfigError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    summary = generate_po(out, photos, seed, wh, cfg, workers)
    dump_config(cfg, out / "synth.yaml")
    typer.echo(json.dumps(summary, indent=1))


@data_app.command("preview")
def preview(
    dataset: Path = typer.Argument(
        ..., help="Dataset folder holding annotations.json (any dataset in the contract)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Contact sheet PNG (default: DATASET/preview.png)."),
    max_photos: int = typer.Option(24, "--max", min=1, help="Most photos on the sheet."),
) -> None:
    """Draw the ground truth (boxes coloured by family, subtype text) on a contact sheet PNG."""
    from datasets.synth.preview import contact_sheet

    try:
        path = contact_sheet(dataset, out or dataset / "preview.png", max_photos)
    except (FileNotFoundError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(str(path))
