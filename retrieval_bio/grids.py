"""What the two grid runners share: ``retrieval-bio sweep`` (:mod:`retrieval_bio.sweeps`)
and ``retrieval-bio tradeoff`` (:mod:`retrieval_bio.tradeoff`).

Both read a grid YAML whose ``base`` is a run config, expand it into *cells* (one run
folder each under ``out``), validate every cell's :class:`~retrieval_bio.config.RunConfig`
before anything runs, and then train (or resume) the cells that are not finished, refusing
a finished folder that holds a run of another config. The grid formats, the cell names,
what "finished" means and the summaries they write differ, and stay in their modules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .config import ConfigError, RunConfig, build_config, load_yaml, resume_config
from .progress import Progress
from .runs import CONFIG, RunFolderError, read_json, writable_dir

#: config keys that may differ between a finished run and its cell (they change neither
#: the math nor the data of the run)
IGNORED_KEYS = ("device", "eval_device", "num_workers", "data_cache", "skip_bad", "out")
#: how many cell errors a :class:`ConfigError` names before "(and N more)"
MAX_CELL_ERRORS = 5

G = TypeVar("G")


# -- reading and validating a grid file ---------------------------------------------------


def load_grid_file(path: str | Path, parse: Callable[..., G], *, out_root: str,
                   missing_hint: str = "") -> G:
    """Read the grid YAML ``path`` and hand its mapping to ``parse`` (a grid module's
    ``parse_grid``) with ``base_dir`` (the file's folder), ``default_out``
    (``<out_root>/<file stem>``) and ``source`` (the path).

    Args:
        missing_hint: appended to the message when the file does not exist.

    Raises:
        ConfigError: the file is missing, unreadable or not YAML, or ``parse`` refuses it;
            the message starts with the path.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid file {path} does not exist{missing_hint}")
    try:
        data = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"grid file {path} cannot be read: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"grid file {path} is not valid YAML: {e}") from e
    try:
        return parse(data, base_dir=path.parent, default_out=f"{out_root}/{path.stem}",
                     source=path)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def check_mapping(value: Any, what: str, kind: str, keys: Sequence[str], shown: str) -> None:
    """Check that ``value`` is a mapping whose keys are all in ``keys``.

    Args:
        what: the value in the "must be a mapping" message (``"attack"``).
        kind: the keys in the "unknown key(s)" message (``"unknown attack key(s)"``).
        shown: how a non-mapping ``value`` is shown in the message.

    Raises:
        ConfigError: not a mapping, or unknown keys (named, with the valid ones).
    """
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a mapping of {', '.join(keys)}; got {shown}")
    unknown = sorted(set(value) - set(keys), key=str)
    if unknown:
        raise ConfigError(f"unknown {kind} key(s) {', '.join(map(repr, unknown))}; valid keys: "
                          f"{', '.join(keys)}")


def no_duplicates(key: str, values: Sequence[Any]) -> None:
    """Raise :class:`ConfigError` naming the first value ``values`` (the list of grid key
    ``key``) holds twice."""
    seen = [v for i, v in enumerate(values) if v in values[:i]]
    if seen:
        raise ConfigError(f"{key} lists {seen[0]!r} twice")


def base_config(value: Any, base_dir: Path) -> RunConfig:
    """A grid's ``base``, built the way ``retrieval-bio <stage> --config FILE`` builds a run:
    the stage's defaults, then the file's (or the mapping's) keys.

    Args:
        value: a run config file (relative to ``base_dir``, the grid file's folder, unless
            absolute) or a mapping of RunConfig keys (``stage`` defaults to ``finetune``).

    Raises:
        ConfigError: prefixed ``base:``.
    """
    try:
        if isinstance(value, str):
            p = Path(value).expanduser()
            p = p if p.is_absolute() else base_dir / p
            return build_config(RunConfig.load(p).stage, p)
        if isinstance(value, dict):
            unknown = sorted(set(value) - {f.name for f in fields(RunConfig)}, key=str)
            if unknown:  # named before build_config merges in the stage defaults
                RunConfig.from_dict(value)
            # every RunConfig key that may be null defaults to null, so build_config's
            # "None = not given" loses nothing here
            stage = value.get("stage", "finetune")
            if not isinstance(stage, str):
                raise ConfigError(f"stage must be a string, got {stage!r}")
            return build_config(stage, **{k: v for k, v in value.items() if k != "stage"})
    except ConfigError as e:
        raise ConfigError(f"base: {e}") from None
    raise ConfigError(f"base must be a run config file or a mapping of RunConfig keys, got "
                      f"{value!r}")


def out_folder(data: dict[str, Any], default: str) -> Path:
    """The grid's ``out`` (``default`` when absent): the folder of the cells' folders.

    Raises:
        ConfigError: not a non-empty path.
    """
    out = data.get("out", default)
    if not isinstance(out, str) or not out.strip():
        raise ConfigError(f"out must be a folder path, got {out!r}")
    return Path(out)


def raise_cell_errors(errors: Sequence[str]) -> None:
    """Raise one :class:`ConfigError` for the invalid cells (``"cell NAME: why"`` each; the
    first :data:`MAX_CELL_ERRORS` named), so that a grid's errors are reported together;
    nothing when ``errors`` is empty."""
    if errors:
        more = (f" (and {len(errors) - MAX_CELL_ERRORS} more)"
                if len(errors) > MAX_CELL_ERRORS else "")
        raise ConfigError("; ".join(errors[:MAX_CELL_ERRORS]) + more)


# -- running the cells --------------------------------------------------------------------


def check_out_writable(out: Path) -> None:
    """Raise :class:`RunFolderError` when the grid's ``out`` cannot be written (checked
    before any cell runs)."""
    if not writable_dir(out):
        raise RunFolderError(f"{out} cannot be written (not a folder, or read-only); "
                             f"choose another out in the grid file")


def check_same_run(run_dir: Path, config: RunConfig) -> None:
    """A finished folder must hold the run its cell describes (the grid may have been
    edited since): refuse rather than mix another run's results into the grid's.

    Keys in :data:`IGNORED_KEYS` may differ.

    Raises:
        ConfigError: naming up to three differing keys, both values of each.
    """
    stored = RunConfig.load_run(run_dir / CONFIG)
    differ = [f.name for f in fields(RunConfig) if f.name not in IGNORED_KEYS
              and getattr(stored, f.name) != getattr(config, f.name)]
    if differ:
        shown = ", ".join(f"{k}: {getattr(stored, k)!r} there, {getattr(config, k)!r} in "
                          f"the grid" for k in differ[:3])
        raise ConfigError(
            f"{run_dir} holds a run of another config ({shown}); move the folder aside "
            f"or choose another out for the grid")


def train_cell(cfg: RunConfig, *, resume: bool, progress: Progress | None, name: str,
               log: logging.Logger) -> Any:
    """Train the cell whose config is ``cfg`` into ``cfg.out`` with the library's
    :func:`~retrieval_bio.train.train_run`, or with ``resume`` continue the checkpoint its
    folder holds (the folder's config, with ``cfg``'s keys given as on the command line).

    Args:
        name: the cell's name, in the message to ``log`` (the grid runner's logger).

    Returns:
        What ``train_run`` returns.
    """
    from . import train  # looked up at call time: tests wrap train_run

    if resume:
        log.info("cell %s: resuming its training", name)
        given = cfg.to_dict()
        stage = given.pop("stage")
        return train.train_run(resume_config(Path(cfg.out), stage, **given), resume=True,
                               progress=progress)
    log.info("cell %s: training", name)
    return train.train_run(cfg, progress=progress)


def failure_message(e: BaseException) -> str:
    """How a failed cell's exception is recorded: ``"TypeName: message"``."""
    return f"{type(e).__name__}: {e}"


__all__ = [
    "IGNORED_KEYS", "MAX_CELL_ERRORS", "base_config", "check_mapping", "check_out_writable",
    "check_same_run", "failure_message", "load_grid_file", "no_duplicates", "out_folder",
    "raise_cell_errors", "train_cell",
]


def attack_reports(run_dir: Path, attack: str, settings: dict[str, Any]
                   ) -> Iterator[tuple[Path, dict[str, Any]]]:
    """``(path, report)`` of every readable ``attack-ATTACK-*.json`` in ``run_dir`` whose
    ``settings`` hold every key of ``settings`` with that value, in file-name order (a
    damaged report is passed over: the attack workflow rewrites it)."""
    for path in sorted(Path(run_dir).glob(f"attack-{attack}-*.json")):
        try:
            report = read_json(path)
        except RunFolderError:
            continue
        have = report.get("settings") or {}
        if all(have.get(k) == v for k, v in settings.items()):
            yield path, report
