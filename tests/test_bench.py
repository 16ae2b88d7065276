"""Efficiency benchmarks: closed-form counts vs counted tensors, engines vs a no-cache greedy loop, and the
``taskprune bench`` commands on tiny checkpoints (tiny settings; no timing asserts)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import ARCHITECTURES, tiny_config, tiny_model
from torch.utils.flop_counter import FlopCounterMode

from taskprune import grid
from taskprune.errors import DataError, ModelError
from taskprune.model import checkpoint, flops
from taskprune.model.arch import get_adapter, mlp_modules
from taskprune.perf import engines as perf_engines
from taskprune.perf import measure as pmeasure

GATED_TIGHT = [a for a in ARCHITECTURES if a in perf_engines.TIGHT_MODEL_TYPES]


# ----------------------------------------------------------------------------------------- helpers


def counted_params(model) -> tuple[int, int]:
    """(total unique parameters, parameters inside the MLP modules), counted from the tensors."""
    total = sum(p.numel() for p in model.parameters())
    mlp = sum(p.numel() for m in mlp_modules(model) for p in m.parameters())
    return total, mlp


def shrink_mlps(model, widths: list[int]):
    """Keep the first ``widths[l]`` neurons of layer ``l``'s MLP, slicing the tensors directly (an
    independent, test-only pruner: no code under test is used)."""
    adapter = get_adapter(model)
    with torch.no_grad():
        for mlp, w in zip(mlp_modules(model), widths, strict=True):
            out = getattr(mlp, adapter.out_proj)
            if adapter.kind == "conv1d":  # c_fc weight [d, f], bias [f]; c_proj weight [f, d]
                fc = getattr(mlp, adapter.in_projs[0])
                fc.weight = torch.nn.Parameter(fc.weight[:, :w].clone())
                fc.bias = torch.nn.Parameter(fc.bias[:w].clone())
                fc.nf = w
                out.weight = torch.nn.Parameter(out.weight[:w].clone())
                continue
            full = out.weight.shape[1]
            for name in adapter.in_projs:
                lin = getattr(mlp, name)
                rows = (
                    torch.cat([torch.arange(w), full + torch.arange(w)])
                    if adapter.kind == "gated_fused"
                    else torch.arange(w)
                )
                lin.weight = torch.nn.Parameter(lin.weight[rows].clone())
                if lin.bias is not None:
                    lin.bias = torch.nn.Parameter(lin.bias[rows].clone())
            out.weight = torch.nn.Parameter(out.weight[:, :w].clone())
    return model


def flop_count(model, *args, **kwargs) -> int:
    """FLOPs of one forward as counted by torch's FlopCounterMode (matmuls and attention products)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        out = model(*args, **kwargs)
    counts = counter.get_flop_counts()
    rotary = sum(sum(v.values()) for k, v in counts.items() if k.endswith("rotary_emb"))
    return sum(counts["Global"].values()) - rotary, out


def eager(arch: str, **kw):
    """A tiny model whose attention is plain matmuls (so FlopCounterMode sees every product)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(arch, **kw), attn_implementation="eager").eval()


# --------------------------------------------------------------------------------- closed form


def test_param_counts_match_counted_tensors(arch):
    for d_ff in (80, 52):  # the fixture's width, and a "pruned" config built with a smaller width
        model = tiny_model(arch, d_ff=d_ff)
        counts = flops.param_counts(flops.shape_from_config(model.config))
        assert (counts.total, counts.mlp) == counted_params(model)
        assert counts.total == (
            counts.mlp + counts.attention + counts.embedding + counts.lm_head + counts.norms
        )


def test_param_counts_with_per_layer_widths(arch):
    widths = [37, 61]  # different per layer, as after global allocation
    model = shrink_mlps(tiny_model(arch), widths)
    counts = flops.param_counts(flops.shape_from_config(model.config, widths))
    assert (counts.total, counts.mlp) == counted_params(model)
    full = flops.param_counts(flops.shape_from_config(tiny_model(arch).config))
    assert full.total - counts.total == full.mlp - counts.mlp > 0


@pytest.mark.parametrize("widths", [None, [37, 61]])
def test_flops_match_flop_counter(arch, widths):
    """Decode: one token over c cached keys, exactly. Prefill: the counter's dense (masked) attention
    computes T keys per position where the causal closed form counts i, so add back the masked half."""
    model = eager(arch)
    if widths:
        shrink_mlps(model, widths)
    shape = flops.shape_from_config(model.config, widths)
    batch, prompt = 2, 7
    ids = torch.randint(3, 90, (batch, prompt), generator=torch.Generator().manual_seed(0))
    counted_prefill, out = flop_count(model, ids, use_cache=True)
    masked = 4 * shape.num_layers * shape.q_width * (prompt * prompt - prompt * (prompt + 1) // 2)
    expected = prompt * flops.prefill_flops_per_token(shape, prompt, logits_positions=prompt) + masked
    assert counted_prefill == batch * expected

    cache = getattr(out, "cache", None) or out.past_key_values
    counted_decode, _ = flop_count(model, ids[:, :1], cache=cache, use_cache=True)
    assert counted_decode == batch * flops.flops_per_token(shape, prompt + 1)


def test_prefill_and_decode_means_follow_the_contexts():
    shape = flops.shape_from_config(tiny_config("llama"))
    per_context = [flops.flops_per_token(shape, c) for c in range(1, 11)]
    assert flops.decode_flops_per_token(shape, 4, 6) == pytest.approx(sum(per_context[4:10]) / 6)
    head = 2 * shape.vocab_size * shape.hidden_size
    prefill_all = flops.prefill_flops_per_token(shape, 10, logits_positions=10)
    assert prefill_all == pytest.approx(sum(per_context) / 10)
    assert flops.prefill_flops_per_token(shape, 10, 1) == pytest.approx(prefill_all - 9 * head / 10)


def test_sliding_window_caps_the_attended_keys():
    config = tiny_config("mistral")
    config.sliding_window = 4
    windowed, full = flops.shape_from_config(config), flops.shape_from_config(tiny_config("mistral"))
    assert flops.flops_per_token(windowed, 3) == flops.flops_per_token(full, 3)
    assert flops.flops_per_token(windowed, 50) == flops.flops_per_token(full, 4)


def test_bytes_match_weight_and_cache_tensors(arch):
    """Weights: the matrices the forward multiplies by (attention and MLP projections, LM head).
    KV: the nbytes of a real cache holding ``c`` positions of one sequence."""
    model = shrink_mlps(tiny_model(arch), [37, 61])
    shape = flops.shape_from_config(model.config, [37, 61])
    adapter = get_adapter(model)
    matrices = [model.get_output_embeddings().weight]
    for layer, mlp in zip(bench_layers(model), mlp_modules(model), strict=True):
        attn = getattr(layer, "self_attn", None) or getattr(layer, "attn", None) or layer.attention
        matrices += [
            m.weight for m in attn.modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
        ]
        matrices += [getattr(mlp, n).weight for n in (*adapter.in_projs, adapter.out_proj)]
    assert flops.weight_bytes(shape, 4) == sum(w.nbytes for w in matrices)

    context = 9
    ids = torch.randint(3, 90, (1, context), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(ids, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    cached = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert flops.kv_bytes(shape, context, 4) == cached
    per_step = [flops.weight_bytes(shape, 4) / 8 + flops.kv_bytes(shape, c, 4) for c in (4, 5, 6)]
    assert flops.decode_bytes_per_token(shape, 8, 3, 3, 4) == pytest.approx(sum(per_step) / 3)


def bench_layers(model):
    from taskprune.model.arch import decoder_layers

    return decoder_layers(model)


def test_gemma_counts_match():
    from transformers import AutoModelForCausalLM, GemmaConfig

    config = GemmaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    )
    model = AutoModelForCausalLM.from_config(config)
    counts = flops.param_counts(flops.shape_from_config(config))
    assert (counts.total, counts.mlp) == counted_params(model)


def test_width_count_mismatch_is_one_line_error():
    with pytest.raises(ModelError, match="got 3 MLP widths for a model with 2 layers"):
        flops.shape_from_config(tiny_config("llama"), [8, 8, 8])


# ------------------------------------------------------------------------------------ engines


def greedy_reference(model, ids, new_tokens: int):
    """Greedy continuation recomputing the whole sequence every step (no cache at all)."""
    seq = ids
    with torch.no_grad():
        for _ in range(new_tokens):
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], 1)
    return seq[:, ids.shape[1] :]


def test_engines_reproduce_greedy_decoding(arch):
    ids = torch.randint(3, 90, (3, 6), generator=torch.Generator().manual_seed(1))
    reference = greedy_reference(tiny_model(arch), ids, 8)
    engines = ["hf"] + (["tight"] if arch in GATED_TIGHT else [])
    for name in engines:
        for static in (True, False) if name == "hf" else (True,):
            engine = perf_engines.make_engine(tiny_model(arch), name, 3, 14, static_cache=static, compile=False)
            with torch.inference_mode():
                first = perf_engines.generate_tokens(engine, ids, 8)
                again = perf_engines.generate_tokens(engine, ids, 8)  # a reused engine starts clean
            assert torch.equal(first, reference), (name, static)
            assert torch.equal(again, reference), (name, static)


def test_tight_engine_handles_per_layer_widths_and_gqa():
    model = shrink_mlps(tiny_model("qwen2"), [37, 61])  # qwen2: q/k/v biases, 4 query vs 2 kv heads
    ids = torch.randint(3, 90, (2, 5), generator=torch.Generator().manual_seed(2))
    reference = greedy_reference(model, ids, 6)
    engine = perf_engines.make_engine(model, "tight", 2, 11, static_cache=True, compile=False)
    with torch.inference_mode():
        assert torch.equal(perf_engines.generate_tokens(engine, ids, 6), reference)


def test_engine_choice():
    assert perf_engines.resolve_engine("auto", tiny_config("llama")) == "tight"
    assert perf_engines.resolve_engine("auto", tiny_config("gpt2")) == "hf"
    with pytest.raises(ModelError, match="does not support model type 'gpt_neox'"):
        perf_engines.resolve_engine("tight", tiny_config("gpt_neox"))


# ----------------------------------------------------------------------------- checkpoints + CLI


def save(model, path: Path) -> Path:
    model.save_pretrained(path)
    return path


def test_checkpoint_widths_read_from_headers(arch, tmp_path):
    widths = [37, 61]
    path = save(shrink_mlps(tiny_model(arch), widths), tmp_path / arch)
    config = tiny_config(arch)
    assert checkpoint.checkpoint_widths(path, config) == widths
    assert checkpoint.bytes_on_disk(path) == sum(f.stat().st_size for f in path.glob("*.safetensors"))


TINY_BENCH = {
    "batch_sizes": [2],
    "prompt_tokens": 6,
    "new_tokens": 3,
    "warmup": 1,
    "repeats": 2,
    "static_cache": True,
    "compile": False,
    "threads": 1,
}


def run_cli(*argv: str) -> int:
    from taskprune.cli import main

    return main(["bench", *argv])


def measure(checkpoint: Path, variant: str, output: Path, *extra: str) -> int:
    options = json.dumps({"bench": TINY_BENCH, "device": "cpu"})
    return run_cli(
        "measure",
        "--checkpoint",
        str(checkpoint),
        "--variant",
        variant,
        "--output",
        str(output),
        "--options",
        options,
        *extra,
    )


def test_bench_measure_writes_well_formed_rows(tmp_path, monkeypatch):
    """One measured checkpoint labelling two more variants: parameters, bytes and peak memory (2 fresh
    worker processes: the model and its model-less twin)."""
    import polars as pl

    monkeypatch.setattr(pmeasure, "MEMORY_PAIRS_MAX", 1)  # one model/baseline process pair keeps this fast
    pids = []
    run_worker = pmeasure.run_isolated

    def recording(*args, **kwargs):
        result = run_worker(*args, **kwargs)
        pids.append(result["pid"])
        return result

    monkeypatch.setattr(pmeasure, "run_isolated", recording)
    pruned = save(tiny_model("llama", d_ff=52), tmp_path / "pruned")
    twin = save(tiny_model("llama", d_ff=52, seed=5), tmp_path / "twin")
    out = tmp_path / "p.parquet"
    assert (
        measure(
            pruned,
            "m/selective/35/0",
            out,
            "--label-variant",
            "m/random/35/7",
            "--label-checkpoint",
            str(twin),
            "--label-variant",
            "m/selective/35/0/recovered-lora",
            "--label-checkpoint",
            str(twin),
        )
        == 0
    )

    df = pl.read_parquet(out)
    assert df.columns == list(pmeasure.per_variant_schema())
    assert df.height == 3 and df["variant"].is_unique().all()  # one row per variant
    assert df["peak_memory_bytes"].n_unique() == 1 and df["peak_memory_bytes"][0] > 0
    assert len(pids) == 2 and len(set(pids)) == 2 and os.getpid() not in pids  # a fresh process each

    rows = {r["variant"]: r for r in df.iter_rows(named=True)}
    measured = rows["m/selective/35/0"]
    assert (measured["params_total"], measured["params_mlp"]) == counted_params(tiny_model("llama", d_ff=52))
    assert measured["bytes_on_disk"] == checkpoint.bytes_on_disk(pruned)
    assert measured["mlp_widths"] == [52, 52] and measured["stage"] == "pruned" and measured["device"] == "cpu"
    random_row, recovered_row = rows["m/random/35/7"], rows["m/selective/35/0/recovered-lora"]
    assert random_row["measured_variant"] == recovered_row["measured_variant"] == "m/selective/35/0"
    assert (random_row["method"], random_row["seed"], random_row["level_pct"]) == ("random", 7, 35.0)
    assert recovered_row["stage"] == "recovered"
    assert random_row["bytes_on_disk"] == checkpoint.bytes_on_disk(twin)


def test_label_checkpoint_with_other_shapes_is_refused(tmp_path):
    from taskprune.config import BenchConfig

    a = save(tiny_model("llama", d_ff=52), tmp_path / "a")
    b = save(tiny_model("llama", d_ff=60), tmp_path / "b")
    with pytest.raises(ModelError, match="different shapes"):
        pmeasure.measure_variant(
            a,
            "m/selective/10/0",
            BenchConfig(**TINY_BENCH),
            device="cpu",
            label_variants=["m/random/10/1"],
            label_checkpoints=[str(b)],
        )
    with pytest.raises(ModelError, match="nobody/nothing: not a local checkpoint"):
        pmeasure.measure_variant("nobody/nothing", "m/base", BenchConfig(**TINY_BENCH), device="cpu")
    with pytest.raises(DataError, match="--variant 'nonsense'"):
        pmeasure.measure_variant(a, "nonsense", BenchConfig(**TINY_BENCH), device="cpu")


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_bench_plan_covers_every_variant_once(allocation):
    from taskprune.config import validate_config
    from taskprune.grid import all_variants

    cfg = validate_config(
        {
            "tasks": {
                "math": {"kind": "math"},
                "conversation": {"kind": "conversation"},
                "qna": {"kind": "qna"},
            },
            # m and twin have the same architecture (one shape family); other does not
            "models": {
                "m": {"task": "math"},
                "twin": {"task": "math"},
                "other": {"task": "math", "architecture": {"hidden_size": 96}},
            },
            "pruning": {
                "levels": [10, 20],
                "methods": ["selective", "random"],
                "seeds": [1, 2],
                "allocation": allocation,
            },
        }
    )
    plan = grid.bench_plan(cfg)
    labelled = [v for members in plan.values() for v in members]
    assert sorted(labelled) == sorted(v.path for v in all_variants(cfg))
    for measured, members in plan.items():
        assert measured in members
        assert len({m.split("/")[2] if not m.endswith("base") else "0" for m in members}) == 1  # one level
        assert ({m.split("/")[0] for m in members} & {"m", "twin"} == set()) or "other" not in {
            m.split("/")[0] for m in members
        }  # never across shape families
    if allocation == "uniform":
        assert len(plan) == 2 * (1 + 2)  # per family: base + one checkpoint per level
        assert plan["m/base"] == ["m/base", "twin/base"]
        assert {m.split("/")[0] for m in plan["m/selective/10/0"]} == {"m", "twin"}
    else:
        assert plan["m/selective/10/0"] == ["m/selective/10/0", "m/selective/10/0/recovered-lora"]
        assert plan["m/base"] == ["m/base", "twin/base"]
