"""Errors and problem reports shared by every dataset loader.

A loader meets two kinds of trouble:

* **fatal** (a list file, annotation file or pickle is missing or unreadable): it raises
  :class:`DatasetError` at once, naming the missing file and showing the expected layout;
* **per item** (a bad list line, a missing or corrupt image): it calls
  :meth:`ProblemLog.report`. In the default ``"raise"`` mode that raises
  :class:`DatasetError` naming file (and line); with ``skip_bad=True`` (mode ``"skip"``) the
  item is dropped and counted; ``check`` uses mode ``"collect"`` to gather every problem.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MODES = ("raise", "skip", "collect")


class DatasetError(ValueError):
    """A dataset on disk is missing, malformed or does not fit the requested protocol.

    A ``ValueError`` so that callers handling bad input generically (the CLI) report it.
    """

    def __init__(self, message: object = "", *args: object) -> None:
        text = str(message)
        # Raised in a DataLoader worker, the loader re-raises it with the worker's traceback
        # glued in front; the user needs the message (which names the file), not that.
        if text.startswith(f"Caught {type(self).__name__} in DataLoader worker"):
            text = text.rsplit(f"{type(self).__name__}: ", 1)[-1].rstrip()
        super().__init__(text, *args)


def missing(path: str | Path, what: str, layout: str) -> DatasetError:
    """The error for a missing file or folder: names it and shows the expected layout."""
    return DatasetError(f"{what} not found: {path}\nExpected layout:\n{layout.rstrip()}")


@dataclass(frozen=True)
class Problem:
    """One problem with one item: ``file`` (list file or image), 1-based ``line`` if any."""

    file: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


@dataclass
class ProblemLog:
    """Receives per-item problems from loaders.

    Attributes:
        mode: ``"raise"`` (raise :class:`DatasetError` on the first problem), ``"skip"``
            (drop the item, count it, log a warning) or ``"collect"`` (drop and keep it).
        verify_images: decode every image at load time (``skip``/``collect``), so corrupt
            files are found before training rather than in the middle of an epoch.
        keep: how many problems to keep in :attr:`problems` (all are counted).
    """

    mode: str = "raise"
    verify_images: bool = False
    keep: int = 50
    problems: list[Problem] = field(default_factory=list)
    count: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    @classmethod
    def for_load(cls, skip_bad: bool) -> ProblemLog:
        """Strict and lazy by default; ``skip_bad`` decodes every image once at load time."""
        return cls(mode="skip", verify_images=True) if skip_bad else cls()

    def report(self, file: str | Path, message: str, line: int | None = None) -> None:
        """Record a problem with one item; raises in ``"raise"`` mode."""
        p = Problem(str(file), message, line)
        if self.mode == "raise":
            raise DatasetError(f"{p}\n(pass skip_bad=True / --skip-bad to skip bad items)")
        self.count += 1
        if len(self.problems) < self.keep:
            self.problems.append(p)
        if self.mode == "skip":
            log.warning("skipping bad item: %s", p)
