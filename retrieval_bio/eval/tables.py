"""Seed 001's tables and robustness figures, rebuilt from run folders (issue #15).

Reads what the runs wrote -- ``config.yaml``, ``metrics.json`` and the ``attack-*.json``
reports (:mod:`retrieval_bio.eval.robustness`) -- and recomputes nothing. Runs whose configs
agree on every key but :data:`NOT_SETTINGS` (the seed, and where things ran or were
written) are seeds of one group. A cell is the mean over a group's seeds; with several seeds
also the sample standard deviation (``ddof=1``) and n. Accuracy and mAP are fractions in
[0, 1] (seed 001's tables print percentages).

Layout (seed 001 Tables 1-2 and Figures 2-5, transposed so that new rules add columns):

* clean: one row per backbone × dataset (× the settings that split a cell, see below), one
  column per rule; classification test accuracy, hashing mAP@k;
* robust: one row per backbone × dataset × rule × attack × gradient source, one column per
  ε, with the clean level (and for hashing the theory bound); exact and own-gradient numbers
  are never merged (a BP row says ``exact (= model)``: one computation);
* figures: one per attack × backbone × dataset, metric vs ε, one line per rule and gradient
  source, a band of ±1 std over seeds.

Settings that differ between runs of one (task, backbone, dataset, rule) cell (e.g. epochs)
split it: they are named in the ``settings`` column of every row of that task, so runs of
different settings are never averaged. Settings that differ only between the rules of a row
(e.g. a rule-specific learning rate) are written as a note under the table.

Files written by :func:`build_report` into ``out``: ``clean.md``, ``clean.csv``,
``robust.md``, ``robust.csv``, ``robust-*.png`` and ``report.json`` (every number, the runs
used and skipped, notes and warnings), written by :mod:`retrieval_bio.eval.tables_io`; the
formats are in docs/report.md.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runs import CONFIG, METRICS, RunFolderError, atomic_write_json, read_json
from .compare import _group as attack_entry
from .compare import _report_state, load_reports

#: config keys that do not make runs different experiments: the seed (what a group averages
#: over) and where a run ran, read its data or was written. Paths differ from seed to seed
#: (``init``: each seed's own pre-training run), so they cannot tell settings apart.
NOT_SETTINGS = ("seed", "out", "device", "eval_device", "num_workers", "data_cache", "root",
                "init")
#: the table axes: task (which table), backbone × dataset (rows), rule (columns)
AXES = ("task", "backbone", "dataset", "rule")
#: keys every run config holds; a config.yaml without them is damaged
REQUIRED = ("stage", "task", "rule", "backbone", "dataset")
#: attack settings never used to tell reports apart: the run's own k, the attack name;
#: seed and batch size only where one run holds reports differing in them (see
#: :func:`_attack_labels`)
ATTACK_SAME = ("attack", "k")
ATTACK_SOFT = ("seed", "batch_size")
#: seed 001's rules first, in its order; others follow alphabetically
RULE_ORDER = ("bp", "usf", "frsf", "brsf", "fa")
TASK_ORDER = ("classify", "hash")
STD_NOTE = "± sample standard deviation over seeds (ddof=1); n = seeds; one seed: the value"


@dataclass
class Run:
    """One usable run folder: what it wrote and its test metric."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    reports: list[dict[str, Any]]
    value: float  # test accuracy (classify) or mAP@k (hash), in [0, 1]
    k: int | None = None  # hash: the mAP cut-off (<= 0: whole database)
    problems: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        return str(self.config["task"])

    @property
    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in self.config.items() if k not in NOT_SETTINGS}


# -- finding and reading runs ---------------------------------------------------------------


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """The run folders of ``paths``: each path is a run folder (it holds ``config.yaml``) or
    a folder searched recursively for them (a sweep's root). Duplicates are dropped; the
    order is the given one, sorted within each searched folder.

    Raises:
        RunFolderError: no path given, a path is not a folder, or a folder holds no run.
    """
    if not paths:
        raise RunFolderError("give at least one run folder (or a folder holding run folders)")
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / CONFIG).is_file():
            found.append(p)
            continue
        if not p.is_dir():
            raise RunFolderError(f"{p} is not a folder; give run folders (each holds "
                                 f"{CONFIG}) or a folder holding them")
        under = sorted(c.parent for c in p.rglob(CONFIG) if _looks_like_run(c))
        if not under:
            raise RunFolderError(f"{p} holds no run folder (no {CONFIG} of a run under it); "
                                 f"train one with 'retrieval-bio finetune --out DIR'")
        found += under
    seen: set[Path] = set()
    unique = []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def _looks_like_run(config_file: Path) -> bool:
    """Whether a ``config.yaml`` found under a sweep root is a run's. A YAML mapping without
    ``task`` (e.g. a sweep's own spec) is not; unreadable files are kept, so that a damaged
    run config is an error naming it rather than a run silently left out."""
    import yaml

    from ..config import load_yaml

    try:
        data = load_yaml(config_file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):  # read_config names the problem
        return True
    return not isinstance(data, dict) or "task" in data


def read_config(run_dir: Path) -> dict[str, Any]:
    """The raw ``config.yaml`` of a run (not validated against today's keys, so runs written
    by an older version still report).

    Raises:
        RunFolderError: the file cannot be read or parsed, or lacks :data:`REQUIRED` keys.
    """
    import yaml

    from ..config import load_yaml

    path = run_dir / CONFIG
    try:
        data = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        why = " ".join(str(e).split())  # YAML errors span lines; one-line message
        raise RunFolderError(f"{path} cannot be read ({why}); restore it") from e
    if not isinstance(data, dict):
        raise RunFolderError(f"{path} is not a run config (a YAML mapping): it is empty or "
                             f"damaged; restore it")
    lacking = [k for k in REQUIRED if k not in data]
    if lacking:
        raise RunFolderError(f"{path} lacks {', '.join(lacking)}: it is truncated or was "
                             f"edited; restore it (every run writes all keys)")
    return data


def test_metric(task: str) -> str:
    """The metrics.json key of a run's test metric: ``test_accuracy`` (classify) or ``map@k``
    (hash)."""
    return "test_accuracy" if task == "classify" else "map@k"


def load_run(run_dir: str | Path) -> Run | str:
    """A :class:`Run`, or why the folder cannot be reported (a one-line reason naming the
    fix: no metrics yet, an unfinished run, an unsupervised stage).

    Raises:
        RunFolderError: a damaged ``config.yaml`` or ``metrics.json`` (named).
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    metrics = read_json(run_dir / METRICS)  # damaged: RunFolderError naming the file
    stage = config.get("stage", "finetune")
    resume = f"retrieval-bio {stage} --resume --out {run_dir}"
    if not metrics:
        return (f"no {METRICS}: the run has not finished an epoch; continue it with "
                f"'{resume}'")
    key = test_metric(str(config["task"]))
    if key not in metrics:
        if metrics.get("next_stage"):  # an unsupervised stage (Krotov-Hopfield layer)
            return f"no {key}: an unsupervised stage has no test metric; {metrics['next_stage']}"
        return (f"no {key} in {METRICS}: the run has not finished (its test metric is written "
                f"at the end); continue it with '{resume}'")
    value = metrics[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
        return f"{key} in {METRICS} is {value!r}, not a number; re-run 'retrieval-bio " \
               f"evaluate {run_dir}'"
    problems: list[str] = []
    reports = [r for r in load_reports(run_dir, problems) if _usable(r, problems)]
    k = metrics.get("k") if config["task"] == "hash" else None
    return Run(run_dir, config, metrics, reports, float(value), k, problems)


def _usable(rep: dict[str, Any], problems: list[str]) -> bool:
    """Whether an attack report holds the table's fields (one ``values`` list per gradient
    source, as long as ``eps``); if not, why goes to ``problems``."""
    metric = rep.get("metric")
    values = rep.get(metric) if isinstance(metric, str) else None
    eps = rep.get("eps")
    ok = (isinstance(eps, list) and isinstance(rep.get("grad"), list)
          and isinstance(values, dict) and f"clean_{metric}" in rep
          and all(isinstance(values.get(g), list) and len(values[g]) == len(eps)
                  for g in rep["grad"]))
    if not ok:
        problems.append(f"{rep['path']} skipped: it lacks the eps, grad, {metric} or "
                        f"clean_{metric} of an attack report (damaged or edited); re-run the "
                        f"attack with --overwrite")
    return ok


# -- statistics -----------------------------------------------------------------------------


def summarize(values: Iterable[float | None]) -> dict[str, Any]:
    """``{"mean", "std", "n", "values"}`` of the non-null values: std is the sample standard
    deviation (``ddof=1``), ``None`` for a single value (then ``mean`` is that value, exactly
    as the run wrote it); all ``None`` for no value."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "values": []}
    if len(vals) == 1:
        return {"mean": vals[0], "std": None, "n": 1, "values": vals}
    arr = np.asarray(vals, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)), "n": len(vals),
            "values": vals}


# -- grouping -------------------------------------------------------------------------------


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _show(v: Any) -> str:
    return v if isinstance(v, str) else _canon(v)


def _differing(dicts: Sequence[dict[str, Any]], skip: Iterable[str] = ()) -> list[str]:
    """Keys whose values differ between ``dicts`` (a missing key counts as ``None``)."""
    skip = set(skip)
    keys = sorted({k for d in dicts for k in d} - skip)
    return [k for k in keys if len({_canon(d.get(k)) for d in dicts}) > 1]


def _rule_key(rule: str) -> tuple[int, str]:
    return (RULE_ORDER.index(rule) if rule in RULE_ORDER else len(RULE_ORDER), rule)


def _label(config: dict[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={_show(config.get(k))}" for k in keys)


def group_runs(runs: Sequence[Run]) -> tuple[dict[tuple, list[Run]], dict[str, list[str]]]:
    """Runs by ``(task, backbone, dataset, settings label, rule)``, each group's runs sorted
    by seed; and per task the config keys that split a (task, backbone, dataset, rule) cell,
    whose values make the settings label."""
    cells: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        cells[tuple(str(r.config[a]) for a in AXES)].append(r)
    split: dict[str, set[str]] = defaultdict(set)
    for cell, members in cells.items():
        split[cell[0]].update(_differing([m.settings for m in members], AXES))
    keys = {task: sorted(v) for task, v in split.items()}
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        c = r.config
        groups[(c["task"], str(c["backbone"]), str(c["dataset"]),
                _label(c, keys.get(r.task, [])), str(c["rule"]))].append(r)
    for members in groups.values():
        members.sort(key=lambda r: (_canon(r.config.get("seed")), str(r.path)))
    return dict(sorted(groups.items(), key=lambda kv: _group_order(kv[0]))), keys


def _task_key(task: str) -> tuple[int, str]:
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


def _group_order(g: tuple) -> tuple:
    task, backbone, dataset, settings, rule = g
    return (_task_key(task), backbone, dataset, settings, _rule_key(rule))


def _metric_label(task: str, ks: Iterable[int | None]) -> str:
    if task == "classify":
        return "accuracy"
    shown = sorted({"all" if k is None or k <= 0 else str(k) for k in ks})
    return "mAP@" + "/".join(shown)


# -- the clean table ------------------------------------------------------------------------


def clean_rows(groups: dict[tuple, list[Run]]) -> list[dict[str, Any]]:
    """One entry per group: its test metric over seeds (:func:`summarize`) and its runs."""
    rows = []
    for (task, backbone, dataset, settings, rule), members in groups.items():
        rows.append({"task": task, "metric": _metric_label(task, [m.k for m in members]),
                     "backbone": backbone, "dataset": dataset, "settings": settings,
                     "rule": rule, **summarize(m.value for m in members),
                     "seeds": [m.config.get("seed") for m in members],
                     "runs": [str(m.path) for m in members]})
    return rows


def between_rule_notes(groups: dict[tuple, list[Run]], split: dict[str, list[str]]
                       ) -> list[str]:
    """One note per table row whose rules differ in settings other than the rule (e.g. a
    rule's own learning rate): the numbers side by side are then not like with like."""
    rows: dict[tuple, dict[str, Run]] = defaultdict(dict)
    for (task, backbone, dataset, settings, rule), members in groups.items():
        rows[(task, backbone, dataset, settings)][rule] = members[0]
    notes = []
    for (task, backbone, dataset, settings), by_rule in rows.items():
        if len(by_rule) < 2:
            continue
        skip = (*AXES, *split.get(task, []))
        for key in _differing([r.settings for r in by_rule.values()], skip):
            shown = "; ".join(f"{rule}: {_show(r.config.get(key))}"
                              for rule, r in by_rule.items())
            where = " · ".join(x for x in (task, backbone, dataset, settings) if x)
            notes.append(f"{where}: the rules also differ in {key} ({shown})")
    return notes


# -- the robust table -----------------------------------------------------------------------


def _attack_labels(runs: Sequence[Run]) -> dict[str, list[str]]:
    """Per attack entry (``fgsm``, ``fgsm-l2``...), the report settings that tell its reports
    apart (steps, queries, preset...). A seed or batch size counts only where one run holds
    reports of the entry differing in it: across runs the attack seed may follow the run's
    seed, and such reports are seeds of one setting."""
    by_entry: dict[str, list[tuple[Run, dict[str, Any]]]] = defaultdict(list)
    for r in runs:
        for rep in r.reports:
            by_entry[attack_entry(rep)].append((r, rep.get("settings") or {}))
    out = {}
    for name, items in by_entry.items():
        keys = _differing([s for _, s in items], (*ATTACK_SAME, *ATTACK_SOFT))
        for soft in ATTACK_SOFT:
            for r in {id(r): r for r, _ in items}.values():
                mine = [s for rr, s in items if rr is r]
                if len({_canon(s.get(soft)) for s in mine}) > 1:
                    keys.append(soft)
                    break
        out[name] = sorted(keys)
    return out


def _same_as(rep: dict[str, Any], grad: str) -> list[str]:
    """The sources the report computed as ``grad`` (BP: ``model`` is ``exact``)."""
    return sorted(k for k, v in (rep.get("same_computation") or {}).items() if v == grad)


def _falls(rep: dict[str, Any]) -> str | None:
    """``yes`` / ``no`` / ``unknown`` from a classification report's masking block."""
    block = rep.get("masking")
    if rep.get("task") != "classify" or not block:
        return None
    f = block.get("falls_to_chance")
    return "unknown" if f is None else ("yes" if f else "no")


def robust_rows(groups: dict[tuple, list[Run]]
                ) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """One entry per group × attack entry × attack settings × gradient source: the clean
    level, each ε's value (:func:`summarize` over the seeds that measured it), the theory
    bound (hash) and whether accuracy fell to chance. Also the masking notes (reports whose
    accuracy did not fall to chance) and warnings (incomplete reports, changed weights, a
    run holding two reports of one setting)."""
    labels = _attack_labels([r for members in groups.values() for r in members])
    cells: dict[tuple, dict[str, Any]] = {}
    notes: list[str] = []
    warnings: list[str] = []
    for gkey, members in groups.items():
        task, backbone, dataset, settings, rule = gkey
        for run in members:
            used: set[tuple] = set()
            for rep in run.reports:
                name = attack_entry(rep)
                attack_settings = _label(rep.get("settings") or {}, labels.get(name, []))
                akey = (name, attack_settings)
                if akey in used:
                    warnings.append(f"{run.path}: {rep['path']} repeats the settings of another "
                                    f"{name} report of the run; left out of the tables")
                    continue
                used.add(akey)
                warnings += _report_state(rep, run.path, f"{rule} ({run.path})")
                metric = rep["metric"]
                falls = _falls(rep)
                if falls == "no":
                    notes.append(_masking_note(rep, gkey, attack_settings))
                for g in rep["grad"]:
                    cell = cells.setdefault((*gkey, name, attack_settings, g), {
                        "task": task, "metric": metric, "backbone": backbone,
                        "dataset": dataset, "settings": settings, "rule": rule,
                        "attack": name, "norm": rep.get("norm", "linf"),
                        "attack_settings": attack_settings, "grad": g, "same_as": set(),
                        "per_eps": defaultdict(list), "clean": [], "theory": [],
                        "falls_to_chance": [], "runs": [], "reports": [], "k": []})
                    cell["same_as"].update(_same_as(rep, g))
                    for e, v in zip(rep["eps"], rep[metric][g], strict=True):
                        cell["per_eps"][float(e)].append(v)
                    cell["clean"].append(rep.get(f"clean_{metric}"))
                    cell["theory"].append(rep.get("theory_map"))
                    cell["falls_to_chance"].append(falls)
                    cell["runs"].append(str(run.path))
                    cell["reports"].append(rep["path"])
                    cell["k"].append(rep.get("k"))
    rows = [_finish_cell(c) for _, c in sorted(cells.items(), key=lambda kv: _robust_order(
        kv[0]))]
    return rows, notes, warnings


def _robust_order(key: tuple) -> tuple:
    """Sections by task and attack (and its settings), then rows as in the clean table,
    exact-gradient rows first."""
    task, backbone, dataset, settings, rule, name, attack_settings, grad = key
    return (_task_key(task), name, attack_settings, backbone, dataset, settings,
            _rule_key(rule), grad != "exact", grad)


def _finish_cell(c: dict[str, Any]) -> dict[str, Any]:
    """A gathered robust cell as its table entry: each value list summarised over seeds."""
    c = dict(c)
    eps = sorted(c.pop("per_eps").items())
    ks = c.pop("k")
    falls = [f for f in c["falls_to_chance"] if f is not None]
    is_map = c["metric"] == "map"
    c.update(metric=_metric_label("hash", ks) if is_map else "accuracy",
             same_as=sorted(c["same_as"]), eps=[e for e, _ in eps],
             cells=[{"eps": e, **summarize(v)} for e, v in eps],
             clean=summarize(c["clean"]), theory=summarize(c["theory"]) if is_map else None,
             falls_to_chance=_agree(falls) if falls else None, n_runs=len(c["runs"]))
    return c


def _agree(values: list[str]) -> str:
    """One word when the seeds agree, else e.g. ``no in 1 of 2``."""
    if len(set(values)) == 1:
        return values[0]
    return ", ".join(f"{v} in {values.count(v)} of {len(values)}" for v in sorted(set(values)))


def _masking_note(rep: dict[str, Any], gkey: tuple, attack_settings: str) -> str:
    task, backbone, dataset, settings, rule = gkey
    block = rep["masking"]
    at = ", ".join(f"{g} {v:.3g}" for g, v in (block.get("at_max_eps") or {}).items()
                   if v is not None)
    where = " · ".join(x for x in (backbone, dataset, settings, rule) if x)
    extra = f" [{attack_settings}]" if attack_settings else ""
    return (f"{where}, {attack_entry(rep)}{extra}: accuracy at ε={block.get('max_eps'):g} does "
            f"not fall to chance ({block.get('chance', 0):.3g}): {at}; gradient masking or too "
            f"weak an attack, see the notes of {rep['path']}")


# -- the whole report -----------------------------------------------------------------------


def build_report(paths: Sequence[str | Path], out_dir: str | Path, *, plot: bool = True
                 ) -> dict[str, Any]:
    """Rebuild seed 001's tables (and with ``plot`` its robustness figures) from the run
    folders under ``paths`` (run folders, or folders holding them) into ``out_dir``.

    Returns:
        The ``report.json`` dict: ``std`` (how it is computed), ``runs`` (used: path, task,
        rule, seed, group, metric value, reports), ``skipped`` ({run, reason}), ``clean`` and
        ``robust`` (the table entries, every value with its mean, std, n and the per-seed
        values), ``split_keys`` (per task), ``notes``, ``warnings``, ``files`` (relative to
        ``out_dir``).

    Raises:
        RunFolderError: no run folder, a damaged ``config.yaml`` / ``metrics.json`` (named),
            or no run with a test metric.
    """
    out = Path(out_dir)
    run_dirs = find_runs(paths)
    runs: list[Run] = []
    skipped: list[dict[str, str]] = []
    for d in run_dirs:
        loaded = load_run(d)
        if isinstance(loaded, str):
            skipped.append({"run": str(d), "reason": loaded})
        else:
            runs.append(loaded)
    if not runs:
        reasons = "; ".join(f"{s['run']}: {s['reason']}" for s in skipped)
        raise RunFolderError(f"none of the {len(run_dirs)} run folder(s) has a test metric to "
                             f"report ({reasons})")
    groups, split = group_runs(runs)
    clean = clean_rows(groups)
    notes = between_rule_notes(groups, split)
    robust, masking, warnings = robust_rows(groups)
    warnings = [p for r in runs for p in r.problems] + warnings + _seed_warnings(groups)
    from .tables_io import write_clean, write_plots, write_robust

    out.mkdir(parents=True, exist_ok=True)
    files = write_clean(out, clean, notes, skipped) + write_robust(out, robust, masking)
    if plot and robust:
        files += write_plots(out, robust)
    group_of = {str(r.path): " · ".join(x for x in g if x)
                for g, members in groups.items() for r in members}
    result = {
        "std": STD_NOTE,
        "runs": [{"run": str(r.path), "task": r.task, "rule": r.config["rule"],
                  "seed": r.config.get("seed"), "group": group_of[str(r.path)],
                  "metric": test_metric(r.task), "value": r.value, "k": r.k,
                  "reports": [rep["path"] for rep in r.reports]} for r in runs],
        "skipped": skipped, "split_keys": split, "clean": clean, "robust": robust,
        "notes": notes + masking, "warnings": warnings,
        "files": [str(f.relative_to(out)) for f in files] + ["report.json"],
    }
    atomic_write_json(out / "report.json", result)
    return result


def _seed_warnings(groups: dict[tuple, list[Run]]) -> list[str]:
    """Runs of one group with the same seed are copies or re-runs, not independent seeds."""
    out = []
    for g, members in groups.items():
        by_seed: dict[str, list[str]] = defaultdict(list)
        for m in members:
            by_seed[_canon(m.config.get("seed"))].append(str(m.path))
        for seed, paths in by_seed.items():
            if len(paths) > 1:
                out.append(f"{' · '.join(x for x in g if x)}: {', '.join(paths)} share seed "
                           f"{seed}: they are averaged as if independent seeds")
    return out
