"""Layer-wise diagnostics of a trained model: how a perturbation grows through the layers,
how sparse the activations and filters are, and what the layers' spectra look like.

Seed 004 (Bakiskan, *Structural Defense Techniques in Adversarial ML*, UCSB PhD 2022), ch. 3
(natural vs adversarial training, layer by layer) and the metrics of ch. 5 (Hebbian/anti-Hebbian
blocks); the method reference is ``methods/frontends.md`` §1. Singular values of a conv use the
FFT method of Sedghi, Gupta & Long, "The singular values of convolutional layers" (ICLR 2019).

Everything here is a plain function of an ``nn.Module`` and tensors:

* :func:`layer_outputs` — the output (or input) of every module of the chosen types, by forward
  hooks (``register_forward_hook``); every other function that runs the model goes through it;
* :func:`perturbation_to_signal` — PSR (Eq 3.1), per image, p ∈ {1, 2, ∞}, plus the per-layer
  mean in amplitude dB;
* :func:`block_snr` — SNR under Gaussian noise (Eq 5.6), power dB, expectation inside the log;
* :func:`activation_sparsity`, :func:`filter_sparsity` — s(a) = ((‖a‖₁/‖a‖₂)² − 1)/(N − 1);
* :func:`conv_singular_values`, :func:`conv_spectra` — FFT singular values (circular padding);
* :func:`bn_statistics` — BatchNorm running statistics and affine parameters.

Conventions (the toolkit's): images are ``(N, 3, H, W)`` in [0, 1], any normalisation happens
inside the model. A model runs in eval mode under ``torch.no_grad``; every module's own
``training`` flag is restored afterwards and every hook removed, also when the forward raises.
Layers are found with ``isinstance``, so converted layers (``FeedbackConv2d``) and other
``nn.Conv2d`` subclasses count as ``nn.Conv2d``. Layers are keyed by their
``named_modules()`` name (``"<root>"`` for the model itself). Results are NumPy arrays and
Python floats, ready for plots (:mod:`retrieval_bio.eval.plots`) and JSON (after
``tolist()``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

#: Default layer types: f_l = conv outputs (PSR, §1.1) or inputs (SNR, §1.2).
CONV: tuple[type[nn.Module], ...] = (nn.Conv2d,)
#: Key of the model itself when it is one of the hooked types.
ROOT = "<root>"

Kinds = type[nn.Module] | tuple[type[nn.Module], ...]
WeightFn = Callable[[nn.Module], torch.Tensor]


# ---------------------------------------------------------------------------- hooks, modes


def _model_device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration; each module's own flag restored (a model in training may
    hold frozen sub-modules in eval, so ``model.train(was)`` would not be the same)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, was in modes:
            m.training = was


def _hooked_modules(model: nn.Module, kinds: Kinds) -> list[tuple[str, nn.Module]]:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return [(name or ROOT, m) for name, m in model.named_modules() if isinstance(m, kinds)]


@contextlib.contextmanager
def _capture(
    model: nn.Module, kinds: Kinds, where: str, record: Callable[[str, torch.Tensor], None]
) -> Iterator[list[str]]:
    """Hooks that pass each hooked module's output (or first input) to ``record``; yields
    the hooked names (in ``named_modules`` order). Hooks are removed on exit, always."""
    if where not in ("output", "input"):
        raise ValueError(f"where must be 'output' or 'input', not {where!r}")
    named = _hooked_modules(model, kinds)
    handles = []

    def make(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            value = output if where == "output" else (inputs[0] if inputs else None)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} ({type(module).__name__}): its {where} is "
                                f"{type(value).__name__}, not a tensor")
            # a copy: an in-place op after the module (ReLU(inplace=True) right after a conv)
            # would otherwise rewrite the recorded tensor before the forward returns
            record(name, value.detach().clone())
        return hook

    try:
        for name, m in named:
            handles.append(m.register_forward_hook(make(name)))
        yield [name for name, _ in named]
    finally:
        for h in handles:
            h.remove()


def layer_outputs(
    model: nn.Module, x: torch.Tensor, kinds: Kinds = CONV, where: str = "output"
) -> dict[str, torch.Tensor]:
    """Run ``model`` on ``x`` once and return what every hooked layer produced (or received).

    Args:
        model: any module; run in eval mode under ``torch.no_grad`` (modes restored after).
        x: input batch, e.g. images ``(N, 3, H, W)`` in [0, 1]; moved to the model's device.
        kinds: module type(s) to hook (``isinstance``: subclasses count).
        where: ``"output"`` (the module's output) or ``"input"`` (its first positional input).

    Returns:
        layer name -> detached tensor on the model's device, first dimension N, in
        ``named_modules`` order; a layer the forward did not call is absent. A module called
        several times in one forward (weight sharing, recurrent relaxations) keeps its *last*
        call, the one closest to the model's output.

    Raises:
        ValueError: ``where`` is neither ``"output"`` nor ``"input"``.
        TypeError: a hooked module's output/input is not a tensor.
    """
    found: dict[str, torch.Tensor] = {}

    def record(name: str, value: torch.Tensor) -> None:
        found[name] = value

    with _eval_mode(model), torch.no_grad(), _capture(model, kinds, where, record) as names:
        model(x.to(_model_device(model)))
    return {n: found[n] for n in names if n in found}


def _chunks(n: int, batch_size: int | None) -> list[slice]:
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    step = n if not batch_size else batch_size
    return [slice(i, min(i + step, n)) for i in range(0, n, max(step, 1))]


# ------------------------------------------------------------------------------------ PSR


def p_key(p: float | str) -> str:
    """Name of a norm order in results: ``1 -> "l1"``, ``2 -> "l2"``, ``inf -> "linf"`` (the
    toolkit's ``"l2"``/``"linf"`` spelling); a string is returned unchanged."""
    if isinstance(p, str):
        return p
    if math.isinf(p):
        return "linf"
    return f"l{p:g}"


def _p_value(p: float | str) -> float:
    if isinstance(p, str):
        s = p.lower().removeprefix("l")
        return math.inf if s in ("inf", "∞") else float(s)
    return float(p)


def perturbation_to_signal(
    model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
    p: Sequence[float | str] = (1, 2, math.inf), kinds: Kinds = CONV, *,
    where: str = "output", batch_size: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Perturbation-to-signal ratio per layer (seed 004 Eq 3.1, Figs 3.12-3.13).

    ``PSR_l(x) = ‖f_l(x + e) − f_l(x)‖_p / ‖f_l(x)‖_p`` per image, with f_l(x) flattened over
    all its non-batch dimensions and ``e = x_adv − x`` (an attack found against *this* model,
    e.g. PGD L∞ 8/255 from the toolkit's attacks with ``grad="exact"``). Default f_l: each
    ``Conv2d``'s output (before BN).

    Args:
        model: the model the attack was run against (eval mode, no grad; modes restored).
        x: clean images ``(N, 3, H, W)`` in [0, 1].
        x_adv: adversarial images, same shape.
        p: norm orders (1, 2, ``math.inf``, or their keys ``"l1"``, ``"l2"``, ``"linf"``).
        kinds: module type(s) whose output (``where``) is f_l.
        where: ``"output"`` or ``"input"`` of those modules.
        batch_size: images per forward (None: all at once); only memory depends on it.

    Returns:
        layer -> ``{"psr": {key: array (M,)}, "mean": {key: float}, "db": {key: float},
        "n_images": N, "n_skipped": N − M}`` with key = :func:`p_key` of each p (``"l1"``,
        ``"l2"``, ``"linf"``). ``psr`` holds the per-image ratios (dimensionless, for the
        histograms of Fig 3.12), ``mean`` their mean, ``db`` = 20·log10(mean) — amplitude dB
        of the mean *before* the log (Fig 3.13 uses ``db["l2"]``; the NT/AT ratio of means is
        ``mean_NT / mean_AT``, see :func:`psr_ratio`). Images whose clean signal f_l(x) is
        all zeros have no PSR: they are left out of every array and mean and counted in
        ``n_skipped`` (the same images for every p, a zero vector being zero in every norm).
        With no image left, means and dB are NaN.

    Raises:
        ValueError: ``x`` and ``x_adv`` differ in shape, or ``p`` is empty.
    """
    if x.shape != x_adv.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_adv {tuple(x_adv.shape)} differ in shape")
    orders = {p_key(q): _p_value(q) for q in p}
    if not orders:
        raise ValueError("p is empty")
    ratios: dict[str, dict[str, list[np.ndarray]]] = {}
    skipped: dict[str, int] = {}
    for sl in _chunks(x.shape[0], batch_size):
        clean = layer_outputs(model, x[sl], kinds, where)
        adv = layer_outputs(model, x_adv[sl], kinds, where)
        for name, f in clean.items():
            flat = f.flatten(1).double()
            delta = adv[name].flatten(1).double() - flat
            # a zero signal makes the ratio 0/0 or inf; every norm is zero together
            valid = (flat != 0).any(dim=1)
            skipped[name] = skipped.get(name, 0) + int((~valid).sum())
            per_p = ratios.setdefault(name, {k: [] for k in orders})
            for k, order in orders.items():
                num = torch.linalg.vector_norm(delta[valid], ord=order, dim=1)
                den = torch.linalg.vector_norm(flat[valid], ord=order, dim=1)
                per_p[k].append((num / den).cpu().numpy())
    out: dict[str, dict[str, Any]] = {}
    for name, per_p in ratios.items():
        psr = {k: np.concatenate(v) for k, v in per_p.items()}
        mean = {k: float(v.mean()) if v.size else math.nan for k, v in psr.items()}
        out[name] = {"psr": psr, "mean": mean,
                     "db": {k: amplitude_db(m) for k, m in mean.items()},
                     "n_images": int(x.shape[0]), "n_skipped": skipped[name]}
    return out


def amplitude_db(ratio: float) -> float:
    """20·log10(ratio) (amplitude dB); −inf for 0, NaN for NaN or a negative ratio."""
    if not ratio >= 0:
        return math.nan
    return -math.inf if ratio == 0 else 20.0 * math.log10(ratio)


def psr_ratio(
    psr_a: dict[str, dict[str, Any]], psr_b: dict[str, dict[str, Any]], p: float | str = 2
) -> dict[str, float]:
    """Per layer, ``mean PSR of a / mean PSR of b`` (e.g. a = naturally trained, b =
    adversarially trained: the NT/AT ratio of §1.1), for layers present in both results
    of :func:`perturbation_to_signal`; NaN where b's mean is 0 or NaN."""
    k = p_key(p)
    out = {}
    for name, a in psr_a.items():
        if name in psr_b:
            num, den = a["mean"][k], psr_b[name]["mean"][k]
            out[name] = num / den if den and not math.isnan(den) else math.nan
    return out


# ------------------------------------------------------------------------------------ SNR


def block_snr(
    model: nn.Module, x: torch.Tensor, sigma: float = 0.1, draws: int = 1, *,
    generator: torch.Generator | None = None, seed: int = 0, kinds: Kinds = CONV,
    where: str = "input", batch_size: int | None = None,
) -> dict[str, float]:
    """Signal-to-noise ratio of each block under Gaussian input noise (seed 004 Eq 5.6, Fig 5.6).

    ``SNR_n = 10·log10( E_{x,w}[ ‖f_n(x)‖₂² / ‖f_n(x + w) − f_n(x)‖₂² ] )`` dB, with
    ``w ~ N(0, σ²)`` per pixel and ``x + w`` clamped to [0, 1]. Power dB with the
    expectation *inside* the log, over images and draws: not the negative of
    :func:`perturbation_to_signal`'s dB (amplitude, mean of a ratio the other way up).
    Default f_n = the input of each ``Conv2d`` (the authors' code; the seed says "input of
    block n").

    Args:
        model: the model (eval mode, no grad; modes restored).
        x: clean images ``(N, 3, H, W)`` in [0, 1].
        sigma: noise standard deviation in [0, 1] pixel units.
        draws: noise draws per image (the seed's noise evaluation averages 3).
        generator: source of the noise; the global RNG is never used. For each chunk of
            images ``x[c]`` in order, and each draw in order, the noise is the next
            ``torch.randn(x[c].shape, generator=generator, dtype=x.dtype)``, made on the
            generator's device and then moved to the model's.
        seed: seeds a fresh CPU generator when ``generator`` is None.
        kinds, where: which tensors are f_n (default: ``Conv2d`` inputs).
        batch_size: images per forward (None: all at once).

    Returns:
        layer -> SNR in dB (float). A pair whose noise response is exactly zero contributes
        an infinite ratio (SNR = +inf: the layer removed the noise entirely); a pair with
        zero signal *and* zero response (0/0) is left out; a layer with no pair left is NaN.

    Raises:
        ValueError: ``draws < 1`` or ``sigma < 0``.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for sl in _chunks(x.shape[0], batch_size):
        xc = x[sl]
        clean = layer_outputs(model, xc, kinds, where)
        for _ in range(draws):
            w = torch.randn(xc.shape, generator=generator, dtype=xc.dtype,
                            device=generator.device)
            noisy = (xc + sigma * w.to(xc.device)).clamp(0.0, 1.0)
            f1 = layer_outputs(model, noisy, kinds, where)
            for name, f in clean.items():
                flat = f.flatten(1).double()
                signal = flat.square().sum(dim=1)
                noise = (f1[name].flatten(1).double() - flat).square().sum(dim=1)
                keep = (signal > 0) | (noise > 0)
                ratio = signal[keep] / noise[keep]  # noise 0, signal > 0: +inf, on purpose
                sums[name] = sums.get(name, 0.0) + float(ratio.sum())
                counts[name] = counts.get(name, 0) + int(keep.sum())
    return {name: power_db(sums[name] / counts[name]) if counts[name] else math.nan
            for name in sums}


def power_db(ratio: float) -> float:
    """10·log10(ratio) (power dB); −inf for 0, +inf for inf, NaN for NaN or negative."""
    if not ratio >= 0:
        return math.nan
    return -math.inf if ratio == 0 else 10.0 * math.log10(ratio)


# ------------------------------------------------------------------------------- sparsity


def sparsity_index(a: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``s(a) = ((‖a‖₁/‖a‖₂)² − 1)/(N − 1)`` along ``dim`` (N = ``a.shape[dim]``).

    (‖a‖₁/‖a‖₂)² lies in [1, N]: it is 1 when a has a single nonzero entry and N when all
    |a_i| are equal. So s = 0 means *one* nonzero entry (the sparsest) and s = 1 means all
    entries of equal magnitude (the densest, signs free): despite the name, larger s is
    *less* sparse. (Seed 004 Fig 5.4; it is not Hoyer's measure, which is 1 when sparse.)

    Returns:
        ``a`` reduced along ``dim`` (float64); NaN where ‖a‖₂ = 0 (undefined) and everywhere
        when N = 1.
    """
    a = a.double()
    n = a.shape[dim]
    l1 = a.abs().sum(dim=dim)
    l2 = a.square().sum(dim=dim).sqrt()
    if n < 2:
        return torch.full_like(l1, math.nan)
    s = ((l1 / l2).square() - 1.0) / (n - 1)
    return torch.where(l2 > 0, s, torch.full_like(s, math.nan))


def activation_sparsity(
    model: nn.Module, x: torch.Tensor, kinds: Kinds = CONV, *, where: str = "output",
    batch_size: int | None = None,
) -> dict[str, float]:
    """Mean activation sparsity per layer (seed 004 Fig 5.4), :func:`sparsity_index` of the
    channel vector a ∈ ℝ^C at each spatial location.

    Args:
        model: the model (eval mode, no grad; modes restored).
        x: images ``(N, 3, H, W)`` in [0, 1].
        kinds, where: which tensors ``(N, C, ...)`` to measure (default: ``Conv2d`` outputs;
            pass e.g. the block's activation type to measure after the nonlinearity). Every
            position of the trailing dimensions is a location; a ``(N, C)`` tensor has one.
        batch_size: images per forward (None: all at once).

    Returns:
        layer -> s averaged over all (image, location) pairs with ‖a‖₂ > 0, in [0, 1]
        (0: one active channel per location, 1: all channels equally active); NaN if no
        location is nonzero or C = 1.
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for sl in _chunks(x.shape[0], batch_size):
        for name, f in layer_outputs(model, x[sl], kinds, where).items():
            s = sparsity_index(f.flatten(2) if f.dim() > 2 else f.unsqueeze(-1), dim=1)
            s = s[~torch.isnan(s)]
            sums[name] = sums.get(name, 0.0) + float(s.sum())
            counts[name] = counts.get(name, 0) + s.numel()
    return {n: sums[n] / counts[n] if counts[n] else math.nan for n in sums}


def applied_weight(module: nn.Module) -> torch.Tensor:
    """The kernel a conv actually applies (detached): ``weight / filter_norms()`` per output
    filter for an implicitly weight-normalised conv (seed 004 Eq 5.1; any module with a
    ``filter_norms()`` method, e.g. :class:`retrieval_bio.models.hah.WNConv2d`), otherwise
    ``module.weight``. Its bias is left out: it does not change the linear part."""
    w = module.weight.detach()
    norms = getattr(module, "filter_norms", None)
    if callable(norms):
        # the division happens in forward, so `weight` alone would be off by a per-filter scale
        # that reshapes the spectrum (sparsity is scale-free and would not notice)
        with torch.no_grad():
            return w / norms().detach().to(w.dtype).view(-1, *([1] * (w.dim() - 1)))
    return w


def _weight(module: nn.Module, weight_fn: WeightFn | None) -> torch.Tensor:
    return (weight_fn(module) if weight_fn is not None else applied_weight(module)).detach()


def filter_normalised_weight(module: nn.Module, eps: float = 1e-6) -> torch.Tensor:
    """``w / (‖w_o‖₂ + eps)`` per output filter o: the weight of a conv with implicit weight
    normalisation (seed 004 Eq 5.1) computed from its raw ``weight``, for a layer that
    normalises in its forward without exposing ``filter_norms()`` (pass it as
    ``weight_fn``; :func:`applied_weight`, the default, already handles those that do)."""
    w = module.weight.detach()
    norm = w.flatten(1).norm(dim=1).view(-1, *([1] * (w.dim() - 1)))
    return w / (norm + eps)


def filter_sparsity(
    model: nn.Module, kinds: Kinds = CONV, *, weight_fn: WeightFn | None = None
) -> dict[str, list[float]]:
    """Per-filter :func:`sparsity_index` of every conv (seed 004 §3.2, Figs 3.18-3.19).

    Each output filter ``weight[o]`` of shape ``(C_in/groups, k_h, k_w)`` is one vector of
    d = C_in/groups·k_h·k_w entries. s is scale-free per filter, so a per-filter weight
    normalisation does not change it.

    Args:
        model: the model (only weights are read).
        kinds: layer types (default ``Conv2d``; any module with a ``weight`` whose first
            dimension indexes filters works, e.g. ``nn.Linear`` rows).
        weight_fn: module -> the weight it applies (default: :func:`applied_weight`).

    Returns:
        layer -> list of C_out floats in filter order, in [0, 1] (0: one nonzero tap,
        1: all taps of equal magnitude); NaN for an all-zero filter.
    """
    return {name: sparsity_index(_weight(m, weight_fn).flatten(1), dim=1).tolist()
            for name, m in _hooked_modules(model, kinds)}


# ------------------------------------------------------------------------ singular values


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    a, b = v
    return int(a), int(b)


def conv_singular_values(
    weight: torch.Tensor, input_size: int | Sequence[int], stride: int | Sequence[int] = 1,
    *, dilation: int | Sequence[int] = 1, groups: int = 1,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """All singular values of a 2-D convolution viewed as a linear map on the whole
    ``C_in×H×W`` input, by the FFT method (Sedghi, Gupta & Long 2019, Theorem 6).

    Exact for **circular** padding ("same" size: output H/s × W/s). For stride 1 the map is
    block-circulant; in the unitary Fourier basis it is block-diagonal with one
    ``C_out×C_in`` block per frequency (u, v), the 2-D DFT of the kernel zero-padded to H×W,
    so the singular values are the union of the blocks' ones. For stride s (dividing H and
    W) the subsampling folds the s_h·s_w frequencies ``(u + a·H/s_h, v + b·W/s_w)`` onto one
    output frequency; the block there is the ``C_out × (s_h·s_w·C_in)`` concatenation of
    their DFT blocks over √(s_h·s_w) — an exact extension of the same argument. Zero
    ("same") padding differs only at the borders; the FFT spectrum is then the usual
    approximation (seed 004 Figs 3.20-3.21 use it that way). Cross-correlation (PyTorch)
    and convolution, and any circular shift from the padding, give the same values.

    Args:
        weight: ``(C_out, C_in/groups, k_h, k_w)`` kernel (a conv's ``weight``).
        input_size: H or (H, W) of the layer's input. A kernel larger than the input wraps
            around (taps are added modulo H, W), as a circular conv does.
        stride: s or (s_h, s_w); each must divide the input size.
        dilation: kernel dilation (taps d apart).
        groups: the conv's groups (block-diagonal in channels).
        dtype: real dtype of the computation (float64 by default: tiny values stay exact).

    Returns:
        1-D tensor, sorted descending, of ``(H/s_h)·(W/s_w)·min(C_out, s_h·s_w·C_in)`` values
        (``H·W·min(C_out, C_in)`` for stride 1), on ``weight``'s device.

    Raises:
        ValueError: a stride does not divide the input size, or the shapes do not fit.
    """
    h, w = _pair(input_size)
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    if weight.dim() != 4:
        raise ValueError("weight must be (C_out, C_in/groups, k_h, k_w), "
                         f"got {tuple(weight.shape)}")
    if min(h, w, sh, sw, dh, dw, groups) < 1:
        raise ValueError("input size, stride, dilation and groups must be >= 1")
    if h % sh or w % sw:
        raise ValueError(f"stride {(sh, sw)} does not divide the input size {(h, w)}: the "
                         "FFT method needs whole alias groups (the subsampled map is not "
                         "shift-invariant otherwise)")
    c_out, c_in_g, kh, kw = weight.shape
    if c_out % groups:
        raise ValueError(f"C_out = {c_out} is not divisible by groups = {groups}")
    c_in = c_in_g * groups
    wt = weight.detach().to(dtype)
    if groups > 1:
        # the grouped conv is one conv whose kernel is zero between different groups
        dense = wt.new_zeros(c_out, c_in, kh, kw)
        step = c_out // groups
        for g in range(groups):
            rows = slice(g * step, (g + 1) * step)
            dense[rows, g * c_in_g:(g + 1) * c_in_g] = wt[rows]
        wt = dense
    # Place tap (i, j) at (i·d_h mod H, j·d_w mod W): zero-padding to H×W, with dilation, and
    # wrapping (a circular conv adds taps that land on the same pixel) in one step; fft2's own
    # `s=` would crop a kernel larger than the input instead.
    padded = wt.new_zeros(c_out, c_in, h, w)
    for i in range(kh):
        for j in range(kw):
            padded[:, :, (i * dh) % h, (j * dw) % w] += wt[:, :, i, j]
    spectrum = torch.fft.fft2(padded)  # (C_out, C_in, H, W) complex
    hr, wr = h // sh, w // sw
    # frequency u = a·(H/s_h) + u', so splitting H into (s_h, H/s_h) puts each alias group of
    # u' in the a index; the aliases become extra input columns of one block
    blocks = spectrum.reshape(c_out, c_in, sh, hr, sw, wr).permute(3, 5, 0, 2, 4, 1)
    blocks = blocks.reshape(hr * wr, c_out, sh * sw * c_in) / math.sqrt(sh * sw)
    values = torch.linalg.svdvals(blocks).flatten()
    return values.sort(descending=True).values


def conv_spectra(
    model: nn.Module, input_size: int | Sequence[int], kinds: Kinds = CONV, *,
    in_channels: int = 3, normalise: bool = True, weight_fn: WeightFn | None = None,
    dtype: torch.dtype = torch.float64,
) -> dict[str, np.ndarray]:
    """Singular values of every conv (:func:`conv_singular_values`), each layer at its own
    input size (seed 004 §3.2, Figs 3.20-3.21).

    The size each conv sees comes from one dry forward of a zero image ``(1, in_channels,
    H, W)`` with hooks on the convs' inputs (eval mode, no grad, modes restored).

    Args:
        model: the model.
        input_size: H or (H, W) of the model's input images.
        kinds: conv types (``nn.Conv2d`` and subclasses; each needs ``weight``, ``stride``,
            ``dilation`` and ``groups`` like ``nn.Conv2d``).
        in_channels: channels of the dry-run image.
        normalise: divide each layer's values by its largest one (the figures' scale).
        weight_fn: module -> the weight it applies (default :func:`applied_weight`, which
            divides by ``filter_norms()`` for implicitly weight-normalised convs).
        dtype: real dtype of the SVDs.

    Returns:
        layer -> float array, sorted descending (``H'·W'·min(C_out, s²·C_in)`` values for a
        layer whose input is H×W and stride s, H' = H/s); an all-zero kernel stays zeros.
        Convs the forward never called, or whose stride does not divide their input size,
        are left out with a ``RuntimeWarning``.
    """
    h, w = _pair(input_size)
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str, value: torch.Tensor) -> None:
        sizes[name] = (int(value.shape[-2]), int(value.shape[-1]))

    floats = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    probe = torch.zeros(1, in_channels, h, w, device=_model_device(model),
                        dtype=floats[0].dtype if floats else None)
    with _eval_mode(model), torch.no_grad(), _capture(model, kinds, "input", record):
        model(probe)
    out: dict[str, np.ndarray] = {}
    for name, m in _hooked_modules(model, kinds):
        if name not in sizes:
            warnings.warn(f"{name}: not called by the forward; no spectrum", RuntimeWarning,
                          stacklevel=2)
            continue
        stride = _pair(m.stride)
        if sizes[name][0] % stride[0] or sizes[name][1] % stride[1]:
            warnings.warn(f"{name}: stride {stride} does not divide its input size "
                          f"{sizes[name]}; no spectrum", RuntimeWarning, stacklevel=2)
            continue
        sv = conv_singular_values(_weight(m, weight_fn), sizes[name], stride,
                                  dilation=_pair(m.dilation), groups=int(m.groups),
                                  dtype=dtype).cpu()
        if normalise and sv.numel() and sv[0] > 0:
            sv = sv / sv[0]
        out[name] = sv.numpy()
    return out


# ------------------------------------------------------------------------------ BatchNorm


def bn_statistics(
    model: nn.Module, kinds: Kinds = (nn.BatchNorm2d,)
) -> dict[str, dict[str, np.ndarray | None]]:
    """BatchNorm running statistics and affine parameters per layer (seed 004 §3.2,
    Figs 3.14-3.17: histograms per BN layer).

    Returns:
        layer -> ``{"running_mean", "running_var", "weight" (γ), "bias" (β)}``, each a float
        array of C entries, or None where the layer has none (``affine=False``,
        ``track_running_stats=False``).
    """
    out: dict[str, dict[str, np.ndarray | None]] = {}
    for name, m in _hooked_modules(model, kinds):
        out[name] = {}
        for key in ("running_mean", "running_var", "weight", "bias"):
            t = getattr(m, key, None)
            out[name][key] = (t.detach().cpu().double().numpy()
                              if isinstance(t, torch.Tensor) else None)
    return out


__all__ = [
    "CONV", "ROOT", "activation_sparsity", "amplitude_db", "applied_weight", "block_snr",
    "bn_statistics", "conv_singular_values", "conv_spectra", "filter_normalised_weight",
    "filter_sparsity", "layer_outputs", "p_key", "perturbation_to_signal", "power_db",
    "psr_ratio", "sparsity_index",
]
