"""The shared base of every attack: model mode, device, gradient source, L∞ / L2 projection,
seeding and call counting (torchattacks-style: each attack file holds only its algorithm).

Conventions (SPEC §1, §2, §7, §8):

* images are float tensors ``(N, 3, H, W)`` with pixels in [0, 1]; the model normalises
  internally, so ε is measured in [0, 1] pixel units: ``norm="linf"`` (the default) bounds
  max_i |x'_i − x_i| ≤ ε, ``norm="l2"`` bounds the Euclidean norm over all C·H·W entries of
  one image, ‖x' − x‖₂ ≤ ε (so an L2 ε of 1 is much smaller than an L∞ ε of 1);
* after every step the adversarial batch is projected onto the ε-ball of the attack's norm
  around the clean batch and clamped to [0, 1];
* ``grad="exact"`` differentiates through the forward weights W (the attacker knows W;
  ``retrieval_bio.rules.exact_gradients``); ``grad="model"`` uses the model's own backward
  (its feedback matrices B for a converted model). For an unconverted (BP) model the two are
  the same computation;
* gradients are taken with ``torch.autograd.grad`` with respect to the input only, so model
  parameters never accumulate ``.grad`` and no weight gradients are computed;
* random choices (random starts, Square's squares) come from a ``torch.Generator`` seeded with
  ``seed`` at every call, so a call is deterministic and the global RNG is never touched; a
  model with random ops of its own (a front end's dropout) has them restarted from ``seed``
  at every call too;
* ``bpda=`` chooses the backward of the model's non-differentiable ops (quantisers, top-T,
  dropout masks; :func:`retrieval_bio.models.frontends.bpda`): ``None`` differentiates them
  as they are (for a quantiser: a zero gradient, the *obfuscated* number), ``"identity"``
  passes the gradient straight through, ``"smooth"`` uses seed 004's smooth surrogates.
  It is orthogonal to ``grad`` (which feedback path a learning rule's layers use);
* ``eot=N`` (expectation over transformation, Athalye et al. 2018) averages N forward +
  backward passes, each with fresh randomness, into one gradient: ``eot_reduce="mean"``
  (the plain average), ``"normalized"`` (the average of ∇_r/‖∇_r‖₂ per image, seed 004's
  choice) or ``"sign"`` (the average of sign ∇_r). With N = 1 the one gradient is used as
  it is, so ``eot=1`` is the plain attack.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn

from ..losses.cross_entropy import class_indices
from ..models.frontends import bpda as bpda_mode
from ..models.frontends import describe_bpda, reseed, resolve_bpda
from ..progress import Progress, ensure
from ..registry import Registry

GRAD_SOURCES = ("exact", "model")
#: how the N gradients of an EOT step are combined (see the module docstring)
EOT_REDUCERS = ("mean", "normalized", "sign")
#: Threat models: ``"linf"`` (max over entries) and ``"l2"`` (Euclidean over C·H·W), [0, 1] pixels.
NORMS = ("linf", "l2")
#: Printable names of :data:`NORMS` (tables, plots, messages).
NORM_LABELS = {"linf": "L∞", "l2": "L2"}
# A point counts as outside the L2 ball only beyond ε·(1 + this): the rescaled point's own
# norm is ε up to float rounding, so projecting it again must leave it unchanged (every
# attack's result is projected once more; a moved pixel could change a borderline decision).
_L2_SLACK = 1e-6

#: name -> attack class; the CLI's ``attack`` choices come from here.
ATTACKS: Registry[type[Attack]] = Registry("attack")


class Attack:
    """Base class: call ``attack(images, labels) -> adversarial images``.

    Args:
        model: maps images ``(N, 3, H, W)`` in [0, 1] to outputs ``(N, D)`` (logits or the
            continuous hash output h).
        eps: budget ε in [0, 1] pixel units, in the attack's ``norm`` (ε = 0 returns the
            input unchanged).
        grad: ``"exact"`` (through W) or ``"model"`` (the model's own feedback path).
        seed: seeds the attack's private ``torch.Generator`` at every call.
        norm: ``"linf"`` (default) or ``"l2"`` (over all C·H·W entries of an image); an
            attack class lists the norms it implements in ``norms``.
        bpda: backward of the model's non-differentiable ops: ``None`` (as they are), a
            name of :data:`~retrieval_bio.models.frontends.BPDA_PRESETS` (``"identity"``,
            ``"smooth"``) or a mapping (see :func:`~retrieval_bio.models.frontends.bpda`).
        eot: gradient samples averaged per step (fresh randomness in each).
        eot_reduce: ``"mean"``, ``"normalized"`` (default) or ``"sign"``.

    Attributes:
        n_grad_calls: forward+backward passes (input-gradient evaluations) made so far.
        n_forward_calls: model forward passes made so far (including those of gradient calls).
    """

    name = "attack"
    #: the norms this attack implements (a subclass narrows it, e.g. the hashing attacks).
    norms: tuple[str, ...] = NORMS

    #: whether the attack uses input gradients (a gradient-free one refuses bpda and eot)
    uses_gradients = True

    def __init__(
        self, model: nn.Module, eps: float, *, grad: str = "exact", seed: int = 0,
        norm: str = "linf", bpda: str | dict[str, Any] | None = None, eot: int = 1,
        eot_reduce: str = "normalized",
    ) -> None:
        if not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a finite number >= 0, got {eps}")
        if grad not in GRAD_SOURCES:
            raise ValueError(f"grad must be one of {GRAD_SOURCES}, got {grad!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if norm not in self.norms:
            raise ValueError(f"{type(self).__name__} implements norm "
                             f"{' or '.join(map(repr, self.norms))} only, got {norm!r}; use "
                             f"norm={self.norms[0]!r}")
        if isinstance(eot, bool) or not isinstance(eot, int) or eot < 1:
            raise ValueError(f"eot must be a whole number >= 1, got {eot!r}")
        if eot_reduce not in EOT_REDUCERS:
            raise ValueError(f"eot_reduce must be one of {EOT_REDUCERS}, got {eot_reduce!r}")
        self.bpda = None if bpda in (None, "none") else resolve_bpda(bpda)
        if not self.uses_gradients and (self.bpda is not None or eot > 1):
            raise ValueError(f"{type(self).__name__} is gradient-free: bpda and eot do not "
                             f"apply to it")
        self.eot = eot
        self.eot_reduce = eot_reduce
        self.model = model
        self.eps = float(eps)
        self.grad = grad
        self.seed = int(seed)
        self.norm = norm
        self.n_grad_calls = 0
        self.n_forward_calls = 0

    # -- public ------------------------------------------------------------------------

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor | None = None, *,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """Adversarial images ``(N, 3, H, W)`` in [0, 1] within ε (in ``self.norm``) of
        ``images``.

        Args:
            images: clean images ``(N, 3, H, W)`` in [0, 1].
            labels: ``(N, C)`` multi-hot or ``(N,)`` class ids; unused by HAG.
            progress: optional progress object; advanced once per attack step.
        """
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
        if images.numel() and (images.min() < 0 or images.max() > 1):
            raise ValueError("images must have pixel values in [0, 1]")
        x = images.detach().to(self.device)
        if labels is not None:
            labels = labels.detach().to(self.device)
        progress = ensure(progress)
        reseed(self.model, self.seed)
        with eval_mode(self.model):
            gen = torch.Generator(device=x.device).manual_seed(self.seed)
            adv = self.forward(x, labels, gen, progress)
        # A final projection guards every subclass's result (a no-op when already in budget).
        return self.project(adv.detach(), x)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator,
        progress: Progress,
    ) -> torch.Tensor:
        """The attack's algorithm; ``images`` are on ``self.device`` and detached."""
        raise NotImplementedError

    def reset_counters(self) -> None:
        self.n_grad_calls = 0
        self.n_forward_calls = 0

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        if p is None:
            b = next(self.model.buffers(), None)
            return b.device if b is not None else torch.device("cpu")
        return p.device

    def __repr__(self) -> str:
        extra = ""
        if self.bpda is not None:
            extra += f", bpda={describe_bpda(self.bpda)!r}"
        if self.eot > 1:
            extra += f", eot={self.eot}, eot_reduce={self.eot_reduce!r}"
        return (f"{type(self).__name__}(eps={self.eps:g}, norm={self.norm!r}, "
                f"grad={self.grad!r}, seed={self.seed}{extra})")

    # -- helpers for subclasses ----------------------------------------------------------

    def project(self, adv: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Project ``adv`` onto the ε-ball of ``self.norm`` around ``images``, then clamp to
        [0, 1]; both ``(N, C, H, W)``.

        L∞: clip every entry to [x − ε, x + ε]. L2 (per image, over all C·H·W entries): an
        image with δ = adv − x, ‖δ‖₂ > ε becomes x + ε·δ/‖δ‖₂ (the closest point of the
        ball); one inside is returned bit for bit. Clamping to [0, 1] afterwards moves every
        entry towards x (x is in [0, 1]), so it never leaves the ball. Projecting twice gives
        the same result as projecting once.
        """
        if self.norm == "l2":
            return l2_project(adv, images, self.eps).clamp(0.0, 1.0)
        adv = torch.minimum(torch.maximum(adv, images - self.eps), images + self.eps)
        return adv.clamp(0.0, 1.0)

    def random_init(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A random point of the ε-ball around ``images`` ``(N, C, H, W)``, clamped to [0, 1].

        L∞: x + U(−ε, ε) per entry. L2: x + r·u, u uniform on the unit sphere of R^{C·H·W}
        (a normalised Gaussian) and r = ε·U^{1/(C·H·W)}, i.e. uniform in the ball's volume
        (ART's ``random_sphere``; torchattacks' ``PGDL2`` draws r uniform in [0, ε] instead,
        which favours small radii). In high dimension nearly all of the ball's volume lies at
        its surface, so r ≈ ε. Every draw comes from ``generator``, for all N images at once.
        """
        shape, dev, dt = images.shape, images.device, images.dtype
        if self.norm == "linf":
            noise = torch.rand(shape, generator=generator, device=dev, dtype=dt)
            return self.project(images + (2 * noise - 1) * self.eps, images)
        d = images[0].numel()
        direction = torch.randn(shape, generator=generator, device=dev, dtype=dt)
        direction = direction / _per_image(l2_norms(direction), images).clamp_min(1e-12)
        u = torch.rand((shape[0],), generator=generator, device=dev, dtype=dt)
        radius = self.eps * u.pow(1.0 / d)
        return self.project(images + _per_image(radius, images) * direction, images)

    def ascent_direction(self, g: torch.Tensor) -> torch.Tensor:
        """The steepest-ascent direction of unit ``self.norm`` size for gradient ``g``
        ``(N, C, H, W)``: sign(g) for L∞, g/‖g‖₂ per image for L2 (a zero gradient gives a
        zero step, not a division by zero)."""
        if self.norm == "linf":
            return g.sign()
        return g / _per_image(l2_norms(g), g).clamp_min(1e-12)

    def gradient_source(self) -> contextlib.AbstractContextManager:
        """Context under which forward *and* backward run: exact (through W) or the model's,
        with the BPDA backward of non-differentiable ops."""
        return gradient_mode(self.model, self.grad, bpda=self.bpda)

    def input_grad(
        self, x: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``eot`` forward + backward passes: ``(loss, d loss / d x)`` for
        ``loss_fn(model(x), x)``, the EOT reduction of the ``eot`` gradients (one pass: its
        gradient as it is).

        The gradient is taken w.r.t. ``x`` only (``torch.autograd.grad``), through the
        chosen gradient source and BPDA setting. Returns the detached scalar loss (the mean
        over the passes) and the gradient (x's shape).
        """
        x = x.detach().requires_grad_(True)
        losses, grads = [], []
        with torch.enable_grad(), self.gradient_source(), _frozen(self.model):
            for _ in range(self.eot):
                out = self.model(x)
                loss = loss_fn(out, x)
                (g,) = torch.autograd.grad(loss, x)
                losses.append(loss.detach())
                grads.append(g)
        self.n_forward_calls += self.eot
        self.n_grad_calls += self.eot
        if self.eot == 1:
            return losses[0], grads[0]
        return torch.stack(losses).mean(0), eot_reduce(torch.stack(grads), self.eot_reduce)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Model output for ``x`` without gradients (counted as a forward call)."""
        self.n_forward_calls += 1
        return self.model(x)

    def class_ids(self, labels: torch.Tensor | None) -> torch.Tensor:
        """Class ids ``(N,)`` of one-hot labels ``(N, C)``: what an attack on a classifier
        needs (``ValueError`` naming the attack when there are none)."""
        if labels is None:
            raise ValueError(f"{type(self).__name__} needs labels")
        return class_indices(labels)


class EnsembleAttack(Attack):
    """An attack that AutoAttack (:mod:`.auto`) can compose: besides ``forward`` it runs on
    a subset of the images and says which it fooled (:meth:`run`), so that each attack of
    the ensemble only attacks the images that are still robust."""

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator,
        progress: Progress,
    ) -> torch.Tensor:
        return self.run(images, self.class_ids(labels), generator, progress)[0]

    def run(
        self, images: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
        progress: Progress, active: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(adv, fooled)`` for ``images`` ``(N, C, H, W)`` in [0, 1] and class ids ``y``
        ``(N,)``: the adversarial images, the ones ``active`` (``(N,)`` bool, default all)
        leaves out unchanged, and ``(N,)`` bool, true where the returned image is
        misclassified."""
        raise NotImplementedError


def eot_reduce(grads: torch.Tensor, how: str) -> torch.Tensor:
    """One gradient from ``grads`` ``(R, N, ...)``, R samples of the gradient of N images:
    ``"mean"`` averages them; ``"normalized"`` averages ∇_r/(‖∇_r‖₂ + 1e-12) per image (a
    zero gradient contributes zero, never NaN: the authors' code divided by ‖∇‖ alone,
    seed 004 §7.5); ``"sign"`` averages sign(∇_r)."""
    if how == "mean":
        return grads.mean(0)
    if how == "sign":
        return grads.sign().mean(0)
    if how == "normalized":
        norms = grads.flatten(2).norm(dim=2).view(*grads.shape[:2], *([1] * (grads.ndim - 2)))
        return (grads / (norms + 1e-12)).mean(0)
    raise ValueError(f"eot_reduce must be one of {EOT_REDUCERS}, got {how!r}")


def l2_norms(x: torch.Tensor) -> torch.Tensor:
    """``(N,)`` Euclidean norms of the N images of ``x`` ``(N, ...)``, over all other
    dimensions (C·H·W entries)."""
    return x.flatten(1).norm(dim=1)


def l2_project(adv: torch.Tensor, images: torch.Tensor, eps: float) -> torch.Tensor:
    """``adv`` moved into the L2 ball of radius ``eps`` around ``images`` (both ``(N, ...)``),
    per image: δ = adv − x; when ‖δ‖₂ > ε, x + ε·δ/‖δ‖₂, else ``adv`` unchanged (bit for
    bit). No clamping. Points beyond ε by less than a relative 1e-6 (float rounding of an
    earlier projection) count as inside, so the projection is idempotent."""
    delta = adv - images
    n = l2_norms(delta)
    outside = _per_image(n > eps * (1 + _L2_SLACK), adv)
    scale = _per_image(eps / n.clamp_min(1e-30), adv)
    return torch.where(outside, images + delta * scale, adv)


def _per_image(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(N,)`` -> ``(N, 1, ..., 1)``, broadcastable against ``like`` ``(N, ...)``."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))


@contextlib.contextmanager
def gradient_mode(model: nn.Module, source: str, *, bpda: str | dict[str, Any] | None = None
                  ) -> Iterator[None]:
    """Forward and backward of ``model`` under gradient source ``source`` for the duration.

    ``"exact"`` makes every feedback layer back-propagate through W
    (:func:`retrieval_bio.rules.exact_gradients`); ``"model"`` leaves the model's own
    backward. Any submodule with a ``gradient_mode(source)`` context manager is entered too:
    that is how a model whose forward is a computation an attacker cannot differentiate as is
    (an energy-based net's relaxation, :class:`retrieval_bio.models.ep.EPConvNet`) says what
    each source differentiates. ``bpda`` sets the backward of the model's non-differentiable
    ops (:func:`retrieval_bio.models.frontends.bpda`; ``None``: as they are).
    """
    if source not in GRAD_SOURCES:
        raise ValueError(f"grad must be one of {GRAD_SOURCES}, got {source!r}")
    with contextlib.ExitStack() as stack:
        if source == "exact":
            # Imported lazily: rules is a sibling subpackage attacks must not need at import.
            from ..rules import exact_gradients

            stack.enter_context(exact_gradients(model))
        for m in model.modules():
            hook = getattr(m, "gradient_mode", None)
            if callable(hook):
                stack.enter_context(hook(source))
        if bpda is not None:
            stack.enter_context(bpda_mode(model, bpda))
        yield


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm running stats, no dropout) for the duration, as during an
    attack; every module's own mode is restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)


def resolve_preset(
    presets: dict[str, dict[str, Any]], preset: str | None, default: str = "paper",
    **given: Any,
) -> dict[str, Any]:
    """Fill the arguments left as ``None`` from ``presets[preset]`` (``presets[default]`` when
    ``preset`` is None); explicit values always win."""
    values = dict(given)
    name = default if preset is None else preset
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
    for k, v in presets[name].items():
        if values.get(k) is None:
            values[k] = v
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise ValueError(f"give {', '.join(missing)} or a preset ({sorted(presets)})")
    return values


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters with ``requires_grad=False`` for one attack step: custom backward passes
    (the learning rules' layers) then skip weight gradients nobody asked for."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
