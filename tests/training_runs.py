"""Small training runs on the shipped data and reference model, for the tests that train."""

from pathlib import Path

from unified_rlhf.config import default_config

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def small(method, out, **overrides):
    """A config that trains `method` for 2 steps of 4 rows (or 4 prompts x 2 samples), without evaluating."""
    values = dict(data_dir=str(DATA), model=str(DATA / "reference"), out=str(out), max_steps=2, batch_size=4,
                  samples_per_prompt=2, max_new_tokens=8, eval_every=0, progress=False)
    return default_config(method, **(values | overrides))
