"""Reading and validating a grid file (``docs/sweeps.md``): :func:`load_grid` and
:func:`parse_grid` check every key, every attack and every cell's run config before
anything runs."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from ..config import ConfigError, RunConfig
from ..grids import base_config, check_mapping, load_grid_file, no_duplicates, out_folder
from .expansion import expand, safe_name
from .model import EXECUTORS, SweepAttack, SweepGrid, is_bundle
from .slurm import parse_slurm_section

GRID_KEYS = ("base", "grid", "attacks", "out", "name", "init", "executor", "slurm")
ATTACK_KEYS = ("name", "label", "eps", "grads", "steps", "preset", "num_images",
               "batch_size", "seed", "norm", "weights", "attack_kwargs", "bpda", "eot",
               "eot_reduce", "t_attack")


def load_grid(path: str | Path) -> SweepGrid:
    """Read, validate and expand the grid YAML ``path`` (``docs/sweeps.md``).

    Every key, every attack and every cell's :class:`RunConfig` is checked before anything
    runs; the cell errors are reported together.

    Raises:
        ConfigError: naming the file, the key or the cell, and what is accepted.
    """
    return load_grid_file(path, parse_grid, out_root="runs/sweeps",
                          missing_hint="; give the path of a sweep grid YAML (examples in "
                                       "configs/sweeps/)")


def parse_grid(
    data: Any, *, base_dir: str | Path = ".", default_out: str = "runs/sweep",
    source: Path | None = None,
) -> SweepGrid:
    """A :class:`SweepGrid` (cells expanded) from the mapping of a grid file. ``base`` paths
    are relative to ``base_dir`` (the grid file's folder); ``out`` and ``init`` are run
    folders, relative to the working directory as everywhere else."""
    if data is None:
        data = {}
    check_mapping(data, "a sweep grid", "grid file", GRID_KEYS, type(data).__name__)
    base = _base(data.get("base", {}), Path(base_dir))
    axes = _axes(data.get("grid"))
    init = _template_text(data, "init")
    if init is not None and any("init" in _axis_keys(k, vs) for k, vs in axes.items()):
        raise ConfigError("init is given both as a template and in grid; keep one")
    out = out_folder(data, default_out)
    executor = data.get("executor", "local")
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    grid = SweepGrid(base=base, axes=axes, attacks=_attacks(data.get("attacks")),
                     out=out, name=_template_text(data, "name"), init=init,
                     executor=executor, slurm=parse_slurm_section(data.get("slurm")), source=source)
    grid.cells = expand(grid)
    return grid


def _base(value: Any, base_dir: Path) -> RunConfig:
    """A config file path, a mapping of RunConfig keys, or a mapping with ``config: FILE``
    whose other keys override the file's; built the way ``<stage> --config FILE`` builds a
    run (the stage's defaults, then the file)."""
    if isinstance(value, dict) and "config" in value:
        rest = {k: v for k, v in value.items() if k != "config"}
        cfg = base_config(value["config"], base_dir)
        try:
            return RunConfig.from_dict({**cfg.to_dict(), **rest})
        except ConfigError as e:
            raise ConfigError(f"base: {e}") from None
    return base_config(value, base_dir)


def _axis_keys(axis: str, values: list[Any]) -> set[str]:
    if values and is_bundle(axis, values[0]):
        return set().union(*values)
    return {axis}


def _axes(value: Any) -> dict[str, list[Any]]:
    """The grid's axes: ``key: [values]`` for a RunConfig key, or ``label: [{key: value,
    ...}, ...]`` for keys that vary together. Every key is checked against RunConfig."""
    example = "e.g. grid: {rule: [bp, frsf], seed: [0, 1]}"
    if value is None or value == {}:
        raise ConfigError(f"grid is missing or empty: give lists of values per RunConfig key, "
                          f"{example}")
    if not isinstance(value, dict):
        raise ConfigError(f"grid must map RunConfig keys to lists of values, {example}; got "
                          f"{value!r}")
    known = {f.name for f in fields(RunConfig)}
    valid = ", ".join(sorted(known - {"out"}))
    axes: dict[str, list[Any]] = {}
    set_by: dict[str, str] = {}
    for axis, values in value.items():
        if not isinstance(axis, str):
            raise ConfigError(f"grid: key {axis!r} is not a name")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"grid.{axis} is empty; give at least one value")
        bundles = [is_bundle(axis, v) for v in values]
        if any(bundles) and not all(bundles):
            raise ConfigError(f"grid.{axis} mixes mappings and single values; give either "
                              f"values of {axis} or mappings of RunConfig keys")
        if not any(bundles) and axis not in known:
            raise ConfigError(f"grid: unknown key {axis!r} (not a RunConfig key); valid keys: "
                              f"{valid}")
        keys = _axis_keys(axis, values)
        unknown = sorted(k for k in keys if k not in known)
        if unknown:
            raise ConfigError(f"grid.{axis}: unknown key(s) {', '.join(map(repr, unknown))}; "
                              f"valid keys: {valid}")
        if "out" in keys:
            raise ConfigError(f"grid.{axis} sets out, which the sweep sets: every cell's "
                              f"folder is OUT/<cell>; set out at the top of the grid file")
        for k in sorted(keys):
            if k in set_by:
                raise ConfigError(f"grid: {k} is set by both grid.{set_by[k]} and grid.{axis}")
            set_by[k] = axis
        no_duplicates(f"grid.{axis}", values)
        axes[axis] = list(values)
    return axes


def _template_text(data: dict, key: str) -> str | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{key} must be a text template such as "
                          f"'{{backbone}}-{{dataset}}', got {value!r}")
    return value


def _attacks(value: Any) -> list[SweepAttack]:
    """The ``attacks:`` list; each entry is checked as ``retrieval-bio attack`` checks its
    options (:func:`~retrieval_bio.workflows.check_attack_options`)."""
    from ..eval.robustness import DEFAULT_BATCH, attack_task
    from ..workflows import check_attack_options

    if value is None:
        return []
    value = [value] if isinstance(value, dict) else value
    if not isinstance(value, list):
        raise ConfigError(f"attacks must be a list of attacks, e.g. [{{name: hag, eps: [0.01, "
                          f"0.05]}}]; got {value!r}")
    out: list[SweepAttack] = []
    for i, entry in enumerate(value):
        where = f"attacks[{i}]"
        check_mapping(entry, where, "attack", ATTACK_KEYS, repr(entry))
        name = entry.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"{where}.name is missing: give an attack name (hag | sdha | fgsm "
                              f"| pgd | square | apgd | apgd-t | auto)")
        try:
            attack_task(name)
        except ValueError as e:
            raise ConfigError(f"{where}.name: {e}") from None
        get = _Getter(entry, where)
        eps = entry.get("eps")
        if eps is not None:
            eps = eps if isinstance(eps, list) else [eps]
            if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in eps):
                raise ConfigError(f"{where}.eps must be a number or a list of numbers, got "
                                  f"{entry['eps']!r}")
        grads = get.names("grads", ["exact", "model"])
        steps, num_images = get.integer("steps"), get.integer("num_images")
        batch_size, seed = get.integer("batch_size", DEFAULT_BATCH), get.integer("seed", 0)
        preset, norm = get.text("preset"), get.text("norm", "linf")
        try:
            eps = check_attack_options(name, eps, grads=grads, steps=steps, preset=preset,
                                       max_queries=num_images, batch_size=batch_size,
                                       seed=seed, norm=norm)
        except ConfigError as e:
            text = str(e)
            for flag, key in (("--num-images", "num_images"), ("--batch-size", "batch_size"),
                              ("--grad", "grads"), ("--", "")):
                text = text.replace(flag, key)
            raise ConfigError(f"{where}: {text}") from None
        kwargs = entry.get("attack_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{where}.attack_kwargs must be a mapping, got {kwargs!r}")
        eot = get.ints("eot")
        out.append(SweepAttack(
            name=name, eps=tuple(eps), label=safe_name(get.text("label", name)), grads=tuple(grads),
            steps=steps, preset=preset, num_images=num_images, batch_size=batch_size,
            seed=seed, norm=norm, weights=get.text("weights", "best"), attack_kwargs=kwargs,
            bpda=tuple(get.names("bpda")) if "bpda" in entry else None,
            eot=tuple(eot) if eot is not None else None,
            eot_reduce=get.text("eot_reduce", "normalized"), t_attack=get.integer("t_attack")))
    labels = [a.label for a in out]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise ConfigError(f"attacks: {twice[0]!r} is listed twice; give the entries distinct "
                          f"labels (label: {twice[0]}-paper, ...)")
    return out


class _Getter:
    """Typed reads of an attack entry's optional keys, each error naming the key."""

    def __init__(self, entry: dict, where: str) -> None:
        self.entry, self.where = entry, where

    def _bad(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.where}.{key} must be {what}, got {self.entry[key]!r}")

    def integer(self, key: str, default: int | None = None) -> int | None:
        v = self.entry.get(key, default)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise self._bad(key, "an integer")
        return v

    def text(self, key: str, default: str | None = None) -> str | None:
        v = self.entry.get(key, default)
        if v is not None and not isinstance(v, str):
            raise self._bad(key, "a name")
        return v

    def names(self, key: str, default: list[str] | None = None) -> list[str]:
        v = self.entry.get(key, default)
        v = [v] if isinstance(v, str) else v
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self._bad(key, "a name or a list of names")
        return list(v)

    def ints(self, key: str) -> list[int] | None:
        v = self.entry.get(key)
        if v is None:
            return None
        v = [v] if isinstance(v, int) else v
        if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool)
                                              for x in v):
            raise self._bad(key, "an integer or a list of integers")
        return list(v)
