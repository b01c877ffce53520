"""Energy-based ConvNets relaxed to equilibrium, as trained by Equilibrium Propagation
(Scellier & Bengio 2017; the convolutional form of Ernoult et al. 2019 and Laborieux et al.
2021, Front. Neurosci.; seed 002, "How robust are energy-based models trained with
Equilibrium Propagation?"). The learner that trains them is
:class:`retrieval_bio.learners.ep.EquilibriumPropagation`.

The primitive function (maximised; the energy is −Φ), with s⁰ the normalised image and
P a 2×2/2 max-pool (or the identity for a layer without pool)::

    Φ(x, s) = Σ_n ⟨sⁿ, P(wₙ ⋆ sⁿ⁻¹ + bₙ)⟩              (summed over C, H, W)

Dynamics: synchronous fixed-point iteration from the zero state, ``s_{t+1} = σ(∂Φ/∂s_t)``
with σ(u) = clamp(u/2, 0, 1). Written out (the fast path; no autograd)::

    sⁿ_{t+1} = σ( P(wₙ ⋆ sⁿ⁻¹_t + bₙ) + wₙ₊₁ᵀ ⋆ U(sⁿ⁺¹_t; Iⁿ⁺¹_t) + [n = L]·nudge )

with Iⁿ⁺¹ the argmax indices of the pool of wₙ₊₁ ⋆ sⁿ, U the max-unpool and wᵀ⋆ a
transposed convolution without bias. The readout (the task head) is *outside* the
dynamics: it sees only the last layer s^L, and enters the relaxation through the nudge
−β ∂ℓ/∂s^L of a nudged phase.

As a backbone, the module maps a normalised image to ``flat(s^L)`` after relaxing. Which
relaxation depends on the gradient source an attack asks for (``gradient_mode``, entered by
:func:`retrieval_bio.attacks.base.gradient_mode`):

* outside any attack: ``t_eval`` steps (under ``torch.no_grad`` nothing is recorded; with
  gradients enabled the steps are recorded, i.e. backprop through time);
* ``"exact"``: an unroll of ``t_attack`` steps recorded for backprop through time (the
  gradient an attacker who has the weights computes; seed 002's "temporal PGD");
* ``"model"``: ``t_attack`` free steps, and a backward that is EP's own estimate of the
  input gradient from two nudged phases (ep.md §2.5), so the toolkit's exact-vs-model
  masking check applies to EP like to every learning rule.

Predictions and the scoring of attacks use ``t_eval`` (seed 002 scores at 250 steps).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

#: a nudge added to the last layer's drive: a fixed tensor shaped like s^L, or a function of
#: the current s^L returning one (e.g. −β ∂ℓ(head(s^L), y)/∂s^L, recomputed every step).
Nudge = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]

#: dynamics settings every EP net carries (config fields of the same names).
DYNAMICS = ("t_free", "t_nudge", "t_eval", "t_attack", "beta")


def sigma(u: torch.Tensor) -> torch.Tensor:
    """σ(u) = clamp(u/2, 0, 1) = ½(1 + hardtanh(u − 1)) (Laborieux's ``my_hard_sig``)."""
    return (0.5 * u).clamp(0.0, 1.0)


class EPConvNet(nn.Module):
    """The layers of neurons of an EP ConvNet and their relaxation.

    Args:
        in_channels: image channels (3).
        channels: output channels per layer, e.g. ``(128, 256, 512, 512)`` (seed 002 CIFAR-10).
        paddings: padding of each 3×3, stride-1 conv, e.g. ``(1, 1, 1, 0)``.
        pools: whether a 2×2/2 max-pool follows each conv (inside Φ).
        image_size: input height = width in px (fixes the state shapes and the number of
            features the readout sees).
        t_free: free-phase steps of a training step.
        t_nudge: steps of each nudged phase (training, and the ``"model"`` input gradient).
        t_eval: steps of a prediction (and of an attack's scoring).
        t_attack: steps of the unroll an attack differentiates.
        beta: nudging strength β (> 0) of the ``"model"`` input gradient; the learner uses
            the same β.

    Convs use PyTorch's default init (U(±1/√fan_in) for weights and biases), as both
    public codes do.
    """

    def __init__(
        self, in_channels: int = 3, channels: Sequence[int] = (128, 256, 512, 512),
        paddings: Sequence[int] = (1, 1, 1, 0), pools: Sequence[bool] = (True,) * 4, *,
        image_size: int = 32, t_free: int = 250, t_nudge: int = 30, t_eval: int = 250,
        t_attack: int = 70, beta: float = 0.5,
    ) -> None:
        super().__init__()
        channels, paddings, pools = list(channels), list(paddings), [bool(p) for p in pools]
        if not channels or not len(channels) == len(paddings) == len(pools):
            raise ValueError(f"channels, paddings and pools need one entry per layer, got "
                             f"{len(channels)}, {len(paddings)} and {len(pools)}")
        for name in ("t_free", "t_nudge", "t_eval", "t_attack"):
            value = locals()[name]
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta!r}")
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, 3, padding=p)
            for cin, cout, p in zip([in_channels, *channels[:-1]], channels, paddings,
                                    strict=True))
        self.pools = pools
        self.image_size = int(image_size)
        self.shapes = self.state_shapes(self.image_size, self.image_size)
        self.t_free, self.t_nudge = int(t_free), int(t_nudge)
        self.t_eval, self.t_attack = int(t_eval), int(t_attack)
        self.beta = float(beta)
        self._mode: str | None = None

    # -- shapes -----------------------------------------------------------------------

    def state_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """``[(C, H, W) of s¹, ..., of s^L]`` for an input of ``height × width`` px."""
        shapes = []
        for conv, pool in zip(self.convs, self.pools, strict=True):
            p = conv.padding[0]
            height, width = height + 2 * p - 2, width + 2 * p - 2
            if pool:
                height, width = height // 2, width // 2
            if height < 1 or width < 1:
                raise ValueError(f"a {self.image_size}-px input vanishes at layer "
                                 f"{len(shapes) + 1}; use a larger image_size")
            shapes.append((conv.out_channels, height, width))
        return shapes

    @property
    def num_features(self) -> int:
        """C·H·W of the last layer s^L (what the readout sees)."""
        c, h, w = self.shapes[-1]
        return c * h * w

    def zero_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The initial state: zeros for every layer, batch and dtype of ``x``."""
        shapes = self.state_shapes(*x.shape[-2:])
        return [x.new_zeros((x.shape[0], *s)) for s in shapes]

    # -- Φ and the dynamics ------------------------------------------------------------

    def _drive(self, n: int, inp: torch.Tensor):
        """Layer ``n``'s bottom-up drive P(wₙ ⋆ inp + bₙ), its pool indices (``None``
        without pool) and the pre-pool size."""
        a = self.convs[n](inp)
        if self.pools[n]:
            d, i = F.max_pool2d(a, 2, 2, return_indices=True)
            return d, i, a.shape[-2:]
        return a, None, a.shape[-2:]

    def _drives(self, x: torch.Tensor, states: Sequence[torch.Tensor], first=None):
        """Bottom-up drives of every layer, their pool indices and the pre-pool sizes;
        ``first``: layer 1's, when already known (it depends on x alone)."""
        out = [first if first is not None else self._drive(0, x)]
        out += [self._drive(n, s) for n, s in enumerate(states[:-1], start=1)]
        drives, indices, sizes = zip(*out, strict=True)
        return list(drives), list(indices), list(sizes)

    def phi(self, x: torch.Tensor, states: Sequence[torch.Tensor]) -> torch.Tensor:
        """Φ(x, s) per sample, ``(N,)``; ``x`` is the normalised image ``(N, C, H, W)``."""
        drives, _, _ = self._drives(x, states)
        return sum((s * d).flatten(1).sum(1) for s, d in zip(states, drives, strict=True))

    def step(self, x: torch.Tensor, states: Sequence[torch.Tensor],
             nudge: Nudge | None = None, *, first=None) -> list[torch.Tensor]:
        """One synchronous step s_{t+1} = σ(∂Φ/∂s_t) (+ the nudge on the last layer), by the
        explicit equations of the module docstring. Differentiable when grad is enabled.

        ``first``: layer 1's drive ``self._drive(0, x)``, which depends on the image alone;
        :meth:`relax` computes it once for all its steps."""
        drives, indices, sizes = self._drives(x, states, first)
        new = []
        last = len(states) - 1
        for n, d in enumerate(drives):
            if n < last:
                above = states[n + 1]
                if self.pools[n + 1]:
                    above = F.max_unpool2d(above, indices[n + 1], 2, 2,
                                           output_size=sizes[n + 1])
                conv = self.convs[n + 1]
                d = d + F.conv_transpose2d(above, conv.weight, padding=conv.padding)
            elif nudge is not None:
                d = d + (nudge(states[n]) if callable(nudge) else nudge)
            new.append(sigma(d))
        return new

    def step_autograd(self, x: torch.Tensor, states: Sequence[torch.Tensor],
                      nudge: Nudge | None = None) -> list[torch.Tensor]:
        """The same step from autograd of Φ (Laborieux's way): the reference the explicit
        equations are checked and timed against. Not differentiable itself."""
        with torch.enable_grad():
            s = [t.detach().requires_grad_(True) for t in states]
            grads = torch.autograd.grad(self.phi(x.detach(), s).sum(), s)
        grads = list(grads)
        if nudge is not None:
            grads[-1] = grads[-1] + (nudge(states[-1]) if callable(nudge) else nudge)
        return [sigma(g) for g in grads]

    def relax(self, x: torch.Tensor, steps: int, states: Sequence[torch.Tensor] | None = None,
              nudge: Nudge | None = None) -> list[torch.Tensor]:
        """``steps`` synchronous steps from ``states`` (default: zeros); returns the states.

        Recorded for backprop through time when grad is enabled; wrap in
        ``torch.no_grad()`` for a free or nudged phase.
        """
        s = self.zero_states(x) if states is None else list(states)
        first = self._drive(0, x) if steps > 0 else None
        for _ in range(int(steps)):
            s = self.step(x, s, nudge, first=first)
        return s

    def input_gradient_of_phi(self, x: torch.Tensor,
                              states: Sequence[torch.Tensor]) -> torch.Tensor:
        """∂Φ/∂x at fixed states, ``(N, C, H, W)``: one transposed conv of U(s¹)."""
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.phi(xr, [s.detach() for s in states]).sum(), xr)
        return g

    # -- forward --------------------------------------------------------------------------

    @contextlib.contextmanager
    def gradient_mode(self, source: str) -> Iterator[None]:
        """What an attack differentiates (see the module docstring): ``"exact"`` unrolls
        ``t_attack`` steps for backprop through time, ``"model"`` uses EP's estimate."""
        before, self._mode = self._mode, source
        try:
            yield
        finally:
            self._mode = before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(N, C, H, W)`` -> the relaxed last layer s^L ``(N, C_L, H_L,
        W_L)`` (see the module docstring for which relaxation)."""
        if self._mode == "model" and torch.is_grad_enabled():
            return _EquilibriumInputGradient.apply(x, self)
        steps = self.t_eval if self._mode is None else self.t_attack
        return self.relax(x, steps)[-1]

    def extra_repr(self) -> str:
        return (f"pools={self.pools}, image_size={self.image_size}, t_free={self.t_free}, "
                f"t_nudge={self.t_nudge}, t_eval={self.t_eval}, t_attack={self.t_attack}, "
                f"beta={self.beta:g}")


def set_attack_steps(model: nn.Module, steps: int | None) -> dict[str, int]:
    """Set ``t_attack`` of every :class:`EPConvNet` in ``model`` (``None``: keep theirs).

    Returns:
        ``{"t_attack": ..., "t_eval": ...}`` of the (first) EP net, for a report's
        provenance; ``{}`` for a model without one.
    """
    nets = [m for m in model.modules() if isinstance(m, EPConvNet)]
    for net in nets:
        if steps is not None:
            net.t_attack = int(steps)
    return {"t_attack": nets[0].t_attack, "t_eval": nets[0].t_eval} if nets else {}


class _EquilibriumInputGradient(torch.autograd.Function):
    """Forward: ``t_attack`` free steps (no graph). Backward: EP's estimate of the
    vector–Jacobian product ``gᵀ ∂s^L/∂x`` for the incoming gradient g = ∂L/∂s^L.

    Nudging the last layer by ∓β·u (u = g/‖g‖ per image, so that β has the scale it has in
    training whatever the loss's reduction) from the free state for ``t_nudge`` steps gives
    s^{±β}; then ∂L/∂x ≈ −‖g‖/(2β)·[∂Φ/∂x(s^{+β}) − ∂Φ/∂x(s^{−β})] (ep.md §2.5; exact as
    β → 0 at a fixed point). Images are independent in the dynamics, so per-image scaling
    is exact. No parameter gradients are produced.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, net: EPConvNet) -> torch.Tensor:  # type: ignore[override]
        with torch.no_grad():
            free = net.relax(x, net.t_attack)
        ctx.net, ctx.free = net, free
        ctx.save_for_backward(x)
        return free[-1].clone()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        net: EPConvNet = ctx.net
        norm = grad_out.flatten(1).norm(dim=1).view(-1, *([1] * (grad_out.ndim - 1)))
        u = grad_out / norm.clamp_min(torch.finfo(grad_out.dtype).tiny)
        with torch.no_grad():
            pos = net.relax(x, net.t_nudge, ctx.free, nudge=-net.beta * u)
            neg = net.relax(x, net.t_nudge, ctx.free, nudge=net.beta * u)
        gx = net.input_gradient_of_phi(x, pos) - net.input_gradient_of_phi(x, neg)
        norm = norm.view(-1, *([1] * (x.ndim - 1)))
        return -gx * norm / (2 * net.beta), None


#: Seed 002's nets (ep.md §1.1, §1.6) and a digits-sized one (ep.md §3.4). ``std`` of
#: CIFAR-10 is 3x the data's (inherited from Laborieux; keeps the input drive of the
#: hard-sigmoid units small); CIFAR-100's is the data's own. ``small`` sees raw [0, 1]
#: pixels at 16 px and relaxes in far fewer steps (accuracy saturates by t ≈ 20 there).
EP_PRESETS: dict[str, dict] = {
    "cifar10": dict(
        channels=(128, 256, 512, 512), paddings=(1, 1, 1, 0), pools=(True,) * 4,
        mean=(0.4914, 0.4822, 0.4465), std=(3 * 0.2023, 3 * 0.1994, 3 * 0.2010),
        image_size=32, t_free=250, t_nudge=30, t_eval=250, t_attack=70, beta=0.5),
    "cifar100": dict(
        channels=(128, 256, 512, 1024), paddings=(1, 1, 1, 0), pools=(True,) * 4,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
        image_size=32, t_free=250, t_nudge=30, t_eval=250, t_attack=70, beta=1.0),
    "small": dict(
        channels=(16, 32), paddings=(1, 1), pools=(True, True),
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        image_size=16, t_free=30, t_nudge=10, t_eval=40, t_attack=20, beta=0.5),
}


class ConvPoolNet(nn.Module):
    """Seed 002's BP-CNN baseline: the topology of an :class:`EPConvNet` run feed-forward,
    each layer Conv(3×3, no bias) → BatchNorm → ReLU → MaxPool 2×2/2 (where the EP net
    pools). Maps a normalised image to its last feature map."""

    def __init__(self, in_channels: int, channels: Sequence[int], paddings: Sequence[int],
                 pools: Sequence[bool]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout, p, pool in zip([in_channels, *channels[:-1]], channels, paddings, pools,
                                      strict=True):
            layers += [nn.Conv2d(cin, cout, 3, padding=p, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2, 2))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
