"""Terminal presentation for the CLI: rich progress bars and tables.

Only ``cli.py`` imports this module; the library reports progress through the
:class:`retrieval_bio.progress.Progress` protocol and never prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)


class RichProgress:
    """A :class:`retrieval_bio.progress.Progress` drawn with rich: elapsed and remaining
    time, the epoch's running mean loss and images/s; each finished epoch is printed as a
    table row (loss, validation metrics, time, whether it is the best so far)."""

    def __init__(self) -> None:
        self._bar: Progress | None = None
        self._task = None

    def start(self, description: str, total: int | None) -> None:
        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}", markup=False), console=err_console,
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, info="")

    def advance(self, n: int = 1, **fields: Any) -> None:
        if self._bar is None:
            return
        info = "  ".join(f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None)
        if info:
            self._bar.update(self._task, advance=n, info=info)
        else:
            self._bar.update(self._task, advance=n)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def epoch_end(self, entry: dict[str, Any], best: bool = False, epochs: int | None = None
                  ) -> None:
        """One line per finished epoch: ``epoch 3/10  loss 0.412  val_map 0.871 *  12.3 s``
        (``*`` marks the best epoch so far)."""
        skip = {"epoch", "loss", "time_s", "images_per_s", "diagnostics", "warning"}
        metrics = "  ".join(f"{k} {_fmt(v)}" for k, v in entry.items()
                            if k not in skip and isinstance(v, (int, float)))
        total = f"/{epochs}" if epochs else ""
        loss = "" if entry.get("loss") is None else f"  loss {_fmt(entry['loss'])}"
        line = (f"epoch {entry['epoch']}{total}{loss}  {metrics}"
                f"{'  *best' if best else ''}  {entry.get('time_s', 0.0):.1f} s")
        err_console.print(Text(line))
        if "warning" in entry:
            err_console.print(Text(f"warning: {entry['warning']}", style="yellow"))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A rich table whose title and cells are plain text (a path with ``[`` ``]`` is shown
    as it is, never read as markup)."""
    t = Table(title=Text(title))
    for c in columns:
        # headers wrap rather than end in "…": long column names (exact+bpda-identity)
        # differ only at their end
        t.add_column(Text(str(c)), overflow="fold")
    for r in rows:
        t.add_row(*(Text(_fmt(v)) for v in r))
    return t


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    console.print(table(title, columns, rows))
