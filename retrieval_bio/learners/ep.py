"""Equilibrium Propagation (Scellier & Bengio 2017), with the symmetric ("centred") ±β
estimator of Laborieux et al. 2021 that every published EP-CNN result uses (seed 002 eq. 9,
ep.md §1.4–1.5). Trains an :class:`~retrieval_bio.models.ep.EPConvNet` backbone and the
task head behind it (the readout, outside the dynamics).

One step, states never carried across batches::

    s*   = relax(x, t_free)                            free phase from zero, no graph
    s^±β = relax(x, t_nudge, from s*, nudge ∓β·N·∂ℓ/∂s^L)  two nudged phases from s*
    ĝ(θ) = −(1/2βN)[∂Φ/∂θ(x, s^{+β}) − ∂Φ/∂θ(x, s^{−β})]    energy parameters (conv w, b)
    ĝ(head) = ½[∇ℓ(head(s^{+β})) + ∇ℓ(head(s^{−β}))]       the readout: exact loss gradient

ℓ is the run's objective (a batch mean, hence the N that makes the nudge per image; the CE
of the readout for seed 002; any loss of the toolkit works, HyP² for a hash head too), and
the nudge −β·N·∂ℓ/∂s^L is recomputed at every nudged step, as β·W_oᵀ(onehot − softmax(z)) is
in the papers' code. ĝ goes into ``.grad`` (through ``ctx.backward`` of the surrogate
(Φ(s^{−β}) − Φ(s^{+β}))/(2βN) + ½(ℓ⁺ + ℓ⁻) with the states detached), so SGD with
per-layer rates, weight decay and a cosine schedule steps it. The logged loss is ℓ at the
free equilibrium.

Other estimators (``estimator=``): ``one_sided`` (nudge +β only; ĝ = −(1/βN)[∂Φ/∂θ(s^β) −
∂Φ/∂θ(s*)], biased: Laborieux et al. report it fails on CIFAR-10) and ``random_sign`` (one
nudged phase whose sign of β is drawn each step from the run's seed and the step number).
For these the readout's gradient is taken at the nudged state.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..models.ep import EPConvNet
from .base import LEARNERS, Learner, StepContext

ESTIMATORS = ("symmetric", "one_sided", "random_sign")


def _ep_net(model: nn.Module) -> EPConvNet | None:
    net = getattr(getattr(model, "backbone", None), "net", None)
    return net if isinstance(net, EPConvNet) else None


@LEARNERS.register("ep", help="Equilibrium Propagation (Scellier & Bengio 2017; seed 002): "
                   "free and ±β nudged relaxations of an energy-based ConvNet (ep-* backbones)")
class EquilibriumPropagation(Learner):
    """The EP learner (equations in the module docstring). β, ``t_free`` and ``t_nudge`` are
    the model's (the run's ``beta`` / ``t_free`` / ``t_nudge``), so training and the
    ``grad="model"`` input gradient of an attack use the same ones.

    Args:
        estimator: ``"symmetric"`` (default), ``"one_sided"`` or ``"random_sign"``.
        seed: the run's seed (``random_sign``'s draws).
    """

    name = "ep"
    uses_amp = False  # 250 fp16 steps and the cancellation in ΔΦ/2β are not to be trusted

    def __init__(self, *, estimator: str = "symmetric", seed: int = 0) -> None:
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got "
                             f"{estimator!r}")
        self.estimator = estimator
        self.seed = int(seed)

    @classmethod
    def check_model(cls, model: nn.Module) -> None:
        from ..config import ConfigError

        if _ep_net(model) is None:
            backbone = getattr(getattr(model, "backbone", None), "name", type(model).__name__)
            raise ConfigError(
                f"rule 'ep' cannot train backbone {backbone!r}: Equilibrium Propagation needs "
                f"an energy-based net that relaxes to equilibrium; use --backbone ep-small, "
                f"ep-cifar10 or ep-cifar100 (and a layer rule such as bp for {backbone!r})")

    def _sign(self, ctx: StepContext) -> float:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + ctx.global_step)
        return 1.0 if torch.randint(0, 2, (1,), generator=gen).item() else -1.0

    def training_step(
        self, model: nn.Module, objective: nn.Module, images: torch.Tensor,
        labels: torch.Tensor, ctx: StepContext,
    ) -> float:
        net, head = _ep_net(model), model.head
        x = model.backbone.normalize(images).detach()
        n = x.shape[0]

        def loss_at(states: list[torch.Tensor]) -> torch.Tensor:
            return objective(head(states[-1].detach().flatten(1)), labels)

        def nudge(beta: float):
            def term(last: torch.Tensor) -> torch.Tensor:
                with torch.enable_grad():
                    s = last.detach().requires_grad_(True)
                    (g,) = torch.autograd.grad(objective(head(s.flatten(1)), labels) * n, s)
                return -beta * g
            return term

        beta = net.beta
        with torch.no_grad():
            free = net.relax(x, net.t_free)
            if self.estimator == "symmetric":
                b1, b2 = beta, -beta
                s1 = net.relax(x, net.t_nudge, free, nudge(b1))
                s2 = net.relax(x, net.t_nudge, free, nudge(b2))
                readout = [s1, s2]
            else:
                b1 = beta if self.estimator == "one_sided" else beta * self._sign(ctx)
                b2, s2 = 0.0, free
                s1 = net.relax(x, net.t_nudge, free, nudge(b1))
                readout = [s1]
        s1 = [s.detach() for s in s1]
        s2 = [s.detach() for s in s2]
        energy = -(net.phi(x, s1) - net.phi(x, s2)).sum() / ((b1 - b2) * n)
        read = sum(loss_at(s) for s in readout) / len(readout)
        ctx.backward(energy + read)
        with torch.no_grad():
            return float(loss_at(free))

    def describe(self) -> dict[str, object]:
        return {"learner": self.name, "estimator": self.estimator}
