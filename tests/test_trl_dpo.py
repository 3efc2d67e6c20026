"""Every loss and modifier of TRL 1.16's DPOTrainer, run by TRL's own code, against the package's records.

TRL's losses live inside `DPOTrainer._compute_loss(model, inputs)`, which takes the log-probs from the model's
forward pass. Here the "model" is a stub whose forward returns given per-token log-probs (a float64 leaf tensor),
and the trainer is built without __init__ with only the attributes that method reads; everything between the
forward and the returned loss (log-ratios, f-divergence scores, ld_alpha's masks, every loss type, WPO's weights,
the weighted sum of a loss_type list) is TRL's code as installed. The package gets the same log-probs. Losses and
their gradients with respect to the per-token log-probs must agree to 1e-10 (relative).

Where the package follows the paper and TRL differs, both are shown: RPO's per-sequence NLL (TRL's "sft" is a token
mean over the batch); TRL's alpha-divergence, which cannot run in float64 and clamps its exponent at 80 in float32;
EXO's constants, which TRL rounds to float32; use_weighting, which TRL cannot apply to hinge or sft.
"""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from unified_rlhf import objectives
from unified_rlhf.objectives.compose import (
    DIVERGENCES,
    compose,
    length_desensitized,
    reference_free,
    with_divergence,
    wpo_sequence_weights,
    wpo_weighted,
)
from unified_rlhf.objectives.zoo import AOTRanks, aot_inputs
from unified_rlhf.symbolic import TORCH
from unified_rlhf.verify import relative_error

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
TOLERANCE = 1e-10
B, T = 6, 7  # pairs, completion positions


class StubLM(torch.nn.Module):
    """A causal LM whose forward returns the given per-token log-probs (and WPO's log sum_v pi(v)^2)."""

    is_gradient_checkpointing = False

    def __init__(self, log_probs, log_sum_sq_probs=None):
        super().__init__()
        self.log_probs, self.log_sum_sq_probs = log_probs, log_sum_sq_probs

    def forward(self, **_):
        zeros = torch.zeros_like(self.log_probs.detach())
        return SimpleNamespace(log_probs=self.log_probs, log_sum_sq_probs=self.log_sum_sq_probs, entropy=zeros,
                               mean_logits=zeros, is_top1=zeros.bool(), aux_loss=None)


class Accelerator:
    device = torch.device("cpu")

    def gather(self, x):
        return x

    gather_for_metrics = gather


def stub_trainer(cls, model, ref_model, **attributes):
    trainer = object.__new__(cls)  # TRL's class, not its __init__ (which wants a real model and dataset)
    trainer.model, trainer.ref_model, trainer.accelerator = model, ref_model, Accelerator()
    trainer.aux_loss_enabled, trainer.precompute_ref_logps = False, False
    trainer._metrics, trainer._total_train_tokens, trainer._tp_size = defaultdict(lambda: defaultdict(list)), 0, 1
    for key, value in attributes.items():
        setattr(trainer, key, value)
    return trainer


def data(seed=0, dtype=torch.float64):
    """Per-token log-probs of B chosen then B rejected completions of random lengths (right-aligned, after a
    prompt), TRL's layout: completion_mask over input_ids [2B, T+1], log-probs over positions 1.. [2B, T]."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (2 * B,), generator=g)
    completion_mask = torch.zeros(2 * B, T + 1, dtype=torch.long)
    for row, n in enumerate(lengths):
        completion_mask[row, T + 1 - n:] = 1
    mask = completion_mask[:, 1:].to(dtype)
    policy = (-torch.rand(2 * B, T, generator=g, dtype=dtype) * 3 * mask).requires_grad_()
    reference = (policy.detach() + 0.4 * torch.randn(2 * B, T, generator=g, dtype=dtype)).clamp(max=-1e-3) * mask
    log_sum_sq = -torch.rand(2 * B, T, generator=g, dtype=dtype) * 2 * mask  # log sum_v pi(v)^2, for WPO
    return SimpleNamespace(policy=policy, reference=reference, completion_mask=completion_mask, mask=mask,
                           log_sum_sq=log_sum_sq)


def gradient(loss, d):
    """d loss / d log-probs on the completion tokens: a padding position's log-prob is a constant 0 in a real
    forward pass, whatever gradient a sum over every position would give it."""
    return torch.autograd.grad(loss, d.policy, retain_graph=True)[0] * d.mask


def run_trl(d, loss_type, beta=0.1, label_smoothing=0.0, weights=None, f_divergence_type="reverse_kl",
            f_alpha=0.5, ld_alpha=None, use_weighting=False, discopop_tau=0.05):
    types = loss_type if isinstance(loss_type, list) else [loss_type]
    trainer = stub_trainer(
        trl_dpo.DPOTrainer, StubLM(d.policy, d.log_sum_sq), StubLM(d.reference), beta=beta,
        label_smoothing=label_smoothing, loss_types=types, loss_weights=weights or [1.0] * len(types),
        f_divergence_type=f_divergence_type, f_alpha_divergence_coef=f_alpha, ld_alpha=ld_alpha,
        use_weighting=use_weighting,
        args=SimpleNamespace(discopop_tau=discopop_tau, gradient_checkpointing_kwargs=None))
    n = d.completion_mask.shape
    inputs = {"input_ids": torch.zeros(n, dtype=torch.long), "attention_mask": torch.ones(n, dtype=torch.long),
              "completion_mask": d.completion_mask}
    loss = trl_dpo.DPOTrainer._compute_loss(trainer, trainer.model, inputs, False)
    return loss, gradient(loss, d)


def batch_of(d, per_token=False):
    """The package's inputs for the same data: sequence sums (or per token, with masks), lengths."""
    def side(x, part):
        x = x.chunk(2)[part]
        return x if per_token else x.sum(-1)
    batch = {"logp_chosen": side(d.policy, 0), "logp_rejected": side(d.policy, 1),
             "ref_logp_chosen": side(d.reference, 0), "ref_logp_rejected": side(d.reference, 1),
             "len_chosen": d.mask.chunk(2)[0].sum(-1), "len_rejected": d.mask.chunk(2)[1].sum(-1)}
    batch["mean_len_chosen"] = batch["len_chosen"].mean().expand(B)
    if per_token:
        batch["mask_chosen"], batch["mask_rejected"] = d.mask.chunk(2)
    return batch


def run_package(d, objective, per_token=False, extra=None, **hp):
    batch = batch_of(d, per_token) | (extra or {})
    loss = objectives.get(objective)(batch, **hp).loss.mean()
    return loss, gradient(loss, d)


def assert_agree(trl, package):
    (trl_loss, trl_grad), (loss, grad) = trl, package
    assert relative_error(loss, trl_loss) <= TOLERANCE, (loss.item(), trl_loss.item())
    assert relative_error(grad, trl_grad) <= TOLERANCE, relative_error(grad, trl_grad)
    assert grad.abs().sum() > 0  # a check that sees a gradient


# ------------------------------------------------------------------------------- every loss_type
LOSSES = [  # TRL loss_type, its TRL settings, the package's objective and hyperparameters
    ("sigmoid", {"beta": 0.3}, "dpo", {"beta": 0.3}),
    ("hinge", {"beta": 0.3}, "gpo_hinge", {"beta": 0.3}),
    ("ipo", {"beta": 0.2}, "ipo", {"tau": 0.2, "length_normalize": True}),
    ("nca_pair", {"beta": 0.3}, "nca_pair", {"beta": 0.3}),
    ("robust", {"beta": 0.3, "label_smoothing": 0.1}, "rdpo", {"beta": 0.3, "eps": 0.1}),
    ("bco_pair", {"beta": 0.3}, "bco_pair", {"beta": 0.3}),
    ("sppo_hard", {"beta": 0.3}, "sppo_hard", {"beta": 0.3}),
    ("apo_zero", {"beta": 0.3}, "apo_zero", {"beta": 0.3}),
    ("apo_down", {"beta": 0.3}, "apo_down", {"beta": 0.3}),
    ("discopop", {"beta": 0.3, "discopop_tau": 0.05}, "discopop", {"beta": 0.3, "tau": 0.05}),
    ("sigmoid_norm", {"beta": 2.0}, "sigmoid_norm", {"beta": 2.0}),
]


@pytest.mark.parametrize("loss_type, trl_settings, name, hp", LOSSES, ids=[row[0] for row in LOSSES])
def test_each_loss_type_is_trls(loss_type, trl_settings, name, hp):
    d = data(seed=1)
    assert_agree(run_trl(d, loss_type, **trl_settings), run_package(d, name, **hp))


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "js_divergence"])
def test_exo_is_trls_up_to_trls_float32_constants(divergence):
    """TRL builds EXO's label-smoothing constants log(1 - eps) and log(eps) from a float32 tensor, whatever the
    log-probs' precision: its float64 loss is the exact one with those two constants rounded to float32 (about 1e-8
    relative here). The package keeps them in the log-probs' precision."""
    d = data(seed=1)
    beta, eps = 0.3, 1e-3
    trl_loss, trl_grad = run_trl(d, "exo_pair", beta=beta, label_smoothing=eps, f_divergence_type=divergence)
    exact = run_package(d, with_divergence("exo_pair", divergence), beta=beta, eps=eps)
    assert 1e-12 < relative_error(exact[0], trl_loss) < 1e-6 and relative_error(exact[1], trl_grad) < 1e-6
    score, _, _ = DIVERGENCES[divergence]
    batch = batch_of(d)
    u = beta * (score(TORCH, batch["logp_chosen"] - batch["ref_logp_chosen"], None)
                - score(TORCH, batch["logp_rejected"] - batch["ref_logp_rejected"], None))
    log_win, log_lose = (torch.tensor(x, dtype=torch.float32).double() for x in (math.log1p(-eps), math.log(eps)))
    rounded = torch.sigmoid(u) * (F.logsigmoid(u) - log_win) + torch.sigmoid(-u) * (F.logsigmoid(-u) - log_lose)
    rounded = rounded.mean()
    assert_agree((trl_loss, trl_grad), (rounded, gradient(rounded, d)))


@pytest.mark.parametrize("unpaired", [False, True])
def test_aot_sorts_the_batch_as_trl_does(unpaired):
    d = data(seed=2)
    trl = run_trl(d, "aot_unpaired" if unpaired else "aot", beta=0.3, label_smoothing=0.1)
    batch = batch_of(d)
    obj = objectives.get("aot_unpaired" if unpaired else "aot")
    if unpaired:  # the trainer's route: the hook's loss over the sorted batch
        loss = AOTRanks(sorted_loss=True).loss(obj, batch, {"beta": 0.3, "eps": 0.1})[0].mean()
    else:
        loss = obj(batch | aot_inputs(batch), beta=0.3, eps=0.1).loss.mean()
    assert_agree(trl, (loss, gradient(loss, d)))


def test_sft_is_a_token_mean_over_the_batch():
    d = data(seed=3)
    batch = batch_of(d)
    loss = objectives.get("sft")({"logp": batch["logp_chosen"], "length": batch["mean_len_chosen"]},
                                 length_normalize=True).loss.mean()
    assert_agree(run_trl(d, "sft"), (loss, gradient(loss, d)))


# ------------------------------------------------------------------------------- lists of losses
def test_loss_type_lists_with_loss_weights_are_compositions():
    d = data(seed=4)
    assert_agree(run_trl(d, ["sigmoid", "bco_pair", "sft"], weights=[0.8, 0.2, 1.0]), run_package(d, "mpo"))
    assert_agree(run_trl(d, ["sigmoid", "sft"], weights=[1.0, 0.2]), run_package(d, "dpo+0.2*sft"))
    assert_agree(run_trl(d, ["nca_pair", "robust", "ipo"], beta=0.2, weights=[0.5, 0.3, 0.2], label_smoothing=0.1),
                 run_package(d, compose({"nca_pair": 0.5, "rdpo": 0.3, "ipo": 0.2},
                                        fixed={"ipo": {"tau": 0.2, "length_normalize": True}}), beta=0.2, eps=0.1))


def test_rpo_follows_its_paper_where_trl_takes_a_token_mean():
    """RPO's paper divides the chosen NLL by that completion's own length; TRL's loss_type=['sigmoid', 'sft']
    divides the batch's summed NLL by the batch's chosen tokens. They agree only when every |y+| is equal."""
    d = data(seed=5)
    trl = run_trl(d, ["sigmoid", "sft"])
    assert_agree(trl, run_package(d, compose({"dpo": 1.0, "sft": 1.0})))
    paper = run_package(d, "rpo")
    assert relative_error(paper[0], trl[0]) > 1e-3  # the lengths differ in this batch, so the losses do
    batch = batch_of(d)
    by_hand = objectives.get("dpo")(batch).loss.mean() - (batch["logp_chosen"] / batch["len_chosen"]).mean()
    assert relative_error(paper[0], by_hand) <= TOLERANCE


def test_cpo_is_trls_cpo_loss_plus_the_chosen_token_mean():
    cpo_trainer = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
    d = data(seed=6)
    batch = batch_of(d)
    trainer = stub_trainer(cpo_trainer.CPOTrainer, None, None, alpha=0.0, beta=0.1, label_smoothing=0.0,
                           loss_type="sigmoid", simpo_gamma=0.5)
    preference = cpo_trainer.CPOTrainer.cpo_loss(trainer, batch["logp_chosen"], batch["logp_rejected"])[0].mean()
    nll = run_trl(d, "sft")[0]  # TRL's CPOTrainer takes the same token mean, by cross-entropy over the logits
    expected = preference + nll
    assert_agree((expected, gradient(expected, d)), run_package(d, "cpo"))
    assert_agree(run_package(d, reference_free("dpo")), (preference, gradient(preference, d)))


# ------------------------------------------------------------------------------- modifiers
F_DIVERGENCE_LOSSES = [("sigmoid", "dpo", {}), ("sigmoid_norm", "sigmoid_norm", {}), ("hinge", "gpo_hinge", {}),
                       ("ipo", "ipo", {"tau": 0.3, "length_normalize": True}), ("robust", "rdpo", {"eps": 0.1}),
                       ("discopop", "discopop", {})]  # exo_pair: test_exo_is_trls_up_to_trls_float32_constants


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "js_divergence"])
@pytest.mark.parametrize("loss_type, name, hp", F_DIVERGENCE_LOSSES, ids=[row[0] for row in F_DIVERGENCE_LOSSES])
def test_f_divergences_change_the_implicit_reward_as_trl_does(divergence, loss_type, name, hp):
    d = data(seed=7)
    hp = ({"beta": 0.3} if name != "ipo" else {}) | hp
    trl = run_trl(d, [loss_type, "sft"], beta=0.3, label_smoothing=0.1, f_divergence_type=divergence)
    package = run_package(d, compose({with_divergence(name, divergence): 1.0, "sft": 1.0}), **hp)
    assert_agree(trl, package)


def test_alpha_divergence_agrees_in_float32_where_trl_can_run_it():
    """TRL's alpha-divergence looks its exponent's clamp up in a table of float16/bfloat16/float32 only, so it raises
    KeyError on float64 log-probs; in float32 it agrees with the package to float32's precision. It also clamps
    (alpha - 1) rho at 80 (for alpha = 0.5: rho < -160), where its gradient is 0 and the package's is not."""
    with pytest.raises(KeyError):
        run_trl(data(seed=8), "sigmoid", f_divergence_type="alpha_divergence")
    d32 = data(seed=8, dtype=torch.float32)
    trl_loss, trl_grad = run_trl(d32, "sigmoid", beta=0.3, f_divergence_type="alpha_divergence", f_alpha=0.5)
    d64 = SimpleNamespace(**vars(d32) | {"policy": d32.policy.detach().double().requires_grad_(),
                                         "reference": d32.reference.double(), "mask": d32.mask.double()})
    loss, grad = run_package(d64, "fdpo_alpha_divergence", beta=0.3, f_alpha=0.5)
    assert relative_error(loss, trl_loss.double()) < 1e-5
    assert (grad - trl_grad.double()).abs().max() < 1e-5 * grad.abs().max()
    far = data(seed=8, dtype=torch.float32)
    with torch.no_grad():  # the first chosen completion 200 nats below the reference: past TRL's clamp
        far.policy[0, -1] = far.reference[0, -1] - 200.0
    _, clamped = run_trl(far, "sigmoid", beta=0.3, f_divergence_type="alpha_divergence", f_alpha=0.5)
    far64 = SimpleNamespace(**vars(far) | {"policy": far.policy.detach().double().requires_grad_(),
                                           "reference": far.reference.double(), "mask": far.mask.double()})
    _, exact = run_package(far64, "fdpo_alpha_divergence", beta=0.3, f_alpha=0.5)
    assert clamped[0].abs().max() == 0 and exact[0].abs().max() > 0


@pytest.mark.parametrize("loss_type, name, hp", [("sigmoid", "dpo", {}), ("bco_pair", "bco_pair", {}),
                                                 ("ipo", "ipo", {"tau": 0.3, "length_normalize": True}),
                                                 ("apo_down", "apo_down", {})])
def test_ld_alpha_weighs_the_tail_tokens_as_trl_does(loss_type, name, hp):
    d = data(seed=9)
    ld = objectives.get("ld_dpo") if name == "dpo" else length_desensitized(name)
    hp = ({"beta": 0.3} if name != "ipo" else {}) | hp
    assert_agree(run_trl(d, loss_type, beta=0.3, ld_alpha=0.4), run_package(d, ld, per_token=True, ld_alpha=0.4, **hp))


@pytest.mark.parametrize("loss_type, name", [("sigmoid", "dpo"), ("nca_pair", "nca_pair"), ("ipo", "ipo")])
def test_use_weighting_is_wpos_detached_pair_weight(loss_type, name):
    d = data(seed=10)
    omega = wpo_sequence_weights(d.policy, d.log_sum_sq, d.mask)
    assert not omega.requires_grad  # detached, as TRL computes it under no_grad
    pair_weight = {"wpo_weight": omega.chunk(2)[0] * omega.chunk(2)[1]}
    wpo = objectives.get("wpo") if name == "dpo" else wpo_weighted(name)
    hp = {"tau": 0.3, "length_normalize": True} if name == "ipo" else {"beta": 0.3}
    assert_agree(run_trl(d, loss_type, beta=0.3, use_weighting=True), run_package(d, wpo, extra=pair_weight, **hp))


def test_trls_use_weighting_breaks_hinge_and_sft_where_the_package_does_not():
    """TRL multiplies each loss by the WPO weight in place: the hinge's relu output, which its backward needs, and
    sft's loss, a tensor expanded from one number, cannot be written in place, so TRL raises. The package's sums
    train with them."""
    d = data(seed=10)
    with pytest.raises(RuntimeError, match="inplace operation"):
        run_trl(d, "hinge", use_weighting=True)
    with pytest.raises(RuntimeError, match="single memory location"):
        run_trl(d, ["sigmoid", "sft"], use_weighting=True)
    omega = wpo_sequence_weights(d.policy, d.log_sum_sq, d.mask)
    for objective in (wpo_weighted("gpo_hinge"), compose({"wpo": 1.0, "sft": 1.0})):
        loss, grad = run_package(d, objective, extra={"wpo_weight": omega.chunk(2)[0] * omega.chunk(2)[1]})
        assert torch.isfinite(loss) and grad.abs().sum() > 0


# ------------------------------------------------------------------------------- KTOTrainer's unpaired APO
def test_apo_zero_unpaired_is_trls_kto_trainer_loss():
    trl_kto = pytest.importorskip("trl.trainer.kto_trainer")
    d = data(seed=11)
    label = torch.tensor([True, False, True, True, False, False, True, False, True, False, True, True])
    trainer = stub_trainer(trl_kto.KTOTrainer, StubLM(d.policy), StubLM(d.reference), beta=0.3, calculate_KL=False,
                           loss_type="apo_zero_unpaired", desirable_weight=1.5, undesirable_weight=0.7,
                           args=SimpleNamespace(gradient_checkpointing_kwargs=None))
    n = d.completion_mask.shape
    inputs = {"input_ids": torch.zeros(n, dtype=torch.long), "attention_mask": torch.ones(n, dtype=torch.long),
              "completion_mask": d.completion_mask, "label": label}
    trl_loss = trl_kto.KTOTrainer._compute_loss(trainer, trainer.model, inputs, False)
    trl = (trl_loss, gradient(trl_loss, d))
    batch = {"logp": d.policy.sum(-1), "ref_logp": d.reference.sum(-1), "label": label.double()}
    loss = objectives.get("apo_zero_unpaired")(batch, beta=0.3, lambda_d=1.5, lambda_u=0.7).loss.mean()
    assert_agree(trl, (loss, gradient(loss, d)))
