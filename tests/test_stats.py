"""Streamed activation statistics against a brute-force truth computed from the weights.

The truth runs every prompt alone (no padding, no batching) through the full causal LM, captures only the
MLP *input* ``x``, recomputes the activation from the weight matrices with the architecture's formula
written out here, keeps per-prompt arrays and takes numpy's mean and variance. Models run in float64 so
that agreement can be demanded to 1e-6 relative (and differences would be real).
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
import pytest
import torch
from conftest import tiny_model
from transformers.activations import ACT2FN

from taskprune.cli import main
from taskprune.errors import DataError, ModelError
from taskprune.model import arch as arch_mod
from taskprune.model.activations import (
    ActivationStats,
    collect_stats,
    load_prompts,
    pad_batch,
    plan_batches,
    read_stats,
    tokenize_prompts,
)

VOCAB = 96
RTOL = 1e-6


def random_prompts(n: int, seed: int, low: int = 1, high: int = 23) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, VOCAB, size=int(rng.integers(low, high))).astype(np.int32) for _ in range(n)]


def explicit_activation(model, layer: int, x: torch.Tensor) -> torch.Tensor:
    """a = act(gate(x)) * up(x) (or act(fc(x))) from the raw weights, x: [T, d_model] -> [T, d_ff]."""
    cfg = model.config
    kind = cfg.model_type
    if kind == "gpt2":
        mlp = model.transformer.h[layer].mlp
        act = ACT2FN[cfg.activation_function]
        return act(x @ mlp.c_fc.weight + mlp.c_fc.bias)  # Conv1D weight is [in, out]
    act = ACT2FN[cfg.hidden_act]
    if kind == "gpt_neox":
        mlp = model.gpt_neox.layers[layer].mlp
        return act(x @ mlp.dense_h_to_4h.weight.T + mlp.dense_h_to_4h.bias)
    mlp = model.model.layers[layer].mlp
    if kind == "phi3":
        d_ff = cfg.intermediate_size
        gate_up = x @ mlp.gate_up_proj.weight.T
        return act(gate_up[:, :d_ff]) * gate_up[:, d_ff:]
    return act(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)


def mlp_modules(model):
    kind = model.config.model_type
    if kind == "gpt2":
        return [blk.mlp for blk in model.transformer.h]
    if kind == "gpt_neox":
        return [blk.mlp for blk in model.gpt_neox.layers]
    return [blk.mlp for blk in model.model.layers]


def brute_force_per_prompt(model, prompts) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer: v [n_prompts, d_ff] (mean |a| per prompt) and the token-level sum of a^2 [d_ff]."""
    inputs: dict[int, torch.Tensor] = {}
    mlps = mlp_modules(model)
    handles = [
        m.register_forward_pre_hook(lambda mod, args, i=i: inputs.__setitem__(i, args[0][0].clone()))
        for i, m in enumerate(mlps)
    ]
    per_prompt = [[] for _ in mlps]
    sq_sum = [0.0 for _ in mlps]
    try:
        with torch.no_grad():
            for p in prompts:
                model(input_ids=torch.as_tensor(p, dtype=torch.long)[None])
                for layer in range(len(mlps)):
                    a = explicit_activation(model, layer, inputs[layer]).numpy()  # [T, d_ff]
                    per_prompt[layer].append(np.abs(a).mean(0))
                    sq_sum[layer] = sq_sum[layer] + (a**2).sum(0)
    finally:
        for h in handles:
            h.remove()
    return [np.stack(v) for v in per_prompt], sq_sum


def out_proj_norms(model) -> list[np.ndarray]:
    kind = model.config.model_type
    if kind == "gpt2":
        return [blk.mlp.c_proj.weight.detach().numpy().T for blk in model.transformer.h]
    if kind == "gpt_neox":
        return [blk.mlp.dense_4h_to_h.weight.detach().numpy() for blk in model.gpt_neox.layers]
    return [blk.mlp.down_proj.weight.detach().numpy() for blk in model.model.layers]


def assert_stats_equal(got: ActivationStats, want: ActivationStats, rtol: float = RTOL) -> None:
    assert got.n == want.n and got.tokens == want.tokens and got.widths == want.widths
    for name in ("mean", "m2", "sq_mean"):
        for layer, (g, w) in enumerate(zip(getattr(got, name), getattr(want, name), strict=True)):
            np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-12, err_msg=f"{name} layer {layer}")


@pytest.fixture(scope="module")
def prompts():
    return random_prompts(40, seed=1)


# ------------------------------------------------------------------------------- exactness


def test_streamed_equals_brute_force(arch, prompts):
    model = tiny_model(arch, vocab_size=VOCAB).double()
    got = collect_stats(model, prompts, token_budget=128, max_batch_size=16, progress=False)

    per_prompt, sq_sum = brute_force_per_prompt(model, prompts)
    tokens = sum(len(p) for p in prompts)
    assert got.n == len(prompts) and got.tokens == tokens
    assert got.widths == [80, 80]
    for layer, v in enumerate(per_prompt):
        np.testing.assert_allclose(got.mean[layer], v.mean(0), rtol=RTOL)
        np.testing.assert_allclose(got.m2[layer], v.var(0, ddof=0) * len(v), rtol=RTOL)
        np.testing.assert_allclose(got.sq_mean[layer], sq_sum[layer] / tokens, rtol=RTOL)
    for layer, w in enumerate(out_proj_norms(model)):
        np.testing.assert_allclose(got.w_out_norm[layer], np.linalg.norm(w, axis=0), rtol=RTOL)


def test_float32_model_is_close_to_float64_truth(prompts):
    """The real path (fp32 on CPU) agrees with the float64 truth to fp32 accuracy."""
    model = tiny_model("llama", vocab_size=VOCAB)
    got = collect_stats(model, prompts, progress=False)
    want = collect_stats(model.double(), prompts, progress=False)
    assert_stats_equal(got, want, rtol=2e-4)


def test_bfloat16_model_accumulates_in_float(prompts):
    """The CUDA path's dtype (bf16) works and stays close to fp32 (here on CPU, via the upcast fallback)."""
    model = tiny_model("phi3", vocab_size=VOCAB)
    want = collect_stats(model, prompts, progress=False)
    got = collect_stats(model.to(torch.bfloat16), prompts, progress=False)
    for layer in range(2):
        np.testing.assert_allclose(got.mean[layer], want.mean[layer], rtol=0.05, atol=1e-3)
        np.testing.assert_allclose(got.sq_mean[layer], want.sq_mean[layer], rtol=0.05, atol=1e-4)
    assert got.mean[0].dtype == np.float64


@pytest.mark.parametrize("arch_name", ["llama", "gpt2"])
def test_batch_size_and_padding_side_do_not_matter(arch_name, prompts):
    model = tiny_model(arch_name, vocab_size=VOCAB).double()
    reference = collect_stats(model, prompts, token_budget=10_000, max_batch_size=1, progress=False)
    for batch_size in (7, 32):
        for side in ("right", "left"):
            got = collect_stats(
                model, prompts, token_budget=10_000, max_batch_size=batch_size, padding_side=side, progress=False
            )
            assert_stats_equal(got, reference, rtol=1e-9)
    original = collect_stats(model, prompts, max_batch_size=7, batch_order="original", progress=False)
    assert_stats_equal(original, reference, rtol=1e-9)


def test_cpu_chunking_does_not_change_the_numbers(prompts, monkeypatch):
    from taskprune.model.activations import StatsCollector

    model = tiny_model("mistral", vocab_size=VOCAB).double()
    whole = collect_stats(model, prompts, max_batch_size=32, progress=False)
    monkeypatch.setattr(StatsCollector, "cpu_chunk_bytes", 3 * 22 * 80 * 8)  # 3 prompts per chunk
    chunked = collect_stats(model, prompts, max_batch_size=32, progress=False)
    assert_stats_equal(chunked, whole, rtol=1e-12)


def test_merge_equals_stats_of_union(prompts):
    model = tiny_model("qwen2", vocab_size=VOCAB).double()
    a, b = prompts[:13], prompts[13:]
    merged = collect_stats(model, a, progress=False).merge(collect_stats(model, b, progress=False))
    assert_stats_equal(merged, collect_stats(model, prompts, progress=False), rtol=1e-9)


def test_frame_round_trip(prompts):
    stats = collect_stats(tiny_model("gpt_neox", vocab_size=VOCAB).double(), prompts[:5], progress=False)
    df = stats.to_frame()
    assert df.columns[:5] == ["layer", "neuron", "n", "mean", "m2"]
    assert df.schema["layer"] == pl.Int64 and df.schema["mean"] == pl.Float64
    assert_stats_equal(ActivationStats.from_frame(df), stats, rtol=0)


# ---------------------------------------------------------------------------------- batching


def test_plan_batches_respects_budget_and_covers_every_prompt():
    lengths = np.array([5, 50, 3, 17, 17, 60, 2, 9, 200])
    plan = plan_batches(lengths, token_budget=100, max_batch_size=3)
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for batch in plan:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 100
    assert plan[0].tolist() == [8]  # the 200-token prompt exceeds the budget alone and goes first
    assert [len(lengths[b]) for b in plan_batches(lengths, token_budget=10**6, max_batch_size=4)] == [4, 4, 1]


def test_left_and_right_padding_give_the_same_positions():
    seqs = [np.array([5, 6, 7]), np.array([8])]
    right = pad_batch(seqs, padding_side="right")
    left = pad_batch(seqs, padding_side="left")
    assert right.position_ids[0].tolist() == left.position_ids[0].tolist() == [0, 1, 2]
    assert right.input_ids[1, 0] == 8 and left.input_ids[1, 2] == 8
    assert left.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]


# ------------------------------------------------------------------------- tokenizer and CLI


def make_tokenizer(with_pad: bool = False):
    """A word-level tokenizer over a tiny vocabulary, BOS added, no pad token unless asked."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(60)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if with_pad:
        fast.pad_token = "</s>"
    fast.chat_template = "{% for m in messages %}<s> w1 {{ m['content'] }} w2{% endfor %}{% if add_generation_prompt %} w3{% endif %}"
    return fast


def text_prompts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{int(i)}" for i in rng.integers(3, 60, size=int(rng.integers(1, 15)))) for _ in range(n)]


def test_tokenize_plain_chat_and_truncation(caplog):
    tok = make_tokenizer()
    plain = tokenize_prompts(tok, ["w5 w6", "w7"], max_length=8)
    assert [s.tolist() for s in plain.sequences] == [[1, 8, 9], [1, 10]]
    chat = tokenize_prompts(tok, ["w5 w6"], max_length=8, chat_template=True)
    assert chat.sequences[0].tolist() == [1, 4, 8, 9, 5, 6]  # <s> w1 w5 w6 w2 w3
    with caplog.at_level(logging.WARNING, logger="taskprune.stats"):
        cut = tokenize_prompts(tok, ["w5 w6 w7 w8", "w5", "w9 w9 w9 w9 w9"], max_length=3)
    assert cut.n_truncated == 2 and cut.lengths.tolist() == [3, 2, 3]
    assert "2 of 3 prompts" in caplog.text


def save_checkpoint(tmp_path, arch_name: str = "llama"):
    path = tmp_path / f"model-{arch_name}"
    tiny_model(arch_name, vocab_size=VOCAB).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def write_dataset(path, prompts: list[str], for_stats: list[bool] | None = None):
    data = {"id": [f"p{i}" for i in range(len(prompts))], "prompt": prompts}
    if for_stats is not None:
        data["for_stats"] = for_stats
    pl.DataFrame(data).write_parquet(path)
    return path


def test_cli_writes_stats_of_for_stats_rows(tmp_path, capsys):
    model_dir = save_checkpoint(tmp_path, "phi3")
    prompts = text_prompts(12)
    keep = [i % 4 != 0 for i in range(12)]
    data = write_dataset(tmp_path / "calibration.parquet", prompts, keep)
    out = tmp_path / "stats" / "m" / "math.parquet"
    # Exactly what the Snakemake rule passes (``--out`` abbreviates ``--output``).
    options = '{"chat_template":true,"device":"cpu","stats":{"token_budget":64,"max_length":10}}'
    rc = main(["stats", "--model-path", str(model_dir), "--data", str(data), "--out", str(out),
               "--options", options, "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    got = read_stats(out)
    assert got.columns == ["layer", "neuron", "n", "mean", "m2", "sq_mean", "tokens", "w_out_norm"]
    assert got.height == 2 * 80 and (got["n"] == sum(keep)).all()

    # Same numbers as the library call on the same tokens.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    kept = [p for p, k in zip(prompts, keep, strict=True) if k]
    tokenized = tokenize_prompts(make_tokenizer(), kept, max_length=10, chat_template=True)
    want = collect_stats(model, tokenized.sequences, progress=False)
    assert_stats_equal(ActivationStats.from_frame(got), want, rtol=1e-5)

    from taskprune.io import read_parquet_metadata

    meta = read_parquet_metadata(out)
    assert meta["n_prompts"] == sum(keep) and meta["chat_template"] is True
    assert meta["n_truncated"] == tokenized.n_truncated > 0


# --------------------------------------------------------------------------------- bad input


def run_cli_error(capsys, argv) -> str:
    capsys.readouterr()  # drop earlier output (e.g. save_pretrained's progress bar)
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    return err


def test_corrupt_and_empty_datasets_fail_with_one_line(tmp_path, capsys):
    model_dir = save_checkpoint(tmp_path)
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    empty = write_dataset(tmp_path / "empty.parquet", ["w1", "w2"], [False, False])
    no_prompt = tmp_path / "no_prompt.parquet"
    pl.DataFrame({"id": ["a"], "text": ["w1"]}).write_parquet(no_prompt)
    base = ["stats", "--model-path", str(model_dir), "--output", str(tmp_path / "o.parquet"), "--no-progress"]
    assert "not a readable Parquet" in run_cli_error(capsys, [*base, "--data", str(corrupt)])
    assert "no prompts with for_stats true" in run_cli_error(capsys, [*base, "--data", str(empty)])
    assert "missing column(s) prompt" in run_cli_error(capsys, [*base, "--data", str(no_prompt)])
    good = write_dataset(tmp_path / "good.parquet", ["w1 w2"])
    missing = ["stats", "--model-path", str(tmp_path / "nope"), "--data", str(good), "--output", str(tmp_path / "o.parquet")]
    assert "model directory not found" in run_cli_error(capsys, missing)
    no_tokenizer = tmp_path / "weights-only"
    tiny_model("llama", vocab_size=VOCAB).save_pretrained(no_tokenizer)
    missing[2] = str(no_tokenizer)
    assert "cannot load the tokenizer" in run_cli_error(capsys, missing)
    assert not (tmp_path / "o.parquet").exists()


def test_bad_options_fail_with_one_line(tmp_path, capsys):
    model_dir = save_checkpoint(tmp_path)
    data = write_dataset(tmp_path / "d.parquet", ["w1 w2"])
    base = ["stats", "--model-path", str(model_dir), "--data", str(data), "--output", str(tmp_path / "o.parquet")]
    assert "token_budget" in run_cli_error(capsys, [*base, "--options", '{"stats": {"token_budget": 0}}'])
    assert "chat_template" in run_cli_error(capsys, [*base, "--options", '{"model": {"chat_template": "yes"}}'])
    assert "chat_template" in run_cli_error(capsys, [*base, "--options", '{"chat_template": 1}'])
    assert "unknown section" in run_cli_error(capsys, [*base, "--options", '{"stat": {}}'])


def test_unsupported_architecture_lists_supported_types():
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_config(
        tf.OPTConfig(vocab_size=VOCAB, hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(ModelError) as info:
        collect_stats(model, [np.array([1, 2, 3])], progress=False)
    message = str(info.value)
    assert "'opt'" in message and "gpt2, gpt_neox, llama" in message and "\n" not in message


def test_load_prompts_rejects_bad_columns(tmp_path):
    path = tmp_path / "x.parquet"
    pl.DataFrame({"prompt": ["a", None]}).write_parquet(path)
    with pytest.raises(DataError, match="missing value"):
        load_prompts(path)
    pl.DataFrame({"prompt": ["a"], "for_stats": [1]}).write_parquet(path)
    with pytest.raises(DataError, match="must be boolean"):
        load_prompts(path)
    pl.DataFrame({"prompt": ["a", "b"], "for_stats": [True, False]}).write_parquet(path)
    assert load_prompts(path) == ["a"]


def test_read_stats_rejects_nan_and_duplicates(tmp_path, prompts):
    stats = collect_stats(tiny_model("llama", vocab_size=VOCAB), prompts[:4], progress=False).to_frame()
    path = tmp_path / "s.parquet"
    stats.with_columns(pl.when((pl.col("layer") == 0) & (pl.col("neuron") == 3)).then(float("nan")).otherwise(pl.col("m2")).alias("m2")).write_parquet(path)
    with pytest.raises(DataError, match="1 m2: NaN/inf"):
        read_stats(path)
    pl.concat([stats, stats.head(1)]).write_parquet(path)
    with pytest.raises(DataError, match="repeat"):
        read_stats(path)


def test_adapter_weights_match_the_modules(arch):
    model = tiny_model(arch, vocab_size=VOCAB)
    rows = arch_mod.out_proj_neuron_weights(model)
    assert [tuple(w.shape) for w in rows] == [(80, 32), (80, 32)]
    for w, truth in zip(rows, out_proj_norms(model), strict=True):
        np.testing.assert_array_equal(w.detach().numpy(), truth.T)


# ------------------------------------------------------------------------------- benchmark plumbing


def test_paper_baseline_agrees_with_streamed_stats(arch, prompts):
    """The benchmark's baseline (recompute gate/up, keep per-prompt arrays) computes the same numbers."""
    from taskprune.model.activations import iter_padded_batches
    from taskprune.perf.stats_bench import run_paper

    model = tiny_model(arch, vocab_size=VOCAB).double()
    ours = collect_stats(model, prompts, max_batch_size=8, progress=False)
    plan = plan_batches([len(p) for p in prompts], token_budget=10_000, max_batch_size=8)
    mean, var = run_paper(model, list(iter_padded_batches(prompts, plan)))
    for layer in range(2):
        np.testing.assert_allclose(mean[layer], ours.mean[layer], rtol=1e-5)
        np.testing.assert_allclose(var[layer], ours.variance[layer], rtol=1e-4, atol=1e-12)


def bench_fixture(tmp_path):
    from taskprune.perf.stats_bench import save_random_llama, synthetic_prompts

    model_dir = save_random_llama(tmp_path / "rand", hidden=32, layers=2, d_ff=160, vocab=300)
    data = write_dataset(tmp_path / "prompts.parquet", synthetic_prompts(10, seed=3))
    return model_dir, data


def test_bench_stats_cli_throughput_rows(tmp_path):
    model_dir, data = bench_fixture(tmp_path)
    out = tmp_path / "bench.parquet"
    rc = main(["bench-stats", "--model-path", str(model_dir), "--data", str(data), "--out", str(out),
               "--throughput-prompts", "12", "--rounds", "2", "--memory-approaches", "--options", '{"device": "cpu"}'])
    assert rc == 0
    table = pl.read_parquet(out)
    assert (table["model"] == "rand").all()
    assert table["approach"].to_list() == ["plain_forward", "taskprune_stats", "paper_hooks"]
    assert (table["kind"] == "throughput").all() and (table["value"] > 0).all()
    assert table.filter(pl.col("approach") == "plain_forward")["ratio"].item() == 1.0
    assert table["stats_vs_paper_max_rel_diff"].max() < 1e-3  # fp32: the two methods agree


@pytest.mark.slow
def test_bench_stats_memory_rows(tmp_path):
    model_dir, data = bench_fixture(tmp_path)
    out = tmp_path / "bench.parquet"
    rc = main(["bench-stats", "--run", "rand", str(model_dir), str(data), "--output", str(out),
               "--throughput-prompts", "4", "--rounds", "1", "--memory-prompts", "5", "20",
               "--memory-approaches", "taskprune_stats", "--options", '{"device": "cpu"}'])
    assert rc == 0
    memory = pl.read_parquet(out).filter(pl.col("kind") == "peak_memory")
    assert memory["n_prompts"].to_list() == [5, 20] and (memory["value"] > 0).all()
    assert memory["goal_met"].to_list()[1] is not None
