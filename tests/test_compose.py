"""Objectives made of objectives (objectives/compose.py): weighted sums and the modifiers of the implicit reward.
Every registered one is also proved and verified in test_objectives.py; TRL's own code is compared in
test_trl_dpo.py."""

import pytest
import sympy as sp
import torch

from unified_rlhf import cli, objectives, verify
from unified_rlhf.objectives.compose import (
    compose,
    ld_token_coefficients,
    length_desensitized,
    parse,
    reference_free,
    with_divergence,
    wpo_sequence_weights,
)
from unified_rlhf.objectives.core import REGISTRY


def random_pairs(n=12, seed=0, lengths=True):
    g = torch.Generator().manual_seed(seed)
    batch = {k: -torch.rand(n, generator=g, dtype=torch.float64) * 20 - 0.1
             for k in ("logp_chosen", "logp_rejected", "ref_logp_chosen", "ref_logp_rejected")}
    if lengths:
        batch["len_chosen"] = torch.randint(1, 30, (n,), generator=g).double()
        batch["len_rejected"] = torch.randint(1, 30, (n,), generator=g).double()
        batch["mean_len_chosen"] = batch["len_chosen"].mean().expand(n)
    return batch


# ------------------------------------------------------------------------------- composition
def test_the_weights_of_a_sum_are_the_sum_of_the_weights():
    parts = {"dpo": 0.8, "bco_pair": 0.2, "ipo": 0.5}
    summed = compose(parts)
    batch = random_pairs()
    out = summed(batch)
    expected_loss = sum(c * objectives.get(n)(batch).loss for n, c in parts.items())
    torch.testing.assert_close(out.loss, expected_loss)
    for side in (0, 1):
        torch.testing.assert_close(out.weights[side], sum(c * objectives.get(n)(batch).weights[side]
                                                          for n, c in parts.items()))
    difference = summed.sympy_loss() - sum(c * objectives.get(n).sympy_loss() for n, c in parts.items())
    assert sp.simplify(difference) == 0
    assert verify.verify(summed).passed


def test_a_single_completion_part_acts_on_the_chosen_side_as_trls_token_mean():
    batch = random_pairs(seed=3)
    out = compose({"sft": 1.0})  # alone: still a single-completion objective on its own data
    assert out.shape == "single" and out.data == "sft"
    summed = compose({"dpo": 1.0, "sft": 0.5})
    assert summed.options == {} and "mean_len_chosen" in summed.inputs()  # length_normalize fixed to True
    result = summed(batch)
    dpo = objectives.get("dpo")(batch)
    # TRL's sft loss: minus the mean log-prob over every chosen token of the batch
    token_mean = -batch["logp_chosen"].sum() / batch["len_chosen"].sum()
    torch.testing.assert_close(result.loss.mean(), dpo.loss.mean() + 0.5 * token_mean)
    torch.testing.assert_close(result.weights[0], dpo.weights[0] + 0.5 / batch["mean_len_chosen"])
    torch.testing.assert_close(result.weights[1], dpo.weights[1])
    per_sequence = compose({"dpo": 1.0, "sft": 0.5}, chosen_length="sequence")(batch)
    torch.testing.assert_close(per_sequence.weights[0], dpo.weights[0] + 0.5 / batch["len_chosen"])
    summed_nll = compose({"dpo": 1.0, "sft": 0.5}, fixed={"sft": {"length_normalize": False}})(batch)
    torch.testing.assert_close(summed_nll.weights[0], dpo.weights[0] + 0.5)


def test_rpo_and_cpo_are_sums_of_dpo_and_the_chosen_nll():
    batch = random_pairs(seed=4)
    dpo = objectives.get("dpo")(batch)
    rpo = objectives.get("rpo")(batch)
    torch.testing.assert_close(rpo.loss, dpo.loss - batch["logp_chosen"] / batch["len_chosen"])
    free = {k: v for k, v in batch.items() if not k.startswith("ref_")}
    cpo = objectives.get("cpo")(free)
    margin = batch["logp_chosen"] - batch["logp_rejected"]
    torch.testing.assert_close(cpo.weights[0], 0.1 * torch.sigmoid(-0.1 * margin) + 1 / batch["mean_len_chosen"])
    assert not objectives.get("cpo").reads_reference


def test_a_token_level_part_and_a_sequence_level_part_sum_per_token():
    g = torch.Generator().manual_seed(5)
    mask = torch.ones(4, 6, dtype=torch.float64)
    mask[0, 4:] = 0
    batch = {"logp_chosen": -torch.rand(4, generator=g, dtype=torch.float64) * 5,
             "logp_rejected": (-torch.rand(4, 6, generator=g, dtype=torch.float64) * 2) * mask,
             "mask_rejected": mask, "ref_logp_chosen": -torch.rand(4, generator=g, dtype=torch.float64) * 5,
             "ref_logp_rejected": -torch.rand(4, generator=g, dtype=torch.float64) * 12}
    summed = compose({"dpo": 1.0, "unlikelihood": 0.3})
    assert summed.level == "token" and summed.token_vars == ("logp_rejected",)
    closed, auto, _ = verify.autograd_weights(summed, batch)
    torch.testing.assert_close(closed[1] * mask, auto[1] * mask, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(closed[0], auto[0], rtol=1e-12, atol=0)
    assert verify.verify(summed).passed


def test_the_written_sum_parses_to_the_same_objective():
    assert objectives.get("dpo+0.2*sft") is parse("dpo+0.2*sft")
    assert "dpo+0.2*sft" not in REGISTRY  # parsing does not grow the registry
    obj = objectives.get("0.8*dpo + 0.2*bco_pair+1e-1*sft")
    batch = random_pairs(seed=6)
    expected = compose({"dpo": 0.8, "bco_pair": 0.2, "sft": 0.1})(batch)
    torch.testing.assert_close(obj(batch).loss, expected.loss)
    for bad, match in (("dpo+", "at character 4"), ("dpo++sft", "at character 4"), ("dpo 0.2*sft", "expected '\\+'"),
                       ("dpo+dpo", "twice"), ("dpo+0*sft", "non-zero"), ("dpo+0.2*sfft", "unknown objective 'sfft'")):
        with pytest.raises((ValueError, KeyError), match=match):
            objectives.get(bad)


@pytest.mark.parametrize("parts, fixed, match", [
    ({"dpo": 1.0, "simpo": 1.0}, None, "'beta' is 0.1 in dpo but 2.0 in simpo"),
    ({"dpo": 1.0, "kto": 1.0}, None, "reads \\['label', 'z0'\\]"),
    ({"dpo": 1.0, "rloo": 1.0}, None, "rloo is online"),
    ({"dpo": 1.0, "rrhf": 1.0}, None, "computed over the batch by a hook"),
    ({"dpo": 1.0, "aot_unpaired": 1.0}, None, "computed over the batch by a hook"),
    ({"kto": 1.0, "sft": 1.0}, None, "different data"),
    ({"dpo": 1.0}, {"sft": {"length_normalize": True}}, "not parts"),
    ({"dpo": 1.0}, {"dpo": {"beta": -1.0}}, "'beta' must be a number"),
])
def test_compose_names_what_it_cannot_sum(parts, fixed, match):
    with pytest.raises(ValueError, match=match):
        compose(parts, fixed=fixed)


def test_a_shared_hyperparameter_can_be_fixed_per_part():
    summed = compose({"dpo": 1.0, "simpo": 1.0}, fixed={"simpo": {"beta": 2.0}})
    assert summed.defaults["beta"][0] == 0.1
    batch = random_pairs(seed=7)
    expected = objectives.get("dpo")(batch, beta=0.3).loss + objectives.get("simpo")(batch, beta=2.0).loss
    torch.testing.assert_close(summed(batch, beta=0.3).loss, expected)


def test_the_cli_takes_a_written_sum(capsys):
    assert cli.main(["show", "dpo+0.2*sft"]) == 0
    out = capsys.readouterr().out
    assert "weighted sum: 1 dpo + 0.2 sft" in out and "the batch mean |y+| (TRL)" in out
    assert cli.main(["verify", "dpo+0.2*sft"]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out


# ------------------------------------------------------------------------------- modifiers
def test_reverse_kl_gives_dpo_back_and_the_other_divergences_change_the_implicit_reward():
    dpo = objectives.get("dpo")
    assert sp.simplify(with_divergence("dpo", "reverse_kl").sympy_loss() - dpo.sympy_loss()) == 0
    batch = random_pairs(seed=8, lengths=False)
    rho_plus = batch["logp_chosen"] - batch["ref_logp_chosen"]
    rho_minus = batch["logp_rejected"] - batch["ref_logp_rejected"]
    for name, score, slope in (
            ("fdpo_forward_kl", lambda r: 1 - torch.exp(-r), lambda r: torch.exp(-r)),
            ("fdpo_js_divergence", lambda r: torch.log(torch.tensor(2.0)) + torch.nn.functional.logsigmoid(r),
             lambda r: torch.sigmoid(-r)),
            ("fdpo_alpha_divergence", lambda r: (torch.exp(-0.5 * r) - 1) / -0.5, lambda r: torch.exp(-0.5 * r))):
        u = 0.1 * (score(rho_plus) - score(rho_minus))
        out = objectives.get(name)(batch)
        torch.testing.assert_close(out.loss, -torch.nn.functional.logsigmoid(u))
        torch.testing.assert_close(out.weights[0], 0.1 * torch.sigmoid(-u) * slope(rho_plus))
        torch.testing.assert_close(out.weights[1], 0.1 * torch.sigmoid(-u) * slope(rho_minus))


def test_a_divergence_needs_an_implicit_reward():
    for name in ("sft", "simpo", "orpo"):
        with pytest.raises(ValueError):
            with_divergence(name, "forward_kl")
    with pytest.raises(ValueError, match="divergence must be one of"):
        with_divergence("dpo", "hellinger")


def test_length_desensitisation_weighs_the_tail_tokens_by_ld_alpha():
    mask_chosen = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.float64)
    mask_rejected = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.float64)
    keep_chosen, keep_rejected = ld_token_coefficients(mask_chosen, mask_rejected, 0.3)
    assert keep_chosen.tolist() == [[1, 1, 0.3, 0.3, 0.3, 0], [1, 1, 0, 0, 0, 0]]
    assert keep_rejected.tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 0.3, 0.3, 0.3, 0.3]]
    g = torch.Generator().manual_seed(9)
    batch = {"mask_chosen": mask_chosen, "mask_rejected": mask_rejected}
    for name, mask in (("chosen", mask_chosen), ("rejected", mask_rejected)):
        batch[f"logp_{name}"] = -torch.rand(2, 6, generator=g, dtype=torch.float64) * mask
        batch[f"ref_logp_{name}"] = -torch.rand(2, 6, generator=g, dtype=torch.float64) * mask
    ld = objectives.get("ld_dpo")
    closed, auto, loss = verify.autograd_weights(ld, batch, ld_alpha=0.3)
    for c, a in zip(closed, auto):
        torch.testing.assert_close(c, a, rtol=1e-12, atol=1e-15)
    sums = {k: (v * (keep_chosen if "chosen" in k else keep_rejected)).sum(-1) for k, v in batch.items()
            if k.startswith(("logp", "ref"))}
    dpo = objectives.get("dpo")(sums)
    torch.testing.assert_close(loss, dpo.loss)
    torch.testing.assert_close(closed[0], dpo.weights[0].unsqueeze(-1) * keep_chosen)
    full = objectives.get("ld_dpo")(batch, ld_alpha=1.0)  # alpha = 1: DPO on the summed log-probs
    plain = objectives.get("dpo")({k: v.sum(-1) for k, v in batch.items() if k.startswith(("logp", "ref"))})
    torch.testing.assert_close(full.loss, plain.loss)
    with pytest.raises(ValueError, match="per token"):
        ld(batch | {"ref_logp_chosen": batch["ref_logp_chosen"].sum(-1)})
    with pytest.raises(ValueError, match="paired objective on sequence"):
        length_desensitized("unlikelihood")


def test_wpo_weight_is_the_mean_aligned_log_prob_exponentiated_and_detached():
    logits = torch.randn(2, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(10), requires_grad=True)
    log_probs = torch.log_softmax(logits, -1)
    tokens = log_probs[..., 0]
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    omega = wpo_sequence_weights(tokens, torch.logsumexp(2 * log_probs, -1), mask)
    probs = log_probs.exp()
    by_hand = [((probs[i, :n, 0] / (probs[i, :n] ** 2).sum(-1)).log().mean()).exp() for i, n in ((0, 2), (1, 3))]
    torch.testing.assert_close(omega, torch.stack(by_hand).detach())
    assert not omega.requires_grad
    batch = random_pairs(seed=11, lengths=False) | {"wpo_weight": torch.full((12,), 0.25, dtype=torch.float64)}
    out, dpo = objectives.get("wpo")(batch), objectives.get("dpo")(batch)
    torch.testing.assert_close(out.loss, 0.25 * dpo.loss)
    torch.testing.assert_close(out.weights[1], 0.25 * dpo.weights[1])


def test_reference_free_drops_the_reference():
    free = reference_free("dpo")
    assert free.inputs() == ("logp_chosen", "logp_rejected") and not free.reads_reference
    with pytest.raises(ValueError, match="reads no reference"):
        reference_free("simpo")
