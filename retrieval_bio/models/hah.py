"""Hebbian/anti-Hebbian (HaH) blocks: implicit weight normalisation, divisive
normalisation, per-channel sparsification and a layer-local HaH objective (Cekic, Bakiskan
and Madhow, "Neuro-inspired deep neural networks with sparse, strong activations",
arXiv 2202.13074; seed 004, Bakiskan's thesis, ch. 5; methods/frontends.md §4).

A HaH block maps ``(N, C_in, H, W)`` to ``(N, C_out, H, W)``::

    y = ReLU(conv(x, w) / (‖w_k‖₂ + 1e-6))        implicit weight norm, per filter  (Eq 5.1)
    z = DN(y)                                      divisive normalisation           (Eq 5.2)
    out = z · [z > τ_k]                            top 20 % per image and channel    (Eq 5.3)

and, in a training forward, records its share of the objective (Eq 5.4, 5.5)::

    L = CE − Σ_b α_b · L_b,   L_b = mean over locations of
        [ mean(top-K channels of y) − λ · mean(the other N − K) ],   K = ⌈0.1 · N⌉

**Local loss protocol.** A module with a local loss has ``auxiliary_loss() -> Tensor | None``:
the term to *add* to the task objective (already weighted and signed, here ``−α_b · L_b``)
from its most recent forward in training mode with grad enabled, or ``None`` when that
forward was not a training forward. A trainer sums it over ``model.modules()`` after the
forward. Only the blocks define it (the nets do not), so nothing is counted twice.

**No cheating.** L_b must train only block b's own conv weights (else earlier layers can
inflate L_b by scaling or aligning the block input). It is computed on
``ReLU(WNConv(x.detach()))``, a second convolution of the detached block input in the same
forward, so its gradient cannot reach earlier blocks; the public code instead runs a second
train-mode forward and back-propagates each α_b·L_b layer by layer, zeroing grads in between
(which also updates BatchNorm statistics twice per step). The weight normalisation blocks the
other cheat, growing ‖w‖.

**Learning-rule conversion.** :class:`WNConv2d` overrides ``forward`` (the division by ‖w‖
lives there), so :func:`retrieval_bio.rules.convert` does not convert it: it logs
"keeps exact gradients" and leaves the layer a plain, back-propagating :class:`WNConv2d`.
Under ``fa`` / ``usf`` / ``frsf`` / ``brsf`` only the task head (an ``nn.Linear``) then gets
feedback weights; the HaH nets train their convs by backprop whatever the rule. Converting
the ``F.conv2d`` inside WNConv2d (B in place of w for the input gradient, exact weight
gradient through the norm) needs a change in ``rules/layers.py`` (see WNConv2d's docstring).

Pitfalls of the public code handled here (frontends.md §7, §8): ``kthvalue`` with k = 0 on
tiny maps (pitfall 10; the threshold keeps everything then), λ swallowed by ``**kwargs`` so
that λ = 1 was used (pitfall 11, [C7]; here λ defaults to the paper's 0.1), the seed's
channel-mean vs the code's 3×3 max-pooled suppression field in DN ([C6]; option ``field``),
and ``hah_count = 7`` counting pool entries, which means 6 HaH convs ([C5]; here
``hah_blocks`` counts convs).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import BACKBONES, BackboneSpec, WeightsNotFoundError

#: α_b of the paper's 6 HaH blocks of VGG-16 on CIFAR-10 (Eq 5.5).
PAPER_ALPHAS: tuple[float, ...] = (4.5e-3, 2.5e-3, 1.3e-3, 1e-3, 8e-4, 5e-4)
#: VGG-16's conv widths and where the 2×2/2 max-pools are ("M"), as in the public code.
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                    512, 512, 512, "M", 512, 512, 512, "M")
#: ``hah-small``: 4 convs, a pool after the 2nd and the 4th.
SMALL_CFG: tuple[int | str, ...] = (32, 32, "M", 64, 64, "M")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
#: beyond this many HaH blocks the paper's VGG did not converge (Fig 5.10).
MAX_CONVERGING_HAH_BLOCKS = 7
DN_FIELDS = ("max3", "mean")

# Relative tolerance for ⌈·⌉ / ⌊·⌋ of products that are integers in exact arithmetic but not in
# binary floating point: 0.28 · 25 = 7.000000000000001 would give K = 8, and
# (1 − 0.3) · 90 = 62.99999999999999 would give k = 62.
_ROUND_EPS = 1e-9


def _snap(x: float) -> float:
    """``x`` rounded to the nearest integer when within float error of it."""
    r = round(x)
    return float(r) if abs(x - r) <= _ROUND_EPS * max(1.0, abs(x)) else x


def num_winners(n_channels: int, k_frac: float) -> int:
    """K = ⌈k_frac · N⌉ of the HaH loss (at least 1, at most N): 7, 13, 26 for N = 64, 128,
    256 and k_frac = 0.1."""
    return min(n_channels, max(1, math.ceil(_snap(k_frac * n_channels))))


def threshold_rank(hw: int, keep: float) -> int:
    """k = ⌊(1 − keep) · H·W⌋ of :class:`ChannelThreshold` (the k-th smallest value is τ)."""
    return max(0, math.floor(_snap((1.0 - keep) * hw)))


class WNConv2d(nn.Conv2d):
    """``nn.Conv2d`` with implicit weight normalisation (Eq 5.1)::

        out[:, k] = conv(x, w)[:, k] / (‖w_k‖₂ + 1e-6)   (+ bias[k], not normalised)

    one Euclidean norm per output filter w_k (shape ``(C_in/groups, kh, kw)``); the parameter
    w itself is unconstrained, so the output is invariant to w → c·w, c > 0 (up to the
    1e-6). Input ``(N, C_in, H, W)``, output ``(N, C_out, H', W')`` as ``nn.Conv2d``.

    A subclass, so code that looks for convs (hooks, diagnostics, parameter groups) still
    finds it; the division is in ``forward`` so that every call, hooked or not, normalises.
    Because ``forward`` is its own, ``rules.convert`` leaves it unconverted (exact
    gradients; a warning is logged). To convert it, ``rules.layers.feedback_class`` would
    have to build ``(FeedbackConv2d, WNConv2d)`` with WNConv2d's forward calling
    ``FeedbackConv2d.forward`` for the raw convolution (:meth:`raw_conv` is the seam).
    """

    eps: float = 1e-6

    def filter_norms(self) -> torch.Tensor:
        """‖w_k‖₂ + eps per output filter, shape ``(C_out,)``, differentiable in w."""
        return torch.linalg.vector_norm(self.weight.flatten(1), dim=1) + self.eps

    def raw_conv(self, x: torch.Tensor) -> torch.Tensor:
        """The plain convolution with the unnormalised w, without bias."""
        return self._conv_forward(x, self.weight, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.raw_conv(x)
        out = out / self.filter_norms().to(out.dtype).view(1, -1, 1, 1)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype).view(1, -1, 1, 1)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_norm=implicit"


class DivisiveNormalization(nn.Module):
    """Divisive normalisation (Eq 5.2), ``(N, C, H, W) -> (N, C, H, W)``::

        z_k(loc) = y_k(loc) / (σ · M_max + (1 − σ) · M(loc) + 1e-7)

    with M_max = max over locations of M, per image, and the suppression field M

    * ``field="max3"`` (the public code): M(loc) = mean over channels of
      maxpool_{3×3, stride 1, pad 1}(|y|)(loc), a local L∞ pool;
    * ``field="mean"`` (the seed's Eq 5.2): M(loc) = mean over channels of y(loc).

    The two disagree [C6]; ``max3`` is the default because the reported numbers come from
    the code. Scaling y by c > 0 scales M and M_max by c, so z is invariant (up to the
    1e-7), i.e. the block's output does not depend on the scale of its input.
    """

    def __init__(self, sigma: float = 0.1, field: str = "max3", eps: float = 1e-7) -> None:
        super().__init__()
        if field not in DN_FIELDS:
            raise ValueError(f"unknown divisive-normalisation field {field!r}; "
                             f"choose one of {DN_FIELDS}")
        if not 0.0 <= sigma <= 1.0:
            raise ValueError(f"sigma must be in [0, 1], got {sigma}")
        self.sigma = float(sigma)
        self.field = field
        self.eps = float(eps)

    def suppression_field(self, y: torch.Tensor) -> torch.Tensor:
        """M, shape ``(N, 1, H, W)``."""
        if self.field == "max3":
            return F.max_pool2d(y.abs(), 3, stride=1, padding=1).mean(1, keepdim=True)
        return y.mean(1, keepdim=True)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        m = self.suppression_field(y)
        m_max = m.amax(dim=(2, 3), keepdim=True)
        return y / (self.sigma * m_max + (1.0 - self.sigma) * m + self.eps)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, field={self.field}"


class ChannelThreshold(nn.Module):
    """Per image and channel, keep the largest ``keep`` fraction of the map (Eq 5.3),
    ``(N, C, H, W) -> (N, C, H, W)``::

        out = z · [z > τ],   τ = the k-th smallest of the H·W values, k = ⌊(1 − keep)·H·W⌋

    (the code's ``FractionalThreshold``). Without ties exactly H·W − k entries survive.
    Ties: every entry equal to τ is dropped, so ties keep fewer; in particular the zeros a
    ReLU leaves are never kept, and a channel with fewer than H·W − k positive values keeps
    only those. When k = 0 (H·W < 1/(1 − keep), e.g. 1×1 maps) everything is kept: τ is
    undefined there and the code's ``kthvalue(k=0)`` raises (pitfall 10). The mask is a
    constant for autograd; gradients flow to the kept entries as through the identity.
    """

    def __init__(self, keep: float = 0.2) -> None:
        super().__init__()
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {keep}")
        self.keep = float(keep)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n, c, h, w = z.shape
        k = threshold_rank(h * w, self.keep)
        if k == 0:
            return z
        tau = z.detach().flatten(2).kthvalue(k, dim=2).values  # (N, C)
        return torch.where(z > tau[:, :, None, None], z, torch.zeros((), dtype=z.dtype,
                                                                     device=z.device))

    def extra_repr(self) -> str:
        return f"keep={self.keep:g}"


def hah_loss(y: torch.Tensor, k_frac: float = 0.1, lam: float = 0.1) -> torch.Tensor:
    """The HaH objective L_b of one block (Eq 5.4; to be *maximised*), a scalar.

    Args:
        y: the block's activations after the ReLU and before divisive normalisation,
            ``(N, C, H, W)``.
        k_frac: the fraction of channels that are "winners": K = ⌈k_frac · C⌉.
        lam: λ, the anti-Hebbian weight of the losers (0.1 in the paper and ``hahtorch``;
            the SparseStrongActivations code effectively used 1.0 [C7]).

    Returns:
        mean over the N·H·W locations of ``mean(top-K of y(loc)) − λ · mean(the rest)``
        (the rest's mean is 0 when K = C).
    """
    c = y.shape[1]
    k = num_winners(c, k_frac)
    top = y.topk(k, dim=1).values.sum(1)  # the order within the top-K does not matter
    total = y.sum(1)
    hebb = top / k
    anti = (total - top) / (c - k) if c > k else torch.zeros_like(top)
    return (hebb - lam * anti).mean()


class HaHBlock(nn.Module):
    """A HaH block, ``(N, C_in, H, W) -> (N, C_out, H, W)``: WNConv2d(3×3, pad 1, no bias)
    → ReLU → :class:`DivisiveNormalization` → :class:`ChannelThreshold`.

    Args:
        cin, cout: channels.
        alpha: α_b, the weight of this block's HaH term in L = CE − Σ α_b L_b.
        k_frac: winners' fraction K/C of the HaH loss (0.1).
        lam: λ of the HaH loss (0.1).
        sigma: σ of divisive normalisation (0.1).
        field: suppression field of divisive normalisation, ``"max3"`` or ``"mean"``.
        keep: fraction kept per channel by the threshold (0.2).

    In a training forward (``self.training`` and grad enabled) the block stores
    ``−α · hah_loss(ReLU(WNConv(x.detach())))`` for :meth:`auxiliary_loss`; the second
    convolution of the detached input gives the HaH term a gradient to this block's conv
    weight only (no cheating through earlier layers).
    """

    def __init__(self, cin: int, cout: int, alpha: float, k_frac: float = 0.1,
                 lam: float = 0.1, sigma: float = 0.1, field: str = "max3",
                 keep: float = 0.2) -> None:
        super().__init__()
        self.conv = WNConv2d(cin, cout, 3, padding=1, bias=False)
        self.dn = DivisiveNormalization(sigma, field)
        self.threshold = ChannelThreshold(keep)
        self.alpha = float(alpha)
        self.k_frac = float(k_frac)
        self.lam = float(lam)
        # A plain attribute, not a buffer: it holds an autograd graph of one step, must not
        # enter state dicts, and is overwritten (or cleared) by every forward.
        self._aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        if self.training and torch.is_grad_enabled():
            # WNConv2d.forward called directly (not through __call__) so that hooks on the
            # conv see one call per block forward, not the local loss's extra one.
            local = F.relu(WNConv2d.forward(self.conv, x.detach()))
            self._aux_loss = -self.alpha * hah_loss(local, self.k_frac, self.lam)
        else:
            self._aux_loss = None  # never hand a stale graph to a later training step
        return self.threshold(self.dn(y))

    def auxiliary_loss(self) -> torch.Tensor | None:
        """``−α · L_b`` from the last forward if it was a training forward, else None."""
        return self._aux_loss

    def __getstate__(self) -> dict:
        # copy.deepcopy / pickle of a model after a training step: a non-leaf tensor with a
        # graph cannot be deep-copied, and a copy must not share this step's graph anyway.
        state = dict(self.__dict__)
        state["_aux_loss"] = None
        return state

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, k_frac={self.k_frac:g}, lam={self.lam:g}"


class StdBlock(nn.Sequential):
    """The standard block of the HaH nets, ``(N, C_in, H, W) -> (N, C_out, H, W)``:
    WNConv2d(3×3, pad 1, no bias) → ReLU → BatchNorm2d (BN after the ReLU, as in the code)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(WNConv2d(cin, cout, 3, padding=1, bias=False), nn.ReLU(inplace=True),
                         nn.BatchNorm2d(cout))


class HaHNet(nn.Module):
    """A VGG-style stack of HaH and standard blocks with 2×2/2 max-pools; maps normalised
    images ``(N, 3, H, W)`` to the last feature map ``(N, C, H', W')``, or to ``(N, C, 1, 1)``
    with ``global_pool`` (the backbone flattens either).

    Args:
        cfg: conv widths and ``"M"`` for a max-pool, e.g. :data:`VGG16_CFG`.
        hah_blocks: the first ``hah_blocks`` convs are :class:`HaHBlock` s, the others
            :class:`StdBlock` s (0: the paper's baseline, weight-normalised convs everywhere).
        alphas: α of each HaH block (at least ``hah_blocks`` values; extra ones are unused).
        global_pool: end with a global average pool.
        block_kwargs: ``k_frac``, ``lam``, ``sigma``, ``field``, ``keep`` of every HaH block.
    """

    def __init__(self, cfg: Sequence[int | str], hah_blocks: int, alphas: Sequence[float],
                 *, in_channels: int = 3, global_pool: bool = False,
                 **block_kwargs: float | str) -> None:
        super().__init__()
        n_convs = sum(1 for v in cfg if v != "M")
        if not 0 <= hah_blocks <= n_convs:
            raise ValueError(f"hah_blocks must be in [0, {n_convs}], got {hah_blocks}")
        if len(alphas) < hah_blocks:
            raise ValueError(f"{hah_blocks} HaH blocks need {hah_blocks} alphas, "
                             f"got {len(alphas)}")
        layers: list[nn.Module] = []
        cin, i = in_channels, 0
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            cout = int(v)
            layers.append(HaHBlock(cin, cout, alphas[i], **block_kwargs) if i < hah_blocks
                          else StdBlock(cin, cout))
            cin, i = cout, i + 1
        if global_pool:
            layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.hah_blocks = hah_blocks
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _alphas(alphas: Sequence[float] | None, default: Sequence[float],
            hah_blocks: int) -> tuple[float, ...]:
    """The given α (at least ``hah_blocks`` values), or ``default`` extended by repeating
    its last value (a toolkit choice: the paper gives α only for its 6 blocks)."""
    if alphas is not None:
        return tuple(float(a) for a in alphas)
    a = tuple(default)
    return a + (a[-1],) * max(0, hah_blocks - len(a))


@BACKBONES.register("hah-vgg16")
def hah_vgg16(weights: str | None, *, image_size: int = 32, hah_blocks: int = 6,
              alphas: Sequence[float] | None = None, lam: float = 0.1, k_frac: float = 0.1,
              sigma: float = 0.1, dn_field: str = "max3", keep: float = 0.2) -> BackboneSpec:
    """VGG-16 with Hebbian/anti-Hebbian blocks (seed 004 ch. 5): the first 6 convs HaH,
    every conv weight-normalised; CIFAR-10 normalisation; 512 features at 32 px.

    ``hah_blocks`` in [0, 13] (0: the paper's weight-normalised baseline; more than 7 warns,
    the paper's net did not converge there). ``alphas`` default to the paper's six, the
    last repeated for blocks beyond the 6th. Needs ``image_size`` ≥ 32 (five 2×2 pools);
    features are 512·⌊image_size/32⌋² (the pools floor)."""
    if weights == "imagenet":
        raise WeightsNotFoundError("hah-vgg16 has no ImageNet weights; train it instead")
    if image_size < 32:
        raise ValueError(f"hah-vgg16 needs image_size >= 32 (five 2x2 pools), got {image_size}")
    if MAX_CONVERGING_HAH_BLOCKS < hah_blocks <= 13:  # beyond 13: HaHNet raises
        warnings.warn(f"hah-vgg16 with {hah_blocks} HaH blocks: the paper reports that more "
                      f"than {MAX_CONVERGING_HAH_BLOCKS} do not converge (Fig 5.10)",
                      stacklevel=2)
    net = HaHNet(VGG16_CFG, int(hah_blocks), _alphas(alphas, PAPER_ALPHAS, hah_blocks),
                 k_frac=k_frac, lam=lam, sigma=sigma, field=dn_field, keep=keep)
    side = image_size
    for v in VGG16_CFG:
        if v == "M":
            side //= 2
    return BackboneSpec(net, net.out_channels * side * side, mean=CIFAR10_MEAN,
                        std=CIFAR10_STD)


@BACKBONES.register("hah-small")
def hah_small(weights: str | None, *, image_size: int = 32, hah_blocks: int = 2,
              alphas: Sequence[float] | None = None, lam: float = 0.1, k_frac: float = 0.1,
              sigma: float = 0.1, dn_field: str = "max3", keep: float = 0.2) -> BackboneSpec:
    """CPU-sized HaH net: 4 weight-normalised convs (32, 32, 64, 64), pools after the 2nd
    and 4th, the first 2 HaH blocks, global average pool; 64 features, any image_size ≥ 4.

    ``alphas`` default to the first four of the paper's VGG values."""
    if weights == "imagenet":
        raise WeightsNotFoundError("hah-small has no ImageNet weights; train it instead")
    if image_size < 4:
        raise ValueError(f"hah-small needs image_size >= 4 (two 2x2 pools), got {image_size}")
    net = HaHNet(SMALL_CFG, int(hah_blocks), _alphas(alphas, PAPER_ALPHAS[:4], hah_blocks),
                 global_pool=True, k_frac=k_frac, lam=lam, sigma=sigma, field=dn_field,
                 keep=keep)
    return BackboneSpec(net, net.out_channels, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "DN_FIELDS", "PAPER_ALPHAS", "SMALL_CFG", "VGG16_CFG",
    "ChannelThreshold", "DivisiveNormalization", "HaHBlock", "HaHNet", "StdBlock",
    "WNConv2d", "hah_loss", "hah_small", "hah_vgg16", "num_winners", "threshold_rank",
]
