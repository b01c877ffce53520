"""``retrieval-bio diagnose RUN``: layer-wise diagnostics of a trained run (seed 004 ch. 3, 5).

For any run folder (any rule, backbone, front end, task) this measures, layer by layer
(every ``Conv2d`` and ``Linear``, front end included; :mod:`retrieval_bio.eval.layerwise`):

* the perturbation-to-signal ratio under an attack found against the run's own model
  (PGD for classification, HAG for hashing; exact gradients, BPDA identity through a
  quantising front end, whose true gradient is zero and would leave every PSR at 0);
* the block SNR under Gaussian noise (σ = 0.1, inputs of each layer);
* the activation sparsity of each layer's output and the per-filter sparsity of its weights;
* the singular values of each conv as an operator on the whole image (FFT method, exact for
  circular padding), and BatchNorm statistics;

and, for one representation layer (``methods/krotov.md`` Diagnostics 1–3;
:mod:`retrieval_bio.eval.representation`):

* the covariance spectrum of the layer on query images, on a seeded white-noise probe and of
  the pixels themselves, each with its power-law fit λ_n ∝ n^(−α);
* the Jacobian norm of the layer with respect to the input pixels, per image;
* for classification runs, the critical perturbation of each initially correct image under
  random noise, FGSM and PGD (first ε of an ascending grid that flips it, and ‖Δx‖₂ there).

It writes ``diagnostics.json`` and ``diagnose-*.png`` into the run folder (or ``out_dir``).
:func:`diagnose_runs` diagnoses several runs and writes a comparison
(``diagnose-compare.json`` and ``diagnose-compare-*.png``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .config import ConfigError
from .eval import layerwise, plots
from .eval import representation as rep_eval
from .eval.robustness import subsample
from .models.frontends import has_bpda_ops
from .progress import Progress, ensure
from .runs import METRICS, atomic_write_json, read_json
from .train import open_run, resolve_device

DIAGNOSTICS = "diagnostics.json"
COMPARE = "diagnose-compare.json"
#: eigenvalues kept in diagnostics.json per spectrum (the largest; the fits use ranks ≤ 500)
STORED_EIGENVALUES = 2000
#: the layers diagnosed: every conv and linear layer (a front end's included)
LAYERS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def diagnose_run(
    run_dir: str | Path, *, eps: float = 8 / 255, steps: int = 20, num_images: int = 200,
    sigma: float = 0.1, snr_draws: int = 3, seed: int = 0, batch_size: int = 100,
    device: str = "auto", weights: str = "best", out_dir: str | Path | None = None,
    plot: bool = True, progress: Progress | None = None, layerwise_section: bool = True,
    representation: bool = True,
    layer: str | None = None, projections: rep_eval.Projections = "auto",
    spectrum_images: int = 1000, probe_images: int = 100,
    attacks: Sequence[str] = rep_eval.CRITICAL_ATTACKS, grid_size: int = 24,
    eps_grids: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Diagnose the trained model of ``run_dir`` on a seeded subsample of its query images.

    Args:
        eps: L∞ budget of the attack the PSR is measured under, [0, 1] pixels (seed 004:
            8/255).
        steps: attack iterations (PGD step ε/8 with a random start, as the seed's PGD-100 at
            step 1/255; HAG its own step). The seed used 100 steps; 20 is the CPU default.
        num_images: query images used (seeded by ``seed``).
        sigma: standard deviation of the SNR's Gaussian noise (pixels in [0, 1]).
        snr_draws: noise draws per image.
        seed: seeds the subsample, the attack and the noise.
        out_dir: where to write (default ``run_dir``).
        layerwise_section: measure the layer-wise section (PSR, SNR, sparsity, conv
            spectra, BatchNorm); without it those keys hold empty results and a note says
            so.
        representation: measure the representation section (below).
        layer: the representation layer, a ``named_modules()`` name or
            :data:`~retrieval_bio.eval.representation.HEAD_INPUT`; ``None``: the backbone's
            own ``representation_layer`` when it names one, else the input of the head.
        projections: Jacobian estimator, ``"auto"`` (exact up to 256 output units, else 16
            random projections), ``"exact"`` or a number of projections.
        spectrum_images: query images for the spectra (seeded; capped at the query split,
            the reference used 10,000 test images); the noise probe has as many images.
        probe_images: query images for the Jacobian norms and the critical perturbations
            (seeded).
        attacks: the critical-perturbation attacks (``"noise"``, ``"fgsm"``, ``"pgd"``;
            empty: none). PGD uses ``steps`` iterations of step ε/4, no random start.
        grid_size: points of each default ε grid
            (:func:`~retrieval_bio.eval.representation.default_eps_grid`).
        eps_grids: attack -> ascending ε grid, replacing the default for that attack.

    Returns:
        The report written to ``diagnostics.json``: ``psr`` (layer -> mean PSR per norm and
        its dB), ``snr_db``, ``activation_sparsity``, ``filter_sparsity`` (layer -> mean,
        min, max over filters), ``spectra`` (layer -> largest singular value and quantiles
        of the normalised ones), ``batchnorm`` (layer -> mean of each statistic), the attack
        used and provenance; with ``representation``, a ``representation`` block: the layer,
        ``spectrum`` / ``noise_spectrum`` / ``input_spectrum`` (images, power-law fit, the
        largest eigenvalues), ``jacobian`` (method, mean, median, quantiles, per-image
        norms) and ``critical`` (attack -> grid, relative accuracy, median crit_norm,
        fraction never flipped, per-image values; ``None`` for hash runs).

    Raises:
        ConfigError: a bad option. RunFolderError: missing or damaged run files.
    """
    if not (0 < eps <= 1 and math.isfinite(eps)):
        raise ConfigError(f"--eps must lie in (0, 1] (L∞ in [0, 1] pixels), got {eps}")
    for name, value in (("steps", steps), ("num-images", num_images),
                        ("snr-draws", snr_draws), ("batch-size", batch_size)):
        if value < 1:
            raise ConfigError(f"--{name} must be >= 1, got {value}")
    if not sigma > 0:
        raise ConfigError(f"--sigma must be > 0, got {sigma}")
    if not (layerwise_section or representation):
        raise ConfigError("nothing to diagnose: both the layer-wise and the representation "
                          "sections are switched off; keep at least one")
    if representation:
        _check_representation_options(projections, spectrum_images, probe_images, attacks,
                                      grid_size, eps_grids)
    progress = ensure(progress)
    dev = resolve_device(device)
    run = open_run(run_dir, weights=weights, device=dev)
    cfg, model = run.config, run.model
    if layer is None:
        layer, layer_source = rep_eval.default_representation_layer(model), "backbone"
        if layer is None:
            layer_source = "default (the input of the head)"
    else:
        layer_source = "option"
    if representation:
        rep_eval.check_layer(model, layer)  # a bad --layer fails before the slow part
    queries = subsample(run.splits.query, num_images, seed)
    items = [queries[i] for i in range(len(queries))]  # each image decoded once
    x = torch.stack([item[0] for item in items]).to(dev)
    y = torch.stack([item[1] for item in items]).to(dev)

    attack: dict[str, Any] | None = None
    psr: dict[str, Any] = {}
    snr: dict[str, float] = {}
    act: dict[str, float] = {}
    filters: dict[str, Any] = {}
    spectra: dict[str, Any] = {}
    bn: dict[str, Any] = {}
    if layerwise_section:
        attack, x_adv = _attack(model, cfg.task, x, y, eps, steps, seed, batch_size,
                                progress)
        psr = layerwise.perturbation_to_signal(model, x, x_adv, kinds=LAYERS,
                                               batch_size=batch_size)
        gen = torch.Generator().manual_seed(seed)
        snr = layerwise.block_snr(model, x, sigma, snr_draws, generator=gen, kinds=LAYERS,
                                  batch_size=batch_size)
        act = layerwise.activation_sparsity(model, x, kinds=LAYERS, batch_size=batch_size)
        filters = layerwise.filter_sparsity(model)
        spectra = layerwise.conv_spectra(model, cfg.image_size, normalise=False)
        bn = layerwise.bn_statistics(model)

    report: dict[str, Any] = {
        "run": str(run_dir), "weights": run.weights, "rule": cfg.rule,
        "backbone": cfg.backbone, "frontend": cfg.frontend, "task": cfg.task,
        "num_images": int(len(x)), "seed": int(seed),
        "attack": attack, "sigma": float(sigma), "snr_draws": int(snr_draws),
        "psr": {n: {"mean": v["mean"], "db": v["db"], "n_skipped": v["n_skipped"]}
                for n, v in psr.items()},
        "snr_db": snr,
        "activation_sparsity": act,
        "filter_sparsity": {n: _summary(v) for n, v in filters.items()},
        "spectra": {n: _spectrum_summary(v) for n, v in spectra.items()},
        "batchnorm": {n: {k: (float(np.mean(a)) if a is not None else None)
                          for k, a in stats.items()} for n, stats in bn.items()},
        "notes": [],
    }
    infinite = [n for n, v in snr.items() if not math.isfinite(v)]
    if infinite:
        report["snr_db"] = {n: (v if math.isfinite(v) else None) for n, v in snr.items()}
        report["notes"].append(
            f"SNR is infinite (null in the JSON) at {', '.join(infinite)}: for some image the "
            f"noise left that layer's input exactly unchanged (a quantiser absorbed it), so "
            f"E[‖f‖²/‖Δf‖²] has no finite value")
    if not layerwise_section:
        report["notes"].append("layer-wise section skipped (PSR, SNR, sparsity, conv "
                               "spectra, BatchNorm): switched off")
    elif not psr:
        report["notes"].append("no Conv2d or Linear module ran in the forward (a net that "
                               "calls functional convolutions, such as an EP relaxation): "
                               "nothing to hook")
    if representation:
        report["representation"] = _representation(
            run, layer, layer_source, projections=projections,
            spectrum_images=spectrum_images, probe_images=probe_images, attacks=attacks,
            grid_size=grid_size, eps_grids=eps_grids or {}, steps=steps, seed=seed,
            batch_size=batch_size, notes=report["notes"], progress=progress)
    dest = Path(out_dir) if out_dir is not None else Path(run_dir)
    dest.mkdir(parents=True, exist_ok=True)
    report["path"] = str(dest / DIAGNOSTICS)
    label = f"{cfg.rule} {cfg.backbone}" + ("" if cfg.frontend == "none" else
                                           f" + {cfg.frontend}")
    if plot:
        written: list[Path] = []
        if psr:
            written += _plots(dest, label, psr, report["snr_db"], act, filters, spectra, bn)
        if representation:
            written += representation_plots(dest, {label: report["representation"]})
        report["plots"] = [str(p) for p in written]
    atomic_write_json(dest / DIAGNOSTICS, report)
    return report


# ------------------------------------------------------------------ representation section


def _check_representation_options(
    projections: Any, spectrum_images: int, probe_images: int, attacks: Sequence[str],
    grid_size: int, eps_grids: Mapping[str, Sequence[float]] | None,
) -> None:
    rep_eval.resolve_projections(projections, 1)  # raises ConfigError for a bad value
    if spectrum_images < 2:
        raise ConfigError(f"--spectrum-images must be >= 2 (a covariance needs two images), "
                          f"got {spectrum_images}")
    if probe_images < 1:
        raise ConfigError(f"--probe-images must be >= 1, got {probe_images}")
    for name in [*attacks, *(eps_grids or {})]:
        if name not in rep_eval.CRITICAL_ATTACKS:
            raise ConfigError(f"critical-perturbation attack {name!r} is not known; choose "
                              f"from {', '.join(rep_eval.CRITICAL_ATTACKS)}")
    if attacks and grid_size < 2:
        raise ConfigError(f"--grid-size must be >= 2, got {grid_size}")


def _images(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]  # each image decoded once
    return torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])


def _spectrum_entry(acts: np.ndarray, window: tuple[int, int]) -> dict[str, Any]:
    eigs = rep_eval.covariance_spectrum(acts)
    fit = rep_eval.power_law_fit(eigs, window)
    return {"images": int(acts.shape[0]), "dim": int(acts.shape[1]), "fit": fit.to_dict(),
            "eigenvalues": [float(v) for v in eigs[:STORED_EIGENVALUES]]}


def _representation(
    run: Any, layer: str | None, layer_source: str, *, projections: Any,
    spectrum_images: int, probe_images: int, attacks: Sequence[str], grid_size: int,
    eps_grids: Mapping[str, Sequence[float]], steps: int, seed: int, batch_size: int,
    notes: list[str], progress: Progress,
) -> dict[str, Any]:
    """The representation block of the report (see :func:`diagnose_run`); appends its
    notes to ``notes``."""
    cfg, model = run.config, run.model
    name = rep_eval.describe_layer(layer)
    query = run.splits.query
    x_spec, _ = _images(subsample(query, spectrum_images, seed))
    if len(x_spec) < spectrum_images:
        notes.append(f"spectrum: {len(x_spec)} query images (the whole query split; "
                     f"{spectrum_images} were asked for; the reference used 10,000 test images)")
    acts = rep_eval.layer_activations(model, x_spec, layer, batch_size)
    noise = rep_eval.white_noise_probe(len(x_spec), tuple(x_spec.shape[1:]), seed)
    noise_acts = rep_eval.layer_activations(model, noise, layer, batch_size)
    out: dict[str, Any] = {
        "layer": name, "layer_source": layer_source, "output_dim": int(acts.shape[1]),
        "spectrum": _spectrum_entry(acts, rep_eval.DATA_WINDOW),
        "noise_spectrum": {**_spectrum_entry(noise_acts, rep_eval.NOISE_WINDOW),
                           "seed": int(seed)},
        "input_spectrum": _spectrum_entry(x_spec.flatten(1).double().numpy(),
                                          rep_eval.DATA_WINDOW),
    }
    for key, what in (("spectrum", f"data spectrum of {name}"),
                      ("noise_spectrum", f"white-noise-probe spectrum of {name}"),
                      ("input_spectrum", "pixel spectrum (identity map)")):
        fit = out[key]["fit"]
        if fit["reason"]:
            notes.append(f"{what}: no power-law fit: {fit['reason']}")
        elif fit["clipped"]:
            notes.append(f"{what}: the fit window n = {fit['window'][0]}…"
                         f"{fit['window'][1]} was clipped to n ≤ {fit['n_last']}, the "
                         f"positive eigenvalues there are ({out[key]['images']} images, "
                         f"{out[key]['dim']} units)")
    notes.append("the white-noise probe has N(0, 1) pixels, not [0, 1] images: compare the "
                 "shape of its spectrum (α), not its scale")

    bpda = "identity" if has_bpda_ops(model) else None
    x, y = _images(subsample(query, probe_images, seed))
    jac = rep_eval.jacobian_norms(model, x, layer, projections=projections,
                                  batch_size=batch_size, seed=seed, bpda=bpda)
    out["jacobian"] = {**jac.summary(), "bpda": bpda,
                       "norms": [float(v) for v in jac.norms]}
    if cfg.task != "classify":
        out["critical"] = None
        if attacks:
            notes.append(f"critical perturbations skipped: they need a classifier, this is "
                         f"a {cfg.task} run")
        return out
    crit: dict[str, Any] = {}
    for attack in attacks:
        grid = eps_grids.get(attack) or rep_eval.default_eps_grid(attack, grid_size)
        res = rep_eval.critical_perturbations(model, x, y, attack, grid, steps=steps,
                                              seed=seed, batch_size=batch_size,
                                              bpda=None if attack == "noise" else bpda,
                                              progress=progress)
        crit[attack] = {**res.summary(), "bpda": None if attack == "noise" else bpda}
        notes.extend(res.notes)
    out["critical"] = crit
    return out


def representation_plots(dest: Path, reps: Mapping[str, Mapping[str, Any]],
                         prefix: str = "diagnose") -> list[Path]:
    """The representation figures of one or more runs (label -> ``representation`` block of
    a report): ``{prefix}-power-law.png``, ``{prefix}-jacobian.png`` and, when some run has
    critical perturbations, ``{prefix}-critical.png`` (boxes of crit_norm) and
    ``{prefix}-critical-accuracy.png`` (relative accuracy against ε)."""
    spectra = {}
    for label, r in reps.items():
        spectra[label] = {"data": r["spectrum"]["eigenvalues"], "fit": r["spectrum"]["fit"],
                          "noise": r["noise_spectrum"]["eigenvalues"],
                          "noise_fit": r["noise_spectrum"]["fit"]}
        if len(reps) == 1:  # the pixels' own spectrum: the same for every run of a dataset
            spectra[label].update(input=r["input_spectrum"]["eigenvalues"],
                                  input_fit=r["input_spectrum"]["fit"])
    layers = sorted({r["layer"] for r in reps.values()})
    out = [
        plots.power_law_plot(dest / f"{prefix}-power-law.png", spectra,
                             title=f"Covariance spectrum of {', '.join(layers)} "
                                   f"(dashed: power-law fit)"),
        plots.jacobian_histogram_plot(
            dest / f"{prefix}-jacobian.png",
            {label: r["jacobian"]["norms"] for label, r in reps.items()},
            title=f"Input-Jacobian norm of {', '.join(layers)} per image"),
    ]
    crit = {label: r["critical"] for label, r in reps.items() if r.get("critical")}
    if crit:
        out.append(plots.critical_norm_boxplot(
            dest / f"{prefix}-critical.png",
            {label: {a: c["crit_norm"] for a, c in per.items()} for label, per in crit.items()}))
        out.append(plots.critical_accuracy_plot(
            dest / f"{prefix}-critical-accuracy.png",
            {label: {a: (c["eps"], c["relative_accuracy"]) for a, c in per.items()}
             for label, per in crit.items()}))
    return out


# ------------------------------------------------------------------------------ several runs


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """A label per run: its folder name; names shared by several runs get their parent
    folder in front (``a/run``, ``b/run``), and any still equal a `` (2)``, `` (3)``…"""
    paths = [Path(p) for p in run_dirs]
    names = [p.resolve().name or str(p) for p in paths]
    labels = [n if names.count(n) == 1 else f"{p.resolve().parent.name}/{n}"
              for p, n in zip(paths, names, strict=True)]
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if labels.count(lab) == 1 or seen[lab] == 1 else f"{lab} ({seen[lab]})")
    return out


def compare_entry(run_dir: str | Path, report: Mapping[str, Any]) -> dict[str, Any]:
    """One run's row of the comparison: α ± stderr of the data and noise spectra, the median
    Jacobian norm, the median crit_norm and the fraction never flipped per attack, and the
    test accuracy from the run's ``metrics.json`` (``None`` when absent)."""
    metrics = read_json(Path(run_dir) / METRICS)
    entry: dict[str, Any] = {
        "run": str(run_dir), "report": report.get("path"), "rule": report.get("rule"),
        "backbone": report.get("backbone"), "task": report.get("task"),
        "test_accuracy": metrics.get("test_accuracy"),
    }
    r = report.get("representation")
    if not r:
        return entry
    entry["layer"] = r["layer"]
    for key, name in (("spectrum", "data"), ("noise_spectrum", "noise")):
        fit = r[key]["fit"]
        entry[f"alpha_{name}"] = fit["alpha"]
        entry[f"alpha_{name}_stderr"] = fit["stderr"]
        entry[f"r2_{name}"] = fit["r2"]
    entry["jacobian_median"] = r["jacobian"].get("median")
    entry["jacobian_method"] = r["jacobian"]["method"]
    crit = r.get("critical") or {}
    entry["median_crit_norm"] = {a: c["median_crit_norm"] for a, c in crit.items()}
    entry["never_flipped"] = {a: c["never_flipped"] for a, c in crit.items()}
    return entry


def diagnose_runs(
    run_dirs: Sequence[str | Path], out_dir: str | Path, *, progress: Progress | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Diagnose every run (each writes its own ``diagnostics.json`` and figures into its run
    folder, as :func:`diagnose_run` with ``options``) and compare them.

    Writes into ``out_dir``: ``diagnose-compare.json`` (run label -> :func:`compare_entry`,
    plus warnings and the figures written) and the comparison figures
    ``diagnose-compare-power-law.png``, ``-jacobian.png``, ``-critical.png``,
    ``-critical-accuracy.png`` and ``-crit-vs-accuracy.png`` (median crit_norm against test
    accuracy) where there is something to draw. Labels are the folder names
    (:func:`run_labels`).

    Returns:
        The comparison written, with ``reports`` (label -> the full report) added.

    Raises:
        ConfigError: no run, or ``out_dir`` among the options (each run writes into its own
        folder here).
    """
    if not run_dirs:
        raise ConfigError("give at least one run folder to diagnose")
    if "out_dir" in options:
        raise ConfigError("diagnose_runs writes each run's diagnostics into its run folder; "
                          "out_dir is only the folder of the comparison")
    labels = run_labels(run_dirs)
    reports = {lab: diagnose_run(run, progress=progress, **options)
               for lab, run in zip(labels, run_dirs, strict=True)}
    entries = {lab: compare_entry(run, reports[lab])
               for lab, run in zip(labels, run_dirs, strict=True)}
    warnings = []
    for key in ("task", "layer"):
        values = {e.get(key) for e in entries.values()}
        if len(values) > 1:
            warnings.append(f"the runs differ in {key} ({', '.join(map(str, values))}): their "
                            f"numbers are not directly comparable")
    dims = {lab: (r.get("representation") or {}).get("output_dim") for lab, r in reports.items()}
    if len({d for d in dims.values() if d is not None}) > 1:
        warnings.append("the representation layers differ in width ("
                        + ", ".join(f"{lab}: {d}" for lab, d in dims.items())
                        + "): spectra are fitted over windows clipped differently")
    dest = Path(out_dir)
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    reps = {lab: r["representation"] for lab, r in reports.items() if r.get("representation")}
    if reps and options.get("plot", True):
        written += representation_plots(dest, reps, prefix="diagnose-compare")
        points = {lab: {"accuracy": e["test_accuracy"], **e.get("median_crit_norm", {})}
                  for lab, e in entries.items()}
        if any(p["accuracy"] is not None and len(p) > 1 for p in points.values()):
            written.append(plots.critical_vs_accuracy_plot(
                dest / "diagnose-compare-crit-vs-accuracy.png", points))
    result: dict[str, Any] = {"runs": entries, "warnings": warnings,
                              "plots": [str(p) for p in written],
                              "path": str(dest / COMPARE)}
    atomic_write_json(dest / COMPARE, result)
    return {**result, "reports": reports}


def _attack(model: nn.Module, task: str, x: torch.Tensor, y: torch.Tensor, eps: float,
            steps: int, seed: int, batch_size: int, progress: Progress
            ) -> tuple[dict[str, Any], torch.Tensor]:
    from .attacks import ATTACKS

    bpda = "identity" if has_bpda_ops(model) else None
    if task == "hash":
        attack = ATTACKS.get("hag")(model, eps, steps, grad="exact", seed=seed, bpda=bpda)
    else:
        attack = ATTACKS.get("pgd")(model, eps, alpha=eps / 8, steps=steps, random_start=True,
                                    grad="exact", seed=seed, bpda=bpda)
    progress.start("attack for PSR", math.ceil(len(x) / batch_size))
    try:
        parts = []
        for i in range(0, len(x), batch_size):
            parts.append(attack(x[i:i + batch_size], y[i:i + batch_size]))
            progress.advance(1)
    finally:
        progress.stop()
    return {"name": attack.name, "eps": float(eps), "steps": int(steps),
            "grad": "exact", "bpda": bpda}, torch.cat(parts)


def _summary(values: list[float]) -> dict[str, float | None]:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    if not a.size:
        return {"mean": None, "min": None, "max": None}
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


def _spectrum_summary(values: np.ndarray) -> dict[str, float | int]:
    """The largest singular value (the layer's Lipschitz constant for circular padding) and
    quantiles of the values divided by it."""
    top = float(values[0]) if len(values) else 0.0
    rel = values / top if top > 0 else values
    return {"max": top, "count": int(len(values)),
            **{f"q{q}": float(np.quantile(rel, q / 100)) for q in (50, 90, 99)}}


def _plots(dest: Path, label: str, psr, snr, act, filters, spectra, bn) -> list[Path]:
    normalised = {n: v / v[0] if len(v) and v[0] > 0 else v for n, v in spectra.items()}
    out = [
        plots.psr_plot(dest / "diagnose-psr.png", psr, label=label),
        plots.psr_histogram_plot(dest / "diagnose-psr-hist.png", psr, label=label),
        plots.snr_plot(dest / "diagnose-snr.png", snr, label=label),
        plots.sparsity_plot(dest / "diagnose-sparsity.png", act, label=label),
        plots.layer_histograms_plot(dest / "diagnose-filter-sparsity.png", filters,
                                    "filter sparsity s", "per-filter sparsity", label=label),
    ]
    if normalised:
        out.append(plots.spectrum_plot(dest / "diagnose-spectra.png", normalised, label=label))
    if bn:
        values = {f"{n} {k}": a for n, stats in bn.items() for k, a in stats.items()
                  if a is not None}
        out.append(plots.layer_histograms_plot(dest / "diagnose-batchnorm.png", values,
                                               "value", "BatchNorm statistics", label=label))
    return out
