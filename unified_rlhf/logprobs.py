"""Log-probabilities of completions under a Hugging Face causal LM.

l(y) = sum_t log pi(y_t | x, y_<t), over completion tokens only: prompt and padding are masked.
Works with left or right padding (position ids follow the attention mask).
"""

from __future__ import annotations

import torch


def pad_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int, side: str = "right"):
    """Token lists -> (input_ids, attention_mask, completion_mask), each [B, T].

    completion_mask marks the tokens of y, the ones whose log-probs are summed."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    for i, (p, c) in enumerate(zip(prompts, completions)):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: the first completion token needs a context (start with BOS)")
        if len(c) == 0:
            raise ValueError(f"completion {i} is empty: it has no tokens to score")
    width = max(len(p) + len(c) for p, c in zip(prompts, completions))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    completion = torch.zeros((len(prompts), width), dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        n = len(p) + len(c)
        start = 0 if side == "right" else width - n
        ids[i, start:start + n] = torch.tensor(p + c, dtype=torch.long)
        attention[i, start:start + n] = 1
        completion[i, start + len(p):start + n] = True
    return ids, attention, completion


def token_logprobs(model, input_ids, attention_mask, completion_mask):
    """Per-token log-probs of the completion, [B, T-1], zero off the completion, and that mask.

    Position t of the result scores token t+1 (the usual shift). The log-softmax is taken as
    logit - logsumexp in at least float32, so bf16 models do not lose the small differences."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    targets = input_ids[:, 1:].unsqueeze(-1)
    logps = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    mask = completion_mask[:, 1:].bool()
    return logps.masked_fill(~mask, 0.0), mask


def completion_distributions(model, input_ids, attention_mask, completion_mask):
    """log pi(. | x, y_<t) over the whole vocabulary at each completion token, [B, T-1, V], and the mask
    [B, T-1] (same shift as token_logprobs). TRPO's trust region measures the exact KL between two of these."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    return torch.log_softmax(logits, dim=-1), completion_mask[:, 1:].bool()


def sequence_logprobs(model, input_ids, attention_mask, completion_mask):
    """(l(y) summed over completion tokens [B], number of completion tokens |y| [B])."""
    logps, mask = token_logprobs(model, input_ids, attention_mask, completion_mask)
    return logps.sum(-1), mask.sum(-1)


@torch.no_grad()
def sequence_logprobs_slow(model, prompt: list[int], completion: list[int]) -> float:
    """The slow, obviously right version: one example, no padding, one token at a time (chapter 1 and the
    tests check the batched log-probs against it)."""
    ids = torch.tensor([prompt + completion])
    total = 0.0
    for t in range(len(prompt), len(prompt) + len(completion)):
        logits = model(input_ids=ids[:, :t]).logits[0, -1].double()
        total += torch.log_softmax(logits, -1)[ids[0, t]].item()
    return total


def sequence_rewards(reward_model, input_ids, attention_mask):
    """Scalar reward r_phi(x, y) [B] from a sequence-classification head (num_labels = 1), which
    reads the last non-padding token."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = reward_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    return out.logits[:, 0]
