"""``loupe reproduce classifier|detector``: make a shipped default again, stage by stage."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from loupe.apps import app


class Task(StrEnum):
    classifier = "classifier"
    detector = "detector"


@app.command("reproduce")
def reproduce(
    task: Task = typer.Argument(..., help="classifier or detector"),
    lineage: str | None = typer.Option(
        None, "--lineage", help="the stages as YAML (default configs/default_<task>.yaml: the shipped one)"
    ),
    out: Path | None = typer.Option(
        None, "--out", help="<out>/<version>/bundle per stage (default $LOUPE_DATA/reproduce/<task>)"
    ),
    start_at: str | None = typer.Option(None, "--start-at", help="begin at this stage's version"),
    start: str | None = typer.Option(
        None, "--start", help="with --start-at: the model the stage before it made (a bundle folder or ref)"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the stages and stop"),
    no_track: bool = typer.Option(False, "--no-track", help="skip MLflow"),
) -> None:
    """Train the shipped default again: every stage of configs/default_<task>.yaml in turn (hours on a
    CPU; a stage already in --out is kept, a cut-off training stage resumes). Prints the last bundle;
    `loupe val --model BUNDLE --against default` compares it with the shipped one, `loupe champion
    BUNDLE` makes it the registry's champion.

    Example, only the last classifier stage, from version 5 as shipped then:
    loupe reproduce classifier --start-at 6 --start path/to/loupe-classifier-5
    """
    from loupe.commands.train import _fail, _passive_omp_threads

    _passive_omp_threads()
    from configs import ConfigError
    from models.errors import ModelFileError
    from models.refs import ModelRefError, loupe_data_dir
    from training.lineage import DEFAULT_LINEAGES, describe, load_lineage
    from training.lineage import reproduce as run_lineage

    data_root = loupe_data_dir()
    out = out or data_root / "reproduce" / task.value
    try:
        plan = load_lineage(lineage or DEFAULT_LINEAGES[task.value])
        if plan.task != task.value:
            raise ConfigError(f"{lineage}: is a {plan.task} lineage, not a {task.value} one")
        if dry_run:
            for line in describe(plan, out, data_root):
                typer.echo(line)
            return
        bundle = run_lineage(
            plan, out, data_root, start_at=start_at, start=start, track=not no_track, log=typer.echo
        )
    except (ConfigError, ModelRefError, ModelFileError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    typer.echo(str(bundle))
