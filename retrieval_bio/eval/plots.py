"""Matplotlib figures written to files (Agg backend: no display needed).

:func:`line_plot` is the generic one (any "y vs x" curves, e.g. training histories or
robustness sweeps); :func:`attack_plot` draws one attack report (mAP or accuracy vs ε, one
line per gradient source, clean and theory levels dashed); :func:`compare_plot` draws several
runs' reports of one attack (seed 001 §6.2: exact-gradient lines solid, model-gradient lines
dashed, one colour per run); :func:`corruption_plot` draws a corruption report as a
heat map (corruption x severity).

ε = 0 cannot sit on a log axis: when ``logx`` is set and some x is <= 0 the axis becomes
``symlog`` with its linear range up to the smallest positive x, so 0 is drawn at the left
edge and every positive ε keeps its log spacing.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt  # noqa: E402

from ..runs import atomic_write_bytes  # noqa: E402

Series = tuple[Sequence[float], Sequence[float]]

_GRAD_STYLE = {"exact": "-", "model": "--", "none": "-"}
_MARKERS = {"exact": "o", "model": "s", "none": "^"}


def line_plot(
    path: str | Path, series: Mapping[str, Series], xlabel: str, ylabel: str, title: str,
    logx: bool = False, *, styles: Mapping[str, Mapping[str, Any]] | None = None,
    hlines: Mapping[str, tuple[float, Mapping[str, Any]]] | None = None,
    xticks: Sequence[float] | None = None, ylim: tuple[float, float] | None = None,
    note: str | None = None, bands: Mapping[str, Sequence[float | None]] | None = None,
) -> Path:
    """Write a PNG of one or more curves.

    Args:
        path: output file (written atomically; parent folders are created).
        series: legend label -> ``(x, y)`` sequences of equal length.
        xlabel, ylabel, title: axis labels and title.
        logx: log-scaled x axis (``symlog`` when some x <= 0, see the module docstring).
        styles: legend label -> extra ``Axes.plot`` keyword arguments (color, linestyle...).
        hlines: legend label -> ``(y, Axes.axhline kwargs)``: horizontal reference levels.
        xticks: tick positions on x (labelled with ``%g``); default: matplotlib's.
        ylim: y range; default: matplotlib's.
        note: small text under the axes (e.g. what was left out).
        bands: legend label -> half-width per point (e.g. the std over seeds), drawn as a
            shaded band y ± width in the line's colour; ``None`` at a point: no band there.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    styles = styles or {}
    bands = bands or {}
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    with _closed_on_error(fig):
        xs_all: list[float] = []
        for label, (x, y) in series.items():
            if len(x) != len(y):
                raise ValueError(f"series {label!r}: {len(x)} x values but {len(y)} y values")
            xs_all.extend(float(v) for v in x)
            kw = {"marker": "o", "markersize": 4, "linewidth": 1.6, **styles.get(label, {})}
            # a cell an interrupted sweep has not computed yet is None: a gap in the line
            ys = [float("nan") if v is None else v for v in y]
            (line,) = ax.plot(list(x), ys, label=label, **kw)
            if label in bands:
                half = [float("nan") if b is None else b for b in bands[label]]
                ax.fill_between(list(x), [v - b for v, b in zip(ys, half, strict=True)],
                                [v + b for v, b in zip(ys, half, strict=True)],
                                color=line.get_color(), alpha=0.18, linewidth=0)
        for label, (level, kw) in (hlines or {}).items():
            ax.axhline(level, label=label, **{"linestyle": ":", "linewidth": 1.2, **kw})
        if logx:
            positive = [v for v in xs_all if v > 0]
            if len(positive) < len(xs_all) and positive:
                lo = min(positive)
                ax.set_xscale("symlog", linthresh=lo, linscale=0.6)
                # Keep the axis from wandering into negative ε: a small margin left of 0.
                ax.set_xlim(-0.15 * lo, max(positive) * 1.4)
            elif positive:
                ax.set_xscale("log")
        if xticks is not None:
            ax.set_xticks(list(xticks))
            ax.set_xticklabels([f"{t:g}" for t in xticks], rotation=0, fontsize=8)
            ax.minorticks_off()
        _finish_axes(fig, ax, xlabel, ylabel, title, ylim, note)
    return save_figure(fig, path)


def _finish_axes(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str,
                 ylim: tuple[float, float] | None, note: str | None, legend: bool = True
                 ) -> None:
    """Labels, title, grid, legend and the optional note under the axes; then the layout."""
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="best")
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="0.35", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.03 if note else 0, 1, 1))


@contextlib.contextmanager
def _closed_on_error(fig: Any) -> Iterator[None]:
    """Draw ``fig`` inside the block; if drawing fails the figure is closed (pyplot keeps
    every open figure alive) and the error goes on."""
    try:
        yield
    except BaseException:
        plt.close(fig)
        raise


def save_figure(fig: Any, path: str | Path) -> Path:
    """Render ``fig`` to PNG, close it, and write the file atomically (``path`` returned)."""
    path = Path(path)
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _ylabel(report: Mapping[str, Any]) -> str:
    if report["metric"] == "accuracy":
        return "robust accuracy"
    k = report.get("k", 0)
    return "mAP@all" if k is None or k <= 0 else f"mAP@{k}"


def _eps_axis(report: Mapping[str, Any]) -> str:
    """The budget axis of a report (reports from before the ``norm`` key are L∞)."""
    if report.get("norm") == "l2":
        return "ε (L2 over C·H·W, pixels in [0, 1])"
    return "ε (L∞, pixels in [0, 1])"


def attack_plot(path: str | Path, report: Mapping[str, Any]) -> Path:
    """mAP (hash) or robust accuracy (classify) vs ε for one attack report
    (:mod:`retrieval_bio.eval.robustness`): one line per gradient source, the clean level
    dashed grey, the theory bound (hash) dotted red; log ε axis."""
    metric = report["metric"]
    eps = report["eps"]
    series, styles = {}, {}
    for g, shown in _distinct(report):
        label = "gradient-free" if g == "none" else f"{shown} gradient"
        series[label] = (eps, report[metric][g])
        styles[label] = {"linestyle": _GRAD_STYLE.get(g, "-"), "marker": _MARKERS.get(g, "o")}
    hlines = {"clean": (report[f"clean_{metric}"], {"color": "0.4", "linestyle": "--"})}
    if report.get("theory_map") is not None:
        hlines["theory (−h as query)"] = (report["theory_map"], {"color": "tab:red"})
    title = (f"{report['attack'].upper()} on {report.get('rule', '?')} "
             f"({report.get('dataset', '?')}, {report.get('backbone', '?')}), "
             f"{report.get('steps')} step(s), {report.get('num_queries')} queries")
    return line_plot(path, series, _eps_axis(report), _ylabel(report), title,
                     logx=True, styles=styles, hlines=hlines, xticks=eps, ylim=(-0.02, 1.02),
                     note=_zero_note(eps))


def compare_plot(
    path: str | Path, attack: str, reports: Mapping[str, Mapping[str, Any]]
) -> Path:
    """One attack across runs: label -> report. One colour per run; exact-gradient lines
    solid, model-gradient lines dashed, gradient-free solid with triangles; each run's
    clean level as a thin dotted line in its colour."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    series, styles, hlines = {}, {}, {}
    eps_all: set[float] = set()
    metric = "map"
    first: Mapping[str, Any] = {}
    for i, (label, rep) in enumerate(reports.items()):
        first = first or rep
        metric = rep["metric"]
        colour = cycle[i % len(cycle)]
        eps_all.update(rep["eps"])
        for g, shown in _distinct(rep):
            name = f"{label} ({'gradient-free' if g == 'none' else shown})"
            series[name] = (rep["eps"], rep[metric][g])
            styles[name] = {"color": colour, "linestyle": _GRAD_STYLE.get(g, "-"),
                            "marker": _MARKERS.get(g, "o")}
        hlines[f"{label} clean"] = (rep[f"clean_{metric}"],
                                    {"color": colour, "linewidth": 0.9, "alpha": 0.7})
    eps = sorted(eps_all)
    title = f"{attack.upper()}: " + " vs ".join(reports) + f" ({first.get('dataset', '?')})"
    return line_plot(path, series, _eps_axis(first), _ylabel(first), title,
                     logx=True, styles=styles, hlines=hlines, xticks=eps, ylim=(-0.02, 1.02),
                     note=_zero_note(eps))


def _distinct(report: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(source, legend name)`` per line to draw: sources with identical values (BP: exact
    and model are one computation) share one line named ``"exact = model"``, so no line
    hides under another."""
    values = report[report["metric"]]
    groups: dict[tuple, list[str]] = {}
    for g in report["grad"]:
        groups.setdefault(tuple(values[g]), []).append(g)
    return [(gs[0], " = ".join(gs)) for gs in groups.values()]


def _zero_note(eps: Sequence[float]) -> str | None:
    if any(e <= 0 for e in eps):
        return "x axis: symlog (linear between 0 and the smallest ε > 0, log above)"
    return None


def training_curve_plot(
    path: str | Path, history: Sequence[Mapping[str, Any]], metric: str | None, title: str,
    left: tuple[str, str] = ("loss", "training loss (epoch mean)"),
) -> Path:
    """Training loss (left panel) and the validation ``metric`` (right panel) per epoch,
    the selected (best) epoch marked. ``history``: the trainer's per-epoch entries
    (``{"epoch", "loss", metric, ...}``). ``left``: the history key of the left panel (a
    dotted path reaches into a nested entry, e.g. ``convergence.norm_off_fraction`` for an
    unsupervised stage with no loss) and its axis label."""
    path = Path(path)
    epochs = [int(h["epoch"]) for h in history]

    def value(entry: Mapping[str, Any]) -> float:
        v: Any = entry
        for part in left[0].split("."):
            v = v.get(part) if isinstance(v, Mapping) else None
        return float("nan") if v is None else float(v)

    fig, axes = plt.subplots(1, 2 if metric else 1, figsize=(9.0 if metric else 5.0, 3.6),
                             dpi=110, squeeze=False)
    with _closed_on_error(fig):
        ax = axes[0][0]
        ax.plot(epochs, [value(h) for h in history], marker="o", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(left[1])
        ax.grid(True, alpha=0.3)
        if metric:
            values = [h.get(metric) for h in history]
            ax = axes[0][1]
            ax.plot(epochs, values, marker="o", markersize=3, color="C1")
            known = [(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
            if known:
                best_e, best_v = max(known, key=lambda ev: ev[1])
                ax.plot([best_e], [best_v], marker="*", markersize=12, color="C3",
                        linestyle="none", label=f"selected: epoch {best_e}")
                ax.legend(fontsize=7, loc="best")
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.grid(True, alpha=0.3)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
    return save_figure(fig, path)


def corruption_plot(path: str | Path, report: Mapping[str, Any]) -> Path:
    """Heat map of a corruption report (:mod:`retrieval_bio.eval.corruption`): one row per
    corruption and a ``mean`` row, one column per severity, the accuracy as colour (0 to 1)
    and written in each cell; cells not computed yet are grey with "–"."""
    import numpy as np

    names = list(report["corruptions"])
    sev = list(report["severities"])
    rows = [list(report["accuracy"][c]) for c in names] + [list(report["mean_by_severity"])]
    labels = names + ["mean"]
    values = np.array([[np.nan if v is None else float(v) for v in r] for r in rows])
    fig, ax = plt.subplots(figsize=(1.1 * len(sev) + 3.4, 0.34 * len(labels) + 1.6), dpi=120)
    with _closed_on_error(fig):
        cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")  # grey: not computed yet
        im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0,
                       aspect="auto")
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                v = values[i, j]
                text = "–" if np.isnan(v) else f"{v:.2f}"
                # dark text on the bright (yellow) end of viridis, white elsewhere
                colour = "0.3" if np.isnan(v) else ("black" if v > 0.6 else "white")
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour,
                        fontweight="bold" if i == len(names) else "normal")
        ax.axhline(len(names) - 0.5, color="white", linewidth=2)  # set the mean row apart
        ax.set_xticks(range(len(sev)))
        ax.set_xticklabels([str(s) for s in sev], fontsize=8)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_xlabel("severity")
        clean = report.get("clean_accuracy")
        mean = report.get("mean")
        extra = ", ".join(t for t in (
            f"clean {clean:.3f}" if clean is not None else "",
            f"mean {mean:.3f}" if mean is not None else "") if t)
        ax.set_title(f"Accuracy under corruptions ({report.get('source', '?')}): "
                     f"{report.get('rule', '?')}, {report.get('backbone', '?')} on "
                     f"{report.get('dataset', '?')}" + (f"\n{extra}" if extra else ""),
                     fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02).set_label("accuracy", fontsize=8)
        fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------- layer-wise diagnostics (§1)
# Figures for :mod:`retrieval_bio.eval.layerwise` (seed 004 ch. 3 and 5). Each takes either one
# result or a mapping ``run label -> result`` (e.g. ``{"NT": ..., "AT": ...}``), so one figure
# compares runs; layers are on x in first-seen order, a layer missing from a run is a gap.


def _runs(data: Mapping[str, Any], is_result: Any, label: str) -> dict[str, Mapping[str, Any]]:
    """``{label: data}`` when ``data`` is one result (``is_result(data)``), else ``data``."""
    if not data or is_result(data):
        return {label: data}
    return dict(data)


def _first_value(data: Mapping[str, Any]) -> Any:
    return next(iter(data.values()))


def _is_layer_map(data: Mapping[str, Any]) -> bool:
    """Whether ``data`` is one run's ``layer -> value(s)`` (not ``run label -> {layer ...}``)."""
    return not isinstance(_first_value(data), Mapping)


def _finite(v: Any) -> float:
    """A value for a plot: None, NaN and ±inf become NaN (a gap, not an axis blow-up)."""
    import math

    if v is None:
        return float("nan")
    v = float(v)
    return v if math.isfinite(v) else float("nan")


def _layer_plot(
    path: str | Path, runs: Mapping[str, Mapping[str, Any]], value: Any, ylabel: str,
    title: str, *, ylim: tuple[float, float] | None = None, note: str | None = None,
) -> Path:
    """One line per run of ``value(result_of_layer)`` against the layer (names as ticks)."""
    layers = _inner_keys(runs)  # every run's layers, first-seen order
    path = Path(path)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.32 * len(layers) + 2.5), 4.4), dpi=120)
    with _closed_on_error(fig):
        for label, res in runs.items():
            ys = [_finite(value(res[n])) if n in res else float("nan") for n in layers]
            ax.plot(range(len(layers)), ys, marker="o", markersize=4, linewidth=1.6,
                    label=label)
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=7)
        _finish_axes(fig, ax, "layer", ylabel, title, ylim, note, legend=bool(runs))
    return save_figure(fig, path)


def _is_psr(data: Mapping[str, Any]) -> bool:
    first = _first_value(data)
    return isinstance(first, Mapping) and "mean" in first and "psr" in first


def psr_plot(
    path: str | Path, psr: Mapping[str, Any], p: str = "l2", *, label: str = "model",
    title: str | None = None,
) -> Path:
    """Mean perturbation-to-signal ratio per layer in amplitude dB, 20·log10(mean PSR)
    (seed 004 Fig 3.13). ``psr``: one result of
    :func:`~retrieval_bio.eval.layerwise.perturbation_to_signal`, or ``run label -> result``;
    ``p``: the norm key (``"l1"``, ``"l2"``, ``"linf"``)."""
    runs = _runs(psr, _is_psr, label)
    return _layer_plot(path, runs, lambda r: r["db"][p],
                       f"20·log10(mean PSR), {p} [dB]",
                       title or f"Perturbation-to-signal ratio per layer ({p})")


def snr_plot(
    path: str | Path, snr: Mapping[str, Any], *, label: str = "model",
    title: str | None = None, sigma: float | None = None,
) -> Path:
    """Block SNR under Gaussian noise per layer, power dB (seed 004 Fig 5.6). ``snr``: one
    result of :func:`~retrieval_bio.eval.layerwise.block_snr` (layer -> dB), or
    ``run label -> result``."""
    runs = _runs(snr, _is_layer_map, label)
    noise = f", σ = {sigma:g}" if sigma is not None else ""
    return _layer_plot(path, runs, lambda v: v, "SNR [dB] (10·log10 E[‖f‖²/‖Δf‖²])",
                       title or f"Block SNR under Gaussian noise{noise}")


def sparsity_plot(
    path: str | Path, sparsity: Mapping[str, Any], *, label: str = "model",
    title: str | None = None,
) -> Path:
    """Mean activation sparsity s per layer (seed 004 Fig 5.4; 0 = one active channel per
    location, 1 = all equally active). ``sparsity``: one result of
    :func:`~retrieval_bio.eval.layerwise.activation_sparsity`, or ``run label -> result``."""
    runs = _runs(sparsity, _is_layer_map, label)
    return _layer_plot(path, runs, lambda v: v, "s = ((‖a‖₁/‖a‖₂)² − 1)/(N − 1)",
                       title or "Activation sparsity per layer", ylim=(-0.02, 1.02),
                       note="s = 0: a single nonzero channel; s = 1: all channels equal")


def _grid(n: int, cols: int = 4, size: tuple[float, float] = (3.0, 2.4)) -> tuple[Any, Any]:
    cols = max(1, min(cols, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows + 0.6),
                             dpi=100, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def layer_histograms_plot(
    path: str | Path, values: Mapping[str, Any], xlabel: str, title: str, *,
    label: str = "model", bins: int = 30, cols: int = 4,
) -> Path:
    """One histogram panel per layer, the runs overlaid (same bins per panel). ``values``:
    ``layer -> 1-D values`` (per-image PSR, per-filter sparsity, a BN statistic...), or
    ``run label -> {layer -> values}``. NaN and ±inf are left out."""
    import numpy as np

    runs = _runs(values, _is_layer_map, label)

    def draw(ax: Any, layer: str) -> None:
        data = {lab: np.asarray([] if res.get(layer) is None else res[layer], dtype=float)
                for lab, res in runs.items()}
        data = {lab: v[np.isfinite(v)] for lab, v in data.items()}
        pooled = np.concatenate(list(data.values())) if data else np.empty(0)
        edges = np.histogram_bin_edges(pooled, bins=bins) if pooled.size else bins
        for lab, v in data.items():
            if v.size:
                ax.hist(v, bins=edges, alpha=0.55, label=lab)

    return _panel_per_layer(path, runs, draw, xlabel, title, cols)


def psr_histogram_plot(
    path: str | Path, psr: Mapping[str, Any], p: str = "l2", *, label: str = "model",
    bins: int = 30, cols: int = 4,
) -> Path:
    """Histogram of the per-image PSR per layer, runs overlaid (seed 004 Fig 3.12). ``psr``:
    as :func:`psr_plot`."""
    runs = _runs(psr, _is_psr, label)
    values = {lab: {layer: r["psr"][p] for layer, r in res.items()}
              for lab, res in runs.items()}
    return layer_histograms_plot(path, values, f"PSR ({p})",
                                 f"Perturbation-to-signal ratio per image ({p})",
                                 bins=bins, cols=cols)


def spectrum_plot(
    path: str | Path, spectra: Mapping[str, Any], *, label: str = "model", cols: int = 4,
    title: str | None = None,
) -> Path:
    """Singular values of each conv, sorted, against their rank divided by their count,
    log y, one panel per layer, runs overlaid (seed 004 Figs 3.20-3.21). ``spectra``: one
    result of :func:`~retrieval_bio.eval.layerwise.conv_spectra` (layer -> values), or
    ``run label -> result``. Zeros cannot sit on the log axis and are left out."""
    import numpy as np

    runs = _runs(spectra, _is_layer_map, label)

    def draw(ax: Any, layer: str) -> None:
        for lab, res in runs.items():
            if res.get(layer) is None:
                continue
            sv = np.sort(np.asarray(res[layer], dtype=float))[::-1]
            rank = np.arange(1, sv.size + 1) / max(sv.size, 1)
            keep = sv > 0
            ax.plot(rank[keep], sv[keep], linewidth=1.2, label=lab)
        ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)

    return _panel_per_layer(path, runs, draw, "rank / count",
                            title or "Singular values of each conv (FFT, circular padding)",
                            cols)


def _panel_per_layer(path: str | Path, runs: Mapping[str, Mapping[str, Any]], draw: Any,
                     xlabel: str, title: str, cols: int) -> Path:
    """One panel per layer of ``runs`` (``run label -> {layer -> ...}``; every run's layers,
    first-seen order), ``draw(ax, layer)`` filling each; a legend when runs are overlaid."""
    layers = _inner_keys(runs)
    fig, axes = _grid(len(layers), cols)
    with _closed_on_error(fig):
        for ax, layer in zip(axes.flat, layers, strict=False):
            draw(ax, layer)
            ax.set_title(layer, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_xlabel(xlabel, fontsize=7)
        if layers and len(runs) > 1:
            axes.flat[0].legend(fontsize=7, loc="best")
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
    return save_figure(fig, Path(path))


# ------------------------------------------------------ representation diagnostics
# Figures for :mod:`retrieval_bio.eval.representation` (methods/krotov.md, Diagnostics 1–3):
# each takes ``run label -> result`` so one figure compares runs, one colour per run.


def _fit_dict(fit: Any) -> Mapping[str, Any] | None:
    """A :class:`~retrieval_bio.eval.representation.PowerLawFit` or its ``to_dict()``."""
    if fit is None:
        return None
    return fit.to_dict() if hasattr(fit, "to_dict") else fit


def _fit_label(name: str, fit: Mapping[str, Any] | None) -> str:
    if not fit or fit.get("alpha") is None:
        why = (fit or {}).get("reason")
        return f"{name}: no fit" + (" (too few eigenvalues)" if why else "")
    se = fit.get("stderr")
    se_text = f" ± {se:.2g}" if se is not None else ""
    return f"{name}: α = {fit['alpha']:.3g}{se_text} (n = {fit['n_first']}…{fit['n_last']})"


def _draw_spectrum(ax: Any, eigs: Any, fit: Mapping[str, Any] | None, name: str,
                   colour: str, **kw: Any) -> None:
    """λ_n/λ_1 against n and the fitted line, dashed over its window. Only values above the
    eigensolver's rounding level (λ_1·count·float64-eps, as the fit) are drawn: the zeros of
    a rank-deficient covariance come out as ±1e-17·λ_1 and would stretch the log axis."""
    import numpy as np

    lam = np.sort(np.asarray(eigs, dtype=float).ravel())[::-1]
    if not lam.size or not lam[0] > 0:
        return
    rel = lam / lam[0]
    n = np.arange(1, rel.size + 1)
    keep = rel > rel.size * np.finfo(float).eps
    ax.plot(n[keep], rel[keep], color=colour, linewidth=1.3, label=_fit_label(name, fit), **kw)
    if fit and fit.get("alpha") is not None:
        ns = np.arange(fit["n_first"], fit["n_last"] + 1, dtype=float)
        # the run's own colour: with several runs a black line would not say whose it is
        ax.plot(ns, np.exp(fit["intercept"]) * ns ** (-fit["alpha"]), color=colour,
                linestyle="--", linewidth=1.0, alpha=0.9)


def power_law_plot(
    path: str | Path, spectra: Mapping[str, Mapping[str, Any]], *, title: str | None = None,
) -> Path:
    """Covariance spectra λ_n/λ_1 against rank n on log–log axes, one colour per run, each
    fitted power law drawn dashed in the run's colour over its window, α ± stderr in the
    legend.

    ``spectra``: run label -> ``{"data": eigenvalues, "fit": PowerLawFit or its dict,
    "noise": eigenvalues of the white-noise probe or None, "noise_fit": ...}``, optionally
    ``"input"``/``"input_fit"`` (the pixels' own spectrum, the identity map, drawn dotted in
    the data panel). Data on the left, the noise probe on the right (when some run has one).
    """
    path = Path(path)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    has_noise = any(s.get("noise") is not None for s in spectra.values())
    fig, axes = plt.subplots(1, 2 if has_noise else 1, figsize=(11.5 if has_noise else 6.4,
                                                                 4.6), dpi=110, squeeze=False)
    with _closed_on_error(fig):
        panels = [("data", "fit", "test images")] + (
            [("noise", "noise_fit", "white-noise probe (N(0, 1) pixels)")] if has_noise else [])
        for ax, (key, fit_key, name) in zip(axes[0], panels, strict=True):
            for i, (label, s) in enumerate(spectra.items()):
                colour = cycle[i % len(cycle)]
                if s.get(key) is not None:
                    _draw_spectrum(ax, s[key], _fit_dict(s.get(fit_key)), label, colour)
                if key == "data" and s.get("input") is not None:
                    _draw_spectrum(ax, s["input"], _fit_dict(s.get("input_fit")),
                                   f"{label} pixels", colour, linestyle=":", alpha=0.7)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("rank n")
            ax.set_ylabel("λ_n / λ_1")
            ax.set_title(name, fontsize=9)
            ax.grid(True, which="major", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=6.5, loc="lower left")
        fig.suptitle(title or "Covariance spectrum and power-law fit (dashed: OLS over its "
                     "window)", fontsize=10)
        fig.tight_layout()
    return save_figure(fig, path)


def jacobian_histogram_plot(
    path: str | Path, norms: Mapping[str, Any], *, bins: int = 30, title: str | None = None,
    xlabel: str = "‖J‖_F (output units per [0, 1] pixel)",
) -> Path:
    """Histogram of the per-image Jacobian norm, runs overlaid on shared bins (log-spaced
    when the values span more than two decades), each run's median as a vertical line.
    ``norms``: run label -> 1-D values; NaN and ±inf are left out."""
    import numpy as np

    path = Path(path)
    data = {lab: np.asarray(v, dtype=float).ravel() for lab, v in norms.items()}
    data = {lab: v[np.isfinite(v)] for lab, v in data.items()}
    pooled = np.concatenate(list(data.values())) if data else np.empty(0)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    with _closed_on_error(fig):
        positive = pooled[pooled > 0]
        logx = bool(positive.size and positive.size == pooled.size
                    and positive.max() > 100 * positive.min())
        if logx:
            edges = np.geomspace(positive.min(), positive.max(), bins + 1)
            ax.set_xscale("log")
        else:
            edges = np.histogram_bin_edges(pooled, bins=bins) if pooled.size else bins
        for i, (lab, v) in enumerate(data.items()):
            if not v.size:
                continue
            colour = cycle[i % len(cycle)]
            med = float(np.median(v))
            ax.hist(v, bins=edges, alpha=0.5, color=colour,
                    label=f"{lab}: median {med:.3g} ({v.size} images)")
            ax.axvline(med, color=colour, linewidth=1.2)
        _finish_axes(fig, ax, xlabel, "images", title or "Input-Jacobian norm per image",
                     None, None, legend=bool(pooled.size))
    return save_figure(fig, path)


def _inner_keys(data: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The keys of the inner mappings (run -> {attack or layer: ...}), first-seen order,
    once each."""
    keys: list[str] = []
    for inner in data.values():
        keys.extend(k for k in inner if k not in keys)
    return keys


def critical_norm_boxplot(
    path: str | Path, crit: Mapping[str, Mapping[str, Any]], *, title: str | None = None,
) -> Path:
    """Boxes of the critical perturbation norm ‖Δx‖₂ ([0, 1] pixels), one panel per attack,
    one box per run (krotov.md Diagnostics 3; [H] Fig. 1). ``crit``: run label ->
    ``{attack: per-image crit_norm}``; a never-flipped image (inf or None) cannot be drawn:
    each box's label says how many of its images never flipped. Log y when the values span
    more than a decade."""
    import numpy as np

    path = Path(path)
    attacks = _inner_keys(crit)
    fig, axes = _grid(max(len(attacks), 1), cols=3, size=(max(3.2, 1.1 * len(crit) + 1.4),
                                                         3.6))
    with _closed_on_error(fig):
        for ax, attack in zip(axes.flat, attacks, strict=False):
            boxes, labels = [], []
            for lab, per in crit.items():
                if attack not in per or per[attack] is None:
                    continue
                raw = np.asarray([np.inf if v is None else v for v in per[attack]],
                                 dtype=float)
                finite = raw[np.isfinite(raw)]
                never = raw.size - finite.size
                boxes.append(finite)
                labels.append(f"{lab}\n{never}/{raw.size} never" if never else lab)
            if boxes:
                ax.boxplot([b if b.size else [np.nan] for b in boxes], showfliers=True)
                ax.set_xticks(range(1, len(labels) + 1))
                ax.set_xticklabels(labels, fontsize=7, rotation=20 if len(labels) > 3 else 0)
                pooled = np.concatenate(boxes)
                pooled = pooled[pooled > 0]
                if pooled.size and pooled.max() > 10 * pooled.min():
                    ax.set_yscale("log")
            ax.set_title(attack, fontsize=9)
            ax.set_ylabel("critical ‖Δx‖₂", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, axis="y", alpha=0.3)
        fig.suptitle(title or "Critical perturbation norm (first ε of the grid that flips "
                     "each initially correct image)", fontsize=9)
        fig.tight_layout()
    return save_figure(fig, path)


def critical_accuracy_plot(
    path: str | Path, curves: Mapping[str, Mapping[str, Any]], *, title: str | None = None,
) -> Path:
    """Relative accuracy (fraction of the initially correct images not yet flipped) against
    ε, log ε axis, one panel per attack, one line per run. ``curves``: run label ->
    ``{attack: (eps, relative_accuracy)}``."""
    path = Path(path)
    attacks = _inner_keys(curves)
    fig, axes = _grid(max(len(attacks), 1), cols=3, size=(3.8, 3.2))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    with _closed_on_error(fig):
        for ax, attack in zip(axes.flat, attacks, strict=False):
            for i, (lab, per) in enumerate(curves.items()):
                if attack not in per:
                    continue
                eps, acc = per[attack]
                ax.plot(list(eps), [_finite(v) for v in acc], marker="o", markersize=2.5,
                        linewidth=1.3, color=cycle[i % len(cycle)], label=lab)
            ax.set_xscale("log")
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("σ (pixels)" if attack == "noise" else "ε (L∞, pixels in [0, 1])",
                          fontsize=8)
            ax.set_ylabel("relative accuracy", fontsize=8)
            ax.set_title(attack, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(True, which="major", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=6.5, loc="lower left")
        fig.suptitle(title or "Accuracy relative to the clean-correct images", fontsize=9)
        fig.tight_layout()
    return save_figure(fig, path)


def critical_vs_accuracy_plot(
    path: str | Path, points: Mapping[str, Mapping[str, Any]], *, title: str | None = None,
) -> Path:
    """Median critical norm against test accuracy, one marker per run, one colour per attack
    ([H] Fig. A2). ``points``: run label -> ``{"accuracy": test accuracy or None,
    attack: median crit_norm or None, ...}``; runs or attacks without a number are left out."""
    path = Path(path)
    attacks = [a for a in _inner_keys(points) if a != "accuracy"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    with _closed_on_error(fig):
        for attack in attacks:
            xs, ys, names = [], [], []
            for lab, per in points.items():
                acc, med = per.get("accuracy"), per.get(attack)
                if acc is None or med is None:
                    continue
                xs.append(float(acc))
                ys.append(float(med))
                names.append(lab)
            if not xs:
                continue
            ax.plot(xs, ys, marker="o", linestyle="none", label=attack)
            for x, y, name in zip(xs, ys, names, strict=True):
                ax.annotate(name, (x, y), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
        _finish_axes(fig, ax, "test accuracy", "median critical ‖Δx‖₂ ([0, 1] pixels)",
                     title or "Robustness against accuracy", None, None,
                     legend=bool(ax.lines))
    return save_figure(fig, path)
