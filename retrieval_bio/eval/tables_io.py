"""The files of :func:`retrieval_bio.eval.tables.build_report`: Markdown and CSV tables and
the robustness figures, from the table entries :mod:`retrieval_bio.eval.tables` gathers.
Formats: docs/report.md."""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..runs import atomic_write_text
from .tables import STD_NOTE, _rule_key, _task_key


def _rules(rows: Iterable[dict[str, Any]]) -> list[str]:
    return sorted({r["rule"] for r in rows}, key=_rule_key)


def _table_rows(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, dict[str, Any]]]:
    """Clean entries as table rows: (task, backbone, dataset, settings) -> rule -> entry."""
    table: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        table[(r["task"], r["backbone"], r["dataset"], r["settings"])][r["rule"]] = r
    return table


def fmt_cell(s: dict[str, Any] | None, digits: int = 4) -> str:
    """A summary as Markdown text: ``0.8125``, or ``0.8125 ± 0.0133 (n=2)``; ``–`` empty."""
    if not s or s["n"] == 0:
        return "–"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} (n={s['n']})"


# -- tables ---------------------------------------------------------------------------------


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def esc(v: Any) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, header)) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    # floats as repr (str): they read back to the very number the run wrote
    w.writerows([["" if v is None else v for v in r] for r in rows])
    return buf.getvalue()


def _stat_cols(s: dict[str, Any] | None) -> list[Any]:
    if not s:
        return [None, None, None]
    return [s["mean"], s["std"], s["n"] or None]


def clean_table(rows: list[dict[str, Any]], task: str | None = None
                ) -> tuple[list[str], list[list[str]]]:
    """The clean entries of ``task`` (default: all) as a Markdown-ready table: columns
    task, metric, backbone, dataset, settings (when any), then one per rule."""
    rows = [r for r in rows if task is None or r["task"] == task]
    rules = _rules(rows)
    settings = any(r["settings"] for r in rows)
    header = ["backbone", "dataset", *(["settings"] if settings else []), "metric", *rules]
    out = []
    for (_, backbone, dataset, sett), by_rule in _table_rows(rows).items():
        metric = "/".join(sorted({r["metric"] for r in by_rule.values()}))
        out.append([backbone, dataset, *([sett or "–"] if settings else []), metric,
                    *(fmt_cell(by_rule.get(rule)) for rule in rules)])
    return header, out


def write_clean(out: Path, rows: list[dict[str, Any]], notes: list[str],
                skipped: list[dict[str, str]]) -> list[Path]:
    """``clean.md`` (a table per task) and ``clean.csv`` (columns task, metric, backbone,
    dataset, settings, then ``<rule>``, ``<rule> std``, ``<rule> n`` per rule)."""
    rules = _rules(rows)
    header = ["task", "metric", "backbone", "dataset", "settings"]
    header += [c for rule in rules for c in (rule, f"{rule} std", f"{rule} n")]
    lines = []
    for (task, backbone, dataset, settings), by_rule in _table_rows(rows).items():
        metric = "/".join(sorted({r["metric"] for r in by_rule.values()}))
        lines.append([task, metric, backbone, dataset, settings,
                      *(v for rule in rules for v in _stat_cols(by_rule.get(rule)))])
    atomic_write_text(out / "clean.csv", _csv_text(header, lines))
    md = ["# Clean test metrics", "",
          f"Fractions in [0, 1]; mean {STD_NOTE}. Rows: backbone × dataset; columns: the "
          f"rule each model was fine-tuned with (seed 001 Tables 1-2, transposed)."]
    titles = {"classify": "Classification: test accuracy",
              "hash": "Hashing retrieval: mAP@k of the query split against the database"}
    for task in sorted({r["task"] for r in rows}, key=_task_key):
        h, body = clean_table(rows, task)
        md += ["", f"## {titles.get(task, task)}", "", _md_table(h, body)]
    md += _bullets("Settings that differ within a row", notes)
    md += _bullets("Skipped runs", [f"{s['run']}: {s['reason']}" for s in skipped])
    atomic_write_text(out / "clean.md", "\n".join(md) + "\n")
    return [out / "clean.md", out / "clean.csv"]


def _bullets(title: str, items: Sequence[str]) -> list[str]:
    return ["", f"## {title}", "", *(f"- {i}" for i in items)] if items else []


def _eps_col(e: float) -> str:
    return f"eps={e!r}"


def write_robust(out: Path, rows: list[dict[str, Any]], notes: list[str]) -> list[Path]:
    """``robust.md`` (a table per attack and its settings) and ``robust.csv`` (one line per
    row; ``clean``, ``theory`` and ``eps=<ε>`` each with ``std`` and ``n`` columns)."""
    all_eps = sorted({e for r in rows for e in r["eps"]})
    header = ["task", "metric", "backbone", "dataset", "settings", "rule", "attack", "norm",
              "attack_settings", "grad", "same_computation", "falls_to_chance", "n_runs",
              "clean", "clean std", "clean n", "theory", "theory std", "theory n"]
    header += [c for e in all_eps for c in (_eps_col(e), f"{_eps_col(e)} std",
                                            f"{_eps_col(e)} n")]
    lines = []
    for r in rows:
        by_eps = {c["eps"]: c for c in r["cells"]}
        lines.append([r["task"], r["metric"], r["backbone"], r["dataset"], r["settings"],
                      r["rule"], r["attack"], r["norm"], r["attack_settings"], r["grad"],
                      " ".join(r["same_as"]), r["falls_to_chance"], r["n_runs"],
                      *_stat_cols(r["clean"]), *_stat_cols(r["theory"]),
                      *(v for e in all_eps for v in _stat_cols(by_eps.get(e)))])
    atomic_write_text(out / "robust.csv", _csv_text(header, lines))
    md = ["# Robustness", "",
          f"Robust accuracy (classification) or mAP@k of adversarial queries against the clean "
          f"database (hashing), fractions in [0, 1]; mean {STD_NOTE}. One row per gradient "
          f"source: exact = through the forward weights, model = the rule's own feedback "
          f"path, none = gradient-free; BPDA / EOT variants are named. `exact (= model)`: "
          f"one computation (no feedback path)."]
    sections: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        sections[(r["task"], r["attack"], r["attack_settings"])].append(r)
    for (_, attack, attack_settings), members in sections.items():
        md += ["", f"## {_section_title(members[0], attack, attack_settings)}", "",
               _md_table(*_robust_md(members))]
    md += _bullets("Accuracy did not fall to chance at the largest ε", notes)
    atomic_write_text(out / "robust.md", "\n".join(md) + "\n")
    return [out / "robust.md", out / "robust.csv"]


def _section_title(row: dict[str, Any], attack: str, attack_settings: str) -> str:
    norm = "L2" if row["norm"] == "l2" else "L∞"
    base = attack.removesuffix("-l2")
    what = "robust accuracy" if row["metric"] == "accuracy" else row["metric"]
    return f"{base.upper()} ({norm}){' [' + attack_settings + ']' if attack_settings else ''}: " \
           f"{what} vs ε"


def _robust_md(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    eps = sorted({e for r in rows for e in r["eps"]})
    settings = any(r["settings"] for r in rows)
    theory = any(r["theory"] and r["theory"]["n"] for r in rows)
    falls = any(r["falls_to_chance"] for r in rows)
    header = ["backbone", "dataset", *(["settings"] if settings else []), "rule", "gradient",
              "clean", *(f"ε={e:.4g}" for e in eps), *(["theory (−h)"] if theory else []),
              *(["falls to chance"] if falls else [])]
    body = []
    for r in rows:
        by_eps = {c["eps"]: c for c in r["cells"]}
        grad = r["grad"] + (f" (= {', '.join(r['same_as'])})" if r["same_as"] else "")
        body.append([r["backbone"], r["dataset"], *([r["settings"] or "–"] if settings else []),
                     r["rule"], grad, fmt_cell(r["clean"]),
                     *(fmt_cell(by_eps.get(e)) for e in eps),
                     *([fmt_cell(r["theory"])] if theory else []),
                     *([r["falls_to_chance"] or "–"] if falls else [])])
    return header, body


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")


def write_plots(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """One ``robust-<attack>-<backbone>-<dataset>[-<settings>].png`` per attack (and its
    settings) × backbone × dataset: mean metric vs ε, one colour per rule (and settings),
    one line style per gradient source, a band of ±1 std where there are several seeds."""
    import matplotlib.pyplot as plt

    from .plots import _GRAD_STYLE, _MARKERS, _eps_axis, _zero_note, line_plot

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    figures: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        figures[(r["attack"], r["attack_settings"], r["backbone"], r["dataset"])].append(r)
    written = []
    extra_styles = ["-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1))]
    for (attack, attack_settings, backbone, dataset), members in figures.items():
        lines = sorted({(r["rule"], r["settings"]) for r in members},
                       key=lambda x: (_rule_key(x[0]), x[1]))
        series, styles, bands, hlines = {}, {}, {}, {}
        others = sorted({r["grad"] for r in members} - set(_GRAD_STYLE))
        for r in members:
            colour = cycle[lines.index((r["rule"], r["settings"])) % len(cycle)]
            who = r["rule"] + (f" [{r['settings']}]" if r["settings"] else "")
            grad = "gradient-free" if r["grad"] == "none" else r["grad"] + (
                f" = {' = '.join(r['same_as'])}" if r["same_as"] else "")
            label = f"{who} ({grad})"
            kept = [c for c in r["cells"] if c["n"]]
            series[label] = ([c["eps"] for c in kept], [c["mean"] for c in kept])
            bands[label] = [c["std"] for c in kept]
            style = _GRAD_STYLE.get(r["grad"]) or extra_styles[others.index(r["grad"]) % 4]
            styles[label] = {"color": colour, "linestyle": style,
                             "marker": _MARKERS.get(r["grad"], "D")}
            if r["clean"]["n"]:
                hlines[f"{who} clean"] = (r["clean"]["mean"], {"color": colour,
                                                               "linewidth": 0.9, "alpha": 0.6})
        eps = sorted({e for r in members for e in r["eps"]})
        what = "robust accuracy" if members[0]["metric"] == "accuracy" else members[0]["metric"]
        extra = f" [{attack_settings}]" if attack_settings else ""
        title = f"{attack.upper()}{extra} on {backbone}, {dataset}: mean over seeds (band ±1 std)"
        name = "-".join(x for x in ("robust", attack, backbone, dataset, attack_settings) if x)
        written.append(line_plot(
            out / f"{_slug(name)}.png", series, _eps_axis({"norm": members[0]["norm"]}), what,
            title, logx=True, styles=styles, hlines=hlines, xticks=eps, ylim=(-0.02, 1.02),
            note=_zero_note(eps), bands=bands))
    return written
