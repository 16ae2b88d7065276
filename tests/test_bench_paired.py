"""Paired shape-family benchmarks: the statistics, models built from numbers against the pipeline's pruned
checkpoints, the composed-depth estimate against a direct measurement, and gather (no timing asserts on
speedups: the composed-vs-direct check compares two estimates of the same time)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from taskprune import grid
from taskprune.config import BenchConfig, PruningConfig, validate_config
from taskprune.errors import ConfigError, DataError
from taskprune.levels import Level
from taskprune.model import flops
from taskprune.perf import gather, measure, paired

NUMBERS = {
    "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 320, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128, "tie_word_embeddings": True,
    "max_position_embeddings": 256, "multiple_of": 1,
}  # fmt: skip
SHAPE_KEYS = {k: v for k, v in NUMBERS.items() if k != "multiple_of"}  # a bench.shapes entry


# ------------------------------------------------------------------------------------------ statistics


def test_median_ci_brackets_the_median_and_narrows_with_agreement():
    rng = np.random.default_rng(3)
    spread = list(1.3 + rng.normal(0, 0.2, 9))
    tight = list(1.3 + rng.normal(0, 0.01, 9))
    m, lo, hi = paired.median_ci(spread)
    assert m == pytest.approx(float(np.median(spread)))
    assert lo <= m <= hi
    _, lo2, hi2 = paired.median_ci(tight)
    assert hi2 - lo2 < (hi - lo) / 5
    assert paired.median_ci([1.2] * 7) == (1.2, 1.2, 1.2)
    assert paired.median_ci([1.2, float("nan"), 1.2])[0] == 1.2


@pytest.mark.parametrize(
    ("speedup", "low", "high", "load", "pairs", "noisy"),
    [
        (1.30, 1.28, 1.32, 1.0, 7, False),  # tight CI, quiet machine, enough pairs
        (1.30, 1.10, 1.50, 1.0, 7, True),  # half-width 0.2 > 10% of 1.3
        (1.30, 1.28, 1.32, 3.5, 7, True),  # load above the 2 threads
        (1.30, 1.28, 1.32, 1.0, 6, True),  # too few pairs
        (1.30, 1.175, 1.425, 1.0, 9, False),  # half-width 0.125 <= 0.13
    ],
)
def test_noisy_rule(speedup, low, high, load, pairs, noisy):
    assert paired.is_noisy(speedup, low, high, load, threads=2, n_pairs=pairs) is noisy


def test_summarise_pairs_rounds_and_marks_noise():
    """A hand-made trial table: the speedup is the median of time(base_r)/time(level_r) over rounds."""
    plan = _plan(pairs=7)
    base_times = [1.0, 1.1, 0.9, 1.0, 1.2, 1.0, 1.0]
    ratios = [1.25, 1.30, 1.20, 1.27, 1.22, 1.28, 1.26]
    rows = []
    for r, (bt, ratio) in enumerate(zip(base_times, ratios, strict=True)):
        for which, t in (("base", bt), ("35.71", bt / ratio)):
            rows.append({"round": r, "which": which, "engine": "stock", "batch_size": 2, "phase": "decode",
                         "seconds": t, "cpu_seconds": 2 * t, "built_seconds": t, "stack_seconds": t / 2,
                         "runs_per_repeat": 1, "load_avg_1m": 0.5, "threads": 2, "built_layers": 3, "num_layers": 3,
                         "mlp_width": 320 if which == "base" else 206, "dtype_bytes": 4, "torch_version": "x",
                         "device": "cpu", "build_seconds": 0.1})  # fmt: skip
    out = paired.summarise(pl.DataFrame(rows), plan)
    row = out.filter(pl.col("level") == "35.71").row(0, named=True)
    assert row["measured_speedup"] == pytest.approx(float(np.median(ratios)))
    assert row["n_pairs"] == 7 and row["noisy"] is False
    assert row["pair_speedups"] == pytest.approx(ratios)
    assert row["pair_cpu_wall_ratio"] == pytest.approx([2.0] * 7)
    shape_b = flops.shape_from_config(_config(320))
    shape_v = flops.shape_from_config(_config(206))
    ideal = flops.decode_flops_per_token(shape_b, 8, 4) / flops.decode_flops_per_token(shape_v, 8, 4)
    assert row["ideal_speedup"] == pytest.approx(ideal)
    assert row["realised_fraction"] == pytest.approx((row["measured_speedup"] - 1) / (ideal - 1))
    assert row["realised_fraction_ci_low"] == pytest.approx((row["measured_speedup_ci_low"] - 1) / (ideal - 1))
    base = out.filter(pl.col("level").is_null()).row(0, named=True)
    assert (base["measured_speedup"], base["noisy"], base["realised_fraction"]) == (1.0, False, None)
    loud = pl.DataFrame(rows).with_columns(pl.lit(5.0).alias("load_avg_1m"))
    assert paired.summarise(loud, plan).filter(pl.col("level") == "35.71")["noisy"].item() is True


# ----------------------------------------------------------------------------------- models from numbers


def _config(width: int):
    from transformers import Qwen2Config

    return Qwen2Config(hidden_size=64, intermediate_size=width, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=128, tie_word_embeddings=True)  # fmt: skip


def _plan(**kw) -> grid.FamilyPlan:
    base = {"shapes": NUMBERS, "level": None, "measured_layers": None}
    settings = {"name": "fam", "source": "shapes", "base": base, "levels": {"35.71": {**base, "level": "35.71"}},
                "num_layers": 3, "measured_layers": None, "batch_sizes": [2], "phases": ["decode"],
                "prompt_tokens": 8, "new_tokens": 4, "engines": ["stock"], "pairs": 2, "warmup": 0, "repeats": 1,
                "min_repeat_s": 0.0, "threads": 1}  # fmt: skip
    return grid.FamilyPlan(**{**settings, **kw})


def test_shapes_model_is_pruned_like_a_pipeline_checkpoint(tmp_path):
    """The in-memory pruning of a model built from numbers gives exactly the tensors that prune.py's
    checkpoint writer gives for the same base, level, direction and seed (loaded by stock from_pretrained)."""
    from transformers import AutoModelForCausalLM

    from taskprune import prune
    from taskprune.model import pruning

    base = paired.build_shapes_model(NUMBERS, None, None)
    assert type(base).__name__ == "Qwen2ForCausalLM"
    assert base.lm_head.weight.data_ptr() == base.model.embed_tokens.weight.data_ptr()  # tied
    counts = flops.param_counts(flops.shape_from_config(base.config))
    assert counts.total == sum(p.numel() for p in base.parameters())
    base.save_pretrained(tmp_path / "base")
    layout = prune.read_layout(tmp_path / "base")
    plan = pruning.plan_pruning("random", Level.from_label("35.71"), layout.widths, PruningConfig(levels=[35.71]),
                              seed=paired.SYNTHETIC_SEED)  # fmt: skip
    prune.write_pruned_checkpoint(layout, plan, tmp_path / "pruned", record={})
    expected = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    got = paired.build_shapes_model(NUMBERS, "35.71", None)
    assert got.config.intermediate_size == 320 - pruning.removal_count(Level.from_label("35.71"), 320) == 206
    got_state, want_state = got.state_dict(), expected.state_dict()
    assert set(got_state) == set(want_state)
    for key, tensor in want_state.items():
        assert torch.equal(got_state[key], tensor), key
    ids = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(got(ids).logits, expected(ids).logits)


def test_stock_runner_rewinds_decode_to_the_same_positions():
    """Repeated decode runs after one prefill give the greedy continuation every time (cache rewound)."""
    model = paired.build_shapes_model(NUMBERS, None, None)
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        seq = ids
        for _ in range(4):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1)[:, None]], 1)
    reference = seq[:, 6:]
    runner = paired.StockRunner(model, 2, 10)
    with torch.inference_mode():
        first = runner.prefill(ids)
        assert torch.equal(first, reference[:, 0])
        for _ in range(2):
            token, out = first, []
            for _ in range(3):
                token = runner.forward(token[:, None])
                out.append(token)
            assert torch.equal(torch.stack(out, 1), reference[:, 1:])
            for layer in runner.cache.layers:
                layer.crop(-3)
    wall, _ = runner.timer.take()
    assert wall > 0  # the hooks saw the layer stack


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_composed_depth_equals_direct_full_depth_on_a_layer_clock(monkeypatch, model_type):
    """Composition against a hand count: on a fake clock where each decoder-layer forward costs 1 tick and
    each embedding lookup 0.25 (everything else free), 2 built layers composed to 6 give exactly the time of
    the 6-layer model timed directly, 6.25 ticks per decode step; the 2-layer run itself took 2.25 per step.
    A layer counted twice or missed, or the rest scaled with the stack, changes the composed number. (Whether
    real layers cost the same in a 2- and a 6-layer model is a property of the machine's caches, which a
    test cannot assert without timing; the bench table records ``timing_method`` for every row.)"""
    import importlib
    from types import SimpleNamespace

    clock = [0.0]
    monkeypatch.setattr(paired, "time", SimpleNamespace(perf_counter=lambda: clock[0], process_time=lambda: clock[0]))
    layer_class = getattr(importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}"),
                          f"{'Llama' if model_type == 'llama' else 'Qwen2'}DecoderLayer")  # fmt: skip

    def ticking(cost: float, forward):
        def run(self, *args, **kwargs):
            clock[0] += cost
            return forward(self, *args, **kwargs)

        return run

    monkeypatch.setattr(layer_class, "forward", ticking(1.0, layer_class.forward))
    monkeypatch.setattr(torch.nn.Embedding, "forward", ticking(0.25, torch.nn.Embedding.forward))
    numbers = {**NUMBERS, "model_type": model_type, "num_hidden_layers": 6}
    spec = {"num_layers": 6, "engines": ["stock"], "batch_sizes": [2], "phases": ["decode"], "prompt_tokens": 8,
            "new_tokens": 4, "warmup": 0, "repeats": 1, "min_repeat_s": 0.0, "device": "cpu"}  # fmt: skip
    runs = {}
    for layers in (2, None):
        res = paired.trial_main({**spec, "source": {"shapes": numbers, "level": "35.71", "measured_layers": layers}})
        assert res["built_layers"] == (layers or 6)
        runs[layers] = res["timings"][0]
    direct, composed = runs[None], runs[2]
    steps = direct["seconds"] / 6.25
    assert steps >= 1 and steps == int(steps), direct  # whole decode steps of 6 layers + 1 lookup each
    assert composed["seconds"] == direct["seconds"] and composed["cpu_seconds"] == direct["cpu_seconds"]
    assert composed["built_seconds"] == steps * 2.25 and composed["stack_seconds"] == steps * 2.0
    assert direct["built_seconds"] == direct["seconds"]


# ------------------------------------------------------------------------------------------ the plan


def _cfg(**bench_keys):
    return validate_config({
        "tasks": {"math": {"kind": "math"}, "conversation": {"kind": "conversation"}, "qna": {"kind": "qna"}},
        "models": {"m": {"task": "math"}, "twin": {"task": "math"}},
        "pruning": {"levels": [10, 35.71], "methods": ["selective", "random"], "seeds": [1]},
        "bench": bench_keys,
    })  # fmt: skip


def test_family_plans_from_numbers_and_from_checkpoints():
    arch = _cfg().models["m"].architecture.model_dump()
    cfg = _cfg(shapes={"own": {**arch, "model_type": "llama", "levels": [35.71]},
                       "big": {**SHAPE_KEYS, "measured_layers": 1, "phases": ["decode"]}})
    plans = grid.family_plans(cfg)
    assert plans["own"].models == ["m", "twin"] and list(plans["own"].levels) == ["35.71"]
    assert plans["big"].models == [] and list(plans["big"].levels) == ["10", "35.71"]
    assert plans["big"].measured_layers == 1 and plans["big"].phases == ["decode"]
    from_checkpoints = grid.family_plans(_cfg())
    assert list(from_checkpoints) == ["m"]  # m and twin share their architecture: one family
    plan = from_checkpoints["m"]
    assert plan.base == {"checkpoint": "results/models/m"}
    assert list(plan.levels) == ["10", "35.71"]
    assert all(s["checkpoint"].startswith("results/pruned/") for s in plan.levels.values())
    with pytest.raises(ConfigError, match="bench.levels \\['20'\\] are not pruning levels"):
        _cfg(levels=[20])
    with pytest.raises(ConfigError, match="measured_layers 4 exceeds"):
        _cfg(shapes={"x": {**SHAPE_KEYS, "measured_layers": 4}})


# ------------------------------------------------------------------------------------------ end to end


def test_family_and_gather_end_to_end(tmp_path, monkeypatch):
    """`bench family` (fresh-process trials) on a tiny family built from numbers, a labelled model family
    from per-variant rows, and `bench gather` into the contract's columns."""
    from taskprune.cli import main
    from taskprune.io import read_parquet_metadata

    plan = _plan(models=["m", "twin"], measured_layers=None)
    fam = tmp_path / "fam.parquet"
    assert main(["bench", "family", "--plan", json.dumps(plan.to_json()), "--output", str(fam),
                 "--trials", str(tmp_path / "trials.parquet")]) == 0  # fmt: skip
    trials = pl.read_parquet(tmp_path / "trials.parquet")
    assert trials["which"].to_list() == ["base", "35.71", "35.71", "base"]  # base, v, v, base
    assert "paired, interleaved" in read_parquet_metadata(fam)["measurement"]["design"]

    per_variant = tmp_path / "v.parquet"
    rows = []
    for variant in ("m/base", "m/selective/35.71/0", "m/selective/10/0", "twin/base", "twin/selective/35.71/0"):
        fields = measure.variant_fields(variant)
        rows.append({**fields, "params_total": 100, "params_mlp": 60, "bytes_on_disk": 400, "peak_memory_bytes": 1000,
                     "mlp_widths": [1], "device": "cpu", "measured_variant": variant})  # fmt: skip
    pl.DataFrame(rows, schema_overrides=measure.per_variant_schema()).write_parquet(per_variant)
    other = _plan(name="other", models=[])
    other_path = tmp_path / "other.parquet"
    assert main(["bench", "family", "--plan", json.dumps(other.to_json()), "--output", str(other_path)]) == 0
    out = tmp_path / "efficiency.parquet"
    assert main(["bench", "gather", str(per_variant), "--families", str(fam), str(other_path),
                 "--output", str(out)]) == 0  # fmt: skip
    df = pl.read_parquet(out)
    assert list(df.columns[: len(gather.CONTRACT_COLUMNS)]) == list(gather.CONTRACT_COLUMNS)
    mine = df.filter(pl.col("model") == "m")
    top = mine.filter(pl.col("variant") == "m/selective/35.71/0").row(0, named=True)
    assert top["shapes"] == "fam" and top["engine"] == "stock" and top["n_pairs"] == 2 and top["noisy"] is True
    assert top["measured_speedup_ci_low"] <= top["measured_speedup"] <= top["measured_speedup_ci_high"]
    assert top["ideal_speedup"] > 1 and top["peak_memory_bytes"] == 1000
    untimed = mine.filter(pl.col("variant") == "m/selective/10/0").row(0, named=True)
    assert untimed["measured_speedup"] is None and untimed["params_total"] == 100  # memory row kept
    own = df.filter(pl.col("shapes") == "other")
    assert set(own["variant"]) == {"other/base", "other/uniform/35.71/0"}
    assert own["peak_memory_bytes"].null_count() == own.height and (own["params_total"] > 0).all()
    assert df.filter(pl.col("model") == "twin")["shapes"].unique().to_list() == ["fam"]
    with pytest.raises(DataError, match="no shape-family benchmark files"):
        gather.gather_efficiency([per_variant], [])

    # the figure: one row of panels per shape family (m and twin share one), the engine named
    from taskprune.report.claims import claim_efficiency
    from taskprune.report.figures import fig_efficiency
    from taskprune.report.results import Results, load_efficiency

    eff = load_efficiency(out)
    metrics = pl.DataFrame({"model": ["m", "twin"], "metric": ["accuracy"] * 2, "task": ["math"] * 2,
                            "stage": ["pruned"] * 2, "level_pct": [35.71] * 2, "level": ["35.71"] * 2})  # fmt: skip
    fig = fig_efficiency(Results(metrics, eff))
    assert len(fig.axes) == 2 * 3
    titles = [ax.get_title() for ax in fig.axes]
    assert sum("decode speedup" in t for t in titles) == 2 and any("stock engine" in t for t in titles)
    claim = claim_efficiency(eff)  # the findings read the paired columns, one verdict per shape family
    assert set(claim["per_model"]) == {"fam", "other"}
    assert claim["per_model"]["fam"]["throughput"]["per_batch"][-1]["noisy"] is True  # 2 pairs: no verdict


def test_bench_config_keys_are_validated():
    with pytest.raises(ConfigError, match="bench.engines"):
        _cfg(engines=["fast"])
    with pytest.raises(ConfigError, match="bench.shapes.x.hiden_size"):
        _cfg(shapes={"x": {**SHAPE_KEYS, "hiden_size": 3}})
    assert BenchConfig().engines == ["stock"] and BenchConfig().pairs >= paired.MIN_PAIRS


def test_composition_check_table(capsys, tmp_path):
    """`check_composition` times the base and the level at 1 built layer and at all 3, and derives its
    columns from the minima: composed_over_direct = composed / direct, speedup = base seconds / level
    seconds of the same way, none for the base. Bad input: a family without measured_layers, or not in the
    config, is a one-line error."""
    from taskprune.cli import main

    table = paired.check_composition(_plan(measured_layers=1, batch_sizes=[1, 2]), rounds=1, progress=False)
    assert table.height == 4 and set(table["batch_size"]) == {1, 2}
    assert table["level"].to_list().count(None) == 2 and table["level"].drop_nulls().to_list() == ["35.71"] * 2
    for row in table.iter_rows(named=True):
        assert row["composed_seconds"] > 0 and row["direct_seconds"] > 0
        assert row["composed_over_direct"] == pytest.approx(row["composed_seconds"] / row["direct_seconds"])
        base = table.filter(pl.col("level").is_null() & (pl.col("batch_size") == row["batch_size"])).row(0, named=True)
        if row["level"] is None:
            assert row["composed_speedup"] is None and row["direct_speedup"] is None
        else:
            assert row["composed_speedup"] == pytest.approx(base["composed_seconds"] / row["composed_seconds"])
            assert row["direct_speedup"] == pytest.approx(base["direct_seconds"] / row["direct_seconds"])
        assert (row["measured_layers"], row["num_layers"], row["rounds"]) == (1, 3, 1)
    with pytest.raises(DataError, match="composition needs a shapes family with measured_layers"):
        paired.check_composition(_plan(), rounds=1)
    for family, message in (("tiny", "composition needs a shapes family"), ("nope", "--family 'nope': expected one of")):
        assert main(["bench", "composition", "--config", "config/config.yaml", "--family", family, "--output", str(tmp_path / "x.parquet")]) != 0
        assert message in capsys.readouterr().err and not (tmp_path / "x.parquet").exists()
