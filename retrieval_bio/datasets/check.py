"""``check``: validate a dataset on disk without stopping at the first problem."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import DatasetError, Problem, ProblemLog
from .registry import DATASETS


@dataclass
class CheckReport:
    """What :func:`check` found.

    Attributes:
        name, root: the dataset checked.
        sizes: items per split after dropping bad ones (``None`` when loading failed).
        problems: the first problems (file, line, message); ``n_problems`` counts all.
        fatal: the error that stopped loading (missing file, too few items...), else None.
        num_classes: C, when loading succeeded.
    """

    name: str
    root: str | None
    sizes: dict[str, int] | None = None
    problems: list[Problem] = field(default_factory=list)
    n_problems: int = 0
    fatal: str | None = None
    num_classes: int | None = None
    info: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No problem at all: the dataset loads strictly."""
        return self.fatal is None and self.n_problems == 0

    def usable(self, skip_bad: bool = False) -> bool:
        """Loads strictly, or (``skip_bad``) loads once the bad items are skipped."""
        return self.ok or (skip_bad and self.fatal is None)


def check(
    name: str, root: str | None, *, protocol: str | None = None, seed: int = 0,
    max_problems: int = 20, **kwargs: object,
) -> CheckReport:
    """Validate dataset ``name`` under ``root``.

    Every list line is parsed, vector lengths compared, every image file opened and fully
    decoded; bad items are collected (not raised) and dropped, then the protocol's splits
    are built to report their sizes. ``kwargs`` go to the loader (``lists=``, ``counts=``...).
    """
    log = ProblemLog(mode="collect", verify_images=True, keep=max_problems)
    report = CheckReport(name=name, root=root)
    loader = DATASETS.get(name)
    kwargs.pop("skip_bad", None)  # check always collects; skip_bad only changes `usable`
    try:
        splits = loader(root, protocol=protocol, seed=seed, problems=log, **kwargs)
    except DatasetError as e:
        report.fatal = str(e)
    else:
        report.sizes = splits.sizes()
        report.num_classes = splits.num_classes
        report.info = dict(splits.info)
    report.problems, report.n_problems = list(log.problems), log.count
    return report
