"""One trainer for every objective; it knows no method by name.

Each step builds the objective's inputs (policy log-probs with gradient, detached constants), calls
the objective, and steps the optimiser. What differs between methods is only where the inputs come
from, and that is decided by the objective's record (objectives/):

  offline   rows of a JSONL file (the record's data kind); chosen and rejected go through the model in
            one concatenated forward; reference log-probs come from a shared on-disk cache (refcache.py)
  reward    the same pairs through a scalar-head model (the weights multiply grad r_phi)
  online    prompts -> samples from the policy -> reward (gold or a learned model) -> the record's
            advantage estimator (advantages.py)

Per-method behaviour that is not a loss (KTO's reference point, PPO's adaptive KL, RRHF's k responses)
comes from the record's hooks (objectives.Hook). Callbacks let a reader watch a run without changing
it: any object with `on_rollout(trainer, rollout, estimated)` and/or `on_step(trainer, metrics)`.

A run is checked whole before its directory is written: the config (types, ranges, what the method's
estimator and hooks need), the files (training data, held-out data), the models (the context holds
max_length and the sampled tokens; a reward model has a trained head), and on resume that nothing but
the EXTENDABLE fields differs from the saved run (settings, hyperparameters, and the content of the data,
the models and the loss). Ctrl-C finishes the step, saves a checkpoint and raises TrainingInterrupted,
whose message says how to resume; an error that leaves no checkpoint removes what the run wrote, so
nothing blocks the next try.

The device is picked by accelerate (CUDA with bf16 autocast when present, else CPU), and the same
code runs data-parallel under `accelerate launch`: each process takes its slice of the global batch.
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from . import evaluate, objectives, online_feedback, refcache, task
from .advantages import Rollout
from .checks import SettingError
from .config import TrainConfig, extendable_fields, resume_differences
from .data import DATA_FILES, batch_indices, encode_rows, load_rows, read_jsonl, source_digest, source_exists
from .logprobs import (
    completion_distributions,
    pack_batch,
    packed_token_logprobs,
    packing_refusal,
    pad_batch,
    sequence_rewards,
    token_logprobs,
)
from .models import AdaptersDisabled, Encoder, add_lora, check_model_path, load_lora, load_model, load_tokenizer
from .symbolic import TORCH

RUN_FILES = ("config.json", "metrics.jsonl", "eval.jsonl", "data_report.json")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says what was kept and how to resume."""


class Trainer:
    def __init__(self, config: TrainConfig, resume: bool = False, overwrite: bool = False, callbacks=()):
        from accelerate.utils import set_seed

        self.config = cfg = config.validate()  # again: a config can be edited after it was made
        self.objective = obj = objectives.get(cfg.method)
        self.callbacks = list(callbacks)
        self.out = Path(cfg.out)
        self.accelerator = _accelerator(cfg.bf16)
        set_seed(cfg.seed)
        # a paired or unpaired objective with sampling != "offline" trains on the policy's own samples
        self.kind = "online" if cfg.sampling != "offline" else obj.data
        if cfg.batch_size < self.accelerator.num_processes:
            raise SettingError(f"batch_size must be at least the {self.accelerator.num_processes} processes "
                               f"(each takes its slice of the global batch), got {cfg.batch_size}")
        self.fingerprint = self._fingerprint()  # what a resumed run must share with this one
        self._check_run_dir(resume, overwrite)  # refuse before loading anything; write only once all is checked
        self.tokenizer = _named("model", load_tokenizer, cfg.model)
        self.encoder = Encoder(self.tokenizer, cfg.max_length)
        self.pad = self.encoder.pad
        is_rm = obj.shape == "reward_model"
        lora = cfg.lora_r > 0  # then the checkpoint holds only the adapters, which go on the base model
        self.model = _named("model", load_model, self.out / "checkpoint" if self.resuming and not lora else cfg.model,
                            reward_head=is_rm)
        if lora:
            self.model = load_lora(self.model, self.out / "checkpoint") if self.resuming else add_lora(
                self.model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules, reward_head=is_rm)
        if cfg.gradient_checkpointing:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.model.config.pad_token_id = self.pad
        self.context = getattr(self.model.config, "max_position_embeddings", None)
        if self.context is not None and cfg.max_length > self.context:
            raise SettingError(f"max_length must be at most the model's context of {self.context} positions "
                               f"({cfg.model}), got {cfg.max_length}")
        self.reference = None
        if (obj.reads_reference or self.kind == "online") and not is_rm:
            self.reference = self._frozen(cfg.reference or cfg.model)
        self.reward_model = None
        if cfg.reward_model:
            self.reward_model = self._frozen(cfg.reward_model, reward_head=True)
            self.reward_encoder = Encoder(_named("reward_model", load_tokenizer, cfg.reward_model))
        self.examples, self.data_report = self._load_examples()
        if self.kind == "online":
            self._check_room("the longest training prompt", [e["prompt"] for e in self.examples])
        self._check_evaluation()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = max(1, cfg.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup))
        # the scheduler stays unprepared: accelerate would step it once per process
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        # semi-online: the policy that samples is a copy, refreshed every refresh_every steps
        self.sampler = None
        if cfg.sampling == "semi_online":
            self.sampler = copy.deepcopy(self.accelerator.unwrap_model(self.model)).eval().requires_grad_(False)
        # policy_kl_old, KL(pi_old || pi) after a step's update, costs one more forward: it is measured when the step
        # is more than one plain optimiser update (several epochs, TRPO's own step) or a hook reads it (PPO's beta)
        self.measures_update_kl = self.kind == "online" and obj.data == "online" and (
            cfg.update_epochs > 1 or obj.takes_own_step or any(h.reads_update_kl for h in obj.hooks))
        self.early_forward = None  # the latest rollout's policy forward, if `rollout.old` ran it (see rollout)
        self.step = 0
        self.state = {}  # what estimators and hooks keep between steps (a running baseline, PPO's beta)
        self.checkpoint_step = None  # the step of the checkpoint on disk, once there is one
        if self.resuming:
            self._load_checkpoint()
        self.reference_cache = self._reference_cache()
        self._write_run_dir(overwrite and not resume)  # last: everything above was checked

    def _frozen(self, path, reward_head=False):
        """The reference (or with reward_head, the reward model), frozen; a failure names the field."""
        field = "reward_model" if reward_head else "reference"
        if self.config.lora_r and not reward_head and path == self.config.model:  # the base model, no second copy
            return AdaptersDisabled(self.accelerator.unwrap_model(self.model))
        model = _named(field, load_model, path, reward_head=reward_head, trained_head=reward_head)
        return model.to(self.accelerator.device).eval().requires_grad_(False)

    # ------------------------------------------------------------------------ checks before the run
    def _fingerprint(self) -> dict:
        """The content a resumed run must share with the saved one: the training data, the models and the
        loss (a hub id stands for itself). Also names a missing training file before anything is loaded."""
        cfg, obj = self.config, self.objective
        path = self._data_path()
        if not (path.is_file() if not cfg.data_file else source_exists(path)):
            where = "data_file" if cfg.data_file else f"data_dir '{cfg.data_dir}' holds no {path.name} (data_file)"
            raise FileNotFoundError(f"training data {path} does not exist ({where})")
        digests = {}

        def digest(model):
            return digests.setdefault(model, refcache.model_digest(model))

        options = {k: v for k, v in obj.hyperparameters(**cfg.hyperparameters).items() if k in obj.options}
        return {"data": source_digest(path, cfg.data_split, cfg.data_columns), "model": digest(cfg.model),
                "reference": digest(cfg.reference or cfg.model),
                "reward_model": digest(cfg.reward_model) if cfg.reward_model else None,
                "loss": str(obj.sympy_loss(**options))}

    def _check_room(self, what: str, prompts: list) -> None:
        """Sampling max_new_tokens after each of `prompts` (token ids) must fit the model's context."""
        longest = max((len(p) for p in prompts), default=0)
        if self.context is not None and longest + self.config.max_new_tokens > self.context:
            raise SettingError(f"max_new_tokens must leave room for {what} ({longest} tokens) in the model's "
                               f"context of {self.context} positions: at most {self.context - longest}, got "
                               f"{self.config.max_new_tokens}")

    def _check_evaluation(self) -> None:
        """What evaluate() will read, checked now rather than at its first call."""
        cfg, obj = self.config, self.objective
        if not cfg.eval_every:
            return
        kind = "pairs" if obj.shape == "reward_model" else "prompts"
        path = Path(cfg.data_dir) / f"{kind}_test.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"held-out {kind} {path} do not exist (evaluation reads them every eval_every "
                                    "steps; eval_every=0 trains without evaluating)")
        if kind == "pairs":
            load_rows(path, "paired")
            return
        prompts = evaluate.held_out_prompts(cfg.data_dir, obj.trainer_defaults.get("inference_tag"))
        if cfg.eval_prompts > len(prompts):
            raise SettingError(f"eval_prompts must be at most the {len(prompts)} held-out prompts of {path}, "
                               f"got {cfg.eval_prompts}")
        self._check_room("the longest held-out prompt", self.encoder.prompts(prompts[:cfg.eval_prompts]))
        if self.reference is None:
            check_model_path(cfg.reference or cfg.model)  # the reference is loaded at the first evaluation

    # ------------------------------------------------------------------------ run directory
    def _check_run_dir(self, resume: bool, overwrite: bool):
        checkpoint = self.out / "checkpoint" / "trainer_state.pt"
        self.resuming = resume and checkpoint.exists()
        existing = self.out.exists() and any((self.out / f).exists() for f in RUN_FILES)
        if resume and not self.resuming:
            hint = " (it stopped before its first checkpoint; overwrite=True (--overwrite) starts it again)"
            raise FileNotFoundError(f"cannot resume: {self.out} holds no checkpoint{hint if existing else ''}")
        if existing and not (resume or overwrite):
            what = "resume=True (--resume) to continue it or " if checkpoint.exists() else ""
            raise FileExistsError(f"{self.out} already holds a run; pass {what}overwrite=True (--overwrite) to "
                                  "replace it")
        if self.resuming:
            saved = self.out / "config.json"
            if not saved.is_file():
                raise FileNotFoundError(f"cannot resume: {self.out} holds a checkpoint but no config.json to "
                                        "check this config against")
            differences = resume_differences(json.loads(saved.read_text()), self._resolved())
            if differences:
                raise ValueError(f"cannot resume {self.out}: this config differs from the saved run in "
                                 f"{'; '.join(differences)}. Only {', '.join(sorted(extendable_fields()))} may "
                                 f"change (`unified-rlhf train --resume --out {self.out}` takes the saved "
                                 "settings); to train this config, pass another out (--out) or overwrite=True")

    def _resolved(self) -> dict:
        """config.json: the config, with the objective's defaults as this run uses them, what evaluate_run
        needs to know about the method, and the fingerprint a resume is checked against."""
        obj = self.objective
        return self.config.to_dict() | {
            "objective_hyperparameters": obj.hyperparameters(**self.config.hyperparameters),
            "evaluation": {"kind": "reward_model" if obj.shape == "reward_model" else "policy",
                           "inference_tag": obj.trainer_defaults.get("inference_tag")},
            "fingerprint": self.fingerprint}

    def _write_run_dir(self, clear: bool):
        if self.accelerator.is_main_process:
            if clear:  # --overwrite: only the files a run writes are removed
                _remove_run_files(self.out)
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(self._resolved(), indent=2))
            (self.out / "data_report.json").write_text(json.dumps(self.data_report, indent=2))
        self.accelerator.wait_for_everyone()

    def _discard_if_unresumable(self):
        """After an error: with no checkpoint the run cannot be resumed, and what it wrote would only block
        the next try, so it is removed (files of your own in the directory stay)."""
        if self.accelerator.is_main_process and not (self.out / "checkpoint" / "trainer_state.pt").exists():
            _remove_run_files(self.out)
            try:
                self.out.rmdir()  # only if it is now empty
            except OSError:
                pass

    def _data_path(self) -> Path:
        cfg = self.config
        return Path(cfg.data_file) if cfg.data_file else Path(cfg.data_dir) / f"{DATA_FILES[self.kind]}_train.jsonl"

    def _load_examples(self):
        path = self._data_path()
        cfg = self.config
        rows = load_rows(path, "prompts" if self.kind == "online" else self.kind, cfg.data_columns, cfg.data_split)
        weights = self.objective.trainer_defaults.get("source_weights")
        examples, report = encode_rows(list(rows), self.kind, self.encoder, weights)
        report["file"] = str(path)
        if not examples:
            raise ValueError(f"{path}: no usable rows: all {report['rows']} prompts leave no room for a completion "
                             f"within max_length {self.config.max_length}")
        if self.accelerator.is_main_process and (report["dropped_rows"] or report["truncated_completions"]):
            print(f"{path}: {report['dropped_rows']} rows dropped (prompt longer than max_length "
                  f"{self.config.max_length}), {report['truncated_completions']} completions truncated")
        return examples, report

    # ------------------------------------------------------------------------ log-probs
    def logprobs(self, pairs, model=None, per_token=False, packed=None):
        """(prompt ids, completion ids) pairs -> log-probs ([N] sums, or [N, T] per token), lengths, mask.
        packed: the sequences share rows of max_length tokens (logprobs.pack_batch): less padding, same result
        (rows as long as the longest sequence where a sampled one is longer: the sampler's limit is the context's).
        None: as config.packing says (its null: where the model allows it)."""
        model = model or self.model
        if packed is None:
            packed = self.config.packing if self.config.packing is not None else packing_refusal(model) is None
        if packed:
            capacity = max(self.config.max_length, *(len(p) + len(c) for p, c in pairs))
            batch = pack_batch([p for p, _ in pairs], [c for _, c in pairs], self.pad, capacity)
            with self.accelerator.autocast():
                tokens, mask = packed_token_logprobs(model, batch.to(self.accelerator.device))
            tokens = tokens.float()
            return (tokens if per_token else tokens.sum(-1)), mask.sum(-1).float(), mask
        with self.accelerator.autocast():
            tokens, mask = token_logprobs(model, *self._padded(pairs))
        tokens = tokens.float()
        return (tokens if per_token else tokens.sum(-1)), mask.sum(-1).float(), mask

    def distributions(self, pairs, model=None):
        """log pi(. | x, y_<t) over the vocabulary at each completion token ([N, T, V]) and the mask [N, T]."""
        with self.accelerator.autocast():
            return completion_distributions(model or self.model, *self._padded(pairs))

    def _padded(self, pairs):
        """(prompt ids, completion ids) pairs -> input ids, attention and completion masks, right padded."""
        return (t.to(self.accelerator.device) for t in pad_batch(
            [p for p, _ in pairs], [c for _, c in pairs], self.pad, "right"))

    def _reference_cache(self):
        """Reference log-probs of the training sequences: each side of a row, plus any sequences the
        objective's hooks name, looked up lazily in the shared cache (refcache.py)."""
        if self.kind == "online" or not self.objective.reads_reference:
            return None
        sides = 2 if self.kind == "paired" else 1
        sequences = {f"side{i}": [(e["prompt"], e["completions"][i]) for e in self.examples] for i in range(sides)}
        for hook in self.objective.hooks:
            sequences |= hook.reference_sequences(self.examples)
        cfg = self.config
        key = refcache.cache_key(
            reference=self.fingerprint["reference"], data=self.fingerprint["data"],
            kind=self.kind, max_length=cfg.max_length, sequences=sorted(sequences),
            tokenizer=self.tokenizer.backend_tokenizer.to_str() if hasattr(self.tokenizer, "backend_tokenizer")
            else repr(self.tokenizer), device=str(self.accelerator.device),
            precision=self.accelerator.mixed_precision, threads=torch.get_num_threads(), torch=torch.__version__)
        directory = Path(cfg.reference_cache) if cfg.reference_cache else refcache.default_directory()
        # unpacked whatever the run's packing: the cache is shared between runs and holds one computation
        return refcache.ReferenceCache(lambda pairs: self.logprobs(pairs, self.reference, packed=False)[0], sequences,
                                       directory / f"{key}.pt", self.accelerator.device)

    def reference_logprobs(self, name: str, indices) -> torch.Tensor:
        """l_ref of rows `indices` of a cached sequence list ("side0", "side1", or a hook's name)."""
        return self.reference_cache.get(name, indices)

    # ------------------------------------------------------------------------ one offline step
    def offline_inputs(self, indices: list[int]) -> tuple[dict, dict]:
        """The objective's inputs for rows `indices`, and what hooks report for the log."""
        obj, examples = self.objective, [self.examples[i] for i in indices]
        batch, info = {}, {}
        if self.kind == "paired":
            pairs = [(e["prompt"], e["completions"][0]) for e in examples] + \
                    [(e["prompt"], e["completions"][1]) for e in examples]
            if obj.shape == "reward_model":
                ids, attention, _ = (t.to(self.accelerator.device) for t in pad_batch(
                    [p for p, _ in pairs], [c for _, c in pairs], self.pad, "right"))
                with self.accelerator.autocast():
                    rewards = sequence_rewards(self.model, ids, attention).float()
                batch["reward_chosen"], batch["reward_rejected"] = rewards.chunk(2)
                return batch, info
            tokens, lengths, mask = self.logprobs(pairs, per_token=True)  # one concatenated forward
            chosen, rejected = tokens.chunk(2)
            per_token = obj.level == "token" and "logp_rejected" in obj.token_vars
            batch["logp_chosen"] = chosen.sum(-1)
            batch["logp_rejected"] = rejected if per_token else rejected.sum(-1)
            batch["mask_rejected"] = mask.chunk(2)[1]
            batch["len_chosen"], batch["len_rejected"] = lengths.chunk(2)
            if self.reference_cache is not None:
                batch["ref_logp_chosen"] = self.reference_logprobs("side0", indices)
                batch["ref_logp_rejected"] = self.reference_logprobs("side1", indices)
        elif self.kind == "ranked":
            k = len(examples[0]["completions"])
            logp, lengths, _ = self.logprobs([(e["prompt"], c) for e in examples for c in e["completions"]])
            batch = {"logp": logp.view(-1, k), "length": lengths.view(-1, k),
                     "reward": torch.tensor([e["rewards"] for e in examples], device=logp.device)}
        else:  # one completion per row: sft, sft_tagged, unpaired, scored
            logp, lengths, _ = self.logprobs([(e["prompt"], e["completions"][0]) for e in examples])
            batch = {"logp": logp, "length": lengths}
            if self.reference_cache is not None:
                batch["ref_logp"] = self.reference_logprobs("side0", indices)
            for key in ("label", "score", "source_weight"):
                if key in examples[0]:
                    batch[key] = torch.tensor([e[key] for e in examples], device=logp.device)
        for hook in obj.hooks:
            info |= hook.offline_inputs(self, indices, batch)
        return batch, info

    def loss_and_weights(self, batch: dict, hp: dict | None = None):
        """The objective's per-example losses and weights (a hook may supply the loss, as RRHF's does)."""
        hp = self.config.hyperparameters if hp is None else hp
        for hook in self.objective.hooks:
            result = hook.loss(self.objective, batch, hp)
            if result is not None:
                return result
        out = self.objective(batch, **hp)
        return out.loss, out.weights

    # ------------------------------------------------------------------------ one online step
    @torch.no_grad()
    def rollout(self, indices: list[int]) -> Rollout:
        """Sample k completions per prompt from the current policy, score them, and take their log-probs
        under the sampling policy and the reference."""
        cfg = self.config
        policy = self.sampler if self.sampler is not None else self.accelerator.unwrap_model(self.model)
        prompts = [self.examples[i]["prompt"] for i in indices]
        texts = [self.examples[i]["text"] for i in indices]
        k = cfg.samples_per_prompt
        seed = cfg.seed * 1_000_003 + self.step * 997 + self.accelerator.process_index
        completions = evaluate.sample(policy, prompts, num_samples=k, max_new_tokens=cfg.max_new_tokens,
                                      temperature=cfg.temperature, eos_id=self.encoder.eos, pad_id=self.pad,
                                      seed=seed)
        pairs = [(prompts[i // k], c) for i, c in enumerate(completions)]
        ref, _, mask = self.logprobs(pairs, self.reference, per_token=True)
        rewards = self.score([texts[i // k] for i in range(len(completions))], completions)

        self.early_forward = None

        def old():  # deferred: the step's first forward with gradient gives these (policy_forward)
            # read before the update (a KL-shaped reward, a callback): run that forward now, with gradient, and keep
            # it for the update; with gradient or without, a forward gives the same bits (tests/test_trainer.py)
            with torch.enable_grad():
                forward = self.logprobs(pairs, per_token=True)
            self.early_forward = (pairs, self._parameter_versions(), forward)
            return forward[0].detach()

        return Rollout(pairs=pairs, completions=completions, reward=rewards, old=old, ref=ref, mask=mask,
                       group_size=k, max_new_tokens=cfg.max_new_tokens)

    def policy_forward(self, rollout: Rollout):
        """(per-token log-probs with gradient, lengths, mask) of the rollout's samples under the policy. The first
        call of a step also gives `rollout.old` (the policy has not moved yet); if `old` was read before it, the
        forward that read ran then, and is taken here instead of a second one."""
        early, self.early_forward = self.early_forward, None
        # taken only for these samples and if no parameter has changed since, in place or by a step (their version
        # counters): a chapter may step or reload the policy between reading `old` and building the update's inputs
        if early is not None and early[0] is rollout.pairs and early[1] == self._parameter_versions():
            return early[2]
        forward = self.logprobs(rollout.pairs, per_token=True)
        if not rollout.old_computed:  # the first epoch, before any update: the policy is still the sampling one
            rollout.old = forward[0].detach()
        return forward

    def _parameter_versions(self) -> tuple[int, ...]:
        return tuple(p._version for p in self.model.parameters())

    def score(self, prompts: list[str], completions: list[list[int]]) -> torch.Tensor:
        """Rewards of completions: the task's gold reward, or the configured reward model."""
        texts = [self.encoder.decode(c) for c in completions]
        if self.reward_model is None:
            rewards = [task.gold_reward(p, t) for p, t in zip(prompts, texts)]
            return torch.tensor(rewards, device=self.accelerator.device)
        encoder = self.reward_encoder
        pairs = [(encoder.prompt(p), encoder.completion(t)) for p, t in zip(prompts, texts)]
        ids, attention, _ = (t.to(self.accelerator.device) for t in pad_batch(
            [p for p, _ in pairs], [c for _, c in pairs], encoder.pad, "right"))
        return sequence_rewards(self.reward_model, ids, attention).float()

    def preference_inputs(self, rollout: Rollout) -> tuple[dict, dict]:
        """A paired or unpaired objective on the policy's own samples: each prompt's group, ranked by reward,
        gives pairs (config.pair_rule) or labels (config.label_rule; see online_feedback.py). The policy's
        log-probs carry the gradient; the reference's come from the rollout."""
        cfg, obj = self.config, self.objective
        tokens, lengths, mask = self.policy_forward(rollout)  # every sample, one forward
        reference = rollout.ref.to(tokens.dtype)
        k = rollout.group_size
        if obj.data == "paired":
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
            chosen, rejected = online_feedback.preference_pairs(rollout.reward, k, cfg.pair_rule, generator)
            per_token = obj.level == "token" and "logp_rejected" in obj.token_vars
            batch = {"logp_chosen": tokens[chosen].sum(-1),
                     "logp_rejected": tokens[rejected] if per_token else tokens[rejected].sum(-1),
                     "mask_rejected": mask[rejected], "len_chosen": lengths[chosen], "len_rejected": lengths[rejected]}
            if obj.reads_reference:
                batch |= {"ref_logp_chosen": reference[chosen].sum(-1),
                          "ref_logp_rejected": reference[rejected].sum(-1)}
            rows = chosen
        else:
            rows, labels = online_feedback.preference_labels(rollout.reward, k, cfg.label_rule, cfg.label_threshold)
            batch = {"logp": tokens[rows].sum(-1), "length": lengths[rows],
                     "label": labels.to(tokens.device, tokens.dtype)}
            if obj.reads_reference:
                batch["ref_logp"] = reference[rows].sum(-1)
        info = {"feedback_rows": len(rows)}
        if len(rows):
            for hook in obj.hooks:
                info |= hook.online_inputs(self, rollout, rows.tolist(), batch)
        return batch, info

    def advantages(self, rollout: Rollout) -> dict:
        """The record's advantage estimator on this rollout: loss inputs such as "advantage" (and, for
        REINFORCE, the shaped "reward" and "baseline"). Updates the estimator's state."""
        return self.objective.advantage(rollout, self.config.kl_coef, self.state)

    def online_inputs(self, rollout: Rollout, estimated: dict) -> dict:
        """The objective's inputs: the policy's log-probs (with gradient) of the sampled completions."""
        token_view = self.objective.level == "token"
        tokens, lengths, mask = self.policy_forward(rollout)
        logp = tokens if token_view else tokens.sum(-1)
        batch = {"logp": logp, "length": lengths, "mask": mask, "reward": rollout.reward,
                 "baseline": torch.zeros_like(lengths)} | estimated
        old, ref = (rollout.old, rollout.ref) if token_view else (rollout.old.sum(-1), rollout.ref.sum(-1))
        return batch | {"old_logp": old, "ref_logp": ref}

    # ------------------------------------------------------------------------ the loop
    def optimizer_step(self, loss: torch.Tensor) -> float:
        self.accelerator.backward(loss)
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def update(self, loss: torch.Tensor, recompute_loss, sequences, hp: dict) -> dict:
        """One update of the policy from this batch's loss: the record's own step if one of its hooks takes
        it (TRPO's natural-gradient step with a line search, which re-evaluates the loss with
        `recompute_loss()` and the policy's distributions on `sequences`), else the optimiser's."""
        for hook in self.objective.hooks:
            metrics = hook.update(self, loss, recompute_loss, sequences, hp)
            if metrics is not None:
                return metrics
        return {"grad_norm": self.optimizer_step(loss)}

    def train_step(self) -> dict:
        cfg, acc, obj = self.config, self.accelerator, self.objective
        indices = batch_indices(self.step, cfg.batch_size, len(self.examples), cfg.seed)
        local = indices[acc.process_index::acc.num_processes]
        started = time.time()
        metrics = {"step": self.step + 1}
        hp = dict(cfg.hyperparameters)
        for hook in obj.hooks:
            hp = hook.hyperparameters(self.state, hp)
        if self.sampler is not None and self.step % cfg.refresh_every == 0:
            self.sampler.load_state_dict(self.accelerator.unwrap_model(self.model).state_dict())
        weights = None
        if self.kind == "online" and obj.data != "online":  # preference feedback on the policy's own samples
            rollout = self.rollout(local)
            batch, info = self.preference_inputs(rollout)
            loss = torch.zeros(())
            if info["feedback_rows"]:  # every group tied: no preference in this batch, no update
                loss_per_example, weights = self.loss_and_weights(batch, hp)
                loss = loss_per_example.mean()
                metrics |= self.update(loss, lambda: self.loss_and_weights(self.preference_inputs(rollout)[0],
                                                                           hp)[0].mean(), rollout.pairs, hp)
                metrics |= _offline_metrics(batch)
            metrics |= info | {"reward_mean": rollout.reward.mean().item(),
                               "sample_kl": rollout.kl_per_token().sum(-1).mean().item(),
                               "sample_length": rollout.mask.float().sum(-1).mean().item()}
        elif self.kind == "online":
            rollout = self.rollout(local)
            estimated = self.advantages(rollout)
            for callback in self.callbacks:
                if hasattr(callback, "on_rollout"):
                    callback.on_rollout(self, rollout, estimated)
            def online_loss():
                return self.loss_and_weights(self.online_inputs(rollout, estimated), hp)[0].mean()

            for _ in range(cfg.update_epochs):
                batch = self.online_inputs(rollout, estimated)
                loss, weights = self.loss_and_weights(batch, hp)
                loss = loss.mean()
                metrics |= self.update(loss, online_loss, rollout.pairs, hp)
            updated = None
            if self.measures_update_kl:  # the policy after this step's updates, for KL(pi_old || pi)
                with torch.no_grad():
                    updated = self.logprobs(rollout.pairs, per_token=True)[0]
            metrics |= _online_metrics(rollout, batch, updated, obj, hp)
        else:
            batch, info = self.offline_inputs(local)
            loss_per_example, weights = self.loss_and_weights(batch, hp)
            loss = loss_per_example.mean()
            metrics |= self.update(loss, lambda: self.loss_and_weights(self.offline_inputs(local)[0], hp)[0].mean(),
                                   None, hp)
            metrics |= info | _offline_metrics(batch)
        for hook in obj.hooks:
            hook.after_step(obj, self.state, metrics, hp)
        metrics["loss"] = loss.item()
        if weights is not None:
            metrics |= _weight_metrics(weights, batch)
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics["seconds"] = time.time() - started
        self.step += 1
        for callback in self.callbacks:
            if hasattr(callback, "on_step"):
                callback.on_step(self, metrics)
        return metrics

    def train(self) -> dict:
        from tqdm.auto import tqdm

        cfg, acc = self.config, self.accelerator
        progress = tqdm(total=cfg.max_steps, initial=self.step, desc=cfg.method,
                        disable=not (cfg.progress and acc.is_main_process))
        last_eval = None
        try:
            with _StopOnInterrupt(acc) as stop:
                if self.step == 0 and cfg.eval_every and cfg.eval_at_start and acc.is_main_process and not any(
                        r["step"] == 0 for r in read_jsonl(self.out / "eval.jsonl")):
                    last_eval = self.evaluate()
                while self.step < cfg.max_steps:
                    if stop.requested():
                        self._stop()
                    metrics = self.train_step()
                    if acc.is_main_process:
                        _append(self.out / "metrics.jsonl", metrics)
                        progress.set_postfix(loss=f"{metrics['loss']:.3f}")
                    progress.update(1)
                    if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.max_steps):
                        if acc.is_main_process:
                            last_eval = self.evaluate()
                    if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                        self.save_checkpoint()
        except TrainingInterrupted:
            progress.close()
            raise
        except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, mid-step
            progress.close()
            self._discard_if_unresumable()
            raise TrainingInterrupted(self._interrupted_message()) from None
        except BaseException:
            progress.close()
            self._discard_if_unresumable()
            raise
        progress.close()
        self.save_model(self.out / "model")
        return last_eval or {}

    def _stop(self):
        """Ctrl-C between steps: checkpoint this step (if the schedule has not just done so) and stop."""
        if self.checkpoint_step != self.step:
            self.save_checkpoint()
        raise TrainingInterrupted(self._interrupted_message())

    def _interrupted_message(self) -> str:
        where = f"interrupted at step {self.step} of {self.config.max_steps}"
        if self.checkpoint_step is None:
            return f"{where}, before its first checkpoint: nothing was kept"
        return (f"{where}; the checkpoint of step {self.checkpoint_step} is in {self.out / 'checkpoint'}. "
                f"Continue with: unified-rlhf train --resume --out {self.out}")

    # ------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Gold reward / KL / win rate on held-out prompts (policies), accuracy on held-out pairs (RMs)."""
        cfg, model = self.config, self.accelerator.unwrap_model(self.model)
        if self.objective.shape == "reward_model":
            result = evaluate.reward_model_accuracy(model, self.tokenizer, Path(cfg.data_dir) / "pairs_test.jsonl",
                                                    cfg.max_length)
        else:
            if self.reference is None:  # reference-free methods still report KL to the starting model
                self.reference = self._frozen(cfg.reference or cfg.model)
            result = evaluate.evaluate_held_out(
                model, self.reference, self.tokenizer, cfg.data_dir, prompts=cfg.eval_prompts,
                samples_per_prompt=cfg.eval_samples, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                inference_tag=self.objective.trainer_defaults.get("inference_tag"))
        result = {"step": self.step} | result
        _append(self.out / "eval.jsonl", result)
        return result

    # ------------------------------------------------------------------------ checkpoints
    def save_model(self, path: Path):
        """The model (with LoRA, its adapters) and the tokenizer. Under FSDP or DeepSpeed the weights are
        sharded, and every process takes part in gathering them."""
        acc = self.accelerator
        acc.wait_for_everyone()
        sharded = {"state_dict": acc.get_state_dict(self.model)} if acc.distributed_type in ("FSDP", "DEEPSPEED") \
            else {}
        if acc.is_main_process:
            acc.unwrap_model(self.model).save_pretrained(path, safe_serialization=True, **sharded)
            self.tokenizer.save_pretrained(path)

    def save_checkpoint(self):
        self.save_model(self.out / "checkpoint")
        if self.accelerator.is_main_process:
            torch.save({"step": self.step, "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(), "state": self.state,
                        "sampler": self.sampler.state_dict() if self.sampler is not None else None,
                        "rng": torch.get_rng_state()},  # dropout's draws continue where they stopped
                       self.out / "checkpoint" / "trainer_state.pt")
        self.checkpoint_step = self.step

    def _load_checkpoint(self):
        saved = torch.load(self.out / "checkpoint" / "trainer_state.pt", map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.step, self.state = saved["step"], saved["state"]
        if self.sampler is not None:  # semi-online: the copy that was sampling when the checkpoint was taken
            self.sampler.load_state_dict(saved["sampler"])
        if "rng" in saved:
            torch.set_rng_state(saved["rng"])
        self.checkpoint_step = self.step
        if self.accelerator.is_main_process:
            for name in ("metrics.jsonl", "eval.jsonl"):  # forget what the interrupted run logged after the checkpoint
                rows = read_jsonl(self.out / name)
                if rows:
                    (self.out / name).write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= self.step))


# ============================================================================================ helpers
class _StopOnInterrupt:
    """While training, Ctrl-C (SIGINT) asks for a stop instead of raising mid-step, where the model and the
    optimiser can be half updated: `requested()` says so between steps (on every process, under accelerate).
    A second Ctrl-C raises KeyboardInterrupt at once. Outside the main thread signals cannot be caught, and
    Ctrl-C behaves as usual."""

    def __init__(self, accelerator):
        self.accelerator, self.flag, self.previous = accelerator, False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        self.flag = True
        signal.signal(signal.SIGINT, self._restore())

    def _restore(self):
        return self.previous if callable(self.previous) or self.previous in (signal.SIG_IGN, signal.SIG_DFL) \
            else signal.default_int_handler

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self._restore())

    def requested(self) -> bool:
        if self.accelerator.num_processes == 1:
            return self.flag
        if self.flag:
            self.accelerator.set_trigger()
        return self.accelerator.check_trigger()


def _named(field: str, load, path, **kwargs):
    """load(path, ...), with the config field it came from in front of a failure's message (on one line)."""
    try:
        return load(path, **kwargs)
    except OSError as error:
        raise FileNotFoundError(f"{field}: {' '.join(str(error).split())}") from None
    except ValueError as error:
        raise ValueError(f"{field}: {' '.join(str(error).split())}") from None


def _remove_run_files(out: Path):
    for name in (*RUN_FILES, "checkpoint", "model"):
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)


def _cuda_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _accelerator(bf16: bool | None):
    """The Accelerator, with bf16 autocast if asked (None: where CUDA supports it). accelerate keeps one
    precision per process; a single process may train in one and then in another."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    precision = "bf16" if (_cuda_bf16() if bf16 is None else bf16) else "no"
    if AcceleratorState._shared_state and PartialState().num_processes == 1 and \
            AcceleratorState().mixed_precision != precision:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())


def _append(path: Path, row: dict):
    with path.open("a") as f:
        f.write(json.dumps({k: v for k, v in row.items() if k != "samples"}) + "\n")


def _summary(prefix: str, values: torch.Tensor) -> dict:
    values = values.detach().float().flatten()
    if values.numel() == 0:
        return {}
    q = torch.quantile(values, torch.tensor([0.1, 0.9], device=values.device)).tolist()
    return {f"{prefix}_mean": values.mean().item(), f"{prefix}_q10": q[0], f"{prefix}_q90": q[1]}


def _weight_metrics(weights, batch: dict) -> dict:
    """Summaries of w+ and w- as the objective computed them. Single-completion methods have one signed
    weight: with labels (KTO, UNA) desirable rows give w+ and undesirable rows -w as w-."""
    if len(weights) == 2:
        # per-token weights are summarised over real tokens only
        w_plus, w_minus = (w[batch[mask].bool()] if w.dim() == 2 and batch.get(mask) is not None else w
                           for w, mask in zip(weights, ("mask_chosen", "mask_rejected")))
        return _summary("w_plus", w_plus) | _summary("w_minus", w_minus)
    (w,) = weights
    if w.dim() == 2:
        w = w[batch["mask"].bool()]
    if "label" in batch:
        label = batch["label"].bool()
        return _summary("w_plus", w[label]) | _summary("w_minus", -w[~label])
    return _summary("w_plus", w)


def _offline_metrics(batch: dict) -> dict:
    out = {}
    for key in ("logp_chosen", "logp_rejected", "reward_chosen", "reward_rejected", "logp"):
        if key in batch and batch[key].dim() == 1:
            out[f"{key}_mean"] = batch[key].detach().float().mean().item()
    if "reward_chosen" in batch:
        out["accuracy"] = (batch["reward_chosen"] > batch["reward_rejected"]).float().mean().item()
    if "ref_logp_chosen" in batch:
        margin = objectives.margin(SimpleNamespace(**batch))
        out["margin_mean"] = margin.detach().mean().item()
    return out


def _online_metrics(rollout: Rollout, batch: dict, updated: torch.Tensor | None, obj, hp: dict) -> dict:
    """reward, KL of the samples to the reference, and, per token: KL(pi_old || pi) after the update (what
    PPO's adaptive rule measures; given `updated`, the policy's log-probs after it) and the fraction of tokens
    whose gradient the clip cut in the last update epoch."""
    mask = rollout.mask.float()
    tokens = mask.sum()
    out = {"reward_mean": rollout.reward.mean().item(),
           "sample_kl": rollout.kl_per_token().sum(-1).mean().item(),
           "sample_length": mask.sum(-1).mean().item()}
    if updated is not None:
        log_ratio = (updated - rollout.old) * mask
        out["policy_kl_old"] = (((log_ratio.exp() - 1 - log_ratio) * mask).sum() / tokens).item()
    if "eps" in obj.defaults:
        eps = obj.hyperparameters(**hp)["eps"]
        ratio = (batch["logp"].detach() - batch["old_logp"]).exp()
        advantage = batch["advantage"] if batch["advantage"].dim() == ratio.dim() else batch["advantage"].unsqueeze(-1)
        clipped = 1 - objectives.unclipped(TORCH, ratio, advantage, eps)
        out["clip_fraction"] = ((clipped * mask).sum() / tokens).item() if ratio.dim() == 2 else clipped.mean().item()
    return out


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False, callbacks=()) -> dict:
    return Trainer(config, resume=resume, overwrite=overwrite, callbacks=callbacks).train()


__all__ = ["Trainer", "TrainingInterrupted", "train"]
