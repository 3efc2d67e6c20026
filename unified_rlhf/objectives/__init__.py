# ruff: noqa: I001
"""Every objective of the book, one short function each, grouped by family as the book's parts are.

Adding a method means adding one decorated function to its family's module: its record holds everything
else the package needs to know about the method (defaults with their sources and the ranges they may take,
the settings it trains with on the book's task, the knob the frontier sweeps, the advantage estimator of an
online method, and hooks for per-method behaviour that is not a loss). Nothing outside this package names a
method. `seed` gives the source text's simplified weights ("Unifying RLHF Objectives") so the book can show
where the exact weights differ.

    core.py        the Objective record, Hook, the registry and the `objective` decorator
    supervised.py  sft, crlft                                   (chapter 2)
    online.py      vpg, trpo, ppo_kl, ppo_clip, apa, rloo       (chapters 3-6)
    grpo.py        grpo                                         (chapter 6)
    reward.py      rm                                           (chapter 8)
    paired.py      dpo, cdpo, ipo, gpo_*, slic, rrhf, unlikelihood, orpo, simpo (chapters 9-13)
    unpaired.py    kto, una, una_score, una_pairwise            (chapters 14-15)
    zoo.py         the rest of TRL's DPO losses: exo_pair, nca_pair, rdpo, bco_pair, sppo_hard, aot, apo_*,
                   discopop, sigmoid_norm, bco                  (chapter 16)
    compose.py     weighted sums (compose, 'dpo+0.2*sft') and modifiers (with_divergence, length_desensitized,
                   wpo_weighted, reference_free): fdpo_*, ld_dpo, wpo, rpo, cpo, mpo (chapter 16)

The modules are imported in the book's order, which is the registry's (and `unified-rlhf list`'s) order.
"""

from ..symbolic import SYMBOLS  # noqa: F401
from .core import *  # noqa: F403  (the record, the registry, the shared pieces)
from .core import REGISTRY, Hook, Objective, Output, get, objective, register  # noqa: F401

# Registration order is the book's order, so these imports are not sorted.
from .supervised import *  # noqa: F403
from .online import *  # noqa: F403
from .grpo import *  # noqa: F403
from .reward import *  # noqa: F403
from .paired import *  # noqa: F403
from .unpaired import *  # noqa: F403
from .zoo import *  # noqa: F403
from .compose import *  # noqa: F403
