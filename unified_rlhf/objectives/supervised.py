"""Supervised objectives: maximum likelihood and its class-weighted form (chapter 2)."""

from __future__ import annotations

from .core import objective


@objective("sft", shape="single", family="supervised", data="sft", paper="maximum likelihood (standard)",
           options={"length_normalize": False}, task_defaults=dict(lr=2e-3, batch_size=64, max_steps=150),
           sweep=("lr", (2e-3,)),  # imitation only: one point, the baseline that ignores feedback
           seed=lambda m, v, **_: (1,),
           seed_note="Same: w+ = 1 for the summed log-prob (1/|y| if the token mean is used).")
def sft(m, v, length_normalize):
    scale = 1 / v.length if length_normalize else 1
    return -scale * v.logp, (scale,)


@objective("crlft", shape="single", family="supervised", data="sft_tagged",
           paper="OpenChat C-RLFT, Wang et al. 2023, arXiv 2309.11235",
           task_defaults=dict(lr=1e-3, batch_size=64), sweep=("lr", (5e-4, 1e-3, 2e-3)),
           trainer_defaults={"source_weights": {"expert": 1.0, "suboptimal": 0.1}, "inference_tag": "expert",
                             "source": "OpenChat paper: r_c = 1 for expert (GPT-4), 0.1 for sub-optimal data; "
                                       "inference conditions on the expert tag"},
           seed=lambda m, v, **_: (v.source_weight,),
           seed_note="Same weights; the seed writes the sub-optimal class as w- ~ -0.1, i.e. a push *up* of "
                     "0.1 in our sign convention. The source tag sits in the prompt and is chosen at inference.")
def crlft(m, v):
    return -v.source_weight * v.logp, (v.source_weight,)
