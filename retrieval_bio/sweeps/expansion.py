"""A grid's cells: the cartesian product of its axes (:func:`expand`), each cell's folder
name and run config, and the cells ``--only`` selects (:func:`select_cells`)."""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import re
from collections.abc import Sequence
from typing import Any

import yaml

from ..config import ConfigError, RunConfig
from ..grids import raise_cell_errors
from .model import Cell, SweepGrid, is_bundle, plain

#: grid keys whose values name a cell folder as they are (``resnet18-cifar10-frsf``); other
#: keys are written ``key=value`` (``bits=64``), the seed ``s<seed>``
BARE_KEYS = ("backbone", "dataset", "rule", "task", "stage", "frontend")
#: longest folder-name part kept as written; longer ones end in a digest
MAX_PART = 60


def expand(grid: SweepGrid) -> list[Cell]:
    """Every cell of ``grid`` (the cartesian product of its axes, the first axis outermost),
    with its folder name and validated run config; touches no file.

    Folder names join the cell's value of every axis, in the grid's order, e.g.
    ``resnet18-cifar10-frsf-s1`` or ``lr_head=0.01``, made filesystem-safe; ``grid.name``
    (a template over RunConfig keys) replaces them. An axis with one value is named too, so
    that adding values to an axis later keeps the folders of the cells already run (fixed
    settings belong in ``base``).

    Raises:
        ConfigError: cells whose config is invalid (all of them named together), two cells
            with one folder name, or an attack that applies to no cell's task.
    """
    base = grid.base.to_dict()
    axes = list(grid.axes.items())
    cells: list[Cell] = []
    errors: list[str] = []
    names: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*(vs for _, vs in axes)):
        values: dict[str, Any] = {}
        for (axis, _), v in zip(axes, combo, strict=True):
            values.update(v if is_bundle(axis, v) else {axis: v})
        merged = {**base, **values}
        try:
            if grid.name is not None:
                name = safe_name(_fill("name", grid.name, merged))
            else:
                parts = (_axis_part(a, v) for (a, _), v in zip(axes, combo, strict=True))
                name = safe_name("-".join(parts))
            if grid.init is not None:
                merged["init"] = _fill("init", grid.init, merged)
            merged["out"] = str(grid.out / name)
            cfg = RunConfig.from_dict(merged)
        except ConfigError as e:
            errors.append(f"cell {safe_name(_label(values))}: {e}")
            continue
        if name in names:
            raise ConfigError(
                f"cells {_label(names[name])} and {_label(values)} would share the folder "
                f"{grid.out / name}; give a name template that tells them apart, e.g. "
                f"name: '{{backbone}}-{{dataset}}-{{rule}}-s{{seed}}'")
        names[name] = values
        cells.append(Cell(name, cfg, values, [a for a in grid.attacks if a.task == cfg.task]))
    raise_cell_errors(errors)
    for attack in grid.attacks:
        if not any(attack in c.attacks for c in cells):
            tasks = sorted({c.config.task for c in cells})
            raise ConfigError(f"attack {attack.label!r} attacks {attack.task} models, but every "
                              f"cell is a {' / '.join(tasks)} run; remove it or add task: "
                              f"{attack.task} cells")
    return cells


def _label(values: dict[str, Any]) -> str:
    return ",".join(f"{k}={_fmt(v)}" for k, v in values.items())


def _fill(key: str, template: str, values: dict[str, Any]) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError) as e:
        raise ConfigError(f"{key}: {{{e.args[0]}}} in {template!r} is not a RunConfig key; "
                          f"use keys such as {{backbone}}, {{dataset}}, {{rule}}, {{seed}}"
                          ) from None
    except ValueError as e:
        raise ConfigError(f"{key}: {template!r} is not a valid template ({e})") from None


def _axis_part(axis: str, value: Any) -> str:
    if is_bundle(axis, value):
        if axis in value:
            return _part(axis, value[axis])
        return f"{axis}=" + "-".join(_fmt(v) for v in value.values())
    return _part(axis, value)


def _part(key: str, value: Any) -> str:
    if key == "seed":
        return f"s{value}"
    if key in BARE_KEYS:
        return _fmt(value)
    return f"{key}={_fmt(value)}"


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "none"}[value]
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (int, str)):
        return str(value)
    return yaml.safe_dump(plain(value), default_flow_style=True, width=10**6).strip()


def safe_name(text: str) -> str:
    """``text`` as one folder name: characters other than letters, digits and ``._+=-``
    become ``_``, no leading dot, long names shortened with a digest (stable)."""
    safe = re.sub(r"[^A-Za-z0-9._+=-]+", "_", text).strip("_") or "cell"
    safe = re.sub(r"^\.+", "_", safe)
    if len(safe) > 2 * MAX_PART:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        safe = f"{safe[:2 * MAX_PART - 9]}-{digest}"
    return safe


def select_cells(cells: Sequence[Cell], only: str | None) -> list[Cell]:
    """The cells whose name matches one of the comma-separated glob patterns ``only``
    (all of them for ``None``).

    Raises:
        ConfigError: a pattern matches no cell (the message lists some cell names).
    """
    if not only:
        return list(cells)
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    for p in patterns:
        if not any(fnmatch.fnmatchcase(c.name, p) for c in cells):
            names = ", ".join(c.name for c in cells[:6]) + (", ..." if len(cells) > 6 else "")
            raise ConfigError(f"--only {p!r} matches no cell; the cells are {names}")
    return [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
