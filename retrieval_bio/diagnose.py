"""``retrieval-bio diagnose RUN``: layer-wise diagnostics of a trained run (seed 004 ch. 3, 5).

For any run folder (any rule, backbone, front end, task) this measures, layer by layer
(every ``Conv2d`` and ``Linear``, front end included; :mod:`retrieval_bio.eval.layerwise`):

* the perturbation-to-signal ratio under an attack found against the run's own model
  (PGD for classification, HAG for hashing; exact gradients, BPDA identity through a
  quantising front end, whose true gradient is zero and would leave every PSR at 0);
* the block SNR under Gaussian noise (σ = 0.1, inputs of each layer);
* the activation sparsity of each layer's output and the per-filter sparsity of its weights;
* the singular values of each conv as an operator on the whole image (FFT method, exact for
  circular padding), and BatchNorm statistics.

It writes ``diagnostics.json`` and ``diagnose-*.png`` into the run folder (or ``out_dir``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .config import ConfigError
from .eval import layerwise, plots
from .eval.robustness import subsample
from .models.frontends import has_bpda_ops
from .progress import Progress, ensure
from .runs import atomic_write_json
from .train import open_run, resolve_device

DIAGNOSTICS = "diagnostics.json"
#: the layers diagnosed: every conv and linear layer (a front end's included)
LAYERS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def diagnose_run(
    run_dir: str | Path, *, eps: float = 8 / 255, steps: int = 20, num_images: int = 200,
    sigma: float = 0.1, snr_draws: int = 3, seed: int = 0, batch_size: int = 100,
    device: str = "auto", weights: str = "best", out_dir: str | Path | None = None,
    plot: bool = True, progress: Progress | None = None,
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

    Returns:
        The report written to ``diagnostics.json``: ``psr`` (layer -> mean PSR per norm and
        its dB), ``snr_db``, ``activation_sparsity``, ``filter_sparsity`` (layer -> mean,
        min, max over filters), ``spectra`` (layer -> largest singular value and quantiles
        of the normalised ones), ``batchnorm`` (layer -> mean of each statistic), the attack
        used and provenance.

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
    progress = ensure(progress)
    dev = resolve_device(device)
    run = open_run(run_dir, weights=weights, device=dev)
    cfg, model = run.config, run.model
    queries = subsample(run.splits.query, num_images, seed)
    items = [queries[i] for i in range(len(queries))]  # each image decoded once
    x = torch.stack([item[0] for item in items]).to(dev)
    y = torch.stack([item[1] for item in items]).to(dev)

    attack, x_adv = _attack(model, cfg.task, x, y, eps, steps, seed, batch_size, progress)
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
    if not psr:
        report["notes"].append("no Conv2d or Linear module ran in the forward (a net that "
                               "calls functional convolutions, such as an EP relaxation): "
                               "nothing to hook")
    dest = Path(out_dir) if out_dir is not None else Path(run_dir)
    dest.mkdir(parents=True, exist_ok=True)
    report["path"] = str(dest / DIAGNOSTICS)
    if plot and psr:
        label = f"{cfg.rule} {cfg.backbone}" + ("" if cfg.frontend == "none" else
                                               f" + {cfg.frontend}")
        report["plots"] = [str(p) for p in _plots(dest, label, psr, report["snr_db"], act,
                                                  filters,
                                                  spectra, bn)]
    atomic_write_json(dest / DIAGNOSTICS, report)
    return report


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
