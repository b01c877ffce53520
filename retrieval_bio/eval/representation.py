"""Representation diagnostics: covariance spectrum and its power law, input-Jacobian norms, and
the critical perturbation size per image.

The measurements of Holzhausen et al., "Exploring biologically inspired mechanisms of
adversarial robustness" (arXiv 2405.00679) with the settings of its code; the method reference
is ``methods/krotov.md``, "Diagnostics" items 1–3 and sections (d), (e):

* :func:`layer_activations`, :func:`covariance_spectrum`, :func:`power_law_fit` — the
  eigenvalues λ_n of the unbiased covariance of a layer's output, descending, and the OLS fit
  log(λ_n/λ_1) = c − α·log n over n = 11…500 (data; :data:`DATA_WINDOW`) or 11…100 (the
  white-noise probe of :func:`white_noise_probe`; :data:`NOISE_WINDOW`);
* :func:`jacobian_norms` — ‖J‖_F of a layer's output with respect to the input pixels, per image
  (:func:`retrieval_bio.losses.jacobian.jacobian_frobenius_sq`);
* :func:`critical_perturbations` — per initially correct image, the first ε of an ascending
  grid at which random noise, FGSM or PGD flips its class, and ‖Δx‖₂ there.

Conventions (the toolkit's): images are ``(N, C, H, W)`` with pixels in [0, 1], any
normalisation happens inside the model, so Jacobians are per [0, 1] pixel and ε is in [0, 1]
pixel units (the reference code attacked the L3-normalised vector instead; its numbers are not
comparable, krotov.md (d)4). Models run in eval mode (each module's own flag restored
afterwards). A *layer* is a ``named_modules()`` name whose output is measured, or ``None`` /
:data:`HEAD_INPUT` for the input of ``model.head`` (the features the task head sees).
Results are NumPy float64 arrays and dataclasses with a JSON-ready ``to_dict``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn as nn

from ..config import ConfigError
from ..losses.cross_entropy import class_indices
from ..losses.jacobian import jacobian_frobenius_sq
from ..progress import Progress, ensure
from .layerwise import _eval_mode, _model_device

#: The name that means "the input of ``model.head``" (the same as ``layer=None``).
HEAD_INPUT = "head-input"
#: Fit windows, 1-based ranks, both ends included (krotov.md Diagnostics 1: code slice [10:500]).
DATA_WINDOW = (11, 500)
NOISE_WINDOW = (11, 100)
#: ``projections="auto"``: exact up to this many output units, else :data:`AUTO_PROJECTIONS`.
AUTO_EXACT_MAX = 256
AUTO_PROJECTIONS = 16
#: Attacks of :func:`critical_perturbations`.
CRITICAL_ATTACKS = ("noise", "fgsm", "pgd")

Projections = int | None | Literal["auto", "exact"]


# -------------------------------------------------------------------------------- layers


def default_representation_layer(model: nn.Module) -> str | None:
    """``"backbone." + model.backbone.representation_layer`` when the backbone names its
    representation (a Krotov–Hopfield backbone names ``"currents"``, the pre-activation h),
    else ``None`` (the input of ``model.head``)."""
    name = getattr(getattr(model, "backbone", None), "representation_layer", None)
    return None if not name else f"backbone.{name}"


def describe_layer(layer: str | None) -> str:
    """A printable name: the module name, or :data:`HEAD_INPUT`."""
    return HEAD_INPUT if layer in (None, HEAD_INPUT) else str(layer)


def _valid_names(model: nn.Module, limit: int = 25) -> str:
    names = [HEAD_INPUT] if isinstance(getattr(model, "head", None), nn.Module) else []
    names += [n for n, _ in model.named_modules() if n]
    shown = ", ".join(names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{shown}{more}"


def check_layer(model: nn.Module, layer: str | None) -> None:
    """Raise the :class:`ConfigError` of :func:`layer_activations` for a layer name that is
    not a module of ``model`` (or a missing head), before any slow work."""
    _module(model, layer)


def _module(model: nn.Module, layer: str | None) -> tuple[nn.Module, bool]:
    """``(module, pre)``: the module to hook and whether its input (pre-hook) is wanted."""
    if layer in (None, HEAD_INPUT):
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Module):
            raise ConfigError(f"{type(model).__name__} has no 'head' module, so the layer "
                              f"cannot default to the head's input; name a layer (one of: "
                              f"{_valid_names(model)})")
        return head, True
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        raise ConfigError(f"--layer {layer!r} is not a module of this model; use one of: "
                          f"{_valid_names(model)}")
    return modules[layer], False


@contextlib.contextmanager
def _layer_hook(model: nn.Module, layer: str | None, detach: bool) -> Iterator[dict[str, Any]]:
    """A hook that keeps the layer's output (or the head's input) of the last call in the
    yielded dict under ``"value"``; removed on exit, always."""
    module, pre = _module(model, layer)
    box: dict[str, Any] = {}
    name = describe_layer(layer)

    def keep(value: Any) -> None:
        if not isinstance(value, torch.Tensor):
            raise ConfigError(f"the {'input' if pre else 'output'} of layer {name!r} is a "
                              f"{type(value).__name__}, not a tensor; choose another --layer")
        # a copy: an in-place op right after the module (ReLU(inplace=True)) would otherwise
        # rewrite the kept tensor (and, with gradients, its history) before the forward ends
        box["value"] = value.detach().clone() if detach else value.clone()

    if pre:
        handle = module.register_forward_pre_hook(
            lambda _m, inputs: keep(inputs[0] if inputs else None))
    else:
        handle = module.register_forward_hook(lambda _m, _i, output: keep(output))
    try:
        yield box
    finally:
        handle.remove()


def _per_image(box: dict[str, Any], n: int, layer: str | None) -> torch.Tensor:
    """The kept value as ``(n, D)``. A random front end evaluated as an ensemble of E
    realisations runs the layers on E·n rows; their mean is the ensemble's representation."""
    if "value" not in box:
        raise ConfigError(f"layer {describe_layer(layer)!r} did not run in the model's "
                          f"forward; choose a layer that does")
    value = box["value"]
    if value.ndim == 0:
        raise ConfigError(f"layer {describe_layer(layer)!r} gives a scalar, not one row per "
                          f"image; choose another --layer")
    rows = value.shape[0]
    if rows == n:
        return value.reshape(n, -1)
    if n and rows % n == 0:
        return value.reshape(rows // n, n, -1).mean(0)
    raise ConfigError(f"layer {describe_layer(layer)!r} gives {rows} rows for {n} images; "
                      f"choose a layer with one row per image")


def _batches(n: int, batch_size: int) -> list[slice]:
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def layer_activations(
    model: nn.Module, images: torch.Tensor, layer: str | None = None, batch_size: int = 100,
) -> np.ndarray:
    """The flattened output of module ``layer`` (or the input of ``model.head``) per image.

    Args:
        model: run in eval mode under ``torch.no_grad`` (each module's mode restored after).
        images: ``(N, C, H, W)`` (or any ``(N, …)`` the model takes), moved to the model's
            device batch by batch.
        layer: a ``named_modules()`` name, or ``None`` / :data:`HEAD_INPUT` for the input of
            ``model.head``. A module called several times per forward keeps its last call.
        batch_size: images per forward.

    Returns:
        ``(N, D)`` float64.

    Raises:
        ConfigError: an unknown layer (the message lists valid names), a layer the forward
            does not run, or one whose output is not a tensor with one row per image.
    """
    dev = _model_device(model)
    parts: list[np.ndarray] = []
    with _eval_mode(model), torch.no_grad(), _layer_hook(model, layer, detach=True) as box:
        for sl in _batches(len(images), batch_size):
            box.clear()
            chunk = images[sl].to(dev)
            model(chunk)
            parts.append(_per_image(box, len(chunk), layer).double().cpu().numpy())
    if not parts:
        _module(model, layer)  # still name a bad layer for an empty input
        return np.zeros((0, 0))
    return np.concatenate(parts)


# ------------------------------------------------------------------------------ spectrum


def covariance_spectrum(acts: np.ndarray) -> np.ndarray:
    """Eigenvalues of the unbiased covariance of ``acts`` ``(N, D)`` (rows are samples),
    descending, float64 (``np.linalg.eigvalsh``).

    C = (S − s·sᵀ/N)/(N − 1) with S = ∑ x xᵀ the scatter and s = ∑ x the sum, computed as
    X̃ᵀX̃/(N − 1) on the mean-subtracted X̃ (the same matrix, without the cancellation of
    subtracting two large numbers; the reference SpecReg code got this centring wrong,
    krotov.md (d)7). When D > N the N×N Gram matrix X̃X̃ᵀ/(N − 1) has the same nonzero
    eigenvalues and is diagonalised instead; the other D − N values are 0.

    Returns:
        ``(D,)``; tiny negative values from rounding are kept as they are.

    Raises:
        ValueError: ``acts`` is not 2-D or has fewer than 2 rows.
    """
    x = np.asarray(acts, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"acts must be (N, D) with N >= 2 samples, got shape {x.shape}")
    n, d = x.shape
    xc = x - x.mean(0, keepdims=True)
    if d <= n:
        eig = np.linalg.eigvalsh(xc.T @ xc / (n - 1))
    else:
        eig = np.concatenate([np.linalg.eigvalsh(xc @ xc.T / (n - 1)), np.zeros(d - n)])
    return np.sort(eig)[::-1].copy()


@dataclass
class PowerLawFit:
    """OLS fit of log(λ_n/λ_1) = intercept − alpha·log n over ranks n_first…n_last (1-based).

    ``stderr`` is the standard error of the slope (so of alpha); ``r2`` the coefficient of
    determination of the fit in log–log space; ``window`` the requested ranks, clipped to the
    positive eigenvalues available; a fit that could not be made has NaN numbers and says
    why in ``reason``.
    """

    alpha: float
    stderr: float
    intercept: float
    r2: float
    n_first: int
    n_last: int
    n_points: int
    window: tuple[int, int] = DATA_WINDOW
    clipped: bool = False
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN and ±inf become ``None``)."""
        def num(v: float) -> float | None:
            return float(v) if math.isfinite(v) else None

        return {"alpha": num(self.alpha), "stderr": num(self.stderr),
                "intercept": num(self.intercept), "r2": num(self.r2),
                "n_first": int(self.n_first), "n_last": int(self.n_last),
                "n_points": int(self.n_points), "window": list(self.window),
                "clipped": bool(self.clipped), "reason": self.reason}


def power_law_fit(eigs: np.ndarray, window: tuple[int, int] = DATA_WINDOW) -> PowerLawFit:
    """Fit λ_n ∝ n^(−α) to eigenvalues ``eigs`` (sorted descending here) over ``window``.

    The fit is OLS of log(λ_n/λ_1) on log n for 1-based ranks n in ``window`` (both ends
    included), the upper end clipped to the last *positive* eigenvalue. Positive means above
    λ_1·len(eigs)·float64-eps, the rounding level of an eigensolver (a rank-deficient
    covariance, D > N, has zeros that come out as ±1e-17·λ_1). α = −slope; its stderr is
    √(SSR/(m − 2)/∑(log n − mean)²) for m points.

    Returns:
        A :class:`PowerLawFit`; with fewer than 3 points in the window its numbers are NaN and
        ``reason`` says how many eigenvalues there were.
    """
    first, last = int(window[0]), int(window[1])
    if not 1 <= first <= last:
        raise ValueError(f"window must be 1 <= first <= last (1-based ranks), got {window}")
    lam = np.sort(np.asarray(eigs, dtype=np.float64).ravel())[::-1]
    nan = float("nan")

    def failed(reason: str, n_last: int) -> PowerLawFit:
        return PowerLawFit(nan, nan, nan, nan, first, n_last, max(0, n_last - first + 1),
                           (first, last), n_last < last, reason)

    if not lam.size or not lam[0] > 0:
        return failed("no positive eigenvalue (a constant representation)", 0)
    tol = lam[0] * lam.size * np.finfo(np.float64).eps
    n_pos = int(np.count_nonzero(lam > tol))  # the leading ones: lam is descending
    n_last = min(last, n_pos)
    m = n_last - first + 1
    if m < 3:
        return failed(f"only {n_pos} positive eigenvalue(s): the window n = {first}…{last} "
                      f"holds {max(m, 0)} point(s), at least 3 are needed (use more images, "
                      f"or a layer with more units)", n_last)
    n = np.arange(first, n_last + 1, dtype=np.float64)
    lx = np.log(n)
    ly = np.log(lam[first - 1:n_last] / lam[0])
    mx, my = lx.mean(), ly.mean()
    sxx = float(((lx - mx) ** 2).sum())
    slope = float(((lx - mx) * (ly - my)).sum() / sxx)
    intercept = float(my - slope * mx)
    resid = ly - (intercept + slope * lx)
    ssr = float((resid ** 2).sum())
    sst = float(((ly - my) ** 2).sum())
    stderr = math.sqrt(ssr / (m - 2) / sxx)
    r2 = 1.0 - ssr / sst if sst > 0 else float("nan")
    return PowerLawFit(-slope, stderr, intercept, r2, first, n_last, m, (first, last),
                       n_last < last)


def white_noise_probe(n: int, shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """``(n, *shape)`` float32 images with i.i.d. N(0, 1) pixels from a generator seeded with
    ``seed`` (the reference probe drew unseeded noise, krotov.md (d)6).

    The pixels are *not* in [0, 1] (and not normalised like the data): only the shape of the
    resulting spectrum is comparable with the data's, not its scale.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn((int(n), *(int(s) for s in shape)), generator=gen)


# ------------------------------------------------------------------------------ Jacobian


def resolve_projections(projections: Projections, output_dim: int) -> int | None:
    """The number of random projections to use (``None``: exact) for ``output_dim`` units:
    ``"auto"`` is exact up to :data:`AUTO_EXACT_MAX` units, else :data:`AUTO_PROJECTIONS`;
    ``"exact"`` or ``None`` is exact; a whole number ≥ 1 is itself.

    Raises:
        ConfigError: anything else.
    """
    if projections == "auto":
        return None if output_dim <= AUTO_EXACT_MAX else AUTO_PROJECTIONS
    if projections is None or projections == "exact":
        return None
    if isinstance(projections, bool) or not isinstance(projections, int) or projections < 1:
        raise ConfigError(f"--projections must be 'auto', 'exact' or a whole number >= 1, "
                          f"got {projections!r}")
    return int(projections)


@dataclass
class JacobianNorms:
    """‖J‖_F per image (``norms``, ``(N,)`` float64) of layer ``layer`` (``output_dim``
    units) with respect to the input pixels, in output units per [0, 1] pixel; ``projections``
    is ``None`` when exact, else the number of random projections of the estimate."""

    norms: np.ndarray
    layer: str
    output_dim: int
    projections: int | None

    @property
    def method(self) -> str:
        return ("exact" if self.projections is None
                else f"estimate, {self.projections} random projections")

    def summary(self) -> dict[str, Any]:
        """JSON-ready statistics: mean, median, min, max and the 10/25/75/90 % quantiles."""
        a = self.norms[np.isfinite(self.norms)]
        stats: dict[str, Any] = {"layer": self.layer, "output_dim": int(self.output_dim),
                                 "method": self.method, "projections": self.projections,
                                 "images": int(self.norms.size)}
        if not a.size:
            return {**stats, "mean": None, "median": None}
        return {**stats, "mean": float(a.mean()), "median": float(np.median(a)),
                "min": float(a.min()), "max": float(a.max()),
                **{f"q{q}": float(np.quantile(a, q / 100)) for q in (10, 25, 75, 90)}}


def jacobian_norms(
    model: nn.Module, images: torch.Tensor, layer: str | None = None, *,
    projections: Projections = "auto", batch_size: int = 100, seed: int = 0,
    bpda: str | None = None,
) -> JacobianNorms:
    """‖∂a(x)/∂x‖_F per image, a the flattened output of ``layer`` (default: the input of
    ``model.head``), x the image pixels in [0, 1].

    Args:
        model: run in eval mode (so that the samples of a batch are independent, which the
            batched estimator needs); the gradients are exact (through W for a model
            converted to a feedback rule, ``rules.exact_gradients``).
        images: ``(N, C, H, W)`` in [0, 1].
        layer: as :func:`layer_activations`.
        projections: ``"auto"`` (exact for at most :data:`AUTO_EXACT_MAX` output units, else
            :data:`AUTO_PROJECTIONS` random projections), ``"exact"``/``None``, or a number
            of projections (:func:`~retrieval_bio.losses.jacobian.jacobian_frobenius_sq`).
        batch_size: images per forward (an exact Jacobian costs one backward per unit).
        seed: seeds the projections (and a random front end's draws).
        bpda: backward of non-differentiable ops (``"identity"`` for a quantising front end,
            whose true Jacobian is 0; see :func:`retrieval_bio.models.frontends.bpda`).

    Returns:
        :class:`JacobianNorms` (which method was used is in it).
    """
    from ..models.frontends import bpda as bpda_mode
    from ..models.frontends import reseed
    from ..rules import exact_gradients

    dev = _model_device(model)
    n = len(images)
    if n == 0:
        return JacobianNorms(np.zeros(0), describe_layer(layer), 0, None)
    dim = layer_activations(model, images[:1], layer).shape[1]
    chosen = resolve_projections(projections, dim)
    gen = torch.Generator(device=dev).manual_seed(int(seed)) if chosen is not None else None
    out: list[np.ndarray] = []
    backward = bpda_mode(model, bpda) if bpda not in (None, "none") else contextlib.nullcontext()
    with _eval_mode(model), exact_gradients(model), backward, \
            _layer_hook(model, layer, detach=False) as box:
        reseed(model, int(seed))

        def fn(x: torch.Tensor) -> torch.Tensor:
            box.clear()
            model(x)
            return _per_image(box, len(x), layer)

        for sl in _batches(n, batch_size):
            sq = jacobian_frobenius_sq(fn, images[sl].to(dev), projections=chosen,
                                       generator=gen)
            out.append(sq.clamp_min(0).sqrt().double().cpu().numpy())
    return JacobianNorms(np.concatenate(out), describe_layer(layer), int(dim), chosen)


# ---------------------------------------------------------------- critical perturbations


def default_eps_grid(attack: str, size: int = 24) -> list[float]:
    """``size`` log-spaced budgets: 1e-3…1 ([0, 1]-pixel L∞) for ``"fgsm"``/``"pgd"`` (1 can
    reach any image), 1e-2…10 (σ of the noise, pixels) for ``"noise"``."""
    if attack not in CRITICAL_ATTACKS:
        raise ConfigError(f"unknown attack {attack!r}; choose from {', '.join(CRITICAL_ATTACKS)}")
    if size < 2:
        raise ConfigError(f"the ε grid needs at least 2 points, got {size}")
    lo, hi = (-2.0, 1.0) if attack == "noise" else (-3.0, 0.0)
    return [float(v) for v in np.logspace(lo, hi, size)]


@dataclass
class CriticalResult:
    """The critical perturbation of every image the model classified correctly at ε = 0.

    Attributes:
        attack: ``"noise"``, ``"fgsm"`` or ``"pgd"``.
        eps: the grid, ascending (σ of the noise, or the L∞ budget; [0, 1] pixels).
        indices: ``(M,)`` positions, in the images given, of the M initially correct ones.
        crit_eps: ``(M,)`` the first grid ε at which the image is misclassified; ``inf``
            when it never is.
        crit_norm: ``(M,)`` ‖x' − x‖₂ over all C·H·W pixels of the perturbed image x' that
            flipped it ([0, 1] pixels); ``inf`` when it never flipped.
        relative_accuracy: per ε, the fraction of the M images not flipped at this or any
            smaller ε (an image once flipped counts as flipped, so the curve never rises).
        n_images: images given; ``num_classes``: C (chance is 1/C).
        steps: PGD iterations (``None`` for the others).
    """

    attack: str
    eps: list[float]
    indices: np.ndarray
    crit_eps: np.ndarray
    crit_norm: np.ndarray
    relative_accuracy: list[float]
    n_images: int
    num_classes: int
    steps: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_correct(self) -> int:
        return int(self.indices.size)

    @property
    def clean_accuracy(self) -> float:
        return self.n_correct / self.n_images if self.n_images else float("nan")

    @property
    def never_flipped(self) -> float:
        """Fraction of the initially correct images still correct at the top of the grid."""
        return float(np.mean(~np.isfinite(self.crit_eps))) if self.n_correct else float("nan")

    @property
    def accuracy(self) -> list[float]:
        """Accuracy over all ``n_images`` per ε (a flipped image stays wrong)."""
        return [r * self.clean_accuracy for r in self.relative_accuracy]

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the grid, the relative and absolute accuracy curves, median
        crit_norm and crit_eps over all initially correct images (``None`` when more than
        half never flipped: the median lies above the grid), the medians over the flipped
        ones, the fraction never flipped, whether accuracy fell to chance, the per-image
        values (``None`` = never flipped) and notes."""
        def num(v: float) -> float | None:
            return float(v) if math.isfinite(v) else None

        def median(a: np.ndarray) -> float | None:
            return num(float(np.median(a))) if a.size else None

        flipped = np.isfinite(self.crit_norm)
        chance = 1.0 / self.num_classes if self.num_classes else float("nan")
        acc = self.accuracy
        return {
            "attack": self.attack, "steps": self.steps, "eps": list(self.eps),
            "n_images": int(self.n_images), "n_correct": self.n_correct,
            "clean_accuracy": num(self.clean_accuracy),
            "relative_accuracy": [float(v) for v in self.relative_accuracy],
            "accuracy": [float(v) for v in acc],
            "chance": num(chance),
            "falls_to_chance": bool(acc and acc[-1] <= chance + 1e-12),
            "never_flipped": num(self.never_flipped),
            "median_crit_norm": median(self.crit_norm),
            "median_crit_eps": median(self.crit_eps),
            "median_crit_norm_flipped": median(self.crit_norm[flipped]),
            "crit_norm": [num(v) for v in self.crit_norm.tolist()],
            "crit_eps": [num(v) for v in self.crit_eps.tolist()],
            "notes": list(self.notes),
        }


def _predict(model: nn.Module, x: torch.Tensor, batch_size: int,
             seed: int) -> tuple[torch.Tensor, int]:
    """``(argmax classes (N,) on the CPU, number of classes)``, eval mode, no gradients; a
    random front end's draws restarted from ``seed`` (as the attacks do)."""
    from ..models.frontends import reseed

    dev = _model_device(model)
    preds, classes = [], 0
    with _eval_mode(model), torch.no_grad():
        reseed(model, int(seed))
        for sl in _batches(len(x), batch_size):
            logits = model(x[sl].to(dev))
            classes = int(logits.shape[1])
            preds.append(logits.argmax(1).cpu())
    return (torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)), classes


def critical_perturbations(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
    attack: Literal["noise", "fgsm", "pgd"], eps_grid: Sequence[float] | None = None, *,
    steps: int = 20, seed: int = 0, batch_size: int = 100, bpda: str | None = None,
    progress: Progress | None = None,
) -> CriticalResult:
    """Sweep ``eps_grid`` in ascending order and record, per image, the first ε that flips it.

    Only images the model classifies correctly at ε = 0 count (the reference's
    ``BaselineAccurateTestData``). At each ε only the images not flipped yet are perturbed
    (the others keep their first flip), so the cost falls as the sweep goes on.

    Attacks (white-box with exact gradients, krotov.md (e); [0, 1] pixels):

    * ``"noise"``: x' = clip_[0,1](x + ε·ξ), one ξ ~ N(0, I) per image for the whole sweep
      (a ray from x), ``ξ = torch.randn((N, C, H, W), generator=Generator().manual_seed(seed))``
      over the N images given. The reference did not clip (its pixels could leave the
      valid range); here they stay images, so ‖Δx‖₂ ≤ ε‖ξ‖₂.
    * ``"fgsm"``: the toolkit's FGSM, clip(x + ε·sign ∇ₓCE), ``grad="exact"``.
    * ``"pgd"``: the toolkit's L∞ PGD, ``steps`` iterations (20) of step ε/4 from x (no random
      start), exact gradients, CE on logits. (The reference's step was 1e-2, or 0.1·ε below
      ε = 1e-2, in its normalised-input units.)

    Args:
        model: images ``(N, C, H, W)`` in [0, 1] -> logits ``(N, C)``; run in eval mode.
        images: ``(N, C, H, W)`` in [0, 1].
        labels: ``(N,)`` class ids or ``(N, C)`` one-hot / multi-hot (argmax).
        eps_grid: positive, strictly ascending (default :func:`default_eps_grid`).
        steps: PGD iterations.
        seed: seeds the noise (and the attacks' generators).
        batch_size: images per attack call.
        bpda: backward of non-differentiable ops for FGSM/PGD (``"identity"`` through a
            quantising front end).
        progress: advanced once per ε.

    Returns:
        :class:`CriticalResult`. When the top of the grid leaves some image unflipped its
        notes say how many (their crit values are ``inf``): the grid did not reach the
        model's breaking point, and robust accuracy did not fall to chance.

    Raises:
        ConfigError: an unknown attack or a bad grid.
    """
    from ..attacks import ATTACKS

    if attack not in CRITICAL_ATTACKS:
        raise ConfigError(f"unknown attack {attack!r}; choose from {', '.join(CRITICAL_ATTACKS)}")
    grid = default_eps_grid(attack) if eps_grid is None else [float(e) for e in eps_grid]
    if not grid or any(not (math.isfinite(e) and e > 0) for e in grid) or \
            any(b <= a for a, b in zip(grid, grid[1:], strict=False)):
        raise ConfigError(f"the {attack} ε grid must be positive, finite and strictly "
                          f"ascending, got {grid}")
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    progress = ensure(progress)
    x = images.detach().cpu()
    y = class_indices(labels.detach().cpu())
    pred, num_classes = _predict(model, x, batch_size, seed)
    correct = torch.nonzero(pred == y).flatten()
    xc, yc = x[correct], y[correct]
    m = len(correct)
    crit_eps = np.full(m, np.inf)
    crit_norm = np.full(m, np.inf)
    rel_acc: list[float] = []
    noise = None
    if attack == "noise":
        gen = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)[correct]
    progress.start(f"critical ε ({attack})", len(grid))
    try:
        for eps in grid:
            active = torch.from_numpy(np.flatnonzero(~np.isfinite(crit_eps)))
            for sl in _batches(len(active), batch_size):
                idx = active[sl]
                x0, y0 = xc[idx], yc[idx]
                if attack == "noise":
                    assert noise is not None
                    adv = (x0 + eps * noise[idx]).clamp(0.0, 1.0)
                elif attack == "fgsm":
                    adv = ATTACKS.get("fgsm")(model, eps, grad="exact", seed=seed,
                                              bpda=bpda)(x0, y0).cpu()
                else:
                    adv = ATTACKS.get("pgd")(model, eps, alpha=eps / 4, steps=steps,
                                             random_start=False, grad="exact", seed=seed,
                                             bpda=bpda)(x0, y0).cpu()
                wrong = (_predict(model, adv, len(adv), seed)[0] != y0).numpy()
                hit = idx.numpy()[wrong]
                crit_eps[hit] = eps
                crit_norm[hit] = (adv - x0).flatten(1).norm(dim=1).double().numpy()[wrong]
            rel_acc.append(float(np.mean(~np.isfinite(crit_eps))) if m else float("nan"))
            progress.advance(1)
    finally:
        progress.stop()
    result = CriticalResult(attack, grid, correct.numpy(), crit_eps, crit_norm, rel_acc,
                            len(x), num_classes, steps if attack == "pgd" else None)
    if m == 0:
        result.notes.append(f"{attack}: no image was classified correctly at ε = 0, nothing "
                            f"to perturb")
    elif result.never_flipped > 0:
        kept = int(np.sum(~np.isfinite(crit_eps)))
        result.notes.append(
            f"{attack}: {kept} of {m} initially correct images ({result.never_flipped:.1%}) "
            f"were never misclassified up to ε = {grid[-1]:g}: the grid does not reach this "
            f"model's breaking point for them, accuracy did not fall to 0 there (their crit "
            f"values are above the grid, null in the JSON)")
    return result
