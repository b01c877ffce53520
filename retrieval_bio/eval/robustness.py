"""Robustness sweeps: attack a trained model at several ε with each gradient source and
report what happens to retrieval (mAP@k) or classification (accuracy). SPEC §7, §8; seed 001
§6.2.

Two levels:

* :func:`sweep_hash` / :func:`sweep_classify` take a model and datasets (no run folder);
* :func:`retrieval_bio.workflows.attack_run` loads a run folder, sweeps, and writes
  ``attack-<name>-<key>.json`` and its ``.png`` into it (``key``: :func:`settings_key`).

Report schema (``attack-<name>-<key>.json``; lists are indexed like ``eps``)::

    attack       "hag" | "sdha" | "fgsm" | "pgd" | "square" | "apgd" | "apgd-t" | "auto"
    task         "hash" | "classify"
    metric       "map" (hash) | "accuracy" (classify): the key holding the per-ε values
    grad         the columns: gradient sources evaluated, e.g. ["exact", "model"]; ["none"]
                 for Square (gradient-free: it never calls a backward pass); one per
                 computation. On a model with non-differentiable ops a column also names its
                 BPDA setting and EOT samples (:func:`variant_name`), e.g. ["exact",
                 "exact+bpda-identity", "exact+bpda-smooth"]: "exact" alone is then the
                 obfuscated number (a quantiser's true gradient is zero)
    same_computation  {source: the source in ``grad`` it is the same computation as}, e.g.
                 {"model": "exact"} for a model without a feedback path
    norm         "linf" | "l2": the threat model of ``eps`` (hashing attacks: "linf" only)
    eps          [ε_0, ε_1, ...], budgets in [0, 1] pixel units in ``norm`` (L2: over the
                 C·H·W entries of an image)
    map          hash only: {grad: [mAP@k at ε_i]}, adversarial queries vs the CLEAN database
    clean_map    hash only: mAP@k of the clean queries vs the clean database
    theory_map   hash only: mAP@k with −sign(h) as query code (the strongest untargeted code)
    k            hash only: the mAP cut-off (<= 0: whole database)
    accuracy     classify only: {grad: [robust accuracy at ε_i]} in [0, 1]
    clean_accuracy  classify only
    linf, l2     {grad: [mean over queries of ‖x' − x‖_∞ / ‖x' − x‖_2 at ε_i]} (pixels in [0, 1])
    grad_calls   {grad: [input-gradient evaluations made at ε_i, all queries]}
    steps        iterations per attack (FGSM: 1; Square: its query budget per image; APGD,
                 APGD-T and auto: APGD iterations per run)
    queries_per_image  auto only: its Square part's query budget per image
    breakdown    auto only: {grad: [{"clean_errors", "apgd-ce", "apgd-t", "square",
                 "robust"} at ε_i]}: images misclassified clean, newly broken by each part in
                 turn (APGD-CE, then APGD-T on what it left, then Square), and left robust;
                 they sum to ``num_queries`` and "robust" / num_queries is the accuracy
    preset       the preset used: hashing ("paper" | "reference"), PGD ("paper" | "pepita"),
                 or null
    rule, seed, dataset, backbone, bits, run   provenance; seed is the attack's seed
    source       transfer attacks only: {run, weights} of the model the adversarial images
                 were made on (the report's model only scores them)
    num_queries  queries attacked (after ``max_queries`` subsampling)
    notes        human-readable remarks (e.g. why a gradient source was computed once, and
                 the gradient-masking warnings below)
    masking      classify only: gradient-masking checks (:func:`masking_block`), derived from
                 the final table (so a resumed sweep gives the block an uninterrupted one does)::

                     chance            1/C, C the number of classes
                     max_eps           the largest ε of the report
                     at_max_eps        {grad: accuracy at max_eps}
                     full_eps          the budget whose ball holds every image (any image
                                       is within reach): 1 for L∞, sqrt(C·H·W) for L2
                     falls_to_chance   true when accuracy at max_eps (>= full_eps) is <= 1.5 x
                                       chance for every source; null when max_eps < full_eps
                                       or that cell is missing
                     zero_grad_fraction  {grad: fraction of the input-gradient entries (CE
                                       loss on logits w.r.t. the clean query images, through
                                       the source) that are exactly 0.0}; Square: "exact" only
                     zero_grad_images  {grad: fraction of queries whose whole input gradient
                                       is exactly zero}
    square_check FGSM/PGD/APGD/APGD-T run-folder reports with a Square report of the same
                 weights and norm: {report, eps, square: [accuracy], gradient: {grad:
                 [accuracy]}} at the ε both hold (``workflows.attack_run``); Square reports
                 hold ``gradient_checks``, a list of such dicts (with ``attack``), one per
                 gradient-attack report. Auto reports take part in neither (they contain
                 Square); their breakdown gives the same check inside one report
    complete     whether every (source, ε) cell holds a value; an interrupted sweep leaves
                 ``null`` cells, which a re-run with the same settings fills in
    settings, key, weights, path   (run-folder reports, see ``workflows.attack_run``) the
                 options that identify the report, their digest, the weights file used
                 ({file, epoch, sha256}) and where the report was written

Values of cells not (yet) computed are ``null``.

For a model without a feedback path (BP, or a rule such as PEPITA that trains a plain
module: :func:`retrieval_bio.rules.has_feedback_path`) ``grad="exact"`` and ``grad="model"``
are the same computation, so the sweep attacks once with the first requested source and
reports that one column; ``same_computation`` and a note name the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from ..index.codes import sign_codes
from ..progress import Progress, ensure
from .encode import accuracy, encode
from .metrics import map_at_k

log = logging.getLogger(__name__)

HASH_ATTACKS = ("hag", "sdha")
CLASSIFY_ATTACKS = ("fgsm", "pgd", "square", "apgd", "apgd-t", "auto")
GRADIENT_FREE = ("square",)
#: gradient attacks whose reports are compared with Square reports (gradient masking);
#: ``auto`` is not one: it runs Square itself (its ``breakdown`` holds that comparison).
GRADIENT_CHECKED = ("fgsm", "pgd", "apgd", "apgd-t")
#: attacks whose ``--steps`` is an APGD iteration count (``n_iter``).
APGD_ATTACKS = ("apgd", "apgd-t", "auto")
NO_GRAD = "none"  # the single "gradient source" entry of a gradient-free attack

#: seed 001's ε sweep for hashing attacks (SPEC §7, preset ``paper``).
PAPER_HASH_EPS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5)
#: seed 001's ε sweep for classifier attacks (SPEC §8).
CLASSIFY_EPS = (0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5)
#: the ε sweep of PGD's ``pepita`` preset (seed 000 §3.1 attacks at 0.3; 1.0 lets the
#: masking check tell whether accuracy falls to chance).
PEPITA_EPS = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)
#: seed 002's L2 grid (its ART PGD-L2 runs, ep.md §2.2): 0, then logspace(0.05, 3, 10) ∪ {1}
#: (10 geometric steps from 0.05 to 3 plus 1.0), in [0, 1] pixels over C·H·W entries. Its
#: tables' rounded labels are these points: "0.07" = 0.0788, "0.31" = 0.3085, "0.49" = 0.4862.
L2_EPS = (0.0, *sorted({*(0.05 * (3 / 0.05) ** (i / 9) for i in range(10)), 1.0}))
#: PGD presets (``retrieval_bio.attacks.pgd.PRESETS``) the sweeps and the CLI accept.
PGD_PRESETS = ("paper", "pepita", "ep")
#: the L∞ ε sweep of PGD's ``ep`` preset: seed 002's table budgets as its code ran them
#: ("1, 3, 5, 8/255" are the grid points 0.00464, 0.01, 0.02154, 0.03137; ep.md §2.2), then
#: 0.1 and 1.0 for the masking check.
EP_EPS = (0.0, 0.00464, 0.01, 0.02154, 0.03137, 0.1, 1.0)
#: accuracy at ε >= full_eps (:func:`full_eps`) at most this times chance counts as "falls
#: to chance".
CHANCE_FACTOR = 1.5
#: warn when more than this fraction of the input-gradient entries is exactly zero.
ZERO_GRAD_WARN = 0.01
#: a Square accuracy lower than a gradient attack's by more than this flags masking.
SQUARE_MARGIN = 0.02
REFERENCE_EPS = 8 / 255
DEFAULT_BATCH = 128
#: EOT samples per step of the EOT column a random model's report adds by default
DEFAULT_EOT = 10
#: the scoring forwards of a random model draw from this seed offset (not the attack's own
#: draws, which an attacker would not know)
SCORING_SEED_OFFSET = 1_000_003


def attack_task(attack: str) -> str:
    """``"hash"`` for HAG/SDHA, ``"classify"`` for FGSM/PGD/Square/APGD/APGD-T/auto."""
    if attack in HASH_ATTACKS:
        return "hash"
    if attack in CLASSIFY_ATTACKS:
        return "classify"
    raise ValueError(f"unknown attack {attack!r}; choose one of "
                     f"{', '.join(HASH_ATTACKS + CLASSIFY_ATTACKS)}")


def default_eps(attack: str, preset: str | None = None, norm: str = "linf") -> list[float]:
    """The ε list used when none is given: SPEC §7's paper sweep for hashing (8/255 for
    the ``reference`` preset), SPEC §8's list (with 0) for classifiers, :data:`PEPITA_EPS`
    (up to 1.0) for PGD's ``pepita`` preset, :data:`EP_EPS` for its ``ep`` preset, and seed
    002's L2 grid :data:`L2_EPS` for any
    classifier attack with ``norm="l2"``."""
    if norm == "l2":
        return list(L2_EPS)
    if attack_task(attack) == "classify":
        if attack == "pgd" and preset in ("pepita", "ep"):
            return list(PEPITA_EPS if preset == "pepita" else EP_EPS)
        return list(CLASSIFY_EPS)
    return [REFERENCE_EPS] if preset == "reference" else list(PAPER_HASH_EPS)


def full_eps(norm: str, image_shape: Sequence[int]) -> float:
    """The smallest budget whose ball around any image holds every image of that shape in
    [0, 1]: 1 for L∞; for L2 the cube's diagonal sqrt(C·H·W) (two images differ by at most 1
    in each of the C·H·W entries), e.g. 13.86 for 3×8×8 and 55.43 for 3×32×32. An attack
    with that budget can reach any image, so a working one drives accuracy to chance.

    Args:
        norm: ``"linf"`` or ``"l2"``.
        image_shape: ``(C, H, W)`` of one image.
    """
    if norm == "linf":
        return 1.0
    if norm == "l2":
        return math.sqrt(math.prod(int(d) for d in image_shape))
    raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")


def eps_label(norm: str | None) -> str:
    """``"ε (L∞)"`` / ``"ε (L2)"``: how tables and plots name a report's budget axis
    (reports from before the ``norm`` key are L∞)."""
    return f"ε ({'L2' if norm == 'l2' else 'L∞'})"


def variant_name(grad: str, bpda: str | None = None, eot: int = 1) -> str:
    """A report column: the gradient source, then the BPDA setting and EOT samples when
    used, e.g. ``"exact"``, ``"exact+bpda-identity"``, ``"exact+bpda-smooth+eot-10"``."""
    name = grad
    if bpda not in (None, "none"):
        name += f"+bpda-{bpda}"
    if eot > 1:
        name += f"+eot-{eot}"
    return name


def parse_variant(name: str) -> tuple[str, str | None, int]:
    """``(grad, bpda, eot)`` of a column named by :func:`variant_name`."""
    grad, *parts = name.split("+")
    bpda, eot = None, 1
    for part in parts:
        kind, _, value = part.partition("-")
        if kind == "bpda" and value:
            bpda = value
        elif kind == "eot" and value.isdigit() and int(value) >= 1:
            eot = int(value)
        else:
            raise ValueError(f"column {name!r}: {part!r} is neither bpda-NAME nor eot-N")
    return grad, bpda, eot


def default_variants(model: nn.Module) -> list[tuple[str | None, int]]:
    """The (BPDA, EOT) columns an honest report of ``model`` needs: for a model with
    non-differentiable ops (a quantising front end), the plain gradient (the obfuscated
    number), BPDA identity and BPDA smooth; for a random one also BPDA smooth with
    :data:`DEFAULT_EOT` EOT samples; otherwise the plain gradient alone."""
    from ..models.frontends import has_bpda_ops, is_stochastic

    if not has_bpda_ops(model):
        return [(None, 1)]
    out: list[tuple[str | None, int]] = [(None, 1), ("identity", 1), ("smooth", 1)]
    if is_stochastic(model):
        out.append(("smooth", DEFAULT_EOT))
    return out


def report_paths(run_dir: str | Path, attack: str, key: str | None = None) -> tuple[Path, Path]:
    """``(run_dir/attack-<name>[-<key>].json, ….png)``: where a report of these settings
    (``key``, see :func:`settings_key`) lives."""
    run_dir = Path(run_dir)
    stem = f"attack-{attack}" if key is None else f"attack-{attack}-{key}"
    return run_dir / f"{stem}.json", run_dir / f"{stem}.png"


def settings_key(settings: dict[str, Any]) -> str:
    """A short digest of the options that make two attack runs comparable (ε and gradient
    sources excluded: those are the cells of one report)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


# -- sweeps over a model ------------------------------------------------------------------


def sweep_hash(
    model: nn.Module, attack: str, eps: Sequence[float], *, queries: Dataset,
    database: Dataset, k: int, train: Dataset | None = None, grads: Sequence[str] = ("exact",
    "model"), same_grads: bool = False, steps: int | None = None, preset: str | None = None,
    batch_size: int = DEFAULT_BATCH, device: torch.device | str = "cpu", seed: int = 0,
    attack_kwargs: dict[str, Any] | None = None, progress: Progress | None = None,
    previous: dict[str, Any] | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None, rule: str | None = None,
    variants: Sequence[tuple[str | None, int]] | None = None,
    source_model: nn.Module | None = None,
) -> dict[str, Any]:
    """Attack every query with HAG or SDHA at each ε and gradient source; mAP@k of the
    adversarial query codes against the clean database codes (SPEC §7).

    Args:
        model: images ``(N, 3, H, W)`` in [0, 1] -> continuous hash output h ``(N, K)``, on
            ``device``; the code is sign(h), sign(0) = +1.
        attack: ``"hag"`` or ``"sdha"``.
        eps: L∞ budgets in [0, 1] pixel units.
        queries, database: datasets of ``(image, multi-hot label, index)``.
        k: mAP cut-off (<= 0: whole database); ties broken by database position.
        train: the training split (SDHA's relevant codes, encoded once with ``model``).
        grads: gradient sources to evaluate.
        same_grads: the sources are the same computation (a model without a feedback path,
            :func:`retrieval_bio.rules.has_feedback_path`): attack once, one column.
        steps, preset: passed to the attack (``steps=None`` and ``preset=None``: ``paper``).
        seed: the attack's seed.
        attack_kwargs: extra constructor arguments of the attack (e.g. ``lr``).
        previous: an earlier report of the same model and settings: its computed cells are
            kept and not recomputed (how an interrupted sweep continues).
        on_update: called with the report after every finished (source, ε) cell, e.g. to
            write it to disk so that an interruption loses at most the cell in progress.
        rule: the model's learning rule, named in the ``same_grads`` note.
        variants: ``(bpda, eot)`` settings, one column per gradient source and setting
            (:func:`variant_name`); default :func:`default_variants` of the attacked model.
            ``attack_kwargs`` may hold ``eot_reduce``.
        source_model: a transfer attack: the adversarial images are made on this model
            and scored on ``model`` (a black-box reference, no masking check).

    Returns:
        The report dict of the module docstring, without the provenance keys; it covers the
        union of ``previous``'s cells and the requested ones.
    """
    if attack not in HASH_ATTACKS:
        raise ValueError(f"{attack!r} is not a hashing attack ({', '.join(HASH_ATTACKS)})")
    from ..attacks import ATTACKS

    check_grads(grads)
    device = torch.device(device)
    progress = ensure(progress)
    kwargs = dict(attack_kwargs or {})
    if steps is None and preset is None:
        preset = "paper"
    if attack == "sdha":
        if train is None:
            raise ValueError("SDHA needs the training split (its relevant codes)")
        h_train, train_labels, _ = encode(model, train, batch_size=batch_size, device=device,
                                          progress=progress, description="encoding train")
        kwargs["train_codes"] = torch.from_numpy(sign_codes(h_train))
        kwargs["train_labels"] = torch.from_numpy(train_labels)
    h_db, db_labels, _ = encode(model, database, batch_size=batch_size, device=device,
                                progress=progress, description="encoding database")
    db_codes = sign_codes(h_db)

    attacked = model if source_model is None else source_model

    def make(e: float, col: str):
        g, bpda, eot = parse_variant(col)
        return ATTACKS.get(attack)(attacked, e, steps, grad=g, preset=preset, seed=seed,
                                   bpda=bpda, eot=eot, **kwargs)

    notes: list[str] = []
    if attack == "sdha" and eps:
        probe = make(max(eps), grads[0])
        reach = probe.lr * probe.steps  # Adam moves each pixel by at most about lr per step
        if max(eps) > reach:
            notes.append(
                f"SDHA's Adam (lr {probe.lr:g}, {probe.steps} steps) moves a pixel by at most "
                f"about {reach:g}: budgets above that are not binding, so larger ε cannot "
                f"lower mAP further (raise --steps to use them)")
    clean, q_labels = _clean_outputs(model, queries, batch_size, device)
    clean_codes = sign_codes(clean)

    def score(outputs: np.ndarray) -> float:
        return float(map_at_k(sign_codes(outputs), db_codes, q_labels, db_labels, k,
                              ties="index"))

    base = {
        "attack": attack, "task": "hash", "metric": "map",
        "clean_map": score(clean), "theory_map": float(map_at_k(
            -clean_codes, db_codes, q_labels, db_labels, k, ties="index")),
        "k": int(k), "preset": preset, "num_queries": int(len(q_labels)),
        "num_database": int(len(db_codes)), "norm": "linf",
    }
    return _sweep(make, model, eps, queries, grads, same_grads, batch_size, device, progress,
                  attack, score, base, notes, previous, on_update, rule=rule,
                  variants=_variants(variants, model if source_model is None else source_model,
                                     attack),
                  transfer=source_model is not None)


def sweep_classify(
    model: nn.Module, attack: str, eps: Sequence[float], *, queries: Dataset,
    grads: Sequence[str] = ("exact", "model"), same_grads: bool = False,
    steps: int | None = None, preset: str | None = None, batch_size: int = DEFAULT_BATCH,
    device: torch.device | str = "cpu", seed: int = 0,
    attack_kwargs: dict[str, Any] | None = None, progress: Progress | None = None,
    previous: dict[str, Any] | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None, rule: str | None = None,
    norm: str = "linf", variants: Sequence[tuple[str | None, int]] | None = None,
    source_model: nn.Module | None = None,
) -> dict[str, Any]:
    """Robust accuracy of a classifier under FGSM, PGD, Square, APGD, APGD-T or the
    AutoAttack-style ensemble ``auto`` at each ε and gradient source (SPEC §8), with the
    gradient-masking block ``masking`` (:func:`masking_block`).

    ``steps`` is PGD's iteration count (default: the preset's; 5 for ``paper``, seed 001),
    Square's query budget per image (default: the attack's, 1,000) or the APGD iterations
    of ``apgd``, ``apgd-t`` and ``auto`` (default 100); FGSM ignores it. ``auto``'s Square
    budget is ``attack_kwargs["n_queries"]`` (default 5,000). ``preset`` is PGD's protocol
    (``"paper"`` | ``"pepita"``, see :data:`retrieval_bio.attacks.pgd.PRESETS`); explicit
    ``steps`` win over it. ``norm`` is the threat model, ``"linf"`` or ``"l2"`` (ε then
    bounds the Euclidean norm over an image's C·H·W entries). Square is gradient-free, so
    its report has one source, ``"none"``, whatever ``grads`` says (its zero-gradient check
    uses the ``exact`` gradient). Other arguments (``variants``, ``source_model``) as
    :func:`sweep_hash`; a transfer report has no ``masking`` block. Returns the report
    dict of the module docstring (no provenance).
    """
    if attack not in CLASSIFY_ATTACKS:
        raise ValueError(f"{attack!r} is not a classifier attack ({', '.join(CLASSIFY_ATTACKS)})")
    if preset is not None and (attack != "pgd" or preset not in PGD_PRESETS):
        raise ValueError(f"preset {preset!r} does not apply to {attack}: only pgd has presets "
                         f"({', '.join(PGD_PRESETS)})")
    from ..attacks import ATTACKS, NORMS

    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    device = torch.device(device)
    progress = ensure(progress)
    kwargs = dict(attack_kwargs or {}, norm=norm)
    notes: list[str] = []
    if attack in GRADIENT_FREE:
        if list(grads) != [NO_GRAD]:
            notes.append(f"{attack} is gradient-free: one source '{NO_GRAD}' replaces "
                         f"{', '.join(grads)}")
        grads, same_grads = [NO_GRAD], False
        if steps is not None:
            kwargs["n_queries"] = steps
    else:
        check_grads(grads)
        if attack == "pgd" and steps is not None:
            kwargs["steps"] = steps
        if attack in APGD_ATTACKS and steps is not None:
            kwargs["n_iter"] = steps
        if preset is not None:
            kwargs["preset"] = preset
    grads = list(dict.fromkeys(grads))

    attacked = model if source_model is None else source_model

    def make(e: float, col: str):
        if col == NO_GRAD:  # Square takes a grad argument only for uniformity
            return ATTACKS.get(attack)(attacked, e, grad="model", seed=seed, **kwargs)
        g, bpda, eot = parse_variant(col)
        return ATTACKS.get(attack)(attacked, e, grad=g, seed=seed, bpda=bpda, eot=eot,
                                   **kwargs)

    clean, labels = _clean_outputs(model, queries, batch_size, device)

    def score(outputs: np.ndarray) -> float:
        return accuracy(outputs, labels)

    zeros: dict[str, tuple[float, float]] = {}

    def zero_grads(rep: dict[str, Any]) -> dict[str, tuple[float, float]]:
        """Zero-gradient fractions per reported source (Square: the exact gradient), each
        computed once per sweep."""
        for src in ["exact"] if attack in GRADIENT_FREE else rep["grad"]:
            if src not in zeros:
                zeros[src] = input_gradient_zeros(model, queries, src, batch_size=batch_size,
                                                  device=device)
        return dict(zeros)

    image_shape = tuple(queries[0][0].shape) if len(queries) else (3, 1, 1)

    def derive(rep: dict[str, Any]) -> None:
        rep["masking"], more = masking_block(rep, labels.shape[1], zero_grads(rep),
                                             full=full_eps(norm, image_shape))
        rep["notes"] += more
        if attack == "auto":
            rep["notes"] += auto_notes(rep)

    base = {"attack": attack, "task": "classify", "metric": "accuracy",
            "clean_accuracy": score(clean), "preset": preset, "num_queries": int(len(labels)),
            "norm": norm}
    extras = None
    if attack == "auto":
        base["queries_per_image"] = make(0.0, grads[0]).n_queries
        extras = {"breakdown": lambda a: dict(a.breakdown)}
    transfer = source_model is not None
    return _sweep(make, model, eps, queries, grads, same_grads, batch_size, device, progress,
                  attack, score, base, notes, previous, on_update, rule=rule,
                  derive=None if transfer else derive, extras=extras,
                  variants=_variants(variants, model if source_model is None else source_model,
                                     attack),
                  transfer=transfer)


def _variants(variants: Sequence[tuple[str | None, int]] | None, model: nn.Module,
              attack: str) -> list[tuple[str | None, int]]:
    if attack in GRADIENT_FREE:
        if variants and any(v != (None, 1) for v in variants):
            raise ValueError(f"{attack} is gradient-free: BPDA and EOT do not apply")
        return [(None, 1)]
    return list(variants) if variants else default_variants(model)


def auto_notes(report: dict[str, Any]) -> list[str]:
    """Warnings from an ``auto`` report's ``breakdown``: Square (gradient-free) breaking more
    than :data:`SQUARE_MARGIN` of the queries that both APGD attacks (gradient) left means
    the gradients hide adversarial examples that exist: gradient masking."""
    n = report.get("num_queries") or 0
    notes = []
    for g, cells in (report.get("breakdown") or {}).items():
        for e, cell in zip(report["eps"], cells, strict=False):
            if cell and n and cell.get("square", 0) > SQUARE_MARGIN * n:
                notes.append(f"at ε={e:g} Square (gradient-free) broke {cell['square']} of "
                             f"{n} images that APGD-CE and APGD-T ({g} gradient) could not: "
                             f"the gradient attacks miss adversarial examples that exist "
                             f"(gradient masking)")
    return notes


def input_gradient_zeros(
    model: nn.Module, queries: Dataset, grad: str = "exact", *,
    batch_size: int = DEFAULT_BATCH, device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """How much of the input gradient an attacker gets is exactly zero (gradient masking).

    The gradient of the batch-mean cross-entropy of the logits w.r.t. the clean query images
    (the loss FGSM and PGD ascend), through gradient source ``grad`` (``"exact"``: through W,
    ``"model"``: the model's feedback path; an FGSM instance's ``input_grad`` takes it), in
    eval mode, in batches of ``batch_size`` as the attacks do. ``grad`` may be a report
    column with a BPDA setting (:func:`variant_name`); its EOT part is not used.

    Args:
        model: images ``(N, 3, H, W)`` in [0, 1] -> logits ``(N, C)``, on ``device``.
        queries: dataset of ``(image, one-hot label (C,), index)``.

    Returns:
        ``(fraction of gradient entries == 0.0, fraction of images whose whole gradient is
        0.0)``, both in [0, 1]; ``(0.0, 0.0)`` for an empty dataset.
    """
    from ..attacks import FGSM, class_indices
    from ..attacks.base import eval_mode

    g, bpda, _ = parse_variant(grad)
    probe = FGSM(model, 0.0, grad=g, bpda=bpda)
    zero = total = zero_images = images = 0
    with eval_mode(model):
        for x, y, _ in DataLoader(queries, batch_size=batch_size, shuffle=False):
            target = class_indices(y.to(device))
            _, g = probe.input_grad(x.to(device),
                                    lambda out, _x, t=target: F.cross_entropy(out, t))
            z = (g == 0).flatten(1)
            zero += int(z.sum())
            total += z.numel()
            zero_images += int(z.all(1).sum())
            images += len(z)
    return (zero / total if total else 0.0, zero_images / images if images else 0.0)


def masking_block(
    report: dict[str, Any], num_classes: int, zeros: dict[str, tuple[float, float]],
    *, full: float = 1.0,
) -> tuple[dict[str, Any], list[str]]:
    """The ``masking`` block of a classification report and its warnings.

    Args:
        report: a classification report's table (``grad``, ``eps``, ``accuracy``; cells may
            be ``None``); the block is computed from it alone, so it follows the final table.
        num_classes: C, the labels' width; chance accuracy is 1/C.
        zeros: ``{grad: (fraction of zero gradient entries, fraction of all-zero images)}``
            (:func:`input_gradient_zeros`).
        full: the budget whose ball holds every image (:func:`full_eps`: 1 for L∞,
            sqrt(C·H·W) for L2, the report's ``norm``).

    Returns:
        ``(block, notes)``: the block of the module docstring and plain-sentence warnings:
        largest ε below ``full`` (cannot tell), accuracy at ε >= ``full`` above 1.5 x chance
        (the attack may be blind), more than 1 % zero gradient entries.
    """
    chance = 1.0 / num_classes
    eps = [float(e) for e in report["eps"]]
    max_eps = max(eps) if eps else None
    at = ({g: report["accuracy"][g][eps.index(max_eps)] for g in report["grad"]}
          if max_eps is not None else {})
    falls: bool | None = None
    if max_eps is not None and max_eps >= full and at and all(v is not None for v in at.values()):
        falls = all(v <= CHANCE_FACTOR * chance for v in at.values())
    notes: list[str] = []
    if max_eps is not None and max_eps < full:
        if report.get("norm") == "l2":
            # rounded up, so that the suggested budget really holds every image
            add = math.ceil(full * 100) / 100
            notes.append(f"largest ε is {max_eps:g} < {full:.4g} (the L2 radius sqrt(C·H·W) "
                         f"whose ball holds every image): cannot tell whether accuracy falls "
                         f"to chance; add {add:g} to --eps")
        else:
            notes.append(f"largest ε is {max_eps:g} < 1: cannot tell whether accuracy falls "
                         f"to chance; add 1.0 to --eps")
    shown = list(report["grad"])
    gradient_free = report["attack"] in GRADIENT_FREE
    if falls is False:
        for g in shown:
            a = at.get(g)
            if a is None or a <= CHANCE_FACTOR * chance:
                continue
            which = "" if gradient_free else f" ({g} gradient)"
            why = ("Square's query budget may be too small (raise --queries-per-image)"
                   if gradient_free else
                   "the attack may be blind (gradient masking); compare with Square")
            notes.append(f"accuracy {a:.3g}{which} at ε={max_eps:g} does not fall to chance "
                         f"({chance:.3g}): {why}")
    tail = ("FGSM/PGD are blind on this model, Square (gradient-free) is not" if gradient_free
            else "compare with Square")
    for g in (["exact"] if gradient_free else shown):
        if g not in zeros:
            continue
        frac, imgs = zeros[g]
        if frac > ZERO_GRAD_WARN:
            notes.append(f"{frac:.1%} of the input-gradient entries ({g} gradient, CE loss on "
                         f"the clean queries) are exactly zero, and {imgs:.1%} of the images get "
                         f"no gradient at all: gradient steps cannot move those pixels "
                         f"(gradient masking); {tail}")
    block = {"chance": chance, "max_eps": max_eps, "full_eps": full, "at_max_eps": at,
             "falls_to_chance": falls,
             "zero_grad_fraction": {g: z[0] for g, z in zeros.items()},
             "zero_grad_images": {g: z[1] for g, z in zeros.items()}}
    return block, notes


def square_check(
    square: dict[str, Any], gradient: dict[str, Any], *, sources: Sequence[str] | None = None,
) -> tuple[dict[str, Any] | None, list[str]]:
    """Compare a Square report with an FGSM/PGD report of the same model at the ε both hold.

    A gradient-free attack that does better (lower accuracy by more than
    :data:`SQUARE_MARGIN`) than a gradient attack with the same budget means the gradients
    mislead the gradient attack: gradient masking.

    Args:
        square, gradient: classification reports (``eps``, ``grad``, ``accuracy``, ``path``);
            ``None`` cells are skipped.
        sources: the gradient report's columns to warn about (default all; pass the distinct
            computations only, so a copied column is not reported twice).

    Returns:
        ``(check, notes)``: ``check`` is ``{"report", "eps", "square", "gradient"}`` (the
        other report's path is the caller's to set; here ``None``) or ``None`` when the two
        share no ε; ``notes`` are the warnings, one per (source, ε) where Square is stronger.
    """
    s_eps = [float(e) for e in square["eps"]]
    g_eps = [float(e) for e in gradient["eps"]]
    common = [e for e in g_eps if any(abs(e - f) <= 1e-12 for f in s_eps)]
    if not common:
        return None, []

    def at(eps: list[float], values: list[Any], e: float) -> Any:
        return values[min(range(len(eps)), key=lambda i: abs(eps[i] - e))]

    s_col = square["accuracy"][square["grad"][0]]
    sq = [at(s_eps, s_col, e) for e in common]
    gr = {g: [at(g_eps, gradient["accuracy"][g], e) for e in common] for g in gradient["grad"]}
    notes = []
    for g in sources if sources is not None else gradient["grad"]:
        for e, s, a in zip(common, sq, gr.get(g, []), strict=True):
            if s is not None and a is not None and s < a - SQUARE_MARGIN:
                notes.append(f"at ε={e:g} Square's accuracy {s:.3g} is below "
                             f"{gradient['attack']}'s ({g} gradient) {a:.3g}: gradient masking: "
                             f"the gradient attack is weaker than a gradient-free one")
    return {"report": None, "eps": common, "square": sq, "gradient": gr}, notes


def _clean_outputs(
    model: nn.Module, queries: Dataset, batch_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Model outputs ``(Q, D)`` and labels ``(Q, C)`` of the clean queries, computed in the
    same batches and the same way as the adversarial ones, so that at ε = 0 (where every
    attack returns its input) they are bit-identical."""
    clean, labels = [], []
    with torch.no_grad():
        for x, y, _ in DataLoader(queries, batch_size=batch_size, shuffle=False):
            clean.append(_score_forward(model, x.to(device)).float().cpu())
            labels.append(y.float())
    return torch.cat(clean).numpy(), torch.cat(labels).numpy()


def _score_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` for scoring: a random model's draws restart from a fixed seed (not the
    attack's), so clean and adversarial images of a batch meet the same draws."""
    from ..models.frontends import reseed

    reseed(model, SCORING_SEED_OFFSET)
    return model(x)


def missing_cells(
    report: dict[str, Any], grads: Sequence[str], eps: Sequence[float]
) -> list[tuple[str, float]]:
    """The (source, ε) cells of ``grads`` x ``eps`` that ``report`` holds no value for."""
    return _Cells(report["metric"], report).missing(grads, eps)


class _Cells:
    """The (gradient source, ε) cells of one report: those of an earlier report of the same
    settings plus the requested ones. Each cell holds (metric, mean L∞, mean L2, gradient
    calls, then one value per name in ``extras``, e.g. auto's ``breakdown``) or nothing yet."""

    FIELDS = ("value", "linf", "l2", "grad_calls")

    def __init__(self, metric: str, previous: dict[str, Any] | None,
                 extras: Sequence[str] = ()) -> None:
        self.metric = metric
        self.names = (metric, "linf", "l2", "grad_calls", *extras)
        self.cells: dict[tuple[str, float], tuple] = {}
        self.eps: list[float] = []
        self.grads: list[str] = []
        if previous:
            self.add_grid(previous.get("grad", []), previous.get("eps", []))
            for g in previous.get("grad", []):
                for i, e in enumerate(previous.get("eps", [])):
                    cell = [((previous.get(f) or {}).get(g) or [None] * (i + 1))[i]
                            for f in self.names]
                    if cell[0] is not None:
                        self.cells[(g, float(e))] = tuple(cell)

    def add_grid(self, grads: Sequence[str], eps: Sequence[float]) -> None:
        self.grads += [g for g in grads if g not in self.grads]
        self.eps = sorted(set(self.eps) | {float(e) for e in eps})

    def missing(self, grads: Sequence[str], eps: Sequence[float]) -> list[tuple[str, float]]:
        return [(g, float(e)) for g in grads for e in eps if (g, float(e)) not in self.cells]

    def table(self) -> dict[str, Any]:
        out: dict[str, Any] = {"grad": list(self.grads), "eps": list(self.eps)}
        for f, name in enumerate(self.names):
            out[name] = {g: [self.cells[(g, e)][f] if (g, e) in self.cells else None
                             for e in self.eps] for g in self.grads}
        out["complete"] = all((g, e) in self.cells for g in self.grads for e in self.eps)
        return out


def _sweep(make, model, eps, queries, grads, same_grads, batch_size, device, progress, name,
           score, base, notes, previous, on_update, *, rule=None, derive=None, extras=None,
           variants=((None, 1),), transfer=False):
    """Attack every query batch for each missing (source, ε) cell, score each cell as soon
    as it is done and hand the growing report to ``on_update``. ``derive(report)``, when
    given, adds keys computed from the table (and notes) to every report handed out;
    ``extras`` (``{report key: attack -> value}``) stores more per-cell values, read from the
    attack after it has attacked every batch of the cell."""
    extras = dict(extras or {})
    grads = list(dict.fromkeys(grads))
    if not grads:
        raise ValueError("give at least one gradient source")
    notes = list(notes)
    computed = grads[:1] if same_grads else grads
    if same_grads and len(grads) > 1:
        why = f"rule {rule} has no feedback path" if rule else "it has no feedback path"
        notes.append(f"{' and '.join(grads)} gradients are the same computation for this model "
                     f"({why}): attacked once with '{grads[0]}'")
    variants = list(dict.fromkeys(variants))
    if any(v != (None, 1) for v in variants):
        notes.append("columns: the gradient source, then +bpda-NAME (the backward used through "
                     "the model's non-differentiable ops; without it their true gradient, "
                     "which for a quantiser is zero: the obfuscated number) and +eot-N (N "
                     "gradient samples per step)")
    if transfer:
        notes.append("transfer attack: the adversarial images were made on the source model "
                     "and scored on this one; a black-box reference, not a white-box bound")
    # one column per computation: the sources that are the same computation are named in
    # ``same_computation`` and the note, not repeated as identical columns
    same = {variant_name(g, *v): variant_name(grads[0], *v)
            for g in grads[len(computed):] for v in variants}
    grads = [variant_name(g, *v) for g in computed for v in variants]
    if previous is not None and same:
        previous = {**previous, "grad": [g for g in previous.get("grad", []) if g not in same]}
    cells = _Cells(base["metric"], previous, tuple(extras))
    cells.add_grid(grads, eps)
    todo = cells.missing(grads, eps)
    reused = len(cells.missing(grads, eps)) < len(grads) * len(set(map(float, eps)))
    if reused:
        notes.append("cells computed by an earlier run with the same settings and weights "
                     "were kept, not recomputed (pass overwrite=True / --overwrite to redo them)")
    steps = previous.get("steps") if previous else None

    def report() -> dict[str, Any]:
        rep = {**base, **cells.table(), "steps": steps, "notes": list(notes),
               "same_computation": dict(same)}
        if derive is not None:
            derive(rep)
        return rep

    loader = DataLoader(queries, batch_size=batch_size, shuffle=False)
    progress.start(f"{name}", len(todo) * len(loader))
    try:
        for g, e in todo:
            attack = make(e, g)
            steps = _steps_of(attack)
            outs, inf_norms, l2_norms = [], [], []
            t0 = time.perf_counter()
            for x, y, _ in loader:
                x = x.to(device)
                adv = attack(x, y.to(device))
                with torch.no_grad():
                    outs.append(_score_forward(model, adv).float().cpu())
                delta = (adv - x).flatten(1).float()
                inf_norms.append(delta.abs().amax(1).cpu())
                l2_norms.append(delta.norm(dim=1).cpu())
                progress.advance(1, grad=g, eps=e)
            log.info("%s grad=%s eps=%g: %.1f s", name, g, e, time.perf_counter() - t0)
            cells.cells[(g, e)] = (score(torch.cat(outs).numpy()),
                                   float(torch.cat(inf_norms).mean()),
                                   float(torch.cat(l2_norms).mean()), int(attack.n_grad_calls),
                                   *(get(attack) for get in extras.values()))
            if on_update is not None:
                on_update(report())
    finally:
        progress.stop()
    if steps is None:  # nothing left to compute: the steps of the attack as configured
        steps = _steps_of(make(float(eps[0]), grads[0])) if len(eps) else None
    return report()


def check_grads(grads: Sequence[str]) -> None:
    from ..attacks import GRAD_SOURCES

    bad = [g for g in grads if g not in GRAD_SOURCES]
    if bad or not grads:
        raise ValueError(f"grad must be one of {', '.join(GRAD_SOURCES)}; got "
                         f"{', '.join(grads) or 'nothing'}")


def _steps_of(attack: Any) -> int:
    for attr in ("steps", "n_queries"):
        if hasattr(attack, attr):
            return int(getattr(attack, attr))
    return 1  # FGSM: one step


def subsample(dataset: Dataset, max_items: int | None, seed: int) -> Dataset:
    """The first ``max_items`` items of a seeded permutation (the whole set when None or
    larger than the set; order kept stable by sorting the chosen positions)."""
    n = len(dataset)
    if max_items is None or max_items >= n:
        return dataset
    if max_items < 1:
        raise ValueError(f"max_queries must be >= 1, got {max_items}")
    idx = np.random.default_rng(seed).permutation(n)[:max_items]
    return Subset(dataset, np.sort(idx).tolist())


# -- a run folder -------------------------------------------------------------------------


def report_rows(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The report as a table: columns ``ε (L∞)`` or ``ε (L2)`` (the report's norm) then one
    per gradient source (then the mean perturbation size in that norm per source); rows
    ``clean``, each ε, and ``theory`` for hashing attacks."""
    metric, grads = report["metric"], report["grad"]
    size = "l2" if report.get("norm") == "l2" else "linf"
    shown = "L2" if size == "l2" else "L∞"
    header = ([eps_label(report.get("norm"))] + [f"{metric} ({g})" for g in grads]
              + [f"{shown} ({g})" for g in grads])
    blank = [None] * len(grads)
    rows: list[list[Any]] = [["clean"] + [report[f"clean_{metric}"]] * len(grads) + blank]
    for i, e in enumerate(report["eps"]):
        rows.append([f"{e:g}"] + [report[metric][g][i] for g in grads]
                    + [report[size][g][i] for g in grads])
    if report.get("theory_map") is not None:
        rows.append(["theory (−h)"] + [report["theory_map"]] * len(grads) + blank)
    return header, rows
