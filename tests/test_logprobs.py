"""Sequence log-probs: prompt and padding masked, left and right padding, against a slow reference."""

import pytest
import torch

from unified_rlhf import verify
from unified_rlhf.logprobs import pad_batch, sequence_logprobs, sequence_logprobs_slow, token_logprobs

PROMPTS = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
COMPLETIONS = [[20, 21], [22, 23, 24, 25, 26], [27]]


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_equals_one_at_a_time(side):
    model = verify.tiny_gpt2(0)
    total, length = sequence_logprobs(model, *pad_batch(PROMPTS, COMPLETIONS, 0, side))
    reference = torch.tensor([sequence_logprobs_slow(model, p, c) for p, c in zip(PROMPTS, COMPLETIONS)],
                             dtype=torch.float64)
    torch.testing.assert_close(total, reference, rtol=1e-12, atol=1e-12)
    assert length.tolist() == [2, 5, 1]


def test_masks_mark_completion_tokens_only():
    ids, attention, completion = pad_batch(PROMPTS, COMPLETIONS, 0, "left")
    assert attention.sum(-1).tolist() == [5, 6, 6]
    assert completion.sum(-1).tolist() == [2, 5, 1]
    assert (ids[completion] == torch.tensor([20, 21, 22, 23, 24, 25, 26, 27])).all()


def test_prompt_and_padding_do_not_leak_into_the_sum():
    model = verify.tiny_gpt2(0)
    logps, mask = token_logprobs(model, *pad_batch(PROMPTS, COMPLETIONS, 0, "right"))
    assert (logps[~mask] == 0).all() and (logps[mask] < 0).all()


def test_empty_completion_and_empty_prompt_are_refused():
    with pytest.raises(ValueError, match="completion 1 is empty"):
        pad_batch([[1], [2]], [[3], []], 0)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        pad_batch([[]], [[3]], 0)
    with pytest.raises(ValueError, match="side"):
        pad_batch([[1]], [[3]], 0, "middle")
