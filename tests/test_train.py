"""Tiny models: tokenizer round trip, packed batches, a smoke training run that reloads with stock Auto
classes to identical logits, a generalist whose weights a specialist starts from bitwise, training that
never needs the eval split, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch

from taskprune import data, train
from taskprune.config import DataConfig, EvaluationConfig, GeneralistConfig, ModelConfig, TaskConfig
from taskprune.errors import DataError
from taskprune.tasks import COMMON_COLUMNS

TEXTS = [
    "Question: Ava has 12 apples and buys 7 more.\nAnswer: 12 + 7 = 19\n#### 19",
    'def add(x: int) -> int:\n    """Return x plus 3."""\n    return x + 3\n',
    "User: Hi! How are you?\nAssistant: I am fine, thank you.",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train.train_tokenizer(TEXTS, vocab_size=300)


def test_tokenizer_round_trip_and_special_tokens(tokenizer):
    samples = [*TEXTS[:3], "unseen: Zürich ∑ 9876543210 \t tabs\n\n  spaces ", "", "    return [v * 2 for v in xs]\n"]
    for text in samples:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id  # <s> is added to every encoding
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    # digits are single tokens, so numbers are spelled digit by digit
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("x 2024", add_special_tokens=False)["input_ids"])
    assert [p for p in pieces if p.strip("Ġ").isdigit()] == ["2", "0", "2", "4"]
    assert len(tokenizer) <= 300


def test_tokenizer_saves_and_loads_with_auto_tokenizer(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS[:3]:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.eos_token == "</s>" and loaded.pad_token == "<pad>"


def test_packed_batches_match_examples_and_never_mix_them(tokenizer):
    examples = train.tokenize_examples(tokenizer, ["Question: 1 + 2?\nAnswer:", "User: Hi\nAssistant:"], [" 3", " Hello!"])
    batches = train.PackedBatches({"a": examples[:1], "b": examples[1:]}, {"a": 0.5, "b": 0.5}, 3, 40, seed=0, pad_id=0)
    b = batches.next_batch()
    for row in range(3):
        ids, pos, labels, w = (b[k][row].tolist() for k in ("input_ids", "position_ids", "labels", "weights"))
        starts = [t for t, p in enumerate(pos) if p == 0]
        used = 0
        for s in starts:
            ex = next((e for e in examples if tuple(ids[s : s + len(e.ids)]) == e.ids), None)
            if ex is None:  # padding run: no loss anywhere
                assert all(i == 0 for i in ids[s:]) and all(x == 0 for x in w[s:]) and set(labels[s:]) == {-100}
                break
            n = len(ex.ids)
            assert pos[s : s + n] == list(range(n))
            assert labels[s : s + n - 1] == list(ex.ids[1:]) and labels[s + n - 1] == -100  # no label across examples
            assert w[s : s + ex.n_prompt - 1] == pytest.approx([train.PROMPT_LOSS_WEIGHT] * (ex.n_prompt - 1))
            assert w[s + ex.n_prompt - 1 : s + n - 1] == [1.0] * (n - ex.n_prompt)
            used = s + n
        assert used > 0


def test_packed_forward_equals_each_example_alone(tokenizer):
    """position_ids restarting per example make transformers use a block-diagonal mask."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=160,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         attn_implementation="sdpa")).eval()  # fmt: skip
    examples = train.tokenize_examples(tokenizer, ["User: Hi\nAssistant:", "Question: 4 * 5?\nAnswer:"], [" Hey", " 20"])
    ids = [list(e.ids) for e in examples]
    packed = torch.tensor([ids[0] + ids[1]])
    positions = torch.tensor([list(range(len(ids[0]))) + list(range(len(ids[1])))])
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=positions, use_cache=False).logits[0]
        alone = [model(input_ids=torch.tensor([x]), use_cache=False).logits[0] for x in ids]
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-4, atol=1e-5)


def test_learning_rate_schedule():
    cfg = ModelConfig(task="math", training={"steps": 100, "warmup_steps": 10, "learning_rate": 1e-3}).training
    lrs = [train.learning_rate(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False)) and lrs[-1] == pytest.approx(1e-4, rel=0.05)


# ------------------------------------------------------------------------------------ smoke training


SMOKE_MODEL = {
    "architecture": {"hidden_size": 32, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "max_position_embeddings": 256, "vocab_size": 320},
    "training": {"steps": 6, "batch_size": 4, "seq_len": 128, "warmup_steps": 2, "learning_rate": 3e-3,
                 "mix": {"target": 0.6, "conversation": 0.2, "qna": 0.2}},
}  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    kinds = ["math", "code", "conversation", "qna"]
    cfg = DataConfig(train_size={k: 60 for k in kinds}, calibration_size=4, eval_size={k: 6 for k in kinds},
                     validation_size={k: 6 for k in kinds})  # fmt: skip
    for kind in kinds:
        data.prepare_task(kind, TaskConfig(kind=kind), cfg, root / kind)
        (root / kind / "eval.parquet").unlink()  # training never reads the eval split: it is not even there
    return root


EVAL = EvaluationConfig(max_new_tokens={"math": 12, "code": 12, "conversation": 8, "qna": 8})


@pytest.mark.parametrize("kind", ["math", "code"])
def test_smoke_specialist_reloads_with_stock_auto_classes(kind, data_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / f"tiny-{kind}"
    trained = train.train_specialist(
        f"tiny-{kind}", ModelConfig(task=kind, **SMOKE_MODEL), {}, data_dir, out, EVAL, "cpu", progress=False
    )
    info = json.loads((out / "training.json").read_text())
    for key in ("validation_accuracy", "n_validation", "train_seconds", "params", "train_cpu_seconds", "steps_per_s"):
        assert key in info
    assert info["n_validation"] == 6 and 0.0 <= info["validation_accuracy"] <= 1.0 and info["task_kind"] == kind
    assert info["validation_by_task"] == {kind: info["validation_accuracy"]} and info["init"] is None
    assert info["params"] == sum(p.numel() for p in trained.model.parameters())
    loss = pl.read_parquet(out / "loss.parquet")
    assert loss.height == 6 and {"step", "loss", "learning_rate", "tokens", "seconds"} <= set(loss.columns)
    assert loss["loss"][-2:].mean() < loss["loss"][0]  # it learns something even in 6 steps
    assert (out / "loss.png").stat().st_size > 0

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "llama" and model.config.intermediate_size >= 5 * model.config.hidden_size
    prompt = pl.read_parquet(data_dir / kind / "validation.parquet")["prompt"][0]
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    assert ids.tolist() == trained.tokenizer(prompt, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, trained.model(ids).logits, rtol=0, atol=0)


def test_training_is_deterministic(data_dir, tmp_path):
    a = train.train_specialist("a", ModelConfig(task="math", **SMOKE_MODEL), {}, data_dir, tmp_path / "a", EVAL, "cpu", False)
    b = train.train_specialist("b", ModelConfig(task="math", **SMOKE_MODEL), {}, data_dir, tmp_path / "b", EVAL, "cpu", False)
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert torch.equal(p, q), n


# ------------------------------------------------------------------------ generalist -> specialist


GENERALIST = GeneralistConfig(
    architecture=SMOKE_MODEL["architecture"],
    training={**SMOKE_MODEL["training"], "mix": {"math": 0.25, "code": 0.25, "conversation": 0.25, "qna": 0.25}},
)


@pytest.fixture(scope="module")
def generalist(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "tiny-base"
    trained = train.train_model("tiny-base", GENERALIST.architecture, GENERALIST.training, None, {}, data_dir, out,
                                EVAL, "cpu", False)  # fmt: skip
    return out, trained


def test_generalist_checks_every_task_of_its_mix(generalist):
    out, trained = generalist
    info = json.loads((out / "training.json").read_text())
    assert set(info["validation_by_task"]) == {"math", "code", "conversation", "qna"} and info["task"] is None
    assert (out / "model.safetensors").is_file() and info == trained.info


def test_specialist_starts_bitwise_from_the_generalist(generalist, data_dir, tmp_path, monkeypatch):
    out, base = generalist
    at_step_0: dict[str, torch.Tensor] = {}
    real_loop = train.train_loop

    def spy(model, *args, **kwargs):
        at_step_0.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_loop(model, *args, **kwargs)

    monkeypatch.setattr(train, "train_loop", spy)
    cfg = ModelConfig(task="math", architecture=SMOKE_MODEL["architecture"],
                      training={**SMOKE_MODEL["training"], "init": "tiny-base"})  # fmt: skip
    spec = train.train_specialist("tiny-math", cfg, {}, data_dir, tmp_path / "m", EVAL, "cpu", False, init_dir=out)
    expected = base.model.state_dict()
    assert set(at_step_0) == set(expected)
    for k, v in expected.items():
        assert torch.equal(at_step_0[k], v), k  # the generalist's trained weights, bit for bit
    assert spec.tokenizer.get_vocab() == base.tokenizer.get_vocab()  # its tokenizer too, not a new one
    moved = [k for k, v in spec.model.state_dict().items() if not torch.equal(v, expected[k])]
    assert moved  # and then it trains
    assert json.loads((tmp_path / "m" / "training.json").read_text())["init"] == str(out)


def test_specialist_of_another_shape_than_its_generalist_is_an_error(generalist, data_dir, tmp_path):
    from taskprune.errors import ConfigError

    out, _ = generalist
    arch = {**SMOKE_MODEL["architecture"], "hidden_size": 64, "intermediate_size": 320}
    cfg = ModelConfig(task="math", architecture=arch, training={**SMOKE_MODEL["training"], "init": "tiny-base"})
    with pytest.raises(ConfigError, match="hidden_size"):
        train.train_specialist("m", cfg, {}, data_dir, tmp_path / "m", EVAL, "cpu", False, init_dir=out)
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------------------- bad input


def test_missing_and_broken_inputs_are_one_line_errors(data_dir, tmp_path):
    cfg = ModelConfig(task="math", **SMOKE_MODEL)
    with pytest.raises(DataError) as err:  # no data for the target task
        train.train_specialist("m", cfg, {}, tmp_path / "nowhere", tmp_path / "out", EVAL, "cpu", False)
    assert "train.parquet" in str(err.value) and "\n" not in str(err.value)

    broken = tmp_path / "broken"
    for task in ("math", "conversation", "qna"):
        (broken / task).mkdir(parents=True)
        for split in ("train", "validation"):
            (broken / task / f"{split}.parquet").write_bytes((data_dir / task / f"{split}.parquet").read_bytes())
    pl.DataFrame({"id": ["x"], "prompt": ["p"]}).write_parquet(broken / "qna" / "train.parquet")
    with pytest.raises(DataError, match=r"qna/train.parquet.*missing column\(s\) completion"):
        train.train_specialist("m", cfg, {}, broken, tmp_path / "out", EVAL, "cpu", False)
    pl.DataFrame(schema={c: pl.String for c in COMMON_COLUMNS}).write_parquet(broken / "qna" / "train.parquet")
    with pytest.raises(DataError, match="empty"):
        train.train_specialist("m", cfg, {}, broken, tmp_path / "out", EVAL, "cpu", False)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_cli_options_and_errors(data_dir, tmp_path, capsys):
    from taskprune.cli import main

    opts = {"model": {"task": "math", **SMOKE_MODEL}, "evaluation": EVAL.model_dump()}
    out = tmp_path / "cli-model"
    argv = ["train", "--model", "tiny-math", "--data-dir", str(data_dir), "--out", str(out), "--no-progress"]
    assert main([*argv, "--options", json.dumps(opts)]) == 0
    assert json.loads((out / "training.json").read_text())["model"] == "tiny-math"
    capsys.readouterr()
    bad = {"model": {"task": "math", "architecture": {"hidden_size": 64, "intermediate_size": 128}}}
    assert main([*argv, "--options", json.dumps(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "intermediate_size" in err[0]
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0


def test_cli_trains_a_generalist_and_a_specialist_from_it(data_dir, tmp_path, capsys):
    from taskprune.cli import main

    gen = tmp_path / "tiny-base"
    base = ["--data-dir", str(data_dir), "--no-progress"]
    opts = {"generalist": GENERALIST.model_dump(mode="json"), "evaluation": EVAL.model_dump()}
    assert main(["train", "--model", "tiny-base", "--out", str(gen), *base, "--options", json.dumps(opts)]) == 0
    assert set(json.loads((gen / "training.json").read_text())["validation_by_task"]) == {"math", "code", "conversation", "qna"}
    spec = {"model": {"task": "code", "architecture": SMOKE_MODEL["architecture"],
                      "training": {**SMOKE_MODEL["training"], "init": "tiny-base"}}, "evaluation": EVAL.model_dump()}  # fmt: skip
    argv = ["train", "--model", "tiny-code", "--out", str(tmp_path / "c"), *base, "--options", json.dumps(spec)]
    capsys.readouterr()
    assert main(argv) == 2  # training.init without --init: one-line error naming the key
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training.init" in err[0]
    assert main([*argv, "--init", str(gen)]) == 0
    assert json.loads((tmp_path / "c" / "training.json").read_text())["init"] == str(gen)


def test_first_fit_packing_places_every_drawn_example_once_and_fills_rows():
    """Brute-force bookkeeping: rebuild each row's examples from position_ids restarts and compare with the draws."""
    import random as _random

    rng = _random.Random(0)
    # example i: tokens (1000 + i, i + 3, i + 3, ...) of 20-120 tokens, so every placed run names its example
    examples = [train.Example((1000 + i,) + (i + 3,) * (rng.randint(20, 120) - 1), 5) for i in range(2000)]
    T, B, n_batches = 192, 8, 30  # ~550 placements: one epoch, so no example may be placed twice
    batches = train.PackedBatches({"a": examples}, {"a": 1.0}, B, T, seed=1, pad_id=0)
    placed: list[int] = []
    real_tokens = 0
    for _ in range(n_batches):
        b = batches.next_batch()
        for row in range(B):
            ids, pos = b["input_ids"][row].tolist(), b["position_ids"][row].tolist()
            starts = [t for t, p in enumerate(pos) if p == 0] + [T]
            for s, e in zip(starts, starts[1:], strict=False):
                if ids[s] == 0:  # padding: one run at the end of the row
                    assert all(i == 0 for i in ids[s:e]) and e == T
                    continue
                i = ids[s] - 1000
                assert tuple(ids[s:e]) == examples[i].ids  # a whole example, never cut or merged
                placed.append(i)
                real_tokens += e - s
    pooled = [ex.ids[0] - 1000 for _, ex in batches.pool]
    n_drawn = len(examples) - len(batches.order["a"])
    assert len(set(placed)) == len(placed)  # placed at most once
    assert not set(pooled) & set(placed) and len(placed) + len(pooled) == n_drawn  # every draw: placed or waiting
    assert len(pooled) <= train.PACK_POOL and sum(batches.examples_seen.values()) == len(placed)
    fill = real_tokens / (n_batches * B * T)
    assert fill > 0.93, fill


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux /proc/cpuinfo")
def test_native_bf16_on_cpu_follows_the_cpu_flags():
    """oneDNN runs bf16 natively with AVX-512 (BW, VL, DQ) or AMX-BF16; AVX2 alone emulates it (~10x slower)."""
    flags = _cpu_flags()
    if not flags or not ({"avx2", "avx512bw"} & flags):
        pytest.skip("not an x86 CPU with AVX2 or AVX-512")
    native = {"avx512bw", "avx512vl", "avx512dq"} <= flags or "amx_bf16" in flags
    assert train.native_bf16("cpu") is native
    assert train.resolve_precision("auto", "cpu") == ("bfloat16" if native else "float32")
    assert train.resolve_precision("float32", "cpu") == "float32"
    assert train.resolve_precision("bfloat16", "cpu") == "bfloat16"  # explicit: honoured (with a warning if emulated)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_trains_in_what_the_device_runs_natively(native, data_dir, tmp_path, monkeypatch):
    """training.json records the precision that ran; auto is bf16 autocast only on native-bf16 hardware."""
    monkeypatch.setattr(train, "native_bf16", lambda device: native)
    seen: list[torch.dtype] = []
    real = torch.nn.functional.linear

    def spy(x, w, b=None):
        out = real(x, w, b)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    cfg = {**SMOKE_MODEL, "training": {**SMOKE_MODEL["training"], "steps": 2, "precision": "auto"}}
    train.train_specialist("m", ModelConfig(task="math", **cfg), {}, data_dir, tmp_path / "m", EVAL, "cpu", False)
    expected = "bfloat16" if native else "float32"
    assert json.loads((tmp_path / "m" / "training.json").read_text())["precision"] == expected
    assert torch.bfloat16 in seen if native else set(seen) == {torch.float32}
