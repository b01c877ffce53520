"""The ``retrieval-bio`` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="retrieval-bio",
    help="Measure how the learning rule behind a network changes its adversarial robustness "
    "(deep-hashing retrieval and classification).",
    no_args_is_help=True,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect and validate datasets on disk.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def main() -> None:  # pragma: no cover
    app()
