"""GRPO and its descendants against TRL 1.16's GRPOTrainer: TRL's own loss code (`_compute_loss`), run on a
real trainer built from a GRPOConfig, with its per-token log-probs replaced by ours. Both sides get the same
float64 log-probs, old and reference log-probs, advantages and masks; the losses and their gradients with
respect to the per-token log-probs must agree to a relative 1e-10, and so must our closed-form weights.

Where the package follows the paper and TRL does something else (DAPO's token mean over each group, TRL's
over the batch; TRL's default KL term, k3 times pi/pi_old), both are shown."""

import tempfile
import warnings

import pytest
import torch
from datasets import Dataset
from training_runs import DATA
from trl import GRPOConfig, GRPOTrainer
from trl.rewards import get_soft_overlong_punishment

from unified_rlhf import advantages, objectives
from unified_rlhf.models import load_tokenizer
from unified_rlhf.verify import relative_error

TOLERANCE = 1e-10
GROUP, BATCH, TOKENS, BUDGET = 4, 8, 7, 9  # 2 prompts x 4 samples, completions of at most 7 tokens, budget 9
_TRAINERS = {}
_OUTPUT = tempfile.TemporaryDirectory(prefix="unified_rlhf_trl_grpo_")  # removed when the tests end


def trl_trainer(**settings) -> GRPOTrainer:
    """A GRPOTrainer built from these GRPOConfig settings (once per setting), on the book's reference model."""
    key = tuple(sorted(settings.items()))
    if key not in _TRAINERS:
        args = GRPOConfig(output_dir=_OUTPUT.name, report_to="none", use_cpu=True,
                          per_device_train_batch_size=BATCH, num_generations=GROUP, max_completion_length=BUDGET,
                          **settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _TRAINERS[key] = GRPOTrainer(model=str(DATA / "reference"), args=args, processing_class=load_tokenizer(
                str(DATA / "reference")), reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                train_dataset=Dataset.from_dict({"prompt": ["a"] * BATCH}))
    return _TRAINERS[key]


def trl_loss(batch: dict, **settings):
    """TRL's loss on our per-token log-probs, and its gradient with respect to them. The model's forward is
    replaced by our log-probs (and zero entropies, which only its metrics read); everything after it is
    TRL's code. The trainer is in eval mode, so no gradient-accumulation factor enters the loss."""
    trainer = trl_trainer(**settings)
    logp = batch["logp"].clone().requires_grad_()
    trainer._get_per_token_logps_and_entropies = lambda *args, **kwargs: (logp, torch.zeros_like(logp), None)
    mask = batch["mask"].double()
    ids = torch.zeros(BATCH, TOKENS, dtype=torch.long)
    inputs = {"prompt_ids": ids[:, :1], "prompt_mask": torch.ones(BATCH, 1, dtype=torch.long),
              "completion_ids": ids, "completion_mask": mask, "advantages": batch["advantage"],
              "old_per_token_logps": batch["old_logp"], "ref_per_token_logps": batch["ref_logp"],
              "num_items_in_batch": mask.sum()}
    assert not trainer.model.training
    loss = trainer._compute_loss(trainer.model, inputs)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad


def ours(name: str, batch: dict, **hp):
    """Our batch-mean loss (what the trainer backpropagates), its gradient, and the closed-form weights."""
    logp = batch["logp"].clone().requires_grad_()
    out = objectives.get(name)(batch | {"logp": logp}, **hp)
    loss = out.loss.mean()
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad, out.weights[0].detach()


def assert_same(name: str, batch: dict, hp: dict, settings: dict):
    expected_loss, expected_grad = trl_loss(batch, **settings)
    loss, grad, weights = ours(name, batch, **hp)
    assert expected_grad.abs().max() > 0  # a batch whose gradient vanishes would check nothing
    assert relative_error(loss, expected_loss) <= TOLERANCE, (name, loss, expected_loss)
    assert relative_error(grad, expected_grad) <= TOLERANCE, (name, relative_error(grad, expected_grad))
    # -dL/dl of the batch mean is each sequence's closed-form weight over the batch size (0 off the completion)
    assert relative_error(weights * batch["mask"] / BATCH, -expected_grad) <= TOLERANCE, name


def make_batch(seed: int = 0, spread: float = 0.3) -> dict:
    """Per-token float64 inputs: 2 groups of 4 completions of 1-7 tokens; old and reference log-probs within
    about `spread` of the policy's, so some tokens are clipped at eps = 0.2 and some are not."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, TOKENS + 1, (BATCH,), generator=g)
    lengths[0] = TOKENS
    mask = torch.arange(TOKENS).expand(BATCH, TOKENS) < lengths[:, None]
    logp = -(torch.rand(BATCH, TOKENS, generator=g, dtype=torch.float64) * 5 + 0.05)
    rewards = torch.rand(BATCH // GROUP, GROUP, generator=g, dtype=torch.float64)
    return {"logp": logp, "mask": mask, "length": lengths.double(),
            "old_logp": (logp + spread * torch.randn(BATCH, TOKENS, generator=g, dtype=torch.float64)).clamp(max=-1e-3),
            "ref_logp": (logp + 0.3 * torch.randn(BATCH, TOKENS, generator=g, dtype=torch.float64)).clamp(max=-1e-3),
            "advantage": advantages.group_standardised(rewards).flatten(),
            "max_completion_length": torch.full((BATCH,), float(BUDGET), dtype=torch.float64),
            "mean_length": advantages.token_mean_length(lengths.double(), GROUP, "batch")}


NO_IS_KL = {"use_bias_correction_kl": False}  # TRL's k3 as DeepSeekMath writes it (its default: see below)
CASES = [  # (our method, our hyperparameters, TRL's GRPOConfig settings)
    ("grpo", {"beta": 0.0}, {"loss_type": "grpo", "beta": 0.0}),
    ("dr_grpo", {}, {"loss_type": "dr_grpo"}),
    ("dapo", {}, {"loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.28}),
    ("bnpo", {}, {"loss_type": "bnpo"}),
    ("cispo", {"eps_high": 0.1}, {"loss_type": "cispo", "epsilon_high": 1.1}),  # a cap the batch reaches
    # TRL picks SAPO's temperature with torch.where on two Python floats, which gives float32: 1.05 arrives
    # as 1.0499999523, a relative 5e-8 off (test_sapo_at_its_default_temperatures); 1.25 is exact in float32
    ("sapo", {"tau_neg": 1.25}, {"loss_type": "sapo", "sapo_temperature_pos": 1.0, "sapo_temperature_neg": 1.25}),
    ("vespo", {}, {"loss_type": "vespo"}),
    ("gspo", {"eps_low": 0.2, "eps_high": 0.28},
     {"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": 0.2, "epsilon_high": 0.28}),
    ("luspo", {"eps_low": 0.2, "eps_high": 0.28},
     {"loss_type": "luspo", "importance_sampling_level": "sequence", "epsilon": 0.2, "epsilon_high": 0.28}),
]


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("name, hp, settings", CASES, ids=[c[0] for c in CASES])
def test_loss_and_gradient_equal_trls(name, hp, settings, beta):
    assert_same(name, make_batch(), hp | {"beta": beta}, settings | {"beta": beta} | NO_IS_KL)


@pytest.mark.parametrize("name, settings", [("gspo", {"loss_type": "grpo"}), ("luspo", {"loss_type": "luspo"})])
def test_sequence_ratio_at_the_papers_clip_range(name, settings):
    """GSPO's clip range 3e-4 / 4e-4 on a sequence ratio that straddles it: some sequences clipped, some not."""
    batch = make_batch(seed=1, spread=1e-3)
    log_ratio = ((batch["logp"] - batch["old_logp"]) * batch["mask"]).sum(-1) / batch["length"]
    inside = (log_ratio > -3e-4) & (log_ratio < 4e-4)
    assert inside.any() and not inside.all()
    assert_same(name, batch, {"beta": 0.04}, settings | {"importance_sampling_level": "sequence", "epsilon": 3e-4,
                                                         "epsilon_high": 4e-4, "beta": 0.04} | NO_IS_KL)


def test_sapo_at_its_default_temperatures():
    """At tau_neg = 1.05 TRL's float32 temperature is 1.0499999523: ours equals TRL's run at that number."""
    batch, tau_neg = make_batch(), torch.tensor(1.05, dtype=torch.float32).item()
    assert tau_neg != 1.05
    assert_same("sapo", batch, {"tau_neg": tau_neg}, {"loss_type": "sapo", "sapo_temperature_neg": 1.05} | NO_IS_KL)
    expected_loss, _ = trl_loss(batch, loss_type="sapo", **NO_IS_KL)
    loss, _, _ = ours("sapo", batch)
    assert 1e-9 < relative_error(loss, expected_loss) < 1e-6


def test_clip_higher_and_the_cispo_cap_are_reached():
    """The cases above exercise what they claim: some ratios pass 1.28 and 1.1, some fall below 0.8."""
    batch = make_batch()
    ratio = (batch["logp"] - batch["old_logp"]).exp()[batch["mask"]]
    assert (ratio > 1.28).any() and (ratio < 0.8).any() and ((ratio > 0.8) & (ratio < 1.2)).any()


def test_dapo_token_mean_paper_over_each_group_trl_over_the_batch():
    """DAPO's Eq. 8 averages each group's token losses over that group's tokens, then over the groups: the
    package's default (token_mean="group"). TRL's loss_type="dapo" averages over all the batch's tokens: the
    same loss with token_mean="batch" (checked against TRL above). They differ when groups differ in length."""
    batch = make_batch()
    by_group = batch | {"mean_length": advantages.token_mean_length(batch["length"], GROUP, "group")}
    loss, _, _ = ours("dapo", by_group)
    ratio = (batch["logp"] - batch["old_logp"]).exp()
    a = batch["advantage"][:, None]
    surrogate = torch.minimum(ratio * a, ratio.clamp(0.8, 1.28) * a) * batch["mask"]
    per_group = [-surrogate[i:i + GROUP].sum() / batch["mask"][i:i + GROUP].sum() for i in range(0, BATCH, GROUP)]
    torch.testing.assert_close(loss, torch.stack(per_group).mean(), rtol=1e-12, atol=0)
    trl, _ = trl_loss(batch, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, beta=0.0, **NO_IS_KL)
    assert relative_error(loss, trl) > 1e-3  # the two normalisers really differ on this batch


@pytest.mark.parametrize("name, settings", [("grpo", {"loss_type": "grpo"}), ("dapo", {"loss_type": "dapo",
                                                                                         "epsilon_high": 0.28})])
def test_trls_default_kl_is_k3_times_the_ratio(name, settings):
    """TRL's default use_bias_correction_kl=True multiplies k3 by pi/pi_old (after DeepSeek-V3.2), which
    makes its gradient on policy the reverse KL's; the package keeps DeepSeekMath's k3 (chapter 7 shows what
    each follows). The two losses differ by beta (r - 1) k3 over the same normaliser, term for term."""
    batch, beta = make_batch(), 0.04
    default_loss, default_grad = trl_loss(batch, **settings, beta=beta)  # TRL's default KL
    plain_loss, plain_grad = trl_loss(batch, **settings, beta=beta, **NO_IS_KL)
    assert relative_error(default_grad, plain_grad) > 1e-3

    logp = batch["logp"].clone().requires_grad_()
    ratio = (logp - batch["old_logp"]).exp()
    k3 = (batch["ref_logp"] - logp).exp() - (batch["ref_logp"] - logp) - 1
    extra = beta * (ratio - 1) * k3 * batch["mask"]
    normaliser = batch["length"][:, None] * BATCH if name == "grpo" else batch["mask"].sum()
    extra = (extra / normaliser).sum()
    (extra_grad,) = torch.autograd.grad(extra, logp)
    assert relative_error(default_loss, plain_loss + extra.detach()) <= TOLERANCE
    assert relative_error(default_grad, plain_grad + extra_grad) <= TOLERANCE
    loss, grad, _ = ours(name, batch | {"mean_length": advantages.token_mean_length(batch["length"], GROUP, "batch")},
                         beta=beta)
    assert relative_error(grad, plain_grad) <= TOLERANCE  # ours is TRL's with the correction off


def test_overlong_penalty_is_trls_soft_overlong_punishment():
    budget, cache = 20, 4
    lengths = torch.arange(1, budget + 1, dtype=torch.float64)
    theirs = get_soft_overlong_punishment(budget, cache)([[0] * int(n) for n in lengths])
    torch.testing.assert_close(advantages.overlong_penalty(lengths, budget, cache),
                               torch.tensor(theirs, dtype=torch.float64), rtol=1e-15, atol=0)
    assert theirs[15] == 0 and theirs[-1] == -1  # the ramp starts after 16 tokens and ends at -1
