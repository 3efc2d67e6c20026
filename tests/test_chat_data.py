"""Conversational rows in TRL's format: checked with file/row/field errors, implicit prompts taken as TRL
takes them, tokenized with the chat template as TRL tokenizes them, and trained and evaluated end to end."""

import json
import re

import pytest
import torch
from training_runs import DATA, small

from unified_rlhf import evaluate
from unified_rlhf.data import DataError, check_row, encode_rows, load_rows, prompt_text, write_jsonl
from unified_rlhf.models import PLAIN_CHAT_TEMPLATE, Encoder, chat_template, load_tokenizer
from unified_rlhf.trainer import Trainer


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


def conversational(row: dict) -> dict:
    """A text row of the book's data as a one-turn conversation (the prompt a user turn, each completion an
    assistant turn); other fields unchanged."""
    out = dict(row)
    for field in ("prompt", "chosen", "rejected", "completion"):
        if field in row:
            out[field] = user(row[field]) if field == "prompt" else assistant(row[field])
    if "completions" in row:
        out["completions"] = [assistant(c) for c in row["completions"]]
    return out


KINDS = {"sft": "sft", "sft_tagged": "sft_tagged", "prompts": "prompts", "paired": "pairs", "unpaired": "unpaired",
         "ranked": "ranked", "scored": "scored"}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_one_turn_conversation_gives_the_tokens_of_its_text_row(kind):
    """Under the plain template (the book's tokenizer has none of its own) a conversation is the package's
    text convention: the same token ids, prompt and completions, and the same text for the gold reward."""
    text_rows = list(load_rows(DATA / f"{KINDS[kind]}_train.jsonl", kind))[:12]
    chat_rows = [check_row(conversational(r), kind, f"row {i}") for i, r in enumerate(text_rows)]
    assert all(isinstance(r["prompt"], list) for r in chat_rows)
    tokenizer = load_tokenizer(DATA / "reference")
    assert tokenizer.chat_template is None and chat_template(tokenizer) == PLAIN_CHAT_TEMPLATE
    weights = {"expert": 1.0, "suboptimal": 0.1}
    data_kind = "online" if kind == "prompts" else kind
    text_examples, _ = encode_rows(text_rows, data_kind, Encoder(tokenizer, 64), weights)
    chat_examples, _ = encode_rows(chat_rows, data_kind, Encoder(tokenizer, 64), weights)
    assert chat_examples == text_examples


def test_a_multi_turn_conversation_under_the_plain_template():
    """Contents in order, separated by spaces; each assistant turn closed by eos; the last reply is the
    completion."""
    tokenizer = load_tokenizer(DATA / "reference")
    encoder = Encoder(tokenizer)
    conversation = user("this film") + assistant("was good .") + user("the plot was")
    prompt, [completion] = encoder.encode(conversation, [assistant("dull .")])
    expected = [encoder.bos] + encoder._encode("this film was good .") + [encoder.eos] + encoder._encode(
        " the plot was")
    assert prompt == expected == encoder.prompt(conversation)
    assert completion == encoder.completion("dull .")


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def chatml_tokenizer():
    """A byte-level BPE tokenizer trained here with a ChatML template whose eos is <|im_end|>, as in
    instruction-tuned Qwen2 models: a turn ends '<|im_end|>\\n'."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    texts = [f"{r['prompt']} {r['chosen']} {r['rejected']}" for r in load_rows(DATA / "pairs_test.jsonl", "paired")]
    backend.train_from_iterator(texts + ["user assistant system\n"], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHATML)


def test_chat_tokens_follow_trl_and_end_at_eos(chatml_tokenizer):
    """The prompt and completions are TRL's (trl.apply_chat_template's texts, tokenized), except that a
    completion ends at its eos: the newline the template writes after <|im_end|> is never sampled, so it is
    not trained either."""
    from trl.data_utils import apply_chat_template

    tokenizer, eos = chatml_tokenizer, chatml_tokenizer.eos_token_id
    encoder = Encoder(tokenizer)
    example = {"prompt": [{"role": "system", "content": "review films"}] + user("the film was"),
               "chosen": assistant("superb ."), "rejected": assistant("dull .")}
    trl = apply_chat_template(example, tokenizer)
    prompt, completions = encoder.encode(example["prompt"], [example["chosen"], example["rejected"]])
    assert prompt == encoder._encode(trl["prompt"]) == encoder.prompt(example["prompt"])
    for completion, side in zip(completions, ("chosen", "rejected")):
        trl_ids = encoder._encode(trl[side])
        assert trl[side].endswith("<|im_end|>\n") and trl_ids[-1] != eos  # TRL keeps the newline
        assert completion == trl_ids[:trl_ids.index(eos) + 1] and completion[-1] == eos
    # a template that closes turns with another token: eos is added after it
    other = Encoder(tokenizer)
    other.eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    _, [completion] = other.encode(example["prompt"], [example["chosen"]])
    assert completion[-1] == other.eos and completion[-3:-1] == encoder._encode("<|im_end|>\n")


def test_an_implicit_prompt_is_the_shared_start_as_trl_extracts_it():
    from trl.data_utils import extract_prompt

    context = [{"role": "system", "content": "be brief"}] + user("the film was") + assistant("long .") + user("and?")
    row = {"chosen": context + assistant("superb ."), "rejected": context + assistant("dull .")}
    clean = check_row(row, "paired", "row 1")
    assert list(clean) == ["prompt", "chosen", "rejected"]
    assert clean == extract_prompt(row)
    assert clean["prompt"] == context and clean["chosen"] == assistant("superb .")


BAD = [  # (row, field, part of the message)
    ({"prompt": user("a"), "chosen": [{"role": "robot", "content": "b"}], "rejected": assistant("c")},
     "chosen", "message 0: role must be one of system, user, assistant, tool, got 'robot'"),
    ({"prompt": user("a"), "chosen": [{"role": "assistant"}], "rejected": assistant("c")},
     "chosen", "message 0: content must be a string, got NoneType"),
    ({"prompt": user("a"), "chosen": assistant(" "), "rejected": assistant("c")}, "chosen", "every message is empty"),
    ({"prompt": user("a"), "chosen": "b .", "rejected": assistant("c")},
     "chosen", "a string, but 'prompt' is a conversation (a row is all text or all conversation)"),
    ({"prompt": [], "chosen": "b", "rejected": "c"}, "prompt",
     "expected a string or a list of messages ({role, content} objects), got an empty list"),
    ({"chosen": user("a") + assistant("b"), "rejected": user("x") + assistant("c")},
     "prompt", "missing, and 'chosen' and 'rejected' share no first message"),
    ({"chosen": user("a"), "rejected": user("a") + assistant("c")}, "chosen", "nothing after the prompt"),
    ({"chosen": "the film was good", "rejected": "the film was bad"}, "prompt",
     "missing (an implicit prompt is read only from conversations)"),
]


@pytest.mark.parametrize("row, field, problem", BAD)
def test_bad_conversations_name_file_row_and_field(tmp_path, row, field, problem):
    path = tmp_path / "pairs.jsonl"
    good = {"prompt": user("the film was"), "chosen": assistant("good ."), "rejected": assistant("bad .")}
    path.write_text(f"{json.dumps(good)}\n{json.dumps(row)}\n")
    with pytest.raises(DataError, match=re.escape(f"{path}, row 2, field '{field}': {problem}")):
        load_rows(path, "paired")


def test_a_file_is_all_text_or_all_conversation(tmp_path):
    path = tmp_path / "sft.jsonl"
    rows = [{"prompt": "the film was", "completion": "good ."}, conversational({"prompt": "a", "completion": "b"})]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=re.escape(f"{path}, row 2: a conversation row, but row 1 is a text row")):
        load_rows(path, "sft")


def conversational_files(tmp_path, rows: int = 24):
    """The book's pairs and held-out prompts as one-turn conversations, in JSONL files of their own."""
    pairs = [conversational(r) for r in list(load_rows(DATA / "pairs_train.jsonl", "paired"))[:rows]]
    prompts = [conversational(r) for r in list(load_rows(DATA / "prompts_train.jsonl", "prompts"))[:rows]]
    return (write_jsonl(pairs, tmp_path / "chat_pairs.jsonl", kind="paired"),
            write_jsonl(prompts, tmp_path / "chat_prompts.jsonl", kind="prompts"))


def test_the_conversational_variant_trains_and_evaluates_end_to_end(tmp_path):
    """DPO on conversational pairs sees exactly the examples, and so takes exactly the steps, of DPO on the
    text pairs; GRPO samples from conversational prompts and scores them with the gold reward; evaluation
    samples from conversational prompts."""
    pairs, prompts = conversational_files(tmp_path)
    text_pairs = write_jsonl(load_rows(DATA / "pairs_train.jsonl", "paired").select(range(24)).to_list(),
                             tmp_path / "text_pairs.jsonl", kind="paired")
    runs = {}
    for name, data_file in (("chat", pairs), ("text", text_pairs)):
        trainer = Trainer(small("dpo", tmp_path / name, data_file=str(data_file), max_steps=2))
        trainer.train()
        runs[name] = trainer
    assert runs["chat"].examples == runs["text"].examples
    for a, b in zip(runs["chat"].model.parameters(), runs["text"].model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    online = Trainer(small("grpo", tmp_path / "grpo", data_file=str(prompts), max_steps=1))
    first_prompt = load_rows(DATA / "prompts_train.jsonl", "prompts")[0]["prompt"]
    assert online.examples[0]["text"] == prompt_text(load_rows(prompts, "prompts")[0]["prompt"]) == first_prompt
    metrics = online.train_step()
    assert 0.0 <= metrics["reward_mean"] <= 1.0 and torch.isfinite(torch.tensor(metrics["loss"]))

    chat_prompts = [r["prompt"] for r in load_rows(prompts, "prompts")][:4]
    policy, reference = runs["chat"].model, runs["chat"].reference
    # the gold reward reads text: evaluation gives it a conversation's text
    result = evaluate.evaluate_policy(policy, reference, runs["chat"].tokenizer, chat_prompts, samples_per_prompt=2,
                                      max_new_tokens=8)
    assert 0.0 <= result["gold_reward"] <= 1.0 and result["kl"] == result["kl"]
    assert result["samples"][0]["prompt"] == prompt_text(chat_prompts[0]) == first_prompt
