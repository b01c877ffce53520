"""Progress reporting without printing from library code.

Long-running library functions (training, encoding, attacks) take an optional
``progress`` object; the CLI passes a rich progress bar (``retrieval_bio.ui``), library
users may pass their own or nothing.
"""

from __future__ import annotations

from typing import Any, Protocol


class Progress(Protocol):
    def start(self, description: str, total: int | None) -> None: ...

    def advance(self, n: int = 1, **fields: Any) -> None: ...

    def stop(self) -> None: ...


class NullProgress:
    """Does nothing: the default when no progress display is wanted."""

    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1, **fields: Any) -> None:
        pass

    def stop(self) -> None:
        pass


def ensure(progress: Progress | None) -> Progress:
    return NullProgress() if progress is None else progress
