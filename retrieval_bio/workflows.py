"""Workflows on run folders: evaluate a finished run, attack it.

These sit above ``train`` and ``eval``: they open a run's config and trained weights
(:func:`retrieval_bio.train.open_run`), call the pure evaluation code
(:mod:`retrieval_bio.eval`), and write the results into the run folder. ``cli.py`` and the
demo call them; library users may too.

Every result records the weights it came from (``{"file", "epoch", "sha256"}``): the selected
epoch's ``best.pt`` unless ``weights="last"`` or a file is asked for. A missing ``best.pt`` is
an error, never silently replaced by the last checkpoint.

Attack reports are keyed by their settings (``attack-<name>-<key>.json``, the key a digest of
the options other than ε and the gradient sources), so a run attacked with other settings
keeps both reports; a re-run with the same settings reuses the cells already computed and
computes only the missing ones, which is also how an interrupted sweep continues.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .attacks.base import EOT_REDUCERS, NORMS
from .config import ConfigError, RunConfig
from .eval.encode import accuracy, encode
from .eval.plots import attack_plot, line_plot
from .eval.report import CODES, is_evaluation_key, load_codes, retrieval_report
from .eval.robustness import (
    CLASSIFY_ATTACKS,
    DEFAULT_BATCH,
    GRADIENT_CHECKED,
    GRADIENT_FREE,
    HASH_ATTACKS,
    NO_GRAD,
    PGD_PRESETS,
    attack_task,
    check_grads,
    default_eps,
    default_variants,
    missing_cells,
    report_paths,
    settings_key,
    square_check,
    subsample,
    sweep_classify,
    sweep_hash,
    variant_name,
)
from .models.backbones import has_own_gradient
from .models.ep import set_attack_steps
from .progress import Progress
from .rules import has_feedback_path
from .runs import (
    BEST,
    METRICS,
    atomic_write_json,
    file_digest,
    output_dir,
    read_json,
    run_weights,
    update_metrics,
)
from .train import open_run, resolve_device
from .train.pipeline import encode_codes as encode_run_codes
from .train.pipeline import load_run_config, retrieval_k, skipped_items

log = logging.getLogger(__name__)


def evaluate_run(
    run_dir: str | Path, *, k: int | None = None, radius: int = 2,
    device: torch.device | str = "auto", weights: str = "best", encode_codes: bool = False,
    skip_bad: bool | None = None, index: str | None = None,
    out_dir: str | Path | None = None, progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate a finished run and merge the result into its ``metrics.json``.

    Hashing runs: every SPEC §5 metric from ``codes.npz`` (``k`` defaults to the run's own;
    at ``k <= 0`` mAP is over the whole database and precision/recall@k, which would be the
    label base rate and 1, are left out), the PR curve plotted to ``pr_curve.png``. The codes
    are re-encoded from the weights (and ``codes.npz`` and ``database.index`` rewritten)
    when ``encode_codes`` is set, when ``weights`` is not ``"best"`` (the stored codes are
    the selected epoch's), or when ``codes.npz`` is missing — the way to finish a run whose
    final encode stopped on a bad image (with ``skip_bad=True``).
    Classification runs: test accuracy on the query split.

    Args:
        weights: ``"best"`` | ``"last"`` | a checkpoint file (see :func:`open_run`).
        skip_bad: skip unreadable images while encoding (default: the run's setting).
        index: FAISS index kind for the rewritten ``database.index`` (default: the run's).
        out_dir: where to write (default ``run_dir``; an unwritable folder falls back to
            :func:`fallback_dir` with a note in ``report["notes"]``).

    Returns:
        The metrics, plus ``weights`` (the weights they came from) and ``notes``.

    Raises:
        RunFolderError: missing or damaged run files (named, with the fix).
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    metrics = read_json(run_dir / METRICS)  # a damaged file is an error before any work
    notes: list[str] = []
    dest = output_dir(run_dir, out_dir, notes)
    dev = resolve_device(device)
    report: dict[str, Any]
    other_weights = weights != "best"
    if cfg.task == "hash":
        codes_path = run_dir / CODES
        if encode_codes or other_weights or not codes_path.is_file():
            run = open_run(run_dir, weights=weights, device=dev, skip_bad=skip_bad)
            if index is not None:
                run.config = run.config.replace(index=index)
            # the run's codes.npz and database.index are the selected epoch's: codes of
            # other weights are scored in memory and never replace them
            codes = encode_run_codes(run.config, run.model, run.splits, dev,
                                     None if other_weights else dest, progress)
            k = retrieval_k(run.config, run.splits) if k is None else k
            used = run.weights
            extra = {"skipped_items": skipped_items(run.splits)}
        else:
            codes = load_codes(codes_path)
            k = metrics.get("k", cfg.k if cfg.k is not None else 0) if k is None else k
            used = metrics.get("test_weights") or {"file": BEST, "epoch": metrics.get(
                "best_epoch"), "sha256": None}
            extra = {}
        if radius < 0:
            raise ConfigError(f"--radius must be >= 0, got {radius}")
        report = {**retrieval_report(codes, k, radius), **extra}
        if not other_weights:
            try:
                _plot_pr(dest / "pr_curve.png", report["pr_curve"], cfg)
            except OSError as e:
                notes.append(f"pr_curve.png not written: {e}")
    else:
        run = open_run(run_dir, weights=weights, device=dev, skip_bad=skip_bad)
        logits, labels, _ = encode(run.model, run.splits.query,
                                   batch_size=max(cfg.batch_size, 128), device=dev,
                                   progress=progress, description="test")
        report = {"test_accuracy": accuracy(logits, labels),
                  "skipped_items": skipped_items(run.splits)}
        used = run.weights
    report["evaluated_weights"] = used
    try:
        if other_weights:  # kept apart: the top-level numbers stay the selected epoch's
            label = f"{used['file']} (epoch {used['epoch']})"
            entry = {k: v for k, v in report.items() if k != "pr_curve"}
            update_metrics(dest, evaluations={**metrics.get("evaluations", {}), label: entry})
            notes.append(f"weights other than best.pt: results stored under evaluations."
                         f"{label!r} in metrics.json; the run's own numbers and codes are "
                         f"unchanged")
        else:
            update_metrics(dest, drop=is_evaluation_key, **report)
        report["written_to"] = str(dest / METRICS)
    except OSError as e:
        notes.append(f"{dest / METRICS} not written ({e}); the results are only shown")
        report["written_to"] = None
    report["notes"] = notes
    return report


def _plot_pr(path: Path, curve: dict[str, list[float]], cfg: RunConfig) -> None:
    line_plot(path, {f"{cfg.rule} ({cfg.bits} bits)": (curve["recall"], curve["precision"])},
              xlabel="recall", ylabel="precision",
              title=f"Precision-recall over Hamming radii: {cfg.backbone} on {cfg.dataset}")


def check_attack_options(
    attack: str, eps: Sequence[float] | None, *, grads: Sequence[str], steps: int | None,
    preset: str | None, max_queries: int | None, batch_size: int, seed: int = 0,
    norm: str = "linf",
) -> list[float]:
    """Validate an attack request before anything is loaded; returns the ε list to use.

    L∞ budgets lie in [0, 1] (an L∞ ball of 1 already holds every image in [0, 1]); L2
    budgets may be any finite ε >= 0 (the ball holding every image has radius sqrt(C·H·W),
    e.g. 13.86 for 3×8×8). The hashing attacks are L∞ only.

    Raises:
        ConfigError: naming the bad option and what it accepts.
    """
    try:
        task = attack_task(attack)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if norm not in NORMS:
        raise ConfigError(f"--norm must be one of {' | '.join(NORMS)}, got {norm!r}")
    if norm != "linf" and task == "hash":
        raise ConfigError(f"--norm {norm}: {attack} is defined for an L∞ budget only (as in "
                          f"its paper); use --norm linf, or an L2 attack on a classify run "
                          f"({' | '.join(a for a in CLASSIFY_ATTACKS)})")
    if preset is not None:
        if task != "hash" and attack != "pgd":
            raise ConfigError(f"--preset applies to hashing attacks ({', '.join(HASH_ATTACKS)}) "
                              f"and pgd, not {attack!r}")
        choices = PGD_PRESETS if attack == "pgd" else ("paper", "reference")
        if preset not in choices:
            raise ConfigError(f"--preset {preset!r} is not a preset of {attack}; choose "
                              f"{' or '.join(choices)}")
    eps = default_eps(attack, preset, norm) if eps is None else [float(e) for e in eps]
    if not eps:
        raise ConfigError("--eps is empty; give at least one budget, e.g. --eps 0.01,0.05")
    if norm == "l2":
        bad = [e for e in eps if not (math.isfinite(e) and e >= 0.0)]
        if bad:
            raise ConfigError(f"--eps must be finite and >= 0 (L2 budget over an image's "
                              f"C·H·W pixels in [0, 1]), got {', '.join(f'{e:g}' for e in bad)}")
    else:
        bad = [e for e in eps if not (math.isfinite(e) and 0.0 <= e <= 1.0)]
        if bad:
            more = (" (an L∞ ball of 1 already holds every image; for L2 budgets pass "
                    "--norm l2)" if any(math.isfinite(e) and e > 1 for e in bad) else "")
            raise ConfigError(f"--eps must lie in [0, 1] for --norm linf (L∞ budget in pixel "
                              f"units, images in [0, 1]), got "
                              f"{', '.join(f'{e:g}' for e in bad)}{more}")
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    if max_queries is not None and max_queries < 1:
        raise ConfigError(f"--num-images must be >= 1, got {max_queries}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    if attack not in GRADIENT_FREE:
        try:
            check_grads(grads)
        except ValueError as e:
            raise ConfigError(f"--grad: {e}") from None
    return eps


def attack_run(
    run_dir: str | Path, attack: str, eps: Sequence[float] | None = None, *,
    grads: Sequence[str] = ("exact", "model"), steps: int | None = None,
    preset: str | None = None, max_queries: int | None = None,
    batch_size: int = DEFAULT_BATCH, device: str = "auto", seed: int = 0,
    attack_kwargs: dict[str, Any] | None = None, plot: bool = True,
    weights: str = "best", overwrite: bool = False, out_dir: str | Path | None = None,
    skip_bad: bool | None = None, t_attack: int | None = None,
    progress: Progress | None = None, norm: str = "linf",
    bpda: Sequence[str] | None = None, eot: Sequence[int] | None = None,
    eot_reduce: str = "normalized", source: str | Path | None = None,
) -> dict[str, Any]:
    """Attack the trained model of a run folder; write ``attack-<name>-<key>.json`` (and,
    with ``plot``, the ``.png``) into it, after every finished (source, ε) cell.

    Hashing runs take ``hag``/``sdha``, classification runs ``fgsm``/``pgd``/``square``/
    ``apgd``/``apgd-t``/``auto`` (the AutoAttack-style ensemble). The
    queries are the run's query split (``max_queries``: a seeded subsample of that many);
    hashing attacks are scored against the run's database split, encoded afresh with the
    loaded model so that clean and adversarial codes come from the same computation.

    Args:
        run_dir: a finished run folder (``config.yaml`` + ``best.pt``).
        attack: attack name.
        eps: budgets in [0, 1] pixels in ``norm``; ``None``: :func:`default_eps` (for
            ``norm="l2"`` seed 002's grid :data:`~retrieval_bio.eval.robustness.L2_EPS`).
        grads: gradient sources; for a run without a feedback path (BP, or a learner that is
            not a feedback rule: :func:`retrieval_bio.rules.has_feedback_path`) they coincide
            and are computed once.
        steps, preset: see :func:`sweep_hash` / :func:`sweep_classify`; ``preset`` is for
            hashing attacks (paper | reference) and PGD (paper | pepita; ``pepita``'s default
            ε list is :data:`~retrieval_bio.eval.robustness.PEPITA_EPS`). For Square
            ``steps`` is its query budget per image, for ``apgd``/``apgd-t``/``auto`` the
            APGD iterations (``auto``'s Square budget: ``attack_kwargs={"n_queries": n}``).
        max_queries: attack only this many query images (seeded by ``seed``).
        batch_size: attack batch size.
        device: ``"auto"`` | ``"cpu"`` | ``"cuda[:N]"`` | ``"mps"``.
        seed: the attack's seed and the query subsample's.
        weights: ``"best"`` (default) | ``"last"`` | a checkpoint file.
        overwrite: recompute every requested cell even if a report of the same settings
            holds it (a report made from other weights is an error without this).
        out_dir: folder for the report (default ``run_dir``; unwritable: a temp folder,
            noted in the report).
        t_attack: energy-based (``ep-*``) runs only: steps of the relaxation the gradient
            sources differentiate (default: the run's ``t_attack``); predictions and the
            scoring stay at the run's ``t_eval``. Part of the report's settings.
        norm: ``"linf"`` (default) or ``"l2"`` (classifier attacks only; L2 budgets are over
            an image's C·H·W entries and may exceed 1). Part of the report's settings when
            not ``"linf"``, so L2 and L∞ reports of a run are separate files (and L∞ reports
            keep the keys they had before the option existed).
        bpda: BPDA settings through the model's non-differentiable ops, one column each per
            gradient source (``"none"``: their true gradient; ``"identity"``; ``"smooth"``);
            ``eot``: EOT samples per step, likewise (every pair of the two lists is a column).
            Both ``None``: :func:`~retrieval_bio.eval.robustness.default_variants` (for a
            quantising front end none, identity and smooth; for a random one also smooth
            with EOT). Columns are cells, not settings: more of them extend one report.
        eot_reduce: how EOT samples are combined (``mean`` | ``normalized`` | ``sign``);
            part of the settings when not the default.
        source: a transfer attack: make the adversarial images on this run's model (same
            task, same image size) and score them on ``run_dir``'s. Part of the settings.

    Classification reports carry the ``masking`` block; an FGSM/PGD/APGD/APGD-T report is
    also compared with the run's Square reports of the same weights and norm
    (``square_check``; a note when there is none), and a Square report with the run's
    gradient-attack reports (``gradient_checks``): a gradient-free attack doing better than a
    gradient attack is gradient masking (:func:`cross_check`). ``auto`` reports take part in
    neither: they contain Square, and their ``breakdown`` notes when Square broke images
    both APGD attacks left.

    Returns:
        The report (see :mod:`retrieval_bio.eval.robustness`), as written to ``report["path"]``.

    Raises:
        ConfigError: a bad option (checked before the model or data are loaded), or a
            report of these settings computed from other weights (without ``overwrite``).
        RunFolderError: missing or damaged run files.
    """
    run_dir = Path(run_dir)
    eps = check_attack_options(attack, eps, grads=grads, steps=steps, preset=preset,
                               max_queries=max_queries, batch_size=batch_size, seed=seed,
                               norm=norm)
    task = attack_task(attack)
    cfg = load_run_config(run_dir)
    if cfg.task != task:
        raise ConfigError(
            f"{attack!r} attacks {task} models but {run_dir} is a {cfg.task} run; use "
            f"{' | '.join(HASH_ATTACKS if cfg.task == 'hash' else CLASSIFY_ATTACKS)}"
        )
    if t_attack is not None:
        if not has_own_gradient(cfg.backbone):
            raise ConfigError(f"--t-attack applies to energy-based runs (ep-* backbones); "
                              f"{run_dir} is a {cfg.backbone} run, whose forward is not a "
                              f"relaxation")
        if t_attack < 1:
            raise ConfigError(f"--t-attack must be >= 1 step, got {t_attack}")
        if attack in GRADIENT_FREE:
            raise ConfigError(f"{attack} is gradient-free: it queries predictions, which relax "
                              f"t_eval steps; --t-attack (the unroll a gradient "
                              f"differentiates) does not apply")
    if eot_reduce not in EOT_REDUCERS:
        raise ConfigError(f"--eot-reduce must be one of {' | '.join(EOT_REDUCERS)}, got "
                          f"{eot_reduce!r}")
    variants = _attack_variants(cfg, bpda, eot, attack, source)
    notes: list[str] = []
    source_cfg = _source_config(source, cfg, run_dir, notes) if source is not None else None
    wpath = run_weights(run_dir, weights)
    settings = {"attack": attack, "steps": steps, "preset": preset, "num_images": max_queries,
                "seed": int(seed), "batch_size": int(batch_size), "k": cfg.k,
                "weights": weights if weights in ("best", "last") else str(wpath),
                "attack_kwargs": attack_kwargs or {}}
    if t_attack is not None:  # only when given, so reports of other runs keep their keys
        settings["t_attack"] = int(t_attack)
    if norm != "linf":  # likewise: L∞ reports keep the keys they had before --norm existed
        settings["norm"] = norm
    if eot_reduce != "normalized":
        settings["eot_reduce"] = eot_reduce
    if source is not None:
        settings["source"] = str(Path(source).resolve())
    key = settings_key(settings)
    dest = output_dir(run_dir, out_dir, notes)
    json_path, png_path = report_paths(dest, attack, key)
    previous = _previous_report(json_path, wpath, overwrite)
    t0 = time.perf_counter()
    same_grads = not (has_feedback_path(cfg.rule) or has_own_gradient(cfg.backbone))
    if source_cfg is not None:
        same_grads = not (has_feedback_path(source_cfg.rule)
                          or has_own_gradient(source_cfg.backbone))
    effective = [NO_GRAD] if attack in GRADIENT_FREE else [
        variant_name(g, *v) for g in (list(dict.fromkeys(grads))[:1] if same_grads else
                                      list(dict.fromkeys(grads))) for v in variants]
    options = "".join(f" --{k} {v}" for k, v in (("num-images", max_queries), ("seed", seed),
                                                 ("norm", None if norm == "linf" else norm))
                      if v)
    if previous is not None and not missing_cells(previous, effective, eps):
        if task == "classify":  # the run may have gained reports to cross-check since
            previous.pop("square_check", None)
            previous.pop("gradient_checks", None)
            stale = set(previous.pop("cross_check_notes", []))
            previous["notes"] = [n for n in previous.get("notes", []) if n not in stale]
            check, check_notes = cross_check(previous, run_dir, dest, previous.get(
                "weights") or {}, json_path, same_grads=same_grads, options=options)
            previous.update(check, cross_check_notes=check_notes)
            previous["notes"] += check_notes
            try:
                atomic_write_json(json_path, previous)
            except OSError as e:
                previous["notes"].append(f"{json_path} not updated: {e}")
        previous["notes"] = [*previous.get("notes", []),
                             f"every requested cell was already computed with these settings "
                             f"and weights: read from {json_path} (--overwrite recomputes)"]
        previous["path"] = str(json_path)
        return previous

    dev = resolve_device(device)
    run = open_run(run_dir, weights=str(wpath), device=dev, skip_bad=skip_bad)
    model, splits, used = run.model, run.splits, run.weights
    dynamics = set_attack_steps(model, t_attack)
    source_model, source_info = None, None
    if source is not None:
        src = open_run(source, device=dev, load_data=False)
        source_model, source_info = src.model, {"run": str(source), "weights": src.weights}
        set_attack_steps(source_model, t_attack)
    queries = subsample(splits.query, max_queries, seed)
    if attack in ("apgd-t", "auto") and len(queries) and queries[0][1].shape[-1] < 4:
        raise ConfigError(f"{attack} runs APGD-T, whose targeted DLR loss needs at least 4 "
                          f"classes; {run_dir} has {queries[0][1].shape[-1]}: use apgd (CE or "
                          f"DLR) or pgd")
    provenance = {
        "rule": cfg.rule, "seed": int(seed), "dataset": cfg.dataset, "backbone": cfg.backbone,
        "bits": cfg.bits if task == "hash" else None, "run": str(run_dir), "device": str(dev),
        "settings": settings, "key": key, "weights": used, "path": str(json_path),
        **dynamics,
    }
    if source_info is not None:
        provenance["source"] = source_info
    persist, write_errors = _report_writer(json_path, provenance, notes, t0)

    common = dict(grads=grads, same_grads=same_grads, steps=steps, batch_size=batch_size,
                  device=dev, seed=seed, attack_kwargs=attack_kwargs, progress=progress,
                  previous=previous, on_update=persist, rule=cfg.rule, variants=variants,
                  source_model=source_model)
    if eot_reduce != "normalized":
        common["attack_kwargs"] = {**(attack_kwargs or {}), "eot_reduce": eot_reduce}
    if task == "hash":
        report = sweep_hash(model, attack, eps, queries=queries, database=splits.database,
                            train=splits.train, k=retrieval_k(cfg, splits), preset=preset,
                            **common)
    else:
        report = sweep_classify(model, attack, eps, queries=queries, preset=preset, norm=norm,
                                **common)
        if source is None:
            check, check_notes = cross_check(report, run_dir, dest, used, json_path,
                                             same_grads=same_grads, options=options)
            report.update(check, cross_check_notes=check_notes)
            report["notes"] += check_notes
    persist(report)
    report["notes"] += write_errors
    if write_errors:
        report["path"] = None
    if plot:
        try:
            attack_plot(png_path, report)
        except OSError as e:
            report["notes"].append(f"{png_path} not written: {e}")
    return report


def _source_config(source: str | Path, cfg: RunConfig, run_dir: Path, notes: list[str]
                   ) -> RunConfig:
    """The config of a transfer attack's source run, checked against the attacked run's."""
    source_cfg = load_run_config(source)
    if (source_cfg.task, source_cfg.image_size) != (cfg.task, cfg.image_size):
        raise ConfigError(
            f"--source {source} is a {source_cfg.task} run at {source_cfg.image_size} px, "
            f"{run_dir} a {cfg.task} run at {cfg.image_size} px: a transfer attack needs the "
            f"same task and image size")
    if source_cfg.dataset != cfg.dataset:
        notes.append(f"source run {source} was trained on {source_cfg.dataset}, this run on "
                     f"{cfg.dataset}")
    return source_cfg


def _attack_variants(cfg: RunConfig, bpda: Sequence[str] | None, eot: Sequence[int] | None,
                     attack: str, source: str | Path | None) -> list[tuple[str | None, int]]:
    """The (BPDA, EOT) columns of an attack on a run of ``cfg`` (see :func:`attack_run`),
    checked before anything is loaded; the default comes from the attacked model's front
    end (built without weights, it says which ops it has)."""
    from .models.frontends import BPDA_PRESETS, create_frontend

    if attack in GRADIENT_FREE:
        if (bpda and list(bpda) != ["none"]) or (eot and list(eot) != [1]):
            raise ConfigError(f"{attack} is gradient-free: --bpda and --eot do not apply")
        return [(None, 1)]
    for b in bpda or ():
        if b not in BPDA_PRESETS:
            raise ConfigError(f"--bpda {b!r}: choose from {', '.join(BPDA_PRESETS)}")
    for n in eot or ():
        if n < 1:
            raise ConfigError(f"--eot must be >= 1 gradient samples, got {n}")
    if bpda is None and eot is None:
        attacked = load_run_config(source) if source is not None else cfg
        if attacked.frontend == "none":
            return [(None, 1)]
        return default_variants(create_frontend(attacked.frontend,
                                                **attacked.frontend_options))
    return [(None if b == "none" else b, int(n)) for b in (bpda or ["none"])
            for n in (eot or [1])]


def t_attack_sweep(
    run_dir: str | Path, attack: str, t_attack: Sequence[int], eps: Sequence[float] | None = None,
    *, plot: bool = True, out_dir: str | Path | None = None, **options: Any,
) -> dict[str, Any]:
    """Attack an energy-based run once per unroll length in ``t_attack`` (seed 002 Fig. 4b:
    short unrolls under-attack; the strength saturates once the unroll reaches the
    relaxation time) and plot robust accuracy against ``t_attack``, one line per (gradient
    source, ε).

    Each length is an ordinary :func:`attack_run` report (reused and continued like any
    other); the sweep writes ``tsweep-<name>-<key>.json`` (``key``: the digest of
    the shared settings and the lengths) and its ``.png``.

    Args:
        t_attack: unroll lengths (steps >= 1).
        options: the other :func:`attack_run` arguments (``grads``, ``steps``, ...).

    Returns:
        ``{"attack", "t_attack", "eps", "grad", "accuracy": {grad: {ε: [acc per t]}},
        "t_eval", "reports": [paths], "path"}``.
    """
    lengths = [int(t) for t in dict.fromkeys(t_attack)]
    if not lengths:
        raise ConfigError("--t-attack is empty; give the unroll lengths, e.g. 2,10,30,70")
    if attack_task(attack) != "classify" or attack in GRADIENT_FREE:
        raise ConfigError(f"a --t-attack sweep needs a gradient attack on a classifier "
                          f"({' | '.join(a for a in CLASSIFY_ATTACKS if a not in GRADIENT_FREE)}"
                          f"), not {attack!r}")
    reports = [attack_run(run_dir, attack, eps, t_attack=t, plot=plot, out_dir=out_dir,
                          **options) for t in lengths]
    first = reports[0]
    grads, eps_ = first["grad"], first["eps"]
    acc = {g: {f"{e:g}": [r["accuracy"][g][r["eps"].index(e)] for r in reports]
               for e in eps_} for g in grads}
    shared = {k: v for k, v in first["settings"].items() if k != "t_attack"}
    key = settings_key({**shared, "t_attack": lengths})
    dest = Path(first["path"]).parent if first.get("path") else Path(run_dir)
    # not attack-*.json: a sweep summary is not an attack report (compare/report read those)
    json_path, png_path = dest / f"tsweep-{attack}-{key}.json", dest / f"tsweep-{attack}-{key}.png"
    sweep = {"attack": attack, "t_attack": lengths, "t_eval": first.get("t_eval"),
             "eps": eps_, "grad": grads, "accuracy": acc, "clean_accuracy":
             first.get("clean_accuracy"), "rule": first.get("rule"),
             "reports": [r.get("path") for r in reports], "path": str(json_path), "notes": []}
    try:
        atomic_write_json(json_path, sweep)
    except OSError as e:
        sweep["notes"].append(f"{json_path} not written: {e}")
        sweep["path"] = None
    if plot:
        series = {f"ε={e} ({g})": (lengths, acc[g][e]) for g in grads for e in acc[g]}
        styles = {f"ε={e} ({g})": {"linestyle": "-" if g == "exact" else "--", "marker": "o"}
                  for g in grads for e in acc[g]}
        try:
            line_plot(png_path, series, "t_attack (relaxation steps differentiated)",
                      "robust accuracy", f"{attack.upper()} vs unroll length on "
                      f"{first.get('rule')} (scored at t_eval={first.get('t_eval')})",
                      logx=True, styles=styles, xticks=lengths, ylim=(-0.02, 1.02))
        except OSError as e:
            sweep["notes"].append(f"{png_path} not written: {e}")
    return sweep


def _previous_report(json_path: Path, weights: Path, overwrite: bool) -> dict[str, Any] | None:
    """The report already at ``json_path`` whose cells a re-run keeps (``None`` with
    ``overwrite`` or when there is none).

    Raises:
        ConfigError: it was computed from other weights than ``weights`` holds now (the
            file is digested here; ``open_run`` digests it again when it loads it).
    """
    previous = None if overwrite else (read_json(json_path) or None)
    if previous is not None:
        before = previous.get("weights") or {}
        if before.get("sha256") not in (None, file_digest(weights)):
            raise ConfigError(
                f"{json_path} was computed from other weights ({before.get('file')}, epoch "
                f"{before.get('epoch')}) than {weights} holds now; pass --overwrite to "
                f"recompute it")
    return previous


def _report_writer(
    json_path: Path, provenance: dict[str, Any], notes: list[str], t0: float,
) -> tuple[Any, list[str]]:
    """``(persist, errors)``: ``persist(report)`` adds the provenance, the elapsed time and
    ``notes`` to a growing report and writes it atomically to ``json_path``; a write that
    fails is recorded once in ``errors`` (the caller carries on: the results are returned
    and shown) instead of stopping the computation."""
    errors: list[str] = []

    def persist(report: dict[str, Any]) -> None:
        report.update(provenance, time_s=round(time.perf_counter() - t0, 2))
        report["notes"] = list(dict.fromkeys(notes + report["notes"]))
        try:
            atomic_write_json(json_path, report)
        except OSError as e:
            if not errors:
                errors.append(f"{json_path} could not be written ({e}); the results are "
                              f"only shown")
                log.warning(errors[0])

    return persist, errors


def cross_check(
    report: dict[str, Any], run_dir: Path, dest: Path, weights: dict[str, Any],
    json_path: Path, *, same_grads: bool = False, options: str = "",
) -> tuple[dict[str, Any], list[str]]:
    """Compare a classification report with the run's reports of the other kind of attack
    made from the same weights (same ``sha256``) under the same norm (an L2 and an L∞ ε are
    different budgets): Square for the gradient attacks FGSM/PGD/APGD/APGD-T
    (:data:`~retrieval_bio.eval.robustness.GRADIENT_CHECKED`), those for Square.

    ``auto`` reports are neither: the ensemble runs Square itself (on what APGD left), so a
    Square report could never be stronger than it by more than chance, and comparing the two
    would only compare query budgets; the same check lives inside the auto report (its
    ``breakdown``: images only Square broke). An auto report gets no cross-check and is
    not used by others.

    Reports are looked for in ``run_dir``, its fallback folder and ``dest``; of several of one
    attack, the one sharing the most ε with ``report`` (then: attacking as many queries) is
    used. Square doing better than a gradient attack by more than
    :data:`~retrieval_bio.eval.robustness.SQUARE_MARGIN` at an ε is gradient masking
    (:func:`~retrieval_bio.eval.robustness.square_check`).

    Args:
        report: the classification report just computed (``attack``, ``eps``, ``grad``,
            ``accuracy``).
        weights: the weights it was computed from (``{"file", "epoch", "sha256"}``).
        json_path: its own file (skipped).
        same_grads: the run's exact and model gradients are the same computation (no
            feedback path): warnings name only the gradient report's first column.
        options: extra CLI options for the suggested Square command (e.g. the same
            ``--num-images``/``--seed``, so that both attack the same queries).

    Returns:
        ``(keys, notes)``: ``keys`` to merge into the report, ``{"square_check": {...}}`` for
        FGSM/PGD, ``{"gradient_checks": [{..., "attack"}, ...]}`` for Square (nothing when no
        report shares an ε), and plain-sentence notes.
    """
    from .eval.compare import load_reports

    gradient_free = report["attack"] in GRADIENT_FREE
    if not gradient_free and report["attack"] not in GRADIENT_CHECKED:
        return {}, []
    wanted = GRADIENT_CHECKED if gradient_free else ("square",)
    norm = report.get("norm", "linf")  # reports from before the norm key are L∞
    digest = weights.get("sha256")
    found: dict[str, tuple[tuple[int, bool], dict[str, Any]]] = {}
    folders = [run_dir] if dest.resolve() == run_dir.resolve() else [run_dir, dest]
    eps = {float(e) for e in report["eps"]}
    for folder in folders:
        for other in load_reports(folder):
            same_file = Path(other["path"]).resolve() == json_path.resolve()
            if (other.get("attack") not in wanted or other.get("task") != "classify"
                    or same_file or not digest or other.get("norm", "linf") != norm
                    or (other.get("weights") or {}).get("sha256") != digest):
                continue
            rank = (len(eps & {float(e) for e in other.get("eps", [])}),
                    other.get("num_queries") == report.get("num_queries"))
            if other["attack"] not in found or rank > found[other["attack"]][0]:
                found[other["attack"]] = (rank, other)
    notes: list[str] = []
    if not found:
        if gradient_free:
            return {}, []
        grid = ",".join(f"{e:g}" for e in report["eps"])
        return {}, [f"no Square (gradient-free) report for this run: run `retrieval-bio "
                    f"attack square {run_dir} --eps {grid}{options}` to check for gradient "
                    f"masking"]
    checks = []
    for name in sorted(found):
        other = found[name][1]
        square, gradient = (report, other) if gradient_free else (other, report)
        check, more = square_check(square, gradient,
                                   sources=gradient["grad"][:1] if same_grads else None)
        if check is None:
            notes.append(f"{other['path']} ({name}) shares no ε with this report: attack "
                         f"both at the same --eps to compare a gradient attack with Square")
            continue
        check["report"] = other["path"]
        if other.get("num_queries") != report.get("num_queries"):
            notes.append(f"{other['path']} ({name}) attacked {other.get('num_queries')} "
                         f"queries, this report {report.get('num_queries')}: the Square "
                         f"comparison is across different query sets")
        notes += more
        checks.append({**check, "attack": name} if gradient_free else check)
    if not checks:
        return {}, notes
    return ({"gradient_checks": checks} if gradient_free else {"square_check": checks[0]}), notes


# -- natural corruptions --------------------------------------------------------------------


def corrupt_run(
    run_dir: str | Path, *, root: str | Path | None = None,
    corruptions: Sequence[str] | None = None, severities: Sequence[int] = (1, 2, 3, 4, 5),
    seed: int = 0, max_images: int | None = None, batch_size: int = DEFAULT_BATCH,
    device: str = "auto", weights: str = "best", overwrite: bool = False,
    out_dir: str | Path | None = None, progress: Progress | None = None,
) -> dict[str, Any]:
    """Accuracy of a classification run under natural corruptions (seed 002 §5.1); writes
    ``corruption-<key>.json`` after every (corruption, severity) cell and the heat map
    ``corruption-<key>.png`` at the end.

    Works for every classification run of every learner (the model maps images in [0, 1] to
    logits). With ``root``: the official CIFAR-10-C / CIFAR-100-C arrays in that folder
    (:class:`~retrieval_bio.datasets.corruptions.CifarC`; every corruption found, or
    ``corruptions``), resized to the run's ``image_size`` through its evaluation transform
    when that is not 32 (noted); the clean accuracy is the run's query split's (the same
    seeded subset), or null when its dataset cannot be loaded. Without ``root``: the run's
    query split corrupted in-process (CIFAR-C's constants; not ``motion_blur``, ``snow``,
    ``frost``, ``spatter``).

    Args:
        run_dir: a finished classification run folder (``config.yaml`` + ``best.pt``).
        root: folder of the official arrays (``<name>.npy`` + ``labels.npy``).
        corruptions: names (default: all available).
        severities: subset of 1..5.
        seed: seed of the generated noise and of the ``max_images`` subset.
        max_images: evaluate a seeded subset of this many images per cell (of the 10,000
            per severity, or of the query split).
        batch_size: evaluation batch size (the numbers do not depend on it).
        device: ``"auto"`` | ``"cpu"`` | ``"cuda[:N]"`` | ``"mps"``.
        weights: ``"best"`` (default) | ``"last"`` | a checkpoint file.
        overwrite: recompute every requested cell even if a report of the same settings
            holds it (a report made from other weights is an error without this).
        out_dir: folder for the report (default ``run_dir``; unwritable: a temp folder,
            noted in the report).

    Returns:
        The report (schema: :mod:`retrieval_bio.eval.corruption`), as written to
        ``report["path"]``; ``report["plot"]`` is the PNG (or null if it was not written).

    Raises:
        ConfigError: a bad option, a hashing run, labels that do not fit the model, or a
            report of these settings computed from other weights (without ``overwrite``).
        DatasetError: a missing or malformed CIFAR-C folder (the file and the fix named).
        RunFolderError: missing or damaged run files.
    """
    from .datasets import DatasetError
    from .datasets.corruptions import (
        CIFAR_C_SIZE,
        CORRUPTIONS,
        CifarC,
        check_generated,
        corruption_order,
    )
    from .eval.corruption import check_severities, corruption_sweep, summarise
    from .eval.plots import corruption_plot
    from .eval.robustness import settings_key as digest

    run_dir = Path(run_dir)
    try:
        sev = check_severities(severities)
    except ValueError as e:
        raise ConfigError(f"--severities: {e}") from None
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if max_images is not None and max_images < 1:
        raise ConfigError(f"--num-images must be >= 1, got {max_images}")
    if corruptions is not None:
        corruptions = list(dict.fromkeys(corruptions))
        if not corruptions:
            raise ConfigError("--corruptions is empty; give names, e.g. --corruptions "
                              "gaussian_noise,fog, or leave it out for all")
        if root is None:
            for name in corruptions:
                try:
                    check_generated(name)
                except KeyError as e:
                    raise ConfigError(f"--corruptions: {e.args[0]}") from None
    cfg = load_run_config(run_dir)
    if cfg.task != "classify":
        raise ConfigError(
            f"{run_dir} is a {cfg.task} run: corruption accuracy needs a classification run "
            f"(trained with --task classify, e.g. 'retrieval-bio finetune --task classify'); "
            f"for a hashing run use 'retrieval-bio attack hag|sdha'")
    folder = None
    if root is not None:  # the folder is checked before anything heavy is loaded
        folder = CifarC(root, corruptions, image_size=cfg.image_size, max_images=max_images,
                        seed=seed)
    wpath = run_weights(run_dir, weights)
    settings = {"source": "official" if folder else "generated",
                "root": str(Path(root).resolve()) if root is not None else None,
                "num_images": max_images, "seed": int(seed),
                "weights": weights if weights in ("best", "last") else str(wpath)}
    key = digest(settings)
    notes: list[str] = []
    dest = output_dir(run_dir, out_dir, notes)
    json_path, png_path = dest / f"corruption-{key}.json", dest / f"corruption-{key}.png"
    previous = _previous_report(json_path, wpath, overwrite)
    names = corruption_order(corruptions if corruptions is not None else
                             folder.corruptions if folder is not None else CORRUPTIONS.names())
    t0 = time.perf_counter()

    def finish(report: dict[str, Any]) -> dict[str, Any]:
        try:
            corruption_plot(png_path, report)
            report["plot"] = str(png_path)
        except OSError as e:
            report["notes"].append(f"{png_path} not written: {e}")
            report["plot"] = None
        return report

    if previous is not None and not _missing_corruption_cells(previous, names, sev):
        summarise(previous)
        previous["notes"] = [*previous.get("notes", []),
                             f"every requested cell was already computed with these settings "
                             f"and weights: read from {json_path} (--overwrite recomputes)"]
        previous["path"] = str(json_path)
        return finish(previous) if not png_path.is_file() else {**previous,
                                                                 "plot": str(png_path)}

    dev = resolve_device(device)
    clean = None
    if folder is None:
        run = open_run(run_dir, weights=str(wpath), device=dev)
        assert run.splits is not None
        data: Any = subsample(run.splits.query, max_images, seed)
        clean_images = f"the run's query split ({len(data)} images)"
        if cfg.image_size != CIFAR_C_SIZE:
            notes.append(f"CIFAR-C's constants are for 32-px images; this run's are "
                         f"{cfg.image_size} px, so the blurs, zooms and pixelation (in pixels) "
                         f"act relatively {'more' if cfg.image_size < 32 else 'less'} "
                         f"strongly than on CIFAR")
    else:
        try:
            run = open_run(run_dir, weights=str(wpath), device=dev)
            assert run.splits is not None
            clean = subsample(run.splits.query, max_images, seed)
            clean_images = f"the run's query split ({len(clean)} images)"
        except DatasetError as e:
            run = open_run(run_dir, weights=str(wpath), device=dev, load_data=False)
            clean_images = None
            notes.append(f"clean accuracy not measured: the run's dataset cannot be loaded "
                         f"({str(e).splitlines()[0]})")
        width = _num_logits(run.model, cfg.image_size, dev)
        top = int(folder.labels.max())
        if top >= width:
            raise ConfigError(
                f"{folder.root / 'labels.npy'} holds class ids up to {top} but the model of "
                f"{run_dir} has {width} outputs: CIFAR-100-C arrays for a 10-class run? Point "
                f"--root at the CIFAR-C folder of the run's dataset")
        folder.num_classes = width
        if width > 10 and top < 10:
            notes.append(f"the arrays hold 10 classes but the model has {width} outputs: "
                         f"CIFAR-10-C arrays for a CIFAR-100 run?")
        if cfg.dataset not in ("cifar10", "cifar100"):
            notes.append(f"the run was trained on {cfg.dataset}; the arrays' labels are "
                         f"CIFAR classes, so the accuracy means something only if the run's "
                         f"class ids are CIFAR's")
        if cfg.image_size != CIFAR_C_SIZE:
            notes.append(f"the 32-px CIFAR-C images were resized to the run's {cfg.image_size}"
                         f" px with its evaluation transform")
        data = folder
    provenance = {
        "rule": cfg.rule, "dataset": cfg.dataset,
        "backbone": cfg.backbone, "image_size": cfg.image_size, "run": str(run_dir),
        "device": str(dev), "settings": settings, "key": key, "weights": run.weights,
        "path": str(json_path), "root": settings["root"],
        "resized_from": CIFAR_C_SIZE if folder is not None and cfg.image_size != CIFAR_C_SIZE
        else None, "clean_images": clean_images,
    }
    persist, write_errors = _report_writer(json_path, provenance, notes, t0)

    report = corruption_sweep(run.model, data, names, sev, seed=seed, batch_size=batch_size,
                              device=dev, progress=progress, previous=previous,
                              on_update=persist, clean=clean)
    persist(report)
    report["notes"] += write_errors
    if write_errors:
        report["path"] = None
    return finish(report)


def _missing_corruption_cells(
    report: dict[str, Any], names: Sequence[str], severities: Sequence[int]
) -> list[tuple[str, int]]:
    """The (corruption, severity) cells of ``names`` x ``severities`` a report lacks."""
    have = [int(s) for s in report.get("severities", [])]
    table = report.get("accuracy") or {}
    return [(c, s) for c in names for s in severities
            if s not in have or (table.get(c) or [None] * len(have))[have.index(s)] is None]


def _num_logits(model: torch.nn.Module, image_size: int, device: torch.device) -> int:
    """C, the width of the model's output: its linear head's, or one forward pass's."""
    head = getattr(model, "head", None)
    if isinstance(head, torch.nn.Linear):
        return int(head.out_features)
    from .attacks.base import eval_mode

    with torch.no_grad(), eval_mode(model):
        return int(model(torch.zeros(1, 3, image_size, image_size, device=device)).shape[1])
