"""Log-probabilities of completions under a Hugging Face causal LM.

l(y) = sum_t log pi(y_t | x, y_<t), over completion tokens only: prompt and padding are masked.
Works with left or right padding (position ids follow the attention mask).

Packing (pack_batch, packed_token_logprobs) is the other layout of the same batch: the sequences share rows
of about max_length tokens, each attending only to its own earlier tokens (a block-diagonal causal mask) with
positions restarting at 0, so the model computes far fewer padding tokens; the per-token log-probs are
unpacked to the padded [B, T-1] layout, equal to token_logprobs' up to the order of floating-point sums.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def pad_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int, side: str = "right"):
    """Token lists -> (input_ids, attention_mask, completion_mask), each [B, T].

    completion_mask marks the tokens of y, the ones whose log-probs are summed."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    _check_sequences(prompts, completions)
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


def _check_sequences(prompts: list[list[int]], completions: list[list[int]]) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    for i, (p, c) in enumerate(zip(prompts, completions)):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: the first completion token needs a context (start with BOS)")
        if len(c) == 0:
            raise ValueError(f"completion {i} is empty: it has no tokens to score")


def token_logprobs(model, input_ids, attention_mask, completion_mask):
    """Per-token log-probs of the completion, [B, T-1], zero off the completion, and that mask.

    Position t of the result scores token t+1 (the usual shift). The log-softmax is taken as
    logit - logsumexp in at least float32, so bf16 models do not lose the small differences."""
    return _next_token_logprobs(_logits(model, input_ids, attention_mask), input_ids, completion_mask)


def _logits(model, input_ids, attention_mask):
    """The model's logits, with position ids that count real tokens only (left or right padding alike)."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits


def _next_token_logprobs(logits, input_ids, completion_mask):
    """log pi(token t+1 | tokens <= t) at position t, zero off the completion, and the completion mask [B, T-1]."""
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
    targets = input_ids[:, 1:].unsqueeze(-1)
    logps = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    mask = completion_mask[:, 1:].bool()
    return logps.masked_fill(~mask, 0.0), mask


class PackedBatch(NamedTuple):
    """A batch of sequences packed into rows [R, W]; sequence n is tokens starts[n] ... starts[n] + lengths[n] - 1
    of row rows[n]. sequence_ids is n on its tokens and -1 on the padding at the end of a row."""
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    sequence_ids: torch.Tensor
    completion_mask: torch.Tensor
    rows: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor

    def to(self, device) -> PackedBatch:
        return PackedBatch(*(t.to(device) for t in self))


def pack_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sequence indices grouped into bins of at most `capacity` tokens: first-fit decreasing (longest first,
    each into the first bin with room; ties in batch order), which fills all but a few bins."""
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1 token, got {capacity}")
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"sequence {too_long[0]} has {lengths[too_long[0]]} tokens, more than the capacity of "
                         f"{capacity} tokens a packed row holds")
    bins, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fits = next((b for b, free in enumerate(room) if free >= lengths[i]), None)
        if fits is None:
            bins.append([])
            room.append(capacity)
            fits = len(bins) - 1
        bins[fits].append(i)
        room[fits] -= lengths[i]
    return bins


def pack_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int, capacity: int) -> PackedBatch:
    """Token lists -> a PackedBatch whose rows hold at most `capacity` tokens (max_length: room for the longest
    sequence) and are as wide as the fullest row. Positions restart at 0 for each sequence."""
    _check_sequences(prompts, completions)
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    bins = pack_bins(lengths, capacity)
    width = max(sum(lengths[i] for i in b) for b in bins)
    ids = torch.full((len(bins), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(bins), width), dtype=torch.long)
    sequence_ids = torch.full((len(bins), width), -1, dtype=torch.long)
    completion = torch.zeros((len(bins), width), dtype=torch.bool)
    rows, starts = [0] * len(lengths), [0] * len(lengths)
    for row, members in enumerate(bins):
        start = 0
        for i in sorted(members):  # batch order within a row
            n, end = lengths[i], start + lengths[i]
            ids[row, start:end] = torch.tensor(prompts[i] + completions[i], dtype=torch.long)
            positions[row, start:end] = torch.arange(n)
            sequence_ids[row, start:end] = i
            completion[row, start + len(prompts[i]):end] = True
            rows[i], starts[i], start = row, start, end
    return PackedBatch(ids, positions, sequence_ids, completion, torch.tensor(rows), torch.tensor(starts),
                       torch.tensor(lengths))


def block_causal_mask(sequence_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[R, 1, W, W] additive attention mask (0: attend, the dtype's minimum: not): a token attends to the
    tokens of its own sequence up to itself. Row padding (-1) is one more block, so no query sees nothing
    (a query with every key masked gives NaN in some attention kernels)."""
    same = sequence_ids.unsqueeze(-1) == sequence_ids.unsqueeze(-2)
    causal = torch.ones(same.shape[-2:], dtype=torch.bool, device=sequence_ids.device).tril()
    allowed = (same & causal).unsqueeze(1)
    return torch.zeros(allowed.shape, dtype=dtype, device=sequence_ids.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)


def unpack(values: torch.Tensor, packed: PackedBatch) -> torch.Tensor:
    """Per-token values of the packed rows' shifted layout [R, W-1] -> the padded layout [N, T-1] of pad_batch
    (T: the longest sequence): sequence n's position t is row rows[n], column starts[n] + t; zero past its end."""
    t = torch.arange(int(packed.lengths.max()) - 1, device=values.device)
    inside = t < (packed.lengths.unsqueeze(-1) - 1)
    columns = (packed.starts.unsqueeze(-1) + t).clamp(max=values.shape[-1] - 1)
    gathered = values[packed.rows.unsqueeze(-1), columns]
    return torch.where(inside, gathered, torch.zeros((), dtype=values.dtype, device=values.device))


def packing_refusal(model) -> str | None:
    """Why packed_token_logprobs refuses `model` (see there), or None if it can pack."""
    config = getattr(model, "config", None)
    attention = getattr(config, "_attn_implementation", None) or "sdpa"
    if attention not in ("eager", "sdpa"):
        return (f"packing passes a block-diagonal attention mask, which the model's attention implementation "
                f"'{attention}' does not take: load it with attn_implementation 'sdpa' or 'eager', or turn packing off")
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return ("packing passes one block-diagonal attention mask to every layer, which would drop the model's "
                "sliding-window layers' window: turn packing off for this model")
    return None


def packed_token_logprobs(model, packed: PackedBatch):
    """token_logprobs of a packed batch: per-token log-probs of the completions [N, T-1], zero off the
    completion, and the mask, in pad_batch's right-padded layout (what the objectives read).

    The model gets the 4-D mask as attention_mask, which transformers' models take as it is (eager adds it to
    the scores, sdpa passes it to the kernel); a model with sliding-window layers or a flash-attention kernel
    would not apply it as given, so those are refused rather than let sequences see each other. (Given no mask,
    transformers 5.23 infers the blocks from the restarting position ids, but only when the forward builds no
    KV cache: with use_cache left on, GPT-2 and Llama silently attend across sequences.)"""
    refusal = packing_refusal(model)
    if refusal:
        raise ValueError(refusal)
    dtype = next(model.parameters()).dtype
    mask = block_causal_mask(packed.sequence_ids, dtype)
    logits = model(input_ids=packed.input_ids, attention_mask=mask, position_ids=packed.position_ids).logits
    logps, completion = _next_token_logprobs(logits, packed.input_ids, packed.completion_mask)
    # the first token of each sequence is a prompt token: no completion token is scored across a boundary
    return unpack(logps, packed), unpack(completion, packed)


def completion_distributions(model, input_ids, attention_mask, completion_mask):
    """log pi(. | x, y_<t) over the whole vocabulary at each completion token, [B, T-1, V], and the mask
    [B, T-1] (same shift as token_logprobs). TRPO's trust region measures the exact KL between two of these."""
    logits = _logits(model, input_ids, attention_mask)[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
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
