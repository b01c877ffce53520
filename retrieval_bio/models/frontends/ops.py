"""Non-differentiable operations of the structural front ends, each with a declared backward.

A quantiser, a top-T selection and a dropout mask have a zero or undefined gradient almost
everywhere, so a plain gradient attack through them sees nothing and reports a robustness
that is not there (obfuscated gradients, Athalye, Carlini & Wagner 2018). Each op here keeps
its true forward and lets the attacker choose its backward (BPDA):

================  =====================================================================
op (``kind``)     backward modes
================  =====================================================================
``quantizer``     ``autograd``: the true derivative, 0 almost everywhere (the obfuscated
                  reference); ``identity``: straight-through; ``smooth``: the derivative
                  of ½·Σ_i tanh(s·(z − c_i)) with steepness s (seed 004 App. B.4)
``topk``          ``autograd``: the mask of the T kept entries; ``identity``; ``top_u``:
                  the mask of the U ≥ T largest entries (seed 004 App. B.5, U = 2T)
``dropout``       ``autograd``: the drawn mask; ``identity``
================  =====================================================================

:func:`bpda` sets the modes of every op of a model for the duration of a block, like
:func:`retrieval_bio.rules.exact_gradients` sets the feedback path; it nests and restores.
Modes live on the op instances, never on classes (the authors' code kept the steepness in a
class attribute shared by every instance, seed 004 §7.6).

Randomness (:class:`CoeffDropout`): each op owns a ``torch.Generator`` seeded once, and
:meth:`CoeffDropout.reseed` restarts it. Masks are drawn on the CPU and moved, so a seed gives
the same masks on every device; the global RNG is never read or reseeded (the authors'
``torch.manual_seed`` inside ``forward`` made every draw identical, seed 004 §7.3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

#: op kind -> backward modes it implements (the first is the true gradient)
BACKWARDS: dict[str, tuple[str, ...]] = {
    "quantizer": ("autograd", "identity", "smooth"),
    "topk": ("autograd", "identity", "top_u"),
    "dropout": ("autograd", "identity"),
}

#: Named BPDA settings (``attack ... --bpda NAME``): ``none`` differentiates every op as it
#: is (the obfuscated number); ``identity`` passes the gradient straight through every op;
#: ``smooth`` is seed 004's strongest white-box setting: a tanh staircase for quantisers,
#: top-U for top-T, the drawn mask for dropout.
BPDA_PRESETS: dict[str, dict[str, str]] = {
    "none": {"quantizer": "autograd", "topk": "autograd", "dropout": "autograd"},
    "identity": {"quantizer": "identity", "topk": "identity", "dropout": "identity"},
    "smooth": {"quantizer": "smooth", "topk": "top_u", "dropout": "autograd"},
}


class BPDAOp(nn.Module):
    """Base of an op with a selectable backward; subclasses set ``kind``."""

    kind = "op"

    def __init__(self, backward: str = "autograd") -> None:
        super().__init__()
        self.backward_mode = backward

    @property
    def backward_mode(self) -> str:
        return self._backward

    @backward_mode.setter
    def backward_mode(self, mode: str) -> None:
        if mode not in BACKWARDS[self.kind]:
            raise ValueError(f"{self.kind} backward must be one of {BACKWARDS[self.kind]}, "
                             f"got {mode!r}")
        self._backward = mode

    def extra_repr(self) -> str:
        return f"backward={self._backward!r}"


# -- quantiser ------------------------------------------------------------------------------

class _Quantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, thresholds, mode, steepness):  # noqa: ANN001, ANN205
        ctx.save_for_backward(z, thresholds)
        ctx.mode, ctx.steepness = mode, steepness
        # ½·Σ sgn(z − c_i) with sgn(0) = +1: levels −L/2 ... +L/2 in unit steps
        return 0.5 * torch.where(z.unsqueeze(-1) >= thresholds, 1.0, -1.0).to(z.dtype).sum(-1)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        z, thresholds = ctx.saved_tensors
        if ctx.mode == "autograd":
            return torch.zeros_like(grad), None, None, None
        if ctx.mode == "identity":
            return grad, None, None, None
        s = ctx.steepness
        # d/dz ½·Σ tanh(s(z − c_i)) = ½·s·Σ (1 − tanh²)
        t = torch.tanh(s * (z.unsqueeze(-1) - thresholds))
        return grad * (0.5 * s * (1 - t * t)).sum(-1), None, None, None


class Quantizer(BPDAOp):
    """The staircase quantiser f(z) = ½·Σ_i sgn(z − c_i) (seed 004 Eq 4.2), sgn(0) = +1.

    With ``thresholds=(-c, c)`` it is the ternary quantiser of Eq 4.3, output in {−1, 0, +1}
    (|z| ≥ c keeps its sign, anything nearer 0 becomes 0); with a scale it is the dead-zone
    sign quantiser of the sparse-coding encoder (Eq 4.6). Shape-preserving, any shape.

    Args:
        thresholds: the c_i, increasing.
        backward: ``autograd`` (0: the obfuscated gradient), ``identity`` or ``smooth``.
        steepness: s of the smooth backward ½·Σ tanh(s(z − c_i)) (seed 004: 4; the
            polarizing code: 8).
    """

    kind = "quantizer"

    def __init__(self, thresholds: Sequence[float], *, backward: str = "autograd",
                 steepness: float = 4.0) -> None:
        super().__init__(backward)
        c = [float(v) for v in thresholds]
        if not c or c != sorted(c):
            raise ValueError(f"thresholds must be a non-empty increasing list, got {c}")
        if steepness <= 0:
            raise ValueError(f"steepness must be > 0, got {steepness}")
        self.register_buffer("thresholds", torch.tensor(c), persistent=False)
        self.steepness = float(steepness)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _Quantize.apply(z, self.thresholds.to(z.dtype), self._backward, self.steepness)

    def extra_repr(self) -> str:
        return (f"thresholds={self.thresholds.tolist()}, steepness={self.steepness:g}, "
                f"{super().extra_repr()}")


# -- top-T ----------------------------------------------------------------------------------

class _MaskedPass(torch.autograd.Function):
    """Forward ``x * keep``; backward ``grad * through`` (``through`` None: identity)."""

    @staticmethod
    def forward(ctx, x, keep, through):  # noqa: ANN001, ANN205
        ctx.save_for_backward(through)
        ctx.identity = through is None
        return x * keep

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        if ctx.identity:
            return grad, None, None
        (through,) = ctx.saved_tensors
        return grad * through, None, None


def top_mask(x: torch.Tensor, k: int, dim: int = 1) -> torch.Tensor:
    """A {0, 1} mask of ``x``'s shape marking the ``k`` entries of largest |x| along ``dim``
    (all of them when ``k`` ≥ the size of ``dim``)."""
    n = x.shape[dim]
    if k >= n:
        return torch.ones_like(x)
    idx = x.abs().topk(k, dim=dim).indices
    return torch.zeros_like(x).scatter_(dim, idx, 1.0)


class TopT(BPDAOp):
    """Keep the T entries of largest magnitude along the channel dimension, with their sign,
    and zero the rest (seed 004 §4.2 step 1; the stochastic-encoder code dropped the sign,
    §7.1, which this does not). Input ``(N, L, H, W)``: T of L coefficients per location.

    Args:
        t: T, entries kept per location.
        backward: ``autograd`` (the mask of the T kept), ``identity`` or ``top_u`` (the mask
            of the U = ``u_factor``·T largest, seed 004 App. B.5).
        u_factor: U / T of the top-U backward.
    """

    kind = "topk"

    def __init__(self, t: int, *, backward: str = "autograd", u_factor: float = 2.0) -> None:
        super().__init__(backward)
        if t < 1:
            raise ValueError(f"T must be >= 1, got {t}")
        if u_factor < 1:
            raise ValueError(f"u_factor must be >= 1 (U >= T), got {u_factor}")
        self.t = int(t)
        self.u_factor = float(u_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            keep = top_mask(x, self.t)
            through = {"autograd": keep, "identity": None,
                       "top_u": top_mask(x, max(self.t, round(self.u_factor * self.t)))
                       }[self._backward]
        return _MaskedPass.apply(x, keep, through)

    def extra_repr(self) -> str:
        return f"t={self.t}, u_factor={self.u_factor:g}, {super().extra_repr()}"


# -- dropout --------------------------------------------------------------------------------

class CoeffDropout(BPDAOp):
    """Zero each entry with probability p, at training *and* test time, without rescaling
    the survivors (seed 004 Eq 4.5: the code undoes F.dropout's 1/(1−p)).

    The mask comes from the op's own generator (seeded with ``seed``; :meth:`reseed`
    restarts it), drawn on the CPU, so draws are reproducible per seed on any device, differ
    from one forward to the next (EOT samples, ensemble members) and never touch the global
    RNG. ``p = 0`` is the identity (the non-random defence).

    Args:
        p: drop probability in [0, 1).
        seed: the generator's seed.
        backward: ``autograd`` (the drawn mask) or ``identity``.
    """

    kind = "dropout"

    def __init__(self, p: float, *, seed: int = 0, backward: str = "autograd") -> None:
        super().__init__(backward)
        if not 0 <= p < 1:
            raise ValueError(f"dropout p must lie in [0, 1), got {p}")
        self.p = float(p)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def reseed(self, seed: int | None = None) -> None:
        """Restart the mask generator from ``seed`` (default: the op's own seed)."""
        self.generator.manual_seed(self.seed if seed is None else int(seed))

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        # saved with the weights, so a resumed run continues the same sequence of masks
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0:
            return x
        keep = (torch.rand(x.shape, generator=self.generator) >= self.p).to(x.device, x.dtype)
        return _MaskedPass.apply(x, keep, keep if self._backward == "autograd" else None)

    def extra_repr(self) -> str:
        return f"p={self.p:g}, seed={self.seed}, {super().extra_repr()}"


# -- model-wide controls --------------------------------------------------------------------

def bpda_ops(model: nn.Module) -> list[BPDAOp]:
    """Every op of ``model`` with a selectable backward, in ``modules()`` order."""
    return [m for m in model.modules() if isinstance(m, BPDAOp)]


def has_bpda_ops(model: nn.Module) -> bool:
    """``model`` holds an op whose true gradient is zero or undefined (quantiser, top-T,
    dropout mask): a plain gradient attack on it needs BPDA beside it."""
    return bool(bpda_ops(model))


def is_stochastic(model: nn.Module) -> bool:
    """``model``'s forward draws randomness (a dropout with p > 0): attacks need EOT."""
    return any(isinstance(m, CoeffDropout) and m.p > 0 for m in model.modules())


def reseed(model: nn.Module, seed: int) -> None:
    """Restart every random op of ``model`` from ``seed`` (op i: ``seed + i``), so a call
    (an attack, an evaluation) sees the same draws every time it runs."""
    ops = [m for m in model.modules() if isinstance(m, CoeffDropout)]
    for i, op in enumerate(ops):
        op.reseed(seed + i)


def resolve_bpda(spec: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """A BPDA setting as a mapping ``{kind: mode, "steepness": s, "u_factor": u}``: ``None``
    and ``"none"`` are the true gradients; a name of :data:`BPDA_PRESETS`; or a mapping
    (a preset's name under ``"preset"`` plus overrides, or kinds alone)."""
    if spec is None:
        return dict(BPDA_PRESETS["none"])
    if isinstance(spec, str):
        if spec not in BPDA_PRESETS:
            raise ValueError(f"unknown BPDA setting {spec!r}; choose one of "
                             f"{', '.join(BPDA_PRESETS)} or give a mapping of op kinds "
                             f"({', '.join(BACKWARDS)}) to modes")
        return dict(BPDA_PRESETS[spec])
    spec = dict(spec)
    out = resolve_bpda(spec.pop("preset", "none"))
    for key, value in spec.items():
        if key in ("steepness", "u_factor"):
            out[key] = float(value)
        elif key in BACKWARDS:
            if value not in BACKWARDS[key]:
                raise ValueError(f"bpda {key}={value!r}: choose one of {BACKWARDS[key]}")
            out[key] = value
        else:
            raise ValueError(f"unknown bpda key {key!r}; use {', '.join(BACKWARDS)}, "
                             f"steepness, u_factor or preset")
    return out


def describe_bpda(spec: str | Mapping[str, Any] | None) -> str:
    """A short name of a BPDA setting (a preset's name when it is one)."""
    full = resolve_bpda(spec)
    for name, preset in BPDA_PRESETS.items():
        if full == preset:
            return name
    return ",".join(f"{k}={v}" for k, v in full.items())


@contextlib.contextmanager
def bpda(model: nn.Module, spec: str | Mapping[str, Any] | None = "identity"
         ) -> Iterator[nn.Module]:
    """Within the block, every op of ``model`` back-propagates as ``spec`` says (see
    :func:`resolve_bpda`); forward and backward must both run inside. Nests; each op gets
    back its own mode and settings on exit.

    Example::

        with bpda(model, "identity"):
            loss = F.cross_entropy(model(x), y)
            (g,) = torch.autograd.grad(loss, x)
    """
    full = resolve_bpda(spec)
    ops = bpda_ops(model)
    previous = [(op, op.backward_mode, getattr(op, "steepness", None),
                 getattr(op, "u_factor", None)) for op in ops]
    try:
        for op in ops:
            op.backward_mode = full[op.kind]
            if "steepness" in full and isinstance(op, Quantizer):
                op.steepness = full["steepness"]
            if "u_factor" in full and isinstance(op, TopT):
                op.u_factor = full["u_factor"]
        yield model
    finally:
        for op, mode, steepness, u_factor in previous:
            op.backward_mode = mode
            if steepness is not None:
                op.steepness = steepness
            if u_factor is not None:
                op.u_factor = u_factor
