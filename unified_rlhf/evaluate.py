"""Sampling from a policy and scoring it against the reference: gold reward, KL, win rate.

Sequences follow the package convention (models.Encoder): [bos] + prompt ids + completion ids, where
a completion ends with eos when the model stopped and is cut at ``max_new_tokens`` otherwise.

`evaluate_held_out` is the one evaluation of a trained policy: the trainer, `evaluate_run` (the CLI's
`evaluate`) and the frontier sweep all call it.

The KL is the sequence-level KL(pi || pi_ref) = E_{y ~ pi}[l_pi(y) - l_ref(y)], estimated on the
policy's own samples; the estimate is unbiased only if the samples come from pi itself, so sampling
is plain ancestral sampling at temperature 1 (no top-k, no top-p) unless asked otherwise. For samples
cut at ``max_new_tokens`` it is the KL between the two models' distributions over truncated sequences.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from collections.abc import Callable
from pathlib import Path

import torch

from . import task
from .data import load_rows, prompt_text, tag_prompt
from .logprobs import pad_batch, sequence_logprobs, sequence_rewards
from .models import Encoder, load_model, load_tokenizer


def _device(model) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _eval_mode(model):
    """Eval mode (no dropout) and no autograd, restoring the training flag afterwards:
    evaluation is called in the middle of training."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _sample_batch(model, prompts, max_new_tokens, temperature, eos_id, pad_id, generator, fast=True):
    """One batch of completions, with a KV cache: the prompts are left-padded so every row's next token
    is in the last column, and position ids count real tokens only (as in ``logprobs``).

    ``fast`` computes a prompt shared by several rows once and drops finished rows from the batch. Every row's
    computation is its own, so on the CPU neither changes a token (tests/test_models.py compares them with
    ``fast=False``); a GPU may round a product of another shape differently in the last bit.
    """
    device = _device(model)
    batch, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((batch, width), pad_id, dtype=torch.long, device=device)
    attention = torch.zeros((batch, width), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        attention[i, width - len(p) :] = 1
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    # the mask of every step, allocated once: step t attends to the prompt and the t tokens sampled so far
    attention = torch.cat([attention, attention.new_ones(batch, max_new_tokens)], dim=-1)
    # the rows of the first forward: one per distinct prompt (a group's k samples share theirs), copied to the
    # batch afterwards. At least two rows per matmul: a one-row product takes another kernel, whose last bits differ.
    distinct, prefill = {}, []
    for i, p in enumerate(prompts):
        if tuple(p) not in distinct:
            distinct[tuple(p)] = len(prefill)
            prefill.append(i)
    row_of = torch.tensor([distinct[tuple(p)] for p in prompts], device=device)
    share = fast and len(prefill) < batch and len(prefill) * width >= 2
    prefill = torch.tensor(prefill, device=device)

    new_tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    running = torch.arange(batch, device=device)  # the rows the model computes (indices into the batch)
    # a static cache (keys and values written in place) where the model supports one: the same tokens as the
    # dynamic cache, which copies every layer's keys and values at each step to append one token
    from transformers import StaticCache

    static = getattr(model, "_can_compile_fullgraph", False)
    cache = StaticCache(config=model.config, max_cache_len=width + max_new_tokens) if static else None
    for t in range(max_new_tokens):
        where = {"cache_position": torch.arange(width, device=device) if t == 0 else
                 torch.tensor([width + t - 1], device=device)} if static else {}
        rows = prefill if t == 0 and share else slice(None)
        out = model(
            input_ids=ids[rows],
            attention_mask=attention[rows, : width + t],
            position_ids=positions[rows],
            past_key_values=cache,
            use_cache=True,
            **where,
        )
        cache = out.past_key_values
        logits = out.logits[:, -1].float()  # in float32 even for half-precision models
        if t == 0 and share:
            cache.reorder_cache(row_of)
            logits = logits[row_of]
        if temperature == 0:
            token = logits.argmax(-1)
        else:
            # the Gumbel-max trick: argmax(logits / T + Gumbel noise) is a draw from softmax(logits / T), and on the
            # CPU it costs a quarter of torch.multinomial (uniforms in [0, 1): the noise is finite or -inf). It is
            # drawn for the whole batch, finished rows included: a row's draws do not depend on when others stop.
            noise = torch.log(-torch.log(torch.rand((batch, logits.shape[-1]), generator=generator, device=device)))
            token = (logits / temperature - noise[running]).argmax(-1)
        token = token.masked_fill(done[running], pad_id)  # a finished row still in the batch only feeds padding
        new_tokens[running, t] = token
        done[running] |= token == eos_id
        if done.all():
            break
        ids = token[:, None]
        positions = positions[:, -1:] + 1
        # finished rows leave the batch once they are a quarter of it (a step's cost grows with its rows)
        finished = done[running]
        if fast and finished.sum() * 4 >= len(running):
            keep = (~finished).nonzero().squeeze(-1)
            if len(keep) == 1:  # two rows at least, as above
                keep = torch.cat([keep, finished.nonzero()[:1].squeeze(-1)])
            if len(keep) < len(running):
                cache.reorder_cache(keep)
                running, ids, positions, attention = running[keep], ids[keep], positions[keep], attention[keep]

    completions = []
    for row in new_tokens.tolist():
        stop = row.index(eos_id) + 1 if eos_id in row else max_new_tokens
        completions.append(row[:stop])
    return completions


def sample(
    model,
    prompt_ids: list[list[int]],
    num_samples: int = 1,
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    eos_id: int = 0,
    pad_id: int = 1,
    seed: int | None = None,
    batch_size: int = 64,
) -> list[list[int]]:
    """``num_samples`` completions per prompt, prompt-major (all of prompt 0's samples first).

    Each completion is a list of token ids that ends with ``eos_id`` if the model emitted it (nothing
    after it), or has exactly ``max_new_tokens`` tokens. ``temperature=0`` means greedy. With a ``seed``
    the result is reproducible (for the same batch size and device); without one it draws from torch's
    global generator.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("empty prompt: the first token needs a context (start prompts with bos)")
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max((len(p) for p in prompt_ids), default=0)
    if limit is not None and longest + max_new_tokens > limit:
        raise ValueError(
            f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the model's {limit} positions"
        )

    generator = None
    if seed is not None:
        generator = torch.Generator(device=_device(model)).manual_seed(seed)
    rows = [p for p in prompt_ids for _ in range(num_samples)]
    completions = []
    with _eval_mode(model):
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            completions += _sample_batch(model, batch, max_new_tokens, temperature, eos_id, pad_id, generator)
    return completions


# A training run evaluates against the same frozen reference, on the same prompts with the same seed, every time:
# its samples are drawn once per model and kept. The key holds every parameter's version counter, which any
# in-place change of a weight (an optimiser step, load_state_dict) advances, so a changed model is sampled again.
_REFERENCE_SAMPLES = weakref.WeakKeyDictionary()


def _reference_samples(reference, prompt_ids, seed, **options) -> list[list[int]]:
    key = (tuple(map(tuple, prompt_ids)), seed, tuple(sorted(options.items())),
           tuple(p._version for p in reference.parameters()))
    kept = _REFERENCE_SAMPLES.setdefault(reference, {})
    if key not in kept:
        kept.clear()  # one entry per model: the last prompts and seed it was evaluated with
        kept[key] = sample(reference, prompt_ids, seed=seed, **options)
    return [list(y) for y in kept[key]]  # copies: a caller's edit cannot reach the next evaluation


def completion_logprobs(model, prompt_ids, completions, pad_id: int, batch_size: int = 64) -> torch.Tensor:
    """l(y) = summed log-prob of each completion (eos included) under ``model``, float64 on the CPU."""
    device, totals = _device(model), []
    with _eval_mode(model):
        for start in range(0, len(completions), batch_size):
            end = start + batch_size
            tensors = pad_batch(prompt_ids[start:end], completions[start:end], pad_id, side="right")
            total, _ = sequence_logprobs(model, *(t.to(device) for t in tensors))
            totals.append(total.double().cpu())
    return torch.cat(totals) if totals else torch.zeros(0, dtype=torch.float64)


def evaluate_policy(
    policy,
    reference,
    tokenizer,
    prompts: list[str],
    samples_per_prompt: int = 4,
    max_new_tokens: int = 24,
    seed: int = 0,
    batch_size: int = 64,
    reward_fn: Callable[[str, str], float] = task.gold_reward,
    num_examples: int = 8,
) -> dict:
    """Sample ``samples_per_prompt`` completions per prompt from both models and compare them.

    Returns a dict with
      gold_reward, gold_reward_std   mean and spread of reward_fn over policy samples
      reference_gold_reward          the same for reference samples on the same prompts
      win_rate                       P(r(policy sample) > r(reference sample)) + P(tie) / 2, averaged over
                                     every (policy, reference) pair of samples of the same prompt
      kl, kl_stderr                  mean of l_pi(y) - l_ref(y) over policy samples y, and its standard error
      mean_length, reference_mean_length, stop_rate
                                     completion tokens (eos included), fraction of policy samples with eos
      samples                        ``num_examples`` policy samples {prompt, completion, reward, log_ratio}
    """
    if not prompts or samples_per_prompt < 1:
        raise ValueError(f"need prompts and samples: got {len(prompts)} prompts, {samples_per_prompt} each")
    encoder = Encoder(tokenizer)
    eos_id, pad_id = encoder.eos, encoder.pad
    k = samples_per_prompt
    prompt_ids = encoder.prompts(prompts)
    options = dict(
        num_samples=k, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id, batch_size=batch_size
    )
    # Separate random streams: the win rate compares independent samples, and reusing one seed would
    # couple them (with policy == reference every pair would be a tie).
    ys = sample(policy, prompt_ids, seed=2 * seed, **options)
    ys_ref = _reference_samples(reference, prompt_ids, seed=2 * seed + 1, **options)

    repeated_ids = [p for p in prompt_ids for _ in range(k)]
    logp = completion_logprobs(policy, repeated_ids, ys, pad_id, batch_size)
    logp_ref = completion_logprobs(reference, repeated_ids, ys, pad_id, batch_size)
    log_ratio = logp - logp_ref

    repeated_prompts = [prompt_text(p) for p in prompts for _ in range(k)]  # a conversation's text, for the reward
    texts = [encoder.decode(y) for y in ys]
    rewards = torch.tensor([reward_fn(p, t) for p, t in zip(repeated_prompts, texts)], dtype=torch.float64)
    ref_rewards = torch.tensor(
        [reward_fn(p, encoder.decode(y)) for p, y in zip(repeated_prompts, ys_ref)], dtype=torch.float64
    )

    # All k x k pairs within a prompt: the same expectation as one pair each, with less noise.
    r, r_ref = rewards.view(-1, k, 1), ref_rewards.view(-1, 1, k)
    win_rate = ((r > r_ref).double() + 0.5 * (r == r_ref).double()).mean()

    n = len(ys)
    lengths = torch.tensor([len(y) for y in ys], dtype=torch.float64)
    examples = [
        {
            "prompt": repeated_prompts[i],
            "completion": texts[i],
            "reward": rewards[i].item(),
            "log_ratio": log_ratio[i].item(),
        }
        for i in range(0, n, k)[:num_examples]  # the first sample of each of the first prompts
    ]
    return {
        "gold_reward": rewards.mean().item(),
        "gold_reward_std": rewards.std(correction=0).item(),
        "reference_gold_reward": ref_rewards.mean().item(),
        "win_rate": win_rate.item(),
        "kl": log_ratio.mean().item(),
        "kl_stderr": (log_ratio.std() / n**0.5).item() if n > 1 else 0.0,
        "mean_length": lengths.mean().item(),
        "reference_mean_length": sum(len(y) for y in ys_ref) / n,
        "stop_rate": sum(y[-1] == eos_id for y in ys) / n,
        "num_samples": n,
        "samples": examples,
    }


def held_out_prompts(data_dir, inference_tag: str | None = None) -> list[str]:
    """The held-out prompts (prompts_test.jsonl), as the method is used at inference: a class-conditioned
    method (C-RLFT) puts its tag in front."""
    prompts = [r["prompt"] for r in load_rows(Path(data_dir) / "prompts_test.jsonl", "prompts")]
    return [tag_prompt(inference_tag, p) for p in prompts] if inference_tag else prompts


def evaluate_held_out(policy, reference, tokenizer, data_dir, prompts: int = 64, samples_per_prompt: int = 2,
                      max_new_tokens: int = 24, seed: int = 0, inference_tag: str | None = None) -> dict:
    """The one evaluation of a policy: `evaluate_policy` against the reference on the first `prompts`
    held-out prompts of `data_dir`."""
    texts = held_out_prompts(data_dir, inference_tag)
    if not 1 <= prompts <= len(texts):
        raise ValueError(f"prompts must be between 1 and the {len(texts)} held-out prompts, got {prompts}")
    return evaluate_policy(policy, reference, tokenizer, texts[:prompts], samples_per_prompt=samples_per_prompt,
                           max_new_tokens=max_new_tokens, seed=seed)


@torch.no_grad()
def reward_model_accuracy(model, tokenizer, path, max_length: int = 64, limit: int = 512) -> dict:
    """Held-out pairs: how often r(chosen) > r(rejected) (agreement with the data's labels), and how
    often the reward model orders the pair as the gold reward does."""
    rows = list(load_rows(path, "paired"))[:limit]
    encoder = Encoder(tokenizer, max_length)
    device = _device(model)
    scores = []
    for side in ("chosen", "rejected"):
        pairs = [(encoder.prompt(r["prompt"]), encoder.completion(r[side])) for r in rows]
        ids, attention, _ = pad_batch([p for p, _ in pairs], [c[:max_length] for _, c in pairs],
                                      encoder.pad, "right")
        with _eval_mode(model):
            scores.append(sequence_rewards(model, ids.to(device), attention.to(device)).float().cpu())
    gold = torch.tensor([task.gold_reward(r["prompt"], r["chosen"]) - task.gold_reward(r["prompt"], r["rejected"])
                         for r in rows])
    predicted = scores[0] - scores[1]
    decided = gold != 0
    return {"accuracy": (predicted > 0).float().mean().item(),
            "gold_agreement": ((predicted > 0) == (gold > 0))[decided].float().mean().item(),
            "pairs": len(rows)}


def evaluate_run(run_dir, samples_per_prompt: int = 4, prompts: int = 200, seed: int = 0) -> dict:
    """Evaluate a run directory written by the trainer: its final model (or last checkpoint) against
    its reference on the held-out prompts. Needs only the run's config.json (not the objective). The
    result is also written to run_dir/evaluation.json."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has no config.json")
    from .data import resolve_default

    config = json.loads(config_path.read_text())
    for key in ("data_dir", "model"):  # a run made with the defaults, evaluated from another directory
        config[key] = resolve_default(config[key])
    evaluation = config.get("evaluation", {})
    model_dir = next((run_dir / d for d in ("model", "checkpoint") if (run_dir / d).is_dir()), None)
    if model_dir is None:
        raise FileNotFoundError(f"{run_dir} holds no model/ or checkpoint/ to evaluate")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if evaluation.get("kind") == "reward_model":
        result = reward_model_accuracy(load_model(str(model_dir), reward_head=True).to(device),
                                       load_tokenizer(str(model_dir)),
                                       Path(config["data_dir"]) / "pairs_test.jsonl", config["max_length"])
    else:
        policy, tokenizer = load_model(str(model_dir)), load_tokenizer(str(model_dir))
        reference = load_model(config.get("reference") or config["model"])
        held_out = len(held_out_prompts(config["data_dir"]))
        result = evaluate_held_out(policy.to(device), reference.to(device), tokenizer, config["data_dir"],
                                   prompts=min(prompts, held_out), samples_per_prompt=samples_per_prompt,
                                   max_new_tokens=config["max_new_tokens"], seed=seed,
                                   inference_tag=evaluation.get("inference_tag"))
    result = {"method": config["method"], "model": str(model_dir)} | result
    (run_dir / "evaluation.json").write_text(json.dumps({k: v for k, v in result.items() if k != "samples"},
                                                        indent=2))
    return result
