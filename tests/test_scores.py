"""Score tables from streamed statistics against numpy on brute-force per-prompt arrays."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import tiny_model
from test_stats import VOCAB, brute_force_per_prompt, out_proj_norms, random_prompts

from taskprune.cli import main
from taskprune.errors import ConfigError, DataError, ModelError
from taskprune.model.activations import ActivationStats, collect_stats, read_stats
from taskprune.scores import check_compatible, compute_scores, pool

EPS = 1e-6


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", vocab_size=VOCAB).double()


@pytest.fixture(scope="module")
def datasets():
    # Different length ranges make the "tasks" differ, so scores are far from trivial.
    return {
        "target": random_prompts(30, seed=10, low=2, high=8),
        "conversation": random_prompts(20, seed=11, low=10, high=25),
        "qna": random_prompts(9, seed=12, low=1, high=30),
    }


@pytest.fixture(scope="module")
def stats(model, datasets):
    return {name: collect_stats(model, prompts, progress=False) for name, prompts in datasets.items()}


@pytest.fixture(scope="module")
def truth(model, datasets):
    """Per dataset: per-layer per-prompt arrays v [n, d_ff] and the token sums of a^2."""
    return {name: brute_force_per_prompt(model, prompts) for name, prompts in datasets.items()}


def frames(stats) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    return stats["target"].to_frame(), [stats["conversation"].to_frame(), stats["qna"].to_frame()]


def per_neuron(table: pl.DataFrame) -> list[np.ndarray]:
    return [g["score"].to_numpy() for g in table.sort("layer", "neuron").partition_by("layer", maintain_order=True)]


def test_selectivity_equals_numpy_on_per_prompt_arrays(stats, truth):
    target, distractors = frames(stats)
    got = per_neuron(compute_scores("selectivity", target, distractors, epsilon=EPS))
    for layer in range(2):
        v_t = truth["target"][0][layer]
        v_d = np.concatenate([truth["conversation"][0][layer], truth["qna"][0][layer]])
        v_all = np.concatenate([v_t, v_d])
        want = (v_t.mean(0) - v_d.mean(0)) / (v_all.std(0, ddof=0) + EPS)
        np.testing.assert_allclose(got[layer], want, rtol=1e-6, atol=1e-9)
    assert np.ptp(np.concatenate(got)) > 0.5  # not a degenerate table


def test_other_scores_equal_numpy(model, stats, truth):
    target, distractors = frames(stats)
    n_tok = stats["target"].tokens
    norms = out_proj_norms(model)
    for method in ("taker", "wanda", "magnitude"):
        got = per_neuron(compute_scores(method, target, distractors, epsilon=EPS))
        for layer in range(2):
            v_t = truth["target"][0][layer]
            v_d = np.concatenate([truth["conversation"][0][layer], truth["qna"][0][layer]])
            if method == "taker":
                want = (v_t.mean(0) + EPS) / (v_d.mean(0) + EPS)
            elif method == "wanda":
                want = np.linalg.norm(norms[layer], axis=0) * np.sqrt(truth["target"][1][layer] / n_tok)
            else:
                want = v_t.mean(0)
            np.testing.assert_allclose(got[layer], want, rtol=1e-6, err_msg=f"{method} layer {layer}")


def test_pool_is_an_exact_merge(model, datasets, stats):
    union = collect_stats(model, datasets["conversation"] + datasets["qna"], progress=False)
    merged = stats["conversation"].merge(stats["qna"])
    pooled = pool([stats["conversation"].to_frame(), stats["qna"].to_frame()])
    for source in (merged.to_frame(), pooled):
        want = union.to_frame()
        assert source["n"].to_list() == want["n"].to_list()
        np.testing.assert_allclose(source["mean"].to_numpy(), want["mean"].to_numpy(), rtol=1e-9)
        np.testing.assert_allclose(source["m2"].to_numpy(), want["m2"].to_numpy(), rtol=1e-9)


def synthetic(mean: list[float], m2: list[float], n: int = 4) -> pl.DataFrame:
    k = len(mean)
    return pl.DataFrame({
        "layer": [0] * k, "neuron": list(range(k)), "n": [n] * k, "mean": mean, "m2": m2,
        "sq_mean": [x * x for x in mean], "tokens": [10 * n] * k, "w_out_norm": [1.0] * k,
    })


def test_silent_neurons_get_the_documented_scores():
    # neuron 0 never fires anywhere; neuron 1 is the same constant everywhere; neuron 2 is informative.
    target = synthetic([0.0, 0.5, 2.0], [0.0, 0.0, 1.0])
    distractor = synthetic([0.0, 0.5, 1.0], [0.0, 0.0, 1.0])
    sel = compute_scores("selectivity", target, [distractor])["score"].to_list()
    assert sel[0] == 0.0 and sel[1] == 0.0 and sel[2] > 0
    assert compute_scores("taker", target, [distractor])["score"].to_list()[0] == 1.0
    assert compute_scores("magnitude", target)["score"].to_list()[0] == 0.0
    assert compute_scores("wanda", target)["score"].to_list()[0] == 0.0


def test_random_scores_are_seeded(stats):
    target = stats["target"].to_frame()
    a = compute_scores("random", target, seed=42)
    assert a.equals(compute_scores("random", target, seed=42))
    assert not a.equals(compute_scores("random", target, seed=33))
    assert a.schema == pl.Schema({"layer": pl.Int64, "neuron": pl.Int64, "score": pl.Float64})
    assert a["score"].min() >= 0 and a["score"].max() < 1 and a["score"].n_unique() == a.height


def test_selectivity_needs_distractors(stats):
    with pytest.raises(ConfigError, match="distractor"):
        compute_scores("selectivity", stats["target"].to_frame(), [])


def test_incompatible_statistics_are_refused(stats):
    target, distractors = frames(stats)
    other_model = collect_stats(tiny_model("llama", seed=7, vocab_size=VOCAB), random_prompts(3, 0), progress=False)
    with pytest.raises(ModelError, match="different model"):
        check_compatible({"t": target, "o": other_model.to_frame()})
    narrower = collect_stats(tiny_model("llama", vocab_size=VOCAB, d_ff=64), random_prompts(3, 0), progress=False)
    with pytest.raises(ModelError, match=r"layer widths \[64, 64\]"):
        check_compatible({"t": target, "o": narrower.to_frame()})
    check_compatible({"t": target, "c": distractors[0], "q": distractors[1]})


# ------------------------------------------------------------------------------------------- CLI


def write(df: pl.DataFrame, path) -> str:
    df.write_parquet(path)
    return str(path)


def cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["scores", *argv])
    return rc, capsys.readouterr().err.strip()


def test_cli_writes_every_method(tmp_path, capsys, stats):
    target, distractors = frames(stats)
    t = write(target, tmp_path / "math.parquet")
    ds = [write(d, tmp_path / f"d{i}.parquet") for i, d in enumerate(distractors)]
    for method in ("selectivity", "taker", "wanda", "magnitude", "random"):
        out = tmp_path / "scores" / f"{method}.parquet"
        rc, err = cli(capsys, "--method", method, "--target", t, "--distractors", *ds, "--output", str(out),
                      "--options", '{"scores": {"random_seed": 5}}')
        assert rc == 0, err
        got = pl.read_parquet(out)
        assert got.schema == pl.Schema({"layer": pl.Int64, "neuron": pl.Int64, "score": pl.Float64})
        assert got.equals(compute_scores(method, target, distractors, seed=5))
    # The rule's form: --out abbreviates --output; --model-path is accepted and recorded.
    rc, err = cli(capsys, "--method", "magnitude", "--target", t, "--model-path", "results/models/m",
                  "--out", str(tmp_path / "m.parquet"))
    assert rc == 0, err  # target-only methods need no distractors


def test_cli_bad_inputs_give_one_line(tmp_path, capsys, stats):
    target, distractors = frames(stats)
    t = write(target, tmp_path / "t.parquet")
    d = write(distractors[0], tmp_path / "d.parquet")
    out = str(tmp_path / "s.parquet")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"garbage")
    nan = write(target.with_columns(pl.lit(float("nan")).alias("mean")), tmp_path / "nan.parquet")
    empty = write(target.head(0), tmp_path / "empty.parquet")
    narrow = write(target.filter(pl.col("neuron") < 40), tmp_path / "narrow.parquet")
    cases = {
        "not a readable Parquet": ["--target", str(corrupt), "--distractors", d],
        "NaN/inf": ["--target", t, "--distractors", nan],
        "no rows": ["--target", empty, "--distractors", d],
        "layer widths [40, 40]": ["--target", t, "--distractors", narrow],
        "needs at least one distractor": ["--target", t],
        "given twice": ["--target", t, "--distractors", t],
    }
    for expected, args in cases.items():
        rc, err = cli(capsys, "--method", "selectivity", *args, "--output", out)
        assert rc == 2 and len(err.splitlines()) == 1 and expected in err, (expected, err)
    assert not (tmp_path / "s.parquet").exists()


def test_read_stats_checks_types(tmp_path, stats):
    path = tmp_path / "x.parquet"
    stats["target"].to_frame().with_columns(pl.col("layer").cast(pl.Float64)).write_parquet(path)
    with pytest.raises(DataError, match="'layer' must be an integer"):
        read_stats(path)


def test_from_frame_keeps_pooled_numbers(stats):
    pooled = pool([stats["conversation"].to_frame(), stats["qna"].to_frame()])
    again = ActivationStats.from_frame(pooled.with_columns(pl.lit(0.0).alias("sq_mean")))
    assert again.n == stats["conversation"].n + stats["qna"].n
