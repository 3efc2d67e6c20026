"""`unified-rlhf data build`: regenerate the book's data and reference model from a seed.

  1. an SFT corpus of grammar reviews (sentiment mix chosen so the reference starts near 0.4 gold reward)
  2. a word-level tokenizer trained on it with `tokenizers`
  3. the reference policy: a ~1.3M-parameter GPT-2 from a config, trained with this package's SFT
  4. preference data built like the DPO paper's: several samples of the reference per prompt,
     scored by the gold reward, labelled by Bradley-Terry; also unpaired, ranked, scored and
     C-RLFT-tagged rows from the same samples
Everything is seeded; the same seed on the same software gives the same files.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from . import evaluate, task
from .config import default_config
from .data import write_jsonl
from .models import Encoder, load_model, load_tokenizer
from .trainer import Trainer

BUILT = ("sft_train.jsonl", "sft_test.jsonl", "prompts_train.jsonl", "prompts_test.jsonl", "reference")


TEXT_FILES = ("sft_train.jsonl", "sft_test.jsonl", "prompts_train.jsonl", "prompts_test.jsonl")


def build(out: str | Path = "data", seed: int = 0, sft_rows: int = 20000, sft_steps: int = 2000,
          preference_prompts: int = 1500, test_prompts: int = 200, samples_per_prompt: int = 4,
          overwrite: bool = False, progress: bool = True) -> dict:
    """Build everything into `out` and write build_report.json: the settings, the row counts, the
    reference's gold reward, and the sha256 of every file, so a rebuild can be checked byte for byte
    (`file_hashes`)."""
    out = Path(out)
    if any((out / name).exists() for name in BUILT) and not overwrite:
        raise FileExistsError(f"{out} already holds built data; pass overwrite=True (--overwrite) to rebuild it")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic order on any machine, and no stalls on a shared CPU
    try:
        torch.manual_seed(seed)
        corpus = write_text_files(out, seed, sft_rows, preference_prompts, test_prompts)
        train_reference(out, corpus, seed, sft_steps, progress)
        report = {"seed": seed, "sft_rows": sft_rows, "sft_steps": sft_steps, "preference_prompts": preference_prompts,
                  "test_prompts": test_prompts, "samples_per_prompt": samples_per_prompt}
        report |= write_preference_files(out, seed, preference_prompts, test_prompts, samples_per_prompt)
    finally:
        torch.set_num_threads(threads)
    report["files"] = file_hashes(out)
    (out / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if progress:
        print(f"built {out} in {time.time() - started:.0f} s")
    return report


def file_hashes(out: Path) -> dict[str, str]:
    """sha256 of every built file (not the report itself), by path relative to `out`."""
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "build_report.json"}


def write_text_files(out: Path, seed: int, sft_rows: int, preference_prompts: int, test_prompts: int) -> list:
    """1. The SFT corpus and the prompts (held out for evaluation, and for online training); returns the corpus."""
    corpus = task.sft_corpus(sft_rows, seed=seed)
    n_test = max(1, sft_rows // 20)
    write_jsonl(corpus[n_test:], out / "sft_train.jsonl", kind="sft", overwrite=True)
    write_jsonl(corpus[:n_test], out / "sft_test.jsonl", kind="sft", overwrite=True)
    write_jsonl([{"prompt": p} for p in task.prompts(preference_prompts, seed=seed + 1)],
                out / "prompts_train.jsonl", kind="prompts", overwrite=True)
    write_jsonl([{"prompt": p} for p in task.prompts(test_prompts, seed=seed + 2)],
                out / "prompts_test.jsonl", kind="prompts", overwrite=True)
    return corpus


def tokenizer_texts(corpus: list) -> list[str]:
    return task.vocabulary() + ["expert : suboptimal :"] + [f"{r['prompt']} {r['completion']}" for r in corpus]


def train_reference(out: Path, corpus: list, seed: int, sft_steps: int, progress: bool):
    """2-3. The tokenizer, and the reference model SFT-trained by the package's own trainer."""
    reference_dir = out / "reference"
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        tokenizer = task.train_tokenizer(tokenizer_texts(corpus), scratch / "init")
        from transformers import GPT2LMHeadModel

        torch.manual_seed(seed)
        GPT2LMHeadModel(task.reference_config(len(tokenizer))).save_pretrained(scratch / "init")
        config = default_config("sft", model=str(scratch / "init"), data_dir=str(out), out=str(scratch / "run"),
                                max_steps=sft_steps, seed=seed, eval_every=0, checkpoint_every=10**9,
                                progress=progress)
        Trainer(config).train()
        if reference_dir.exists():
            shutil.rmtree(reference_dir)
        shutil.copytree(scratch / "run" / "model", reference_dir, copy_function=shutil.copyfile)


def write_preference_files(out: Path, seed: int, preference_prompts: int, test_prompts: int,
                           samples_per_prompt: int) -> dict:
    """4. Preference data from reference samples; returns row counts and the reference's gold reward."""
    reference_dir = out / "reference"
    reference, encoder = load_model(str(reference_dir)).eval(), Encoder(load_tokenizer(str(reference_dir)))
    rng = random.Random(seed)
    report = {}
    for split, prompts, sample_seed in (("train", task.prompts(preference_prompts, seed=seed + 3), seed + 10),
                                        ("test", task.prompts(test_prompts, seed=seed + 4), seed + 11)):
        completions = evaluate.sample(reference, encoder.prompts(prompts), num_samples=samples_per_prompt,
                                      max_new_tokens=24, eos_id=encoder.eos, pad_id=encoder.pad, seed=sample_seed)
        texts = [encoder.decode(c) for c in completions]
        groups = [task.score_group(p, texts[i * samples_per_prompt:(i + 1) * samples_per_prompt])
                  for i, p in enumerate(prompts)]
        groups = [g for g in groups if all(c.strip() for c in g["completions"])]  # an empty sample has no text
        rows = {"pairs": ("paired", task.paired_rows(groups, rng, pairs_per_prompt=2)),
                "unpaired": ("unpaired", task.unpaired_rows(groups, rng)),
                "ranked": ("ranked", task.ranked_rows(groups)),
                "scored": ("scored", task.scored_rows(groups)),
                "sft_tagged": ("sft_tagged", task.tagged_sft_rows(groups))}
        for name, (kind, data) in rows.items():
            write_jsonl(data, out / f"{name}_{split}.jsonl", kind=kind, overwrite=True)
            report[f"{name}_{split}"] = len(data)
        rewards = [r for g in groups for r in g["rewards"]]
        report[f"reference_gold_reward_{split}"] = round(sum(rewards) / len(rewards), 4)
    return report
