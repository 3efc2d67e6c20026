"""TRPO's step: the natural gradient by conjugate gradient on Fisher-vector products, scaled to the edge of
a KL trust region, then a backtracking line search (Schulman et al. 2015, "Trust Region Policy
Optimization", Appendix C; the constants are those of OpenAI's baselines implementation).

The gradient it starts from is the surrogate's, so the weights on each token's log-prob gradient are those
of the KL-penalised surrogate at beta = 0 (ratio * A). Only the step differs from a first-order optimiser:

    s = F^-1 g                     F: the Hessian of the mean KL(pi_old || pi_theta) at theta_old (the Fisher)
    step = sqrt(2 delta / s'Fs) s  the largest step whose quadratic KL model is delta
    accept the first of step, step/2, step/4, ... whose measured KL <= 1.5 delta and whose loss improved
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def conjugate_gradient(matrix_vector: Callable, b: torch.Tensor, iterations: int = 10,
                       tolerance: float = 1e-10) -> torch.Tensor:
    """x with A x ~= b, for a symmetric positive-definite A known only through matrix_vector(v) = A v."""
    x = torch.zeros_like(b)
    residual = b.clone()
    direction = b.clone()
    residual_sq = residual @ residual
    for _ in range(iterations):
        if residual_sq <= tolerance:
            break
        a_direction = matrix_vector(direction)
        alpha = residual_sq / (direction @ a_direction)
        x += alpha * direction
        residual -= alpha * a_direction
        new_residual_sq = residual @ residual
        direction = residual + (new_residual_sq / residual_sq) * direction
        residual_sq = new_residual_sq
    return x


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _assign(params, flat: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in params:
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


def natural_gradient_step(params: list, loss: torch.Tensor, recompute_loss: Callable, mean_kl: Callable,
                          max_kl: float = 0.01, cg_iterations: int = 10, damping: float = 0.01,
                          backtracks: int = 10, accept_ratio: float = 1.5) -> dict:
    """Move `params` by TRPO's step for `loss` (to minimise). `mean_kl()` is the mean KL(pi_old || pi_theta)
    from the distributions before the step (0 with zero gradient at the start); `recompute_loss()`
    evaluates the loss at the current parameters. Returns what happened, for the metrics."""
    gradient = _flat(torch.autograd.grad(loss, params))
    kl_gradient = None

    def fisher_vector(v: torch.Tensor) -> torch.Tensor:
        # F v = d/dtheta (grad KL . v): two backward passes, no F in memory; the damping keeps CG stable
        nonlocal kl_gradient
        if kl_gradient is None:
            kl_gradient = _flat(torch.autograd.grad(mean_kl(), params, create_graph=True))
        hessian_v = _flat(torch.autograd.grad(kl_gradient @ v, params, retain_graph=True))
        return hessian_v + damping * v

    direction = conjugate_gradient(fisher_vector, -gradient, cg_iterations)  # F^-1 (-g): downhill
    curvature = direction @ fisher_vector(direction)  # s'Fs > 0 (F is positive semi-definite, plus damping)
    full_step = direction * math.sqrt(2 * max_kl / max(curvature.item(), 1e-30))
    expected = -(gradient @ full_step).item()  # first-order loss decrease of the full step
    start, before = _flat(p.detach() for p in params), loss.item()
    for k in range(backtracks):
        fraction = 0.5**k
        _assign(params, start + fraction * full_step)
        with torch.no_grad():
            after, kl = recompute_loss().item(), mean_kl().item()
        if math.isfinite(after) and kl <= accept_ratio * max_kl and after < before:
            return {"grad_norm": gradient.norm().item(), "step_fraction": fraction, "step_kl": kl,
                    "expected_improvement": expected, "improvement": before - after}
    _assign(params, start)  # no step passed: keep the old policy, as TRPO does
    return {"grad_norm": gradient.norm().item(), "step_fraction": 0.0, "step_kl": 0.0,
            "expected_improvement": expected, "improvement": 0.0}
