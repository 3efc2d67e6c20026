"""The direct-alignment zoo (objectives/zoo.py): what each record's note claims about its weight, the sorted
batch of AOT and the running reward shift of BCO. The symbolic and autograd checks of every record run in
test_objectives.py; TRL's own code is compared in test_trl_dpo.py."""

import math
from types import SimpleNamespace

import pytest
import torch

from unified_rlhf import objectives
from unified_rlhf.objectives.zoo import AOTRanks, BCORewardShift, aot_inputs, running_mean


def pair(margins, rho_minus=0.0):
    """A batch whose margins Delta are `margins` (rho- fixed), float64."""
    margins = torch.as_tensor(margins, dtype=torch.float64)
    ref = torch.full_like(margins, -10.0 - margins.abs().max().item() - abs(rho_minus))  # every log-prob < 0
    return {"logp_chosen": ref + rho_minus + margins, "ref_logp_chosen": ref, "logp_rejected": ref + rho_minus,
            "ref_logp_rejected": ref.clone()}


def random_pairs(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    logps = [-torch.rand(n, generator=g, dtype=torch.float64) * 20 - 0.1 for _ in range(4)]
    return dict(zip(("logp_chosen", "logp_rejected", "ref_logp_chosen", "ref_logp_rejected"), logps))


# ------------------------------------------------------------------------------- targets and limits
def test_exo_weight_vanishes_at_its_target_and_turns_negative_beyond():
    beta, eps = 0.1, 1e-3
    target = math.log((1 - eps) / eps) / beta
    w, _ = objectives.get("exo_pair").weights(pair([target - 5, target, target + 5]), beta=beta, eps=eps)
    assert w[0] > 0 and abs(w[1]) < 1e-15 and w[2] < 0


def test_nca_pushes_the_chosen_log_ratio_to_a_target_and_lets_the_rejected_one_go():
    beta = 0.1
    batch = pair([math.log(2) / beta - 1, math.log(2) / beta, math.log(2) / beta + 1], rho_minus=0.0)
    w_plus, _ = objectives.get("nca_pair").weights(batch, beta=beta)
    assert w_plus[0] > 0 and abs(w_plus[1]) < 1e-15 and w_plus[2] < 0
    falling = pair([0.0, 0.0], rho_minus=-200.0)  # rho- far below 0: y- is already pushed down
    _, w_minus = objectives.get("nca_pair").weights(falling, beta=beta)
    _, dpo_minus = objectives.get("dpo").weights(falling, beta=beta)  # DPO reads only Delta = 0: beta / 2
    assert torch.all(w_minus < 1e-9) and torch.allclose(dpo_minus, torch.full_like(dpo_minus, beta / 2))


def test_sppo_targets_each_log_ratio_and_robust_dpo_never_fades():
    beta = 0.1
    w_plus, w_minus = objectives.get("sppo_hard").weights(pair([2 * 5.0], rho_minus=-5.0), beta=beta)
    assert w_plus.abs().max() < 1e-12 and w_minus.abs().max() < 1e-12  # rho+ = 5 = 1/(2 beta), rho- = -5
    eps = 0.1
    w, _ = objectives.get("rdpo").weights(pair([1e4]), beta=beta, eps=eps)
    torch.testing.assert_close(w, torch.tensor([beta * eps / (1 - 2 * eps)], dtype=torch.float64))


def test_discopop_weight_is_negative_at_zero_margin_and_not_monotone():
    beta, tau = 0.1, 0.05
    margins = torch.linspace(-100, 100, 2001, dtype=torch.float64)
    w, _ = objectives.get("discopop").weights(pair(margins), beta=beta, tau=tau)
    at_zero = w[1000].item() / beta
    # by hand: sigma'(0) ln2 / tau + sigma(0)^2 + (1/2)(1 - (1/2) / tau)
    assert at_zero == pytest.approx(0.25 * math.log(2) / tau + 0.25 + 0.5 * (1 - 0.5 / tau), rel=1e-12)
    assert at_zero < 0
    changes = (torch.diff(w).sign().diff() != 0).sum().item()
    assert changes >= 2  # rises and falls more than once: not monotone


def test_apo_zero_unpaired_is_kto_with_reference_point_zero_and_apo_zero_its_paired_sum():
    g = torch.Generator().manual_seed(1)
    logp, ref = (-torch.rand(8, generator=g, dtype=torch.float64) * 5 for _ in range(2))
    label = torch.tensor([1.0, 0.0] * 4, dtype=torch.float64)
    single = {"logp": logp, "ref_logp": ref, "label": label}
    apo = objectives.get("apo_zero_unpaired")(single)
    kto = objectives.get("kto")(single | {"z0": torch.zeros(8, dtype=torch.float64)})
    torch.testing.assert_close(apo.loss, kto.loss)
    torch.testing.assert_close(apo.weights[0], kto.weights[0])
    batch = random_pairs(8)
    paired = objectives.get("apo_zero")(batch)
    up = objectives.get("apo_zero_unpaired")({"logp": batch["logp_chosen"], "ref_logp": batch["ref_logp_chosen"],
                                               "label": torch.ones(8, dtype=torch.float64)})
    down = objectives.get("apo_zero_unpaired")({"logp": batch["logp_rejected"], "ref_logp": batch["ref_logp_rejected"],
                                                 "label": torch.zeros(8, dtype=torch.float64)})
    torch.testing.assert_close(paired.loss, up.loss + down.loss)
    torch.testing.assert_close(paired.weights, (up.weights[0], -down.weights[0]))


# ------------------------------------------------------------------------------- AOT: the sorted batch
def sorted_aot_loss(batch, beta, eps, unpaired):
    """AOT's loss written out: sort, pair the k-th smallest, smoothed logistic loss, mean over positions."""
    if unpaired:
        a = torch.sort(batch["logp_chosen"] - batch["ref_logp_chosen"]).values
        b = torch.sort(batch["logp_rejected"] - batch["ref_logp_rejected"]).values
    else:
        a = torch.sort(batch["logp_chosen"] - batch["logp_rejected"]).values
        b = torch.sort(batch["ref_logp_chosen"] - batch["ref_logp_rejected"]).values
    u = beta * (a - b)
    return (-(1 - eps) * torch.nn.functional.logsigmoid(u) - eps * torch.nn.functional.logsigmoid(-u)).mean()


@pytest.mark.parametrize("unpaired", [False, True])
def test_aot_weights_are_the_gradient_of_the_sorted_loss(unpaired):
    beta, eps = 0.5, 0.1
    batch = random_pairs(32, seed=2)
    policy = [batch[k].requires_grad_() for k in ("logp_chosen", "logp_rejected")]
    expected = torch.autograd.grad(sorted_aot_loss(batch, beta, eps, unpaired), policy)
    name = "aot_unpaired" if unpaired else "aot"
    out = objectives.get(name)(batch | aot_inputs(batch), beta=beta, eps=eps)
    n = len(batch["logp_chosen"])
    torch.testing.assert_close(out.weights[0] / n, -expected[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(out.weights[1] / n, expected[1], rtol=1e-12, atol=0)
    value = sorted_aot_loss(batch, beta, eps, unpaired)
    # paired AOT's rows carry the sorted positions; unpaired AOT's rows count each position twice
    torch.testing.assert_close(out.loss.mean(), value * (2 if unpaired else 1))
    if unpaired:  # what the trainer trains: the hook's sorted loss, with the closed-form weights
        loss, weights = AOTRanks(sorted_loss=True).loss(objectives.get(name), batch, {"beta": beta, "eps": eps})
        torch.testing.assert_close(loss.mean(), value)
        torch.testing.assert_close(weights, out.weights)
        (grad,) = torch.autograd.grad(loss.mean(), [batch["logp_rejected"]])
        torch.testing.assert_close(weights[1] / n, grad, rtol=1e-12, atol=0)


def test_rank_matching_pairs_the_kth_smallest_with_the_kth_smallest():
    batch = pair([3.0, -1.0, 2.0])  # policy margins 3, -1, 2: ranks 2, 0, 1
    batch["ref_logp_chosen"] = batch["ref_logp_chosen"] + torch.tensor([10.0, 30.0, 20.0], dtype=torch.float64)
    matched = aot_inputs(batch)["ref_margin_at_rank"]
    assert matched.tolist() == [30.0, 10.0, 20.0]  # reference margins sorted: 10, 20, 30


# ------------------------------------------------------------------------------- BCO: the running shift
def test_running_mean_is_the_mean_of_everything_seen():
    chunks = [torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64) for n in (3, 5, 8)]
    count, mean = 0, 0.0
    for chunk in chunks:
        count, mean = running_mean(count, mean, chunk)
    assert count == 16 and mean == pytest.approx(torch.cat(chunks).mean().item(), rel=1e-12)


def test_bco_reward_shift_includes_this_batch_and_counts_it_once():
    hook = BCORewardShift()
    objective = objectives.get("bco")
    trainer = SimpleNamespace(objective=objective, config=SimpleNamespace(hyperparameters={"beta": 0.5}), state={},
                              accelerator=SimpleNamespace(gather=lambda x: x))
    seen = []
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        batch = {"logp": -torch.rand(4, generator=g) * 3, "ref_logp": -torch.rand(4, generator=g) * 3}
        seen.append(0.5 * (batch["logp"] - batch["ref_logp"]).double())
        for _ in range(2):  # a batch built twice in one step (a hook's update re-evaluates the loss)
            info = hook.offline_inputs(trainer, None, dict(batch))
        hook.after_step(objective, trainer.state, {}, {})
        assert info["reward_shift"] == pytest.approx(torch.cat(seen).mean().item(), rel=1e-6)
    assert trainer.state["bco_count"] == 12 and "bco_pending" not in trainer.state


# ------------------------------------------------------------------------------- the atlas
def test_weight_panels_draw_w_minus_only_where_it_differs():
    import matplotlib

    matplotlib.use("Agg")
    from unified_rlhf import book, plots

    margins = torch.linspace(-5, 5, 11, dtype=torch.float64)
    panels = {"a": {name: (margins, *book.paired_weight_curve(name, margins)) for name in ("dpo", "nca_pair")},
              "b": {"ipo": (margins, *book.paired_weight_curve("ipo", margins))}}
    fig = plots.plot_weight_panels(panels, columns=2)
    first, second = fig.axes[:2]
    assert len(first.lines) == 1 + 2 + 1  # dpo's w+, nca's w+ and w-, the zero line
    assert len(second.lines) == 1 + 1 and [t.get_text() for t in first.get_legend().get_texts()] == ["dpo", "nca_pair"]
    assert len(fig.axes) == 2 and first.get_title() == "a"
