"""Batched greedy generation: identical tokens to ``model.generate(do_sample=False)``, per-row stopping,
order, batching under the token budget, chat template."""

from __future__ import annotations

import collections
import random

import pytest
import torch
from conftest import ARCHITECTURES, tiny_model

from taskprune.model.generate import Generation, encode_prompts, generate, plan_batches

VOCAB = 320
PROMPTS = [
    "def add(a, b):",
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:",
    "Hello",
    "x",
    "User: what should I cook tonight?\nAssistant:",
    "Context: The river runs north. Question: where does it run?\nAnswer:",
    "a b c d e f g h i j k l m n o p",
]


def byte_bpe_tokenizer(vocab_size: int = VOCAB, chat_template: str | None = None):
    """A small byte-level BPE tokenizer trained offline (ids: <pad>=0, <s>=1, </s>=2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "def add(a, b):\n    return a + b\n", "Question: what is 3 + 4?\nAnswer: 7 #### 7",
        "User: hello there, how are you today?\nAssistant: fine, thanks.",
        "Context: the cat sat on the mat. Question: where? Answer: on the mat",
    ] * 20
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="left"
    )
    if chat_template:
        tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="module")
def tokenizer():
    return byte_bpe_tokenizer()


def hf_rows(model, tokenizer, prompts, max_new_tokens, eos_ids, pad_id=0):
    """Reference: stock ``model.generate(do_sample=False)`` on the prompts as one left-padded batch;
    per row the new tokens up to and including the first EOS."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(
            **enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_ids,
        )
    rows = []
    for r in out[:, enc["input_ids"].shape[1]:].tolist():
        cut = next((i + 1 for i, t in enumerate(r) if t in eos_ids), len(r))
        rows.append(r[:cut])
    return rows


def frequent_token(model, tokenizer, prompts, steps=16):
    """A token the model emits often after the first step, to serve as a reachable EOS in tests."""
    rows = hf_rows(model, tokenizer, prompts, steps, eos_ids=[2])
    counts = collections.Counter(t for r in rows for t in r[2:])
    return counts.most_common(1)[0][0]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_tokens_equal_hf_generate(arch, tokenizer):
    model = tiny_model(arch, vocab_size=VOCAB)
    eos = frequent_token(model, tokenizer, PROMPTS)
    model.generation_config.eos_token_id = [eos, tokenizer.eos_token_id]
    expected = hf_rows(model, tokenizer, PROMPTS, 20, eos_ids=[eos, tokenizer.eos_token_id])
    # a small token budget forces several length-sorted batches (other neighbours than the reference's)
    ours = generate(model, tokenizer, PROMPTS, 20, token_budget=90, batch_size=3, progress=False)
    assert [list(g.token_ids) for g in ours] == expected
    stopped = [bool(r) and r[-1] in (eos, tokenizer.eos_token_id) for r in expected]
    assert any(len(r) < 20 for r in expected), "the chosen EOS never fired: per-row stopping is untested"
    for g, row, at_eos in zip(ours, expected, stopped, strict=True):
        assert g.n_tokens == len(row)
        assert g.hit_limit == (not at_eos)
        assert g.text == tokenizer.decode(row, skip_special_tokens=True)


def test_stop_strings_cut_text_and_tokens(tokenizer):
    model = tiny_model("llama", vocab_size=VOCAB, seed=3)
    full = hf_rows(model, tokenizer, PROMPTS, 24, eos_ids=[tokenizer.eos_token_id])
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in full]
    # a stop string taken from the middle of one row's continuation (so it certainly fires there)
    source = max(texts, key=len)
    stop = source[len(source) // 2 : len(source) // 2 + 3]
    assert stop.strip(), "degenerate stop string"
    ours = generate(model, tokenizer, PROMPTS, 24, stop_strings=[stop, "\u2603never"], progress=False)
    fired = 0
    for g, row, text in zip(ours, full, texts, strict=True):
        assert list(g.token_ids) == row[: g.n_tokens], "tokens must be a prefix of the unstopped greedy run"
        if stop in text:
            fired += 1
            assert g.text == text[: text.index(stop)]
            assert not g.hit_limit
            # the row stopped at the first token whose text completes the stop string
            assert stop in tokenizer.decode(list(g.token_ids), skip_special_tokens=True)
            assert stop not in tokenizer.decode(list(g.token_ids)[:-1], skip_special_tokens=True)
        else:
            assert g.text == text and g.n_tokens == len(row)
    assert fired >= 1


def test_results_in_input_order_and_limit(tokenizer):
    model = tiny_model("qwen2", vocab_size=VOCAB, seed=1)
    model.generation_config.eos_token_id = None
    prompts = PROMPTS * 3
    random.Random(0).shuffle(prompts)
    ours = generate(model, tokenizer, prompts, 5, batch_size=4, progress=False)
    single = {p: generate(model, tokenizer, [p], 5, progress=False)[0] for p in set(prompts)}
    assert all(isinstance(g, Generation) for g in ours)
    assert [g.token_ids for g in ours] == [single[p].token_ids for p in prompts]
    # EOS id 2 is never produced by chance often enough here: rows that did not stop ran to the limit
    assert all(g.hit_limit == (g.n_tokens == 5 and 2 not in g.token_ids) for g in ours)


def test_plan_batches_respects_budget_and_covers_all():
    rng = random.Random(0)
    lengths = [rng.randint(1, 50) for _ in range(200)]
    batches = plan_batches(lengths, max_new_tokens=20, batch_size=16, token_budget=600)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(200))
    for b in batches:
        assert len(b) <= 16
        assert len(b) == 1 or len(b) * (max(lengths[i] for i in b) + 20) <= 600
    # longest first: batch maxima never increase
    maxima = [max(lengths[i] for i in b) for b in batches]
    assert maxima == sorted(maxima, reverse=True)


def test_chat_template_inputs(tokenizer):
    template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    tok = byte_bpe_tokenizer(chat_template=template)
    ids = encode_prompts(tok, ["hi there"], chat_template=True)[0]
    assert ids == tok("<s>user: hi there\nassistant:", add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.bos_token_id
    model = tiny_model("mistral", vocab_size=VOCAB)
    model.generation_config.eos_token_id = None
    ours = generate(model, tok, ["hi there"], 6, chat_template=True, progress=False)[0]
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=6, pad_token_id=0, eos_token_id=[2])
    assert list(ours.token_ids) == ref[0, len(ids):].tolist()[: ours.n_tokens]


def test_sampling_is_seeded(tokenizer):
    model = tiny_model("llama", vocab_size=VOCAB)
    a = generate(model, tokenizer, PROMPTS, 8, do_sample=True, temperature=1.0, seed=5, progress=False)
    b = generate(model, tokenizer, PROMPTS, 8, do_sample=True, temperature=1.0, seed=5, progress=False)
    greedy = generate(model, tokenizer, PROMPTS, 8, progress=False)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in greedy]


def test_empty_and_bad_arguments(tokenizer):
    model = tiny_model("llama", vocab_size=VOCAB)
    assert generate(model, tokenizer, [], 5, progress=False) == []
    with pytest.raises(ValueError):
        generate(model, tokenizer, ["x"], 0, progress=False)


def test_bench_generation_cli(tmp_path):
    """The benchmark command end to end on a random embedded-size Llama: one row per (implementation,
    batch size), and batching changes no token (ours and stock generate agree with our batch-1 run)."""
    import polars as pl

    from taskprune.cli import main

    out = tmp_path / "generation.parquet"
    rc = main(["bench-generation", "--random-llama", "--n-prompts", "5", "--max-new-tokens", "4",
               "--batch-sizes", "1", "4", "--threads", "1", "--out", str(out), "--options", '{"device": "cpu"}'])
    assert rc == 0
    table = pl.read_parquet(out)
    assert sorted(zip(table["implementation"], table["batch_size"], strict=True)) == [
        ("hf_generate", 1), ("hf_generate", 4), ("taskprune", 1), ("taskprune", 4)
    ]
    assert table["identical_outputs"].all()
    assert (table["new_tokens"] == 5 * 4).all()  # a random model never says EOS here: every row runs to the limit
    assert (table["tokens_per_s"] > 0).all()
    one = table.filter((pl.col("implementation") == "taskprune") & (pl.col("batch_size") == 1))
    assert one["speedup_vs_batch1"].to_list() == [1.0]
