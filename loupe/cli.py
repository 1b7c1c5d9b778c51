"""Entry point of the ``loupe`` command."""

from loupe.apps import app
from loupe.commands import data_formats, data_synth, predict, quality, reproduce, train  # noqa: F401  (registers verbs)


def main() -> None:
    app()
