"""The squared Frobenius norm of an input Jacobian, per sample: exact or by random projections.

Used as a smoothness measurement (:mod:`retrieval_bio.eval.representation`) and, with
``create_graph=True``, as a training penalty (the JReg baseline of Hoffman, Roberts & Yaida,
"Robust learning with Jacobian regularization", 2019; ``methods/krotov.md`` (a), Baselines).

For a map f: R^{B×…} → R^{B×K} that treats the samples of a batch independently (a network
in eval mode: no batch statistics, no cross-sample ops), the Jacobian of the batch is block
diagonal, so one backward pass of ∑_b ⟨v_b, f(x)_b⟩ gives J_bᵀ v_b for every sample b at
once. Both estimators below rely on that; a map that mixes samples (BatchNorm in training
mode) gives the wrong answer, silently.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def jacobian_frobenius_sq(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
    projections: int | None = None, generator: torch.Generator | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """‖J_b‖_F² = ∑_{k,i} (∂f(x)_{bk}/∂x_{bi})² for every sample b of ``x``.

    Args:
        fn: maps ``x`` ``(B, …)`` to ``(B, K)`` (or ``(B, …)``, flattened to ``(B, K)``),
            each output row depending on its own input row only (see the module docstring).
        x: the inputs ``(B, …)``, e.g. images ``(B, C, H, W)`` in [0, 1]; the Jacobian is
            per unit of x (per [0, 1] pixel for images). When ``x`` does not require grad a
            detached copy that does is used, so the caller's tensor is never modified.
        projections: ``None``: exact, one backward pass per output k (K passes; exact to
            float precision). ``n``: the unbiased estimate K·(1/n)·∑_j ‖J_bᵀ v_bj‖² with
            each v_bj drawn uniformly on the unit sphere of R^K, independently **per sample**
            (E[v vᵀ] = I/K, so E[K‖Jᵀv‖²] = tr(J Jᵀ) = ‖J‖_F²); n backward passes. The
            reference JReg code normalised v over the whole batch from the second projection
            on, which shrinks the estimate by about the batch size (``methods/krotov.md``
            (d)8); here every v_bj has norm 1.
        generator: draws the projections (``None``: the global RNG); its device decides
            where they are drawn, then they move to the output's device.
        create_graph: keep the graph of the result, so that it can be differentiated again
            (a training penalty: ``(loss + λ·jacobian_frobenius_sq(...).mean()).backward()``
            is a double backward). Without it the result is detached.

    Returns:
        ``(B,)`` tensor of ‖J_b‖_F², in the output's dtype and on its device.

    Raises:
        ValueError: ``projections`` < 1, or ``fn`` changes the batch size.
    """
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(x)
        if out.ndim < 1 or out.shape[0] != x.shape[0]:
            raise ValueError(f"fn must keep the batch dimension: input {tuple(x.shape)}, "
                             f"output {tuple(out.shape)}")
        return graph_jacobian_frobenius_sq(out, x, projections=projections,
                                           generator=generator, create_graph=create_graph)


def graph_jacobian_frobenius_sq(
    out: torch.Tensor, x: torch.Tensor, *, projections: int | None = None,
    generator: torch.Generator | None = None, create_graph: bool = False,
) -> torch.Tensor:
    """:func:`jacobian_frobenius_sq` of an output ``out`` ``(B, …)`` already computed from
    ``x`` (which requires grad): a training penalty on the forward pass the loss uses, with
    no second forward."""
    if projections is not None and (isinstance(projections, bool) or projections < 1):
        raise ValueError(f"projections must be None (exact) or a whole number >= 1, got "
                         f"{projections!r}")
    with torch.enable_grad():
        out = out.reshape(out.shape[0], -1)
        batch, k_out = out.shape
        total = out.new_zeros(batch)
        if batch == 0 or k_out == 0 or not out.requires_grad:  # constant in x: J = 0
            return total.detach() if not create_graph else total
        n_passes = k_out if projections is None else projections
        for j in range(n_passes):
            if projections is None:
                # row k of every sample's Jacobian at once: d(∑_b out_bk)/dx_b = ∂out_bk/∂x_b
                weights = torch.zeros_like(out)
                weights[:, j] = 1.0
            else:
                dev = generator.device if generator is not None else out.device
                v = torch.randn(batch, k_out, generator=generator, device=dev,
                                dtype=out.dtype).to(out.device)
                # unit norm per sample (row), never over the batch
                weights = v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
            last = j == n_passes - 1
            (g,) = torch.autograd.grad(out, x, grad_outputs=weights,
                                       retain_graph=create_graph or not last,
                                       create_graph=create_graph, allow_unused=True)
            if g is not None:  # an output that does not depend on x: a zero Jacobian
                total = total + g.reshape(batch, -1).pow(2).sum(1)
        if projections is not None:
            total = total * (k_out / projections)
    return total if create_graph else total.detach()
