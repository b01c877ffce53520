"""The polarizing front end (seed 004 ch. 4.1; Bakiskan, Cekic & Madhow, ICASSP 2020).

An ℓ1-normalised convolution followed by a ternary quantiser. Because pixels lie in [0, 1],
z_k = (w_k ⋆ x) / ‖w_k‖₁ lies in [−1, 1] and an L∞ perturbation of size ε moves it by at
most ε (Hölder: |w_kᵀe| ≤ ε‖w_k‖₁); training pushes z away from the quantiser's thresholds
±c, so a small perturbation cannot change the quantised code (Proposition 1: clusters more
than 2ε apart with thresholds at their midpoints eliminate the perturbation).

Training is three stages (seed 004 §4.1, the authors' code ``polarizing-frontend@24f5b25``):

=====  ==================  =============  ======================  ========================
stage  epochs (default)    front end      classifier sees         regulariser
=====  ==================  =============  ======================  ========================
1      0 – 19              trained        continuous z            λ·B₁(z), B₁ = e^(−z²/2σ₁²)
2      20 – 39             trained        continuous z            λ·B₂(z), bumps at ±c
3      40 – end            frozen         quantised f(z)          none
=====  ==================  =============  ======================  ========================

λ ramps linearly inside each stage, λ = (e − e_stage)/length (the code: 0, 0.05, … 0.95 over
20 epochs). The stage is a persistent buffer, so a saved model runs in the stage it was saved
in; only stage-3 epochs may be selected as the run's result (:meth:`is_selectable`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from .ops import Quantizer


class PolarizingFrontEnd(nn.Module):
    """Images ``(N, 3, H, W)`` in [0, 1] -> ``(N, K, H, W)``: z in [−1, 1] (stages 1–2) or
    its ternary code in {−1, 0, +1} (stage 3).

    Args:
        filters: K, the number of filters (the code's 25).
        kernel_size: filter size (5, padding keeps H×W).
        threshold: c of the quantiser f(z) = ½[sgn(z − c) + sgn(z + c)] (0.5 MNIST, 0.3
            Fashion-MNIST).
        sigma1, sigma2: widths of the bumps B₁ (at 0) and B₂ (at ±c): 0.35 and 0.15.
        reg_weight: multiplies the ramped λ (1: the seed's λ).
        stage_epochs: lengths of stages 1 and 2 in epochs; stage 3 is every later epoch.
        grey: filter the channel mean (the seed's 1-channel design; for grey images copied to
            3 channels it is the image itself, and the Hölder bound still holds per pixel).
        steepness: s of the smooth BPDA backward through the quantiser (the code's 8).
    """

    def __init__(self, *, filters: int = 25, kernel_size: int = 5, threshold: float = 0.5,
                 sigma1: float = 0.35, sigma2: float = 0.15, reg_weight: float = 1.0,
                 stage_epochs: Sequence[int] = (20, 20), grey: bool = True,
                 steepness: float = 8.0) -> None:
        super().__init__()
        if filters < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"filters must be >= 1 and kernel_size odd, got {filters}, "
                             f"{kernel_size}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold c must lie in (0, 1) (z lies in [-1, 1]), got "
                             f"{threshold}")
        if len(stage_epochs) != 2 or any(int(e) < 0 for e in stage_epochs):
            raise ValueError(f"stage_epochs must be two lengths >= 0 (stages 1 and 2), got "
                             f"{list(stage_epochs)}")
        if sigma1 <= 0 or sigma2 <= 0 or reg_weight < 0:
            raise ValueError("sigma1 and sigma2 must be > 0 and reg_weight >= 0")
        self.out_channels = filters
        self.grey = grey
        self.threshold = float(threshold)
        self.sigma1, self.sigma2 = float(sigma1), float(sigma2)
        self.reg_weight = float(reg_weight)
        self.stage_epochs = tuple(int(e) for e in stage_epochs)
        self.conv = nn.Conv2d(1 if grey else 3, filters, kernel_size, padding=kernel_size // 2,
                              bias=False)
        nn.init.kaiming_uniform_(self.conv.weight, nonlinearity="relu")
        self.quantizer = Quantizer((-threshold, threshold), steepness=steepness)
        # persistent: a saved model keeps the stage it was trained to
        self.register_buffer("stage", torch.tensor(1))
        self._reg_lambda = 0.0
        self._aux: torch.Tensor | None = None

    #: z is not an image: the backbone behind takes it without mean/std normalisation
    normalized_output = True

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """z = (w_k ⋆ x) / (‖w_k‖₁ + 1e-12), ``(N, K, H, W)``, in [−1, 1]."""
        if self.grey:
            x = x.mean(1, keepdim=True)
        norms = self.conv.weight.abs().sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
        return self.conv(x) / (norms + 1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.normalized(x)
        stage = int(self.stage)
        if self.training and torch.is_grad_enabled() and stage < 3 and self._reg_lambda:
            self._aux = self.reg_weight * self._reg_lambda * self.bump(z, stage).mean()
        else:
            self._aux = None
        return self.quantizer(z) if stage == 3 else z

    def bump(self, z: torch.Tensor, stage: int) -> torch.Tensor:
        """B₁ (stage 1, minimum pressure away from 0) or B₂ (stage 2, away from ±c), per
        entry of ``z``."""
        if stage == 1:
            return torch.exp(-z.square() / (2 * self.sigma1 ** 2))
        c, s2 = self.threshold, 2 * self.sigma2 ** 2
        return torch.exp(-(z - c).square() / s2) + torch.exp(-(z + c).square() / s2)

    # -- the trainer's hooks (see retrieval_bio.models.frontends) ---------------------------
    def stage_of(self, epoch: int) -> tuple[int, float]:
        """(stage, λ) of epoch ``epoch`` (counted from 0)."""
        s1, s2 = self.stage_epochs
        if epoch < s1:
            return 1, epoch / s1
        if epoch < s1 + s2:
            return 2, (epoch - s1) / s2
        return 3, 0.0

    def set_epoch(self, epoch: int) -> None:
        """Enter the stage of ``epoch``: stage 3 freezes the filters and turns the quantiser
        on; the classifier behind keeps training (it is not re-initialised)."""
        stage, lam = self.stage_of(epoch)
        self.stage.fill_(stage)
        self._reg_lambda = lam
        self.conv.weight.requires_grad_(stage < 3)

    def is_selectable(self, epoch: int) -> bool:
        """Only epochs of stage 3 (quantiser on) may become the run's result."""
        return self.stage_of(epoch)[0] == 3

    def check_epochs(self, epochs: int) -> None:
        first = sum(self.stage_epochs)
        if epochs <= first:
            raise ValueError(
                f"the polarizing front end trains {self.stage_epochs[0]} + "
                f"{self.stage_epochs[1]} epochs before its quantised stage 3, but the run has "
                f"{epochs}; give more epochs or shorter stage_epochs")

    def auxiliary_loss(self) -> torch.Tensor | None:
        """λ·mean B(z) of the last training forward (stages 1–2), else ``None``."""
        return self._aux

    def extra_repr(self) -> str:
        return (f"threshold={self.threshold:g}, sigmas=({self.sigma1:g}, {self.sigma2:g}), "
                f"stage_epochs={self.stage_epochs}, grey={self.grey}")

