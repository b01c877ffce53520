"""APGD, Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020, Algorithm 1 and §3), L∞ and L2, with
the cross-entropy, the DLR and the targeted DLR losses.

PGD with a step size that needs no tuning: it starts at 2ε and is halved at checkpoints when
the loss stopped rising, the search restarting from the best point found; a momentum term
(0.75) smooths the steps. Written from the paper; the reference implementation
(``fra31/auto-attack``'s ``autopgd_base.py``) and ART's ``auto_projected_gradient_descent.py``
were read to settle details the paper leaves open (noted where they are used, and in
``docs/attacks.md`` with the differences from both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..progress import Progress
from .base import ATTACKS, EnsembleAttack
from .square import margin

LOSSES = ("ce", "dlr")
#: ρ of the halving condition 1 (fraction of the steps since the last checkpoint that must
#: have raised the loss), the paper's value.
RHO = 0.75
#: α of the momentum update x_{k+1} = P(x_k + α(z_{k+1} − x_k) + (1 − α)(x_k − x_{k−1})).
MOMENTUM = 0.75
#: initial step size, in units of ε (the paper's η^(0) = 2ε, L∞ and L2).
INITIAL_STEP = 2.0


def apgd_checkpoints(n_iter: int) -> list[int]:
    """The paper's checkpoints w_1 < w_2 < ... (iteration counts at which the step size may
    be halved): p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) while
    p_j ≤ 1, w_j = ⌈p_j·n_iter⌉; duplicates and w = 0 dropped. For 100 iterations: 22, 41,
    57, 70, 80, 87, 93, 99.

    The p_j are kept in integer hundredths: in floating point 0.22 + 0.19 + 0.16 = 0.5700…01
    and its ceiling at 100 iterations would be 58 (ART's schedule has that off-by-one).
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    p = [0, 22]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - 3, 6)
        if nxt > 100:
            break
        p.append(nxt)
    return sorted({(q * n_iter + 99) // 100 for q in p} - {0})


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The paper's Difference of Logits Ratio, per image ``(N,)`` (to maximise)::

        DLR(z, y) = −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)

    z the logits ``(N, C)``, π the classes sorted by decreasing logit, y ``(N,)`` class ids.
    Invariant to shifting and (positively) scaling the logits, unlike cross-entropy, so a
    model whose logits are huge (saturated softmax, zero CE gradient) still gets a useful
    gradient. The 1e-12 (the reference's) guards equal top logits. Needs C ≥ 3.
    """
    if logits.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {logits.shape[1]}")
    top = logits.topk(3, dim=1).values
    return -margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor
                      ) -> torch.Tensor:
    """The paper's targeted DLR, per image ``(N,)`` (to maximise)::

        DLR_t(z, y, t) = −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)

    raising the target class t ``(N,)`` above the true class y. Needs C ≥ 4.
    """
    if logits.shape[1] < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, got "
                         f"{logits.shape[1]}")
    top = logits.topk(4, dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


@ATTACKS.register("apgd", help="APGD (Croce & Hein 2020): step-size-free PGD, CE or DLR loss")
class APGD(EnsembleAttack):
    """APGD (Croce & Hein 2020), L∞ or L2, untargeted (CE or DLR loss) or targeted (DLR).

    Per run, from a random point x^(0) of the ε-ball (:meth:`Attack.random_init`), with a
    per-image step size η = 2ε and gradients g through :meth:`Attack.input_grad`::

        x^(1)   = P(x^(0) + η·d(g(x^(0))))
        z       = P(x^(k) + η·d(g(x^(k))))
        x^(k+1) = P(x^(k) + 0.75·(z − x^(k)) + 0.25·(x^(k) − x^(k−1)))

    d the unit ascent direction of the norm (sign for L∞, g/‖g‖₂ for L2), P the projection
    onto the ε-ball and [0, 1]. The point of highest loss so far, x_max (and its gradient), is
    kept per image. At each checkpoint w_j (:func:`apgd_checkpoints`) the step size of an
    image is halved and its search moved back to x_max when

    1. fewer than ρ·(w_j − w_{j−1}) of the steps since w_{j−1} raised the loss
       (f(x^(i+1)) > f(x^(i))), ρ = 0.75; or
    2. its step size was not halved at w_{j−1} and f(x_max) has not risen since w_{j−1}.

    A run of ``n_iter`` iterations costs ``n_iter + 1`` input-gradient calls (the start and
    every iterate, as in the reference; fewer when every image it attacks is broken early)
    and one prediction forward, plus one per call for the clean images. Per image, the attack
    returns the first iterate found misclassified or, when none was, x_max of the run with
    the highest loss; success is judged by the model's prediction forward
    (:meth:`Attack.predict`), which for a model whose gradient forward differs from its
    scoring (an EP net's ``t_attack`` unroll against ``t_eval``) is the one that counts. Only
    images the model classifies correctly are attacked (the others are returned unchanged),
    and each restart only those still correctly classified.

    Targeted (``targeted=True``, :class:`APGDT`): the targeted DLR loss
    (:func:`dlr_targeted_loss`) towards each of the ``n_target_classes`` classes with the
    highest clean logits after the true one, in turn (the paper's APGD-T), each with
    ``n_restarts`` runs, on the images still correctly classified.

    Args:
        model: images ``(N, 3, H, W)`` in [0, 1] -> logits ``(N, C)``.
        eps: budget (pixels in [0, 1]) in ``norm``.
        norm: ``"linf"`` (default) or ``"l2"`` (over the C·H·W entries of an image).
        loss: ``"ce"`` (default) or ``"dlr"`` (:func:`dlr_loss`); targeted runs use the
            targeted DLR whatever this says.
        n_iter: iterations per run (paper: 100).
        n_restarts: runs from fresh random starts (paper/AutoAttack: 1 for APGD-T per target,
            5 for a stand-alone APGD evaluation).
        targeted: run APGD-T (see above).
        n_target_classes: targets of APGD-T (AutoAttack: 9; at most C − 1).
        rho: ρ of condition 1.
        random_start: start from a random point of the ball (the paper); ``False`` starts
            at x (a deterministic run, e.g. to test that the result never has a lower loss
            than the start).
        grad: ``"exact"`` or ``"model"`` gradient source (SPEC §2).
        seed: seeds the random starts (drawn for all N images of a call, then used for the
            images attacked, so an image's start does not depend on which others are).

    Call as ``attack(images, labels)`` with ``(N, C)`` one-hot/multi-hot labels (argmax) or
    ``(N,)`` class ids.
    """

    name = "apgd"

    def __init__(
        self, model: nn.Module, eps: float, *, norm: str = "linf", loss: str = "ce",
        n_iter: int = 100, n_restarts: int = 1, targeted: bool = False,
        n_target_classes: int = 9, rho: float = RHO, random_start: bool = True,
        grad: str = "exact", seed: int = 0, **options: Any,
    ) -> None:
        super().__init__(model, eps, grad=grad, seed=seed, norm=norm, **options)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        for name, value in (("n_iter", n_iter), ("n_restarts", n_restarts),
                            ("n_target_classes", n_target_classes)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0 < rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {rho}")
        self.loss = "dlr" if targeted else loss
        self.n_iter = int(n_iter)
        self.n_restarts = int(n_restarts)
        self.targeted = bool(targeted)
        self.n_target_classes = int(n_target_classes)
        self.rho = float(rho)
        self.random_start = bool(random_start)
        self.checkpoints = apgd_checkpoints(self.n_iter)

    @property
    def steps(self) -> int:
        """Iterations per run (what a report calls ``steps``)."""
        return self.n_iter

    def __repr__(self) -> str:
        kind = f"targeted, {self.n_target_classes} targets" if self.targeted else self.loss
        return (f"{type(self).__name__}(eps={self.eps:g}, norm={self.norm!r}, {kind}, "
                f"n_iter={self.n_iter}, n_restarts={self.n_restarts}, grad={self.grad!r}, "
                f"seed={self.seed})")

    def run(
        self, images: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
        progress: Progress, active: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attack on the correctly classified images that ``active`` selects.

        Args:
            images: clean images ``(N, C, H, W)`` in [0, 1], on ``self.device``.
            y: class ids ``(N,)``.
            active: ``(N,)`` bool, the images to attack (default all); the others are
                returned unchanged. Random starts are drawn for all N images.

        Returns:
            ``(adv, fooled)``: adversarial images ``(N, C, H, W)`` and ``(N,)`` bool, true for
            the attacked images whose returned image the model misclassifies.
        """
        n = images.shape[0]
        dev = images.device
        active = torch.ones(n, dtype=torch.bool, device=dev) if active is None else active.to(dev)
        adv = images.clone()
        fooled = torch.zeros(n, dtype=torch.bool, device=dev)
        if self.eps == 0 or not active.any():
            return adv, fooled
        clean = self.predict(images)
        todo = active & (clean.argmax(1) == y)
        best_loss = torch.full((n,), float("-inf"), dtype=images.dtype, device=dev)
        if self.targeted:
            n_targets = min(self.n_target_classes, clean.shape[1] - 1)
            if clean.shape[1] < 4:
                raise ValueError(f"APGD-T (targeted DLR) needs at least 4 classes, the model "
                                 f"has {clean.shape[1]}; use loss='ce' or 'dlr' untargeted")
            # the classes ranked 2nd, 3rd, ... by the clean logits (the 1st is y: only
            # correctly classified images are attacked)
            ranking = clean.argsort(dim=1, descending=True)
            targets: list[torch.Tensor | None] = [ranking[:, t] for t in range(1, n_targets + 1)]
        else:
            targets = [None]
        progress.start(type(self).__name__, self.n_iter * self.n_restarts * len(targets))
        for target in targets:
            for _ in range(self.n_restarts):
                start = self.random_init(images, generator) if self.random_start else images
                idx = (todo & ~fooled).nonzero().flatten()
                if idx.numel() == 0:
                    continue
                t = None if target is None else target[idx]
                x_run, ok, loss_run = self._single_run(images[idx], y[idx], t, start[idx],
                                                       progress)
                fooled[idx[ok]] = True
                adv[idx[ok]] = x_run[ok]
                keep = ~ok & (loss_run > best_loss[idx])
                adv[idx[keep]] = x_run[keep]
                best_loss[idx[keep]] = loss_run[keep]
        progress.stop()
        return adv, fooled

    # -- one run ------------------------------------------------------------------------

    def _loss_fn(self, y: torch.Tensor, target: torch.Tensor | None
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
        if target is not None:
            return lambda z: dlr_targeted_loss(z, y, target)
        if self.loss == "dlr":
            return lambda z: dlr_loss(z, y)
        return lambda z: F.cross_entropy(z, y, reduction="none")

    def _single_run(
        self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
        start: torch.Tensor, progress: Progress,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Algorithm 1 from ``start`` on the m images ``x`` ``(m, C, H, W)``.

        Returns ``(images, fooled, loss)``: per image the first iterate misclassified (the
        gradient forward's logits, confirmed by :meth:`Attack.predict`) or else x_max;
        whether it is misclassified; and f(x_max).
        """
        per_image = self._loss_fn(y, target)
        seen: dict[str, torch.Tensor] = {}

        def objective(out: torch.Tensor, _x: torch.Tensor) -> torch.Tensor:
            # summed, not averaged, so that an image's gradient does not depend on the
            # batch size (the direction is normalised anyway)
            f = per_image(out)
            seen["logits"], seen["f"] = out.detach(), f.detach()
            return f.sum()

        def evaluate(point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            _, g = self.input_grad(point, objective)
            return seen["f"], g, seen["logits"]

        m = x.shape[0]
        shape = (m,) + (1,) * (x.ndim - 1)
        eta = torch.full(shape, INITIAL_STEP * self.eps, dtype=x.dtype, device=x.device)
        x_k = start
        f_k, g_k, logits = evaluate(x_k)
        found = x_k.clone()
        fooled = logits.argmax(1) != y
        x_max, f_max, g_max = x_k.clone(), f_k.clone(), g_k.clone()
        x_prev = x_k
        # condition bookkeeping since the last checkpoint w_{j−1}
        rises = torch.zeros(m, dtype=torch.long, device=x.device)
        eta_last, f_max_last = eta.clone(), f_max.clone()
        last_check = 0
        checkpoints = set(self.checkpoints)
        for k in range(self.n_iter):
            z = self.project(x_k + eta * self.ascent_direction(g_k), x)
            if k == 0:
                x_next = z  # no momentum on the first step
            else:
                x_next = self.project(
                    x_k + MOMENTUM * (z - x_k) + (1 - MOMENTUM) * (x_k - x_prev), x)
            last = k + 1 == self.n_iter
            f_next, g_next, logits = evaluate(x_next)
            newly = ~fooled & (logits.argmax(1) != y)
            found[newly] = x_next[newly]
            fooled |= newly
            rises += (f_next > f_k).long()
            better = f_next > f_max
            x_max[better], f_max[better] = x_next[better], f_next[better]
            g_max[better] = g_next[better]
            progress.advance()
            if bool(fooled.all()):
                break
            if k + 1 in checkpoints and not last:
                w = k + 1
                cond1 = rises < self.rho * (w - last_check)
                cond2 = (eta_last == eta).flatten() & (f_max_last == f_max)
                halve = cond1 | cond2
                eta[halve] /= 2
                # restart the search from the best point (x^(k) stays: the next momentum
                # term is x_max − x^(k), as in the reference implementation)
                x_next[halve], g_next[halve], f_next[halve] = (x_max[halve], g_max[halve],
                                                                f_max[halve])
                rises.zero_()
                eta_last, f_max_last, last_check = eta.clone(), f_max.clone(), w
            x_prev, x_k, f_k, g_k = x_k, x_next, f_next, g_next
        result = torch.where(fooled[:, None, None, None].expand_as(x), found, x_max)
        # success as the model's scoring forward sees it
        confirmed = self.predict(result).argmax(1) != y
        return result, confirmed, f_max


@ATTACKS.register("apgd-t", help="APGD-T (Croce & Hein 2020): APGD on the targeted DLR loss")
class APGDT(APGD):
    """APGD-T: :class:`APGD` with ``targeted=True`` (the targeted DLR loss towards each of
    the ``n_target_classes`` most likely other classes in turn), AutoAttack's second attack.

    Same arguments as :class:`APGD` except ``loss`` and ``targeted``; needs C ≥ 4 classes.
    """

    name = "apgd-t"

    def __init__(
        self, model: nn.Module, eps: float, *, norm: str = "linf", n_iter: int = 100,
        n_restarts: int = 1, n_target_classes: int = 9, rho: float = RHO,
        random_start: bool = True, grad: str = "exact", seed: int = 0, **options: Any,
    ) -> None:
        super().__init__(model, eps, norm=norm, loss="dlr", n_iter=n_iter,
                         n_restarts=n_restarts, targeted=True,
                         n_target_classes=n_target_classes, rho=rho,
                         random_start=random_start, grad=grad, seed=seed, **options)
