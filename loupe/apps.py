"""The typer apps the command modules register on."""

import typer

app = typer.Typer(
    help="Loupe: defect triage for factory QC inspection photos (stitching, logo/print, label).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="Make, import, export and check inspection-photo datasets.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
