"""A fully connected backbone (``mlp``): the network of PEPITA's papers, usable by every
learner, rule and attack.

Seed 000 §3.1 / Dellaferrera & Kreiman (ICML 2022): the flattened image x in [0, 1] (no
mean/std normalisation), hidden layers ``h_l = m_l ⊙ ReLU(W_l h_{l-1} + b_l)`` with inverted
dropout masks m_l, then the task head (a Linear layer to C logits). Weights start He-uniform,
``U(-sqrt(6 / fan_in), +sqrt(6 / fan_in))``, the head included; biases start at 0.

``grey=True`` averages the three channels into one, so MNIST / Fashion-MNIST (which the
toolkit's loaders copy to three channels) give the 784 inputs of the papers: three copies
would change the He and feedback scales. Averaging (rather than reading channel 0) keeps the
threat model of the papers exactly: an L∞ change of ε to the three copies moves the grey
pixel by at most ε, and every input gets a gradient, so no input looks masked.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn


def flat_inputs(x: torch.Tensor, in_features: int, grey: bool, name: str) -> torch.Tensor:
    """``(N, C, H, W)`` images -> ``(N, in_features)``: the channel mean when ``grey``, then
    flattened; a size that does not match names the net and the fix."""
    if grey:
        x = x.mean(1, keepdim=True)
    flat = x.flatten(1)
    if flat.shape[1] != in_features:
        raise ValueError(
            f"{name} expects {in_features} inputs per image but got {flat.shape[1]} "
            f"({tuple(x.shape[1:])}); build it with the run's image_size and grey option")
    return flat


class SharedDropout(nn.Module):
    """Inverted dropout (keep with probability 1 − p, kept units scaled by 1/(1 − p)) whose
    mask can be held across forward passes: inside :func:`shared_masks` the first pass
    draws the mask and later passes reuse it (PEPITA's two passes share one mask).

    Masks come from the global torch RNG (which the trainer checkpoints, so a resumed run
    draws the same masks). Identity in eval mode or at ``p = 0``.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {p}")
        self.p = float(p)
        self._hold = False
        self._mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = self._mask
        if mask is None or mask.shape != x.shape:
            mask = torch.empty_like(x).bernoulli_(1.0 - self.p).div_(1.0 - self.p)
            if self._hold:
                self._mask = mask
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


@contextlib.contextmanager
def shared_masks(module: nn.Module) -> Iterator[None]:
    """Every :class:`SharedDropout` in ``module`` draws one mask on its first forward
    pass inside this block and reuses it until the block ends."""
    drops = [m for m in module.modules() if isinstance(m, SharedDropout)]
    for d in drops:
        d._hold, d._mask = True, None
    try:
        yield
    finally:
        for d in drops:
            d._hold, d._mask = False, None


def he_uniform_(layer: nn.Linear) -> None:
    """W ~ U(±sqrt(6 / fan_in)) (He et al. 2015, uniform), bias 0: seed 000's init."""
    bound = math.sqrt(6.0 / layer.in_features)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound)
        if layer.bias is not None:
            layer.bias.zero_()


class MLP(nn.Module):
    """Flatten, then ``[Linear -> ReLU -> SharedDropout] x len(hidden)``.

    Args:
        in_features: inputs after flattening (``channels * image_size**2``).
        hidden: widths of the hidden layers (seed 000: one layer of 1024).
        dropout: drop probability of every hidden layer (seed 000: 0.1).
        bias: hidden layers have biases.
        grey: average the channels of the ``(N, 3, H, W)`` input into one.

    ``forward`` maps images ``(N, 3, H, W)`` in [0, 1] to the last hidden layer
    ``(N, hidden[-1])``; :meth:`inputs` and :meth:`hidden_states` expose the pieces a
    layer-local learner (PEPITA) needs.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (1024,), dropout: float = 0.1,
                 bias: bool = True, grey: bool = False) -> None:
        super().__init__()
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty list of positive widths, got "
                             f"{list(hidden)}")
        self.grey = bool(grey)
        widths = [int(in_features), *map(int, hidden)]
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=bias)
                                     for a, b in zip(widths, widths[1:], strict=False))
        self.drops = nn.ModuleList(SharedDropout(dropout) for _ in hidden)
        for layer in self.linears:
            he_uniform_(layer)

    @property
    def in_features(self) -> int:
        """Inputs per image: the first layer's (a front end may rebuild that layer)."""
        return self.linears[0].in_features

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` images -> the flat input ``(N, in_features)``."""
        return flat_inputs(x, self.in_features, self.grey, "mlp")

    def hidden_states(self, flat: torch.Tensor, first: torch.Tensor | None = None
                      ) -> list[torch.Tensor]:
        """Every hidden layer's output ``h_l = m_l ⊙ ReLU(W_l h_{l-1} + b_l)``.

        ``first``: the first layer's pre-activation ``W_1 x + b_1`` when the caller already
        has it (PEPITA gets its second pass's cheaply from the first's)."""
        states = []
        h = flat
        for i, (layer, drop) in enumerate(zip(self.linears, self.drops, strict=True)):
            a = first if i == 0 and first is not None else layer(h)
            h = drop(torch.relu(a))
            states.append(h)
        return states

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden_states(self.inputs(x))[-1]

    def extra_repr(self) -> str:
        return f"grey={self.grey}"
