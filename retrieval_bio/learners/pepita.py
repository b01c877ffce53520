"""PEPITA: "Present the Error to Perturb the Input To modulate Activity" (Dellaferrera &
Kreiman, ICML 2022), as used by seed 000 ("Intrinsic biologically plausible adversarial
robustness", Algorithm 1 and §3.1). No backward pass: two forward passes, the second on the
input modulated by the first pass's output error through a fixed random matrix F.

For a fully connected net x = h_0 -> h_1 ... h_L -> z = W_out h_L + b_out (``mlp``)::

    pass 1   h_l = m_l ⊙ ReLU(W_l h_{l-1} + b_l),  e = softmax(z) − onehot(y)
    input    x_mod = x + e Fᵀ             (F: d × C, fixed; x_mod is not clipped)
    pass 2   h_l^mod, from x_mod, with the SAME dropout masks m_l
    hidden   ΔW_l = (h_l − h_l^mod)ᵀ h_{l-1}^mod / B,  Δb_l = mean(h_l − h_l^mod)
             (h_0^mod = x_mod)
    output   ΔW_out = eᵀ h_L^mod / B,  Δb_out = mean(e)

ΔW is written into ``.grad`` and the optimiser descends it (``W -= η ΔW`` for plain SGD), the
sign every reference uses. ``output_error="modulated"`` uses the second pass's error
softmax(W_out h_L^mod + b_out) − y for the output layer (the public tutorial's choice)
instead of seed 000's first-pass e. F ~ U(±f_scale·sqrt(6/d)) with d the input dimension
(seed 000: f_scale = 0.05), drawn from ``seed`` on the CPU.

Attacks on a PEPITA model use the exact gradient of its forward pass (seed 000 §2): the
model is a plain network, so ``grad="exact"`` and ``grad="model"`` are one computation.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses.cross_entropy import class_indices
from ..models.mlp import MLP, shared_masks
from .base import LEARNERS, Learner, StepContext

OUTPUT_ERRORS = ("first", "modulated")


def _mlp_of(model: nn.Module) -> MLP | None:
    net = getattr(getattr(model, "backbone", None), "net", None)
    return net if isinstance(net, MLP) else None


@LEARNERS.register("pepita", help="PEPITA (Dellaferrera & Kreiman 2022; seed 000): two forward "
                   "passes, the input modulated by F·e; no backward pass")
class Pepita(Learner):
    """The PEPITA learner (see the module docstring for the equations).

    Args:
        output_error: ``"first"`` (seed 000, default) or ``"modulated"`` (tutorial).
        f_scale: F's bound as a multiple of the He-uniform bound sqrt(6 / d) (0.05).
        seed: seeds F.
    """

    name = "pepita"
    uses_amp = False  # ΔW are not loss gradients: gradient scaling does not apply

    def __init__(self, *, output_error: str = "first", f_scale: float = 0.05,
                 seed: int = 0) -> None:
        super().__init__()
        if output_error not in OUTPUT_ERRORS:
            raise ValueError(f"output_error must be one of {', '.join(OUTPUT_ERRORS)}, got "
                             f"{output_error!r}")
        if not (math.isfinite(f_scale) and f_scale > 0):
            raise ValueError(f"f_scale must be a positive number, got {f_scale!r}")
        self.output_error = output_error
        self.f_scale = float(f_scale)
        self.seed = int(seed)
        self.register_buffer("F", torch.empty(0))  # (d, C) once prepared; persistent

    @classmethod
    def check_model(cls, model: nn.Module) -> None:
        from ..config import ConfigError

        backbone = getattr(getattr(model, "backbone", None), "name", type(model).__name__)
        if _mlp_of(model) is None or not isinstance(getattr(model, "head", None), nn.Linear):
            raise ConfigError(
                f"rule 'pepita' cannot train backbone {backbone!r}: PEPITA's update is defined "
                f"for fully connected layers (seed 000 §3.1); use --backbone mlp (options: "
                f"hidden, dropout, bias, output_bias, grey), or a layer rule (bp, fa, usf, "
                f"frsf, brsf) for {backbone!r}")
        if getattr(model, "task", "classify") != "classify":
            raise ConfigError(
                f"rule 'pepita' trains classifiers (its error is softmax(z) − onehot(y)); task "
                f"{model.task!r} is not supported: use --task classify, or a layer rule")

    def prepare(self, model: nn.Module, objective: nn.Module) -> None:
        self.check_model(model)
        d, c = _mlp_of(model).in_features, model.head.out_features
        if self.F.shape == (d, c):
            return
        bound = self.f_scale * math.sqrt(6.0 / d)
        gen = torch.Generator().manual_seed(self.seed)
        f = (torch.rand(d, c, generator=gen, dtype=torch.float32) * 2 - 1) * bound
        self.F = f.to(model.head.weight.device)

    def training_step(
        self, model: nn.Module, objective: nn.Module, images: torch.Tensor,
        labels: torch.Tensor, ctx: StepContext,
    ) -> float:
        net, head = _mlp_of(model), model.head
        with torch.no_grad():
            y = F.one_hot(class_indices(labels), head.out_features).to(images.dtype)
            x = net.inputs(model.backbone.normalize(images))
            first = net.linears[0]
            with shared_masks(net):
                a1 = first(x)
                hidden = net.hidden_states(x, first=a1)
                z = head(hidden[-1])
                e = torch.softmax(z, dim=1) - y
                x_mod = x + e @ self.F.T
                # W1 x_mod + b1 = a1 + e (W1 F)ᵀ: a (C x H) product instead of a (B x d x H)
                # one, so the second pass costs little more than the head
                hidden_mod = net.hidden_states(x_mod, first=a1 + e @ (first.weight @ self.F).T)
            # 1/B is applied to the (B x H) error, not to the (H x d) product: fewer flops
            scale = 1.0 / x.shape[0]
            inputs_mod = [x_mod, *hidden_mod[:-1]]
            for layer, h, h_mod, inp in zip(net.linears, hidden, hidden_mod, inputs_mod,
                                            strict=True):
                delta = (h - h_mod).mul_(scale)
                layer.weight.grad = delta.T @ inp
                if layer.bias is not None:
                    layer.bias.grad = delta.sum(0)
            if self.output_error == "modulated":
                e = torch.softmax(head(hidden_mod[-1]), dim=1) - y
            e = e * scale
            head.weight.grad = e.T @ hidden_mod[-1]
            if head.bias is not None:
                head.bias.grad = e.sum(0)
            return float(objective(z, labels))

    def describe(self) -> dict[str, object]:
        return {"learner": self.name, "output_error": self.output_error,
                "f_scale": self.f_scale, "f_shape": list(self.F.shape)}

