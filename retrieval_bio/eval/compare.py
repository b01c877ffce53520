"""Compare runs under the same attacks: the figure and table of seed 001 §6.2 (e.g. BP vs
frSF vs uSF, exact-gradient lines beside model-gradient ones).

Reads the ``attack-<name>.json`` reports that :func:`retrieval_bio.workflows.attack_run`
wrote into each run folder; nothing is recomputed.

``compare.json`` schema::

    runs     [{"label", "run", "rule", "task", "dataset", "attacks": [names]}]
    attacks  {attack: {"metric": "map" | "accuracy",
                       "eps": sorted union of the runs' ε,
                       "runs": {label: {"grad": [...], "eps": [...],
                                        "values": {grad: [...]}, "clean": float,
                                        "theory": float | null, "k": int | null,
                                        "steps": int, "num_queries": int}}}}
    plots    {attack: "compare-<attack>.png"} (relative to the output folder)
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPORT_GLOB = "attack-*.json"


def load_reports(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """attack name -> report for every ``attack-*.json`` in ``run_dir`` (sorted by name).

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a run folder")
    reports = {}
    for path in sorted(run_dir.glob(REPORT_GLOB)):
        try:
            rep = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            log.warning("skipping %s: %s", path, e)
            continue
        if not isinstance(rep, dict) or "metric" not in rep or "attack" not in rep:
            log.warning("skipping %s: not an attack report", path)
            continue
        reports[rep["attack"]] = rep
    return reports


def run_labels(run_dirs: Sequence[str | Path], rules: Sequence[str]) -> list[str]:
    """One legend label per run: its rule, or ``rule:folder`` where rules repeat."""
    counts = Counter(rules)
    labels = [r if counts[r] == 1 else f"{r}:{Path(d).name}" for d, r in zip(run_dirs, rules,
                                                                             strict=True)]
    # Same rule and same folder name (different parents): fall back to the position.
    seen = Counter(labels)
    return [lab if seen[lab] == 1 else f"{lab}#{i}" for i, lab in enumerate(labels)]


def compare_runs(
    run_dirs: Sequence[str | Path], out_dir: str | Path = "compare", *, plot: bool = True
) -> dict[str, Any]:
    """Gather the attack reports of ``run_dirs`` per attack; write ``compare.json`` and one
    ``compare-<attack>.png`` per attack into ``out_dir``. Returns the ``compare.json`` dict.

    Raises:
        FileNotFoundError: a run folder is missing.
        ValueError: no run holds any attack report.
    """
    from ..runs import atomic_write_json

    if not run_dirs:
        raise ValueError("give at least one run folder")
    loaded = [load_reports(d) for d in run_dirs]
    if not any(loaded):
        raise ValueError(
            f"no {REPORT_GLOB} in {', '.join(map(str, run_dirs))}; run "
            f"'retrieval-bio attack <name> RUN' first"
        )
    rules = [next(iter(reps.values()), {}).get("rule", "?") for reps in loaded]
    labels = run_labels(run_dirs, rules)
    runs = []
    attacks: dict[str, dict[str, Any]] = {}
    for label, run_dir, reps in zip(labels, run_dirs, loaded, strict=True):
        first = next(iter(reps.values()), {})
        runs.append({"label": label, "run": str(run_dir), "rule": first.get("rule"),
                     "task": first.get("task"), "dataset": first.get("dataset"),
                     "attacks": sorted(reps)})
        for name, rep in reps.items():
            metric = rep["metric"]
            entry = attacks.setdefault(name, {"metric": metric, "eps": [], "runs": {}})
            if entry["metric"] != metric:
                log.warning("%s: %s reports %s, others %s; skipped", name, run_dir, metric,
                            entry["metric"])
                continue
            entry["runs"][label] = {
                "grad": rep["grad"], "eps": rep["eps"], "values": rep[metric],
                "clean": rep[f"clean_{metric}"], "theory": rep.get("theory_map"),
                "k": rep.get("k"), "steps": rep.get("steps"),
                "num_queries": rep.get("num_queries"),
            }
    for entry in attacks.values():
        entry["eps"] = sorted({e for r in entry["runs"].values() for e in r["eps"]})
    out_dir = Path(out_dir)
    result: dict[str, Any] = {"runs": runs, "attacks": attacks, "plots": {}}
    if plot:
        from .plots import compare_plot

        for name, entry in attacks.items():
            reps = {lab: loaded[labels.index(lab)][name] for lab in entry["runs"]}
            png = f"compare-{name}.png"
            compare_plot(out_dir / png, name, reps)
            result["plots"][name] = png
    atomic_write_json(out_dir / "compare.json", result)
    return result


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
