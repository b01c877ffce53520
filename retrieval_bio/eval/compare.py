"""Compare runs under the same attacks: the figure and table of seed 001 §6.2 (e.g. BP vs
frSF vs uSF, exact-gradient lines beside model-gradient ones).

Reads the ``attack-*.json`` reports that :func:`retrieval_bio.workflows.attack_run` wrote
into each run folder (or, for a run folder that could not be written, into its
:func:`~retrieval_bio.runs.fallback_dir`); nothing is recomputed. A run holding several
reports of one attack (other steps, queries, seeds...) contributes one entry per report,
labelled by the settings that differ. Every entry names the report file it came from. L2
reports are gathered apart from L∞ ones, under ``<attack>-l2`` (an L2 and an L∞ ε are
different budgets).

``compare.json`` schema::

    runs     [{"label", "run", "rule", "task", "dataset", "attacks": [names],
               "reports": [files]}]  -- runs without any report are listed too
    attacks  {attack (``<attack>-l2`` for L2 reports): {"metric": "map" | "accuracy",
                       "eps": sorted union of the entries' ε,
                       "runs": {label: {"grad": [...], "eps": [...],
                                        "values": {grad: [...]}, "clean": float,
                                        "theory": float | null, "k": int | null,
                                        "steps": int, "num_queries": int,
                                        "dataset": str, "report": file,
                                        "settings": {...} | null,
                                        "masking": {...} | null}}}}
    warnings [str]: entries that differ in dataset, queries, steps, k or ε grid; runs
             without reports; report files that could not be read; incomplete reports;
             reports whose weights file has changed since
    plots    {attack: "compare-<attack>.png"} (relative to the output folder)
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..runs import RunFolderError, fallback_dir

log = logging.getLogger(__name__)

REPORT_GLOB = "attack-*.json"
#: report fields that must agree for a comparison to be like with like
COMPARABLE = ("dataset", "num_queries", "steps", "k")


def report_files(run_dir: str | Path) -> list[Path]:
    """The ``attack-*.json`` files of a run folder and of its fallback folder."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob(REPORT_GLOB))
    fallback = fallback_dir(run_dir)
    if fallback.is_dir():
        files += sorted(fallback.glob(REPORT_GLOB))
    return files


def load_reports(
    run_dir: str | Path, problems: list[str] | None = None
) -> list[dict[str, Any]]:
    """Every attack report of ``run_dir`` (sorted by attack, then file), each with
    ``"path"`` set to the file it was read from. Files that are not readable attack
    reports are skipped and described in ``problems``.

    Raises:
        RunFolderError: ``run_dir`` is not a folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir} is not a run folder")
    reports = []
    for path in report_files(run_dir):
        try:
            rep = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            msg = f"{path} skipped: not readable JSON ({e})"
        else:
            if isinstance(rep, dict) and "metric" in rep and "attack" in rep:
                rep["path"] = str(path)
                reports.append(rep)
                continue
            msg = f"{path} skipped: not an attack report"
        log.warning(msg)
        if problems is not None:
            problems.append(msg)
    return sorted(reports, key=lambda r: (r["attack"], r["path"]))


def _run_rule(run_dir: Path, reports: list[dict[str, Any]]) -> str:
    if reports:
        return str(reports[0].get("rule", "?"))
    try:
        import yaml

        return str((yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("rule", "?"))
    except (OSError, ValueError, AttributeError):
        return "?"


def run_labels(run_dirs: Sequence[str | Path], rules: Sequence[str]) -> list[str]:
    """One legend label per run: its rule, or ``rule:folder`` where rules repeat."""
    counts = Counter(rules)
    labels = [r if counts[r] == 1 else f"{r}:{Path(d).name}" for d, r in zip(run_dirs, rules,
                                                                             strict=True)]
    # Same rule and same folder name (different parents): fall back to the position.
    seen = Counter(labels)
    return [lab if seen[lab] == 1 else f"{lab}#{i}" for i, lab in enumerate(labels)]


def _settings_label(rep: dict[str, Any], siblings: list[dict[str, Any]]) -> str:
    """What tells ``rep`` apart from the other reports of the same attack in its run."""
    mine = rep.get("settings") or {}
    differ = sorted({k for o in siblings for k, v in (o.get("settings") or {}).items()
                     if mine.get(k) != v and k != "attack"})
    if not differ:
        return Path(rep["path"]).stem.removeprefix(f"attack-{rep['attack']}-")
    return ", ".join(f"{k}={mine.get(k)}" for k in differ)


def compare_runs(
    run_dirs: Sequence[str | Path], out_dir: str | Path = "compare", *, plot: bool = True
) -> dict[str, Any]:
    """Gather the attack reports of ``run_dirs`` per attack; write ``compare.json`` and one
    ``compare-<attack>.png`` per attack into ``out_dir``. Returns the ``compare.json`` dict.

    Raises:
        RunFolderError: a run folder is missing, or no run holds any attack report.
    """
    from ..runs import atomic_write_json

    if not run_dirs:
        raise RunFolderError("give at least one run folder")
    warnings: list[str] = []
    loaded = [load_reports(d, warnings) for d in run_dirs]
    if not any(loaded):
        raise RunFolderError(
            f"no {REPORT_GLOB} in {', '.join(map(str, run_dirs))}; run "
            f"'retrieval-bio attack <name> RUN' first"
        )
    rules = [_run_rule(Path(d), reps) for d, reps in zip(run_dirs, loaded, strict=True)]
    labels = run_labels(run_dirs, rules)
    runs = []
    attacks: dict[str, dict[str, Any]] = {}
    chosen: dict[str, dict[str, dict[str, Any]]] = {}
    for label, run_dir, reps in zip(labels, run_dirs, loaded, strict=True):
        first = reps[0] if reps else {}
        runs.append({"label": label, "run": str(run_dir), "rule": first.get("rule"),
                     "task": first.get("task"), "dataset": first.get("dataset"),
                     "attacks": sorted({r["attack"] for r in reps}),
                     "reports": [r["path"] for r in reps]})
        if not reps:
            warnings.append(f"{run_dir} ({label}) has no attack report; run 'retrieval-bio "
                            f"attack <name> {run_dir}' to include it")
        for rep in reps:
            name, metric = _group(rep), rep["metric"]
            siblings = [r for r in reps if _group(r) == name and r is not rep]
            entry_label = label if not siblings else f"{label} [{_settings_label(rep, siblings)}]"
            entry = attacks.setdefault(name, {"metric": metric, "eps": [], "runs": {}})
            if entry["metric"] != metric:
                warnings.append(f"{rep['path']} reports {metric}, other {name} reports "
                                f"{entry['metric']}: left out")
                continue
            entry["runs"][entry_label] = {
                "grad": rep["grad"], "eps": rep["eps"], "values": rep[metric],
                "clean": rep[f"clean_{metric}"], "theory": rep.get("theory_map"),
                "k": rep.get("k"), "steps": rep.get("steps"),
                "num_queries": rep.get("num_queries"), "dataset": rep.get("dataset"),
                "report": rep["path"], "settings": rep.get("settings"),
                "masking": rep.get("masking"),
            }
            chosen.setdefault(name, {})[entry_label] = rep
            warnings += _report_state(rep, Path(run_dir), entry_label)
    for name, entry in attacks.items():
        entry["eps"] = sorted({e for r in entry["runs"].values() for e in r["eps"]})
        warnings += _differences(name, entry)
    out_dir = Path(out_dir)
    result: dict[str, Any] = {"runs": runs, "attacks": attacks, "warnings": warnings,
                              "plots": {}}
    if plot:
        from .plots import compare_plot

        for name in attacks:
            png = f"compare-{name}.png"
            compare_plot(out_dir / png, name, chosen[name])
            result["plots"][name] = png
    atomic_write_json(out_dir / "compare.json", result)
    return result


def _group(rep: dict[str, Any]) -> str:
    """The entry a report is compared under: its attack, with ``-l2`` for an L2 report
    (reports without a ``norm`` key are L∞)."""
    return rep["attack"] if rep.get("norm", "linf") == "linf" else f"{rep['attack']}-l2"


def _report_state(rep: dict[str, Any], run_dir: Path, label: str) -> list[str]:
    """Warnings about one report: cells an interrupted sweep left empty, and weights that
    have changed since it was computed (the run was resumed or retrained)."""
    out = []
    if rep.get("complete") is False:
        out.append(f"{rep['attack']} {label}: {rep['path']} is incomplete (an interrupted "
                   f"sweep); run the same attack command again to fill its empty cells")
    used = rep.get("weights") or {}
    path = run_dir / str(used.get("file", ""))
    if used.get("sha256") and path.is_file():
        from ..runs import file_digest

        if file_digest(path) != used["sha256"]:
            out.append(f"{rep['attack']} {label}: {rep['path']} was computed from other weights "
                       f"than {path} holds now (epoch {used.get('epoch')} then); re-run the "
                       f"attack with --overwrite")
    return out


def _differences(name: str, entry: dict[str, Any]) -> list[str]:
    """One warning per field of :data:`COMPARABLE` (and the ε grid) on which the entries
    of one attack disagree: such curves are not like with like."""
    out = []
    runs = entry["runs"]
    for field in COMPARABLE:
        values = {label: r.get(field) for label, r in runs.items()}
        if len(set(map(str, values.values()))) > 1:
            shown = ", ".join(f"{label}: {v}" for label, v in values.items())
            out.append(f"{name}: the entries differ in {field} ({shown})")
    grids = {label: tuple(r["eps"]) for label, r in runs.items()}
    if len(set(grids.values())) > 1:
        shown = "; ".join(f"{label}: {', '.join(f'{e:g}' for e in g)}"
                          for label, g in grids.items())
        out.append(f"{name}: the entries use different ε grids ({shown}); cells a run did not "
                   f"measure are empty")
    return out


def masking_line(report: dict[str, Any]) -> str | None:
    """One line on a classification report's gradient-masking checks (its ``masking``
    block, see :mod:`retrieval_bio.eval.robustness`): whether accuracy at the largest ε
    falls to chance (yes / no / unknown) and the fraction of exactly-zero input-gradient
    entries per source. ``None`` for hashing reports."""
    if report.get("task") != "classify":
        return None
    block = report.get("masking")
    if not block and report.get("source"):
        return ("masking: not checked (a transfer attack: the images were made on "
                f"{report['source'].get('run')}, so this model's gradients were not used)")
    if not block:
        return ("masking: not checked (the report predates the check; re-run the attack with "
                "--overwrite)")
    falls = block.get("falls_to_chance")
    max_eps = block.get("max_eps")
    full = block.get("full_eps", 1.0)  # 1 for L∞, sqrt(C·H·W) for L2
    if falls is None:
        why = (f"largest ε < {full:.4g}" if max_eps is not None and max_eps < full
               else "the largest-ε cell is missing")
        verdict = f"unknown ({why})"
    else:
        verdict = "yes" if falls else "no"
    at = f"ε={max_eps:g}" if max_eps is not None else "the largest ε"
    zeros = ", ".join(f"{g} {f:.1%} of entries ({block.get('zero_grad_images', {}).get(g, 0):.1%}"
                      f" of images)" for g, f in block.get("zero_grad_fraction", {}).items())
    return (f"masking: accuracy at {at} falls to chance ({block.get('chance', 0):.3g}): "
            f"{verdict}; zero input gradients: {zeros or 'not measured'}")


def compare_rows(entry: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """A table of one attack of :func:`compare_runs`: columns ``ε`` then one per
    (run, gradient source); rows ``clean``, each ε, and ``theory`` for hashing attacks.
    Cells a run did not measure are ``None``."""
    cols = [(label, g) for label, r in entry["runs"].items() for g in r["grad"]]
    header = ["ε"] + [f"{label} {g}" for label, g in cols]
    rows: list[list[Any]] = [["clean"] + [entry["runs"][lab]["clean"] for lab, _ in cols]]
    for e in entry["eps"]:
        row: list[Any] = [f"{e:g}"]
        for label, g in cols:
            r = entry["runs"][label]
            row.append(r["values"][g][r["eps"].index(e)] if e in r["eps"] else None)
        rows.append(row)
    if any(r.get("theory") is not None for r in entry["runs"].values()):
        rows.append(["theory"] + [entry["runs"][lab]["theory"] for lab, _ in cols])
    return header, rows
