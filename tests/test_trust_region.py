"""TRPO's step (trust_region.py): conjugate gradient, the natural-gradient direction and its scale, the line
search, and the trpo record training through the trainer's update hook."""

import math

import pytest
import torch
from training_runs import small

from unified_rlhf import objectives, trust_region
from unified_rlhf.checks import SettingError
from unified_rlhf.trainer import Trainer


def test_conjugate_gradient_solves_a_positive_definite_system():
    g = torch.Generator().manual_seed(0)
    root = torch.randn(12, 12, generator=g, dtype=torch.float64)
    matrix = root @ root.T + 0.5 * torch.eye(12, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)
    x = trust_region.conjugate_gradient(lambda v: matrix @ v, b, iterations=40)
    torch.testing.assert_close(x, torch.linalg.solve(matrix, b), rtol=1e-9, atol=1e-9)


def categorical_problem(max_kl=0.01):
    """A softmax policy over 6 actions with fixed advantages: the loss is -E_old[ratio * A], the KL is exact."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, generator=g, dtype=torch.float64).requires_grad_()
    advantage = torch.randn(6, generator=g, dtype=torch.float64)
    old = torch.log_softmax(logits.detach(), -1)

    def loss_fn():
        return -(old.exp() * (torch.log_softmax(logits, -1) - old).exp() * advantage).sum()

    def mean_kl():
        return (old.exp() * (old - torch.log_softmax(logits, -1))).sum()

    return logits, advantage, old, loss_fn, mean_kl


def test_natural_gradient_step_is_the_damped_fisher_solve_scaled_to_the_trust_region():
    max_kl, damping = 0.01, 0.01
    logits, advantage, old, loss_fn, mean_kl = categorical_problem(max_kl)
    p = old.exp()
    fisher = torch.diag(p) - torch.outer(p, p)  # Hessian of KL(p_old || softmax(theta)) at theta_old
    (gradient,) = torch.autograd.grad(loss_fn(), logits)
    damped = fisher + damping * torch.eye(6, dtype=torch.float64)
    direction = torch.linalg.solve(damped, -gradient)
    expected_step = direction * math.sqrt(2 * max_kl / (direction @ damped @ direction))
    start = logits.detach().clone()
    metrics = trust_region.natural_gradient_step([logits], loss_fn(), loss_fn, mean_kl, max_kl=max_kl,
                                                 cg_iterations=50, damping=damping)
    moved = logits.detach() - start
    torch.testing.assert_close(moved, metrics["step_fraction"] * expected_step, rtol=1e-6, atol=1e-9)
    assert 0 < metrics["step_kl"] <= 1.5 * max_kl and metrics["improvement"] > 0
    assert metrics["step_kl"] == pytest.approx(mean_kl().item())


def test_a_step_that_cannot_improve_leaves_the_parameters_as_they_were():
    logits, advantage, old, loss_fn, mean_kl = categorical_problem()
    start = logits.detach().clone()
    # a loss that only gets worse away from the start, whatever the direction: nothing is accepted
    metrics = trust_region.natural_gradient_step([logits], loss_fn(), lambda: loss_fn() + 1.0, mean_kl)
    assert metrics["step_fraction"] == 0.0
    torch.testing.assert_close(logits.detach(), start, rtol=0, atol=0)


def test_trpo_shares_the_penalty_forms_weights_at_beta_zero():
    g = torch.Generator().manual_seed(2)
    batch = {"logp": -torch.rand(16, dtype=torch.float64, generator=g) * 5,
             "old_logp": -torch.rand(16, dtype=torch.float64, generator=g) * 5,
             "advantage": torch.randn(16, dtype=torch.float64, generator=g)}
    (trpo,) = objectives.get("trpo").weights(batch)
    (penalty,) = objectives.get("ppo_kl_fixed").weights(batch, beta=0.0)
    torch.testing.assert_close(trpo, penalty, rtol=0, atol=0)
    torch.testing.assert_close(trpo, (batch["logp"] - batch["old_logp"]).exp() * batch["advantage"])


@pytest.mark.slow
def test_trpo_trains_within_its_trust_region(tmp_path):
    config = small("trpo", tmp_path / "run", max_steps=2, batch_size=4, samples_per_prompt=2)
    trainer = Trainer(config)
    for _ in range(2):
        metrics = trainer.train_step()
        assert metrics["step_kl"] <= 1.5 * objectives.get("trpo").defaults["max_kl"][0]
        assert math.isfinite(metrics["grad_norm"]) and 0.0 <= metrics["step_fraction"] <= 1.0


def test_trpo_refuses_more_than_one_update_epoch(tmp_path):
    with pytest.raises(SettingError, match="update_epochs must be 1"):
        Trainer(small("trpo", tmp_path / "run", update_epochs=2))
