"""Adding a score method is one registry entry: a toy method, registered from inside the test, goes through
the config, ``taskprune scores`` and ``taskprune prune`` on a tiny random-weight Llama (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import tiny_model
from safetensors import safe_open

from taskprune.cli import main
from taskprune.config import ScoresConfig, parse_method, validate_section
from taskprune.errors import ConfigError
from taskprune.model.activations import collect_stats
from taskprune.score_methods import SCORE_METHODS, ScoreMethod

D_FF, LEVEL = 80, "25"  # k = 20 neurons per layer


def toy_scores(target: pl.DataFrame, distractors: list[pl.DataFrame], epsilon: float, seed: int) -> pl.DataFrame:
    """Score = minus the neuron index: ``selective`` (lowest scores go) removes each layer's last neurons."""
    return target.select("layer", "neuron", (-pl.col("neuron").cast(pl.Float64)).alias("score"))


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> ScoreMethod:
    entry = ScoreMethod("toy", "minus the neuron index (test only)", False, f"{__name__}:toy_scores")
    monkeypatch.setitem(SCORE_METHODS, "toy", entry)
    return entry


def test_config_allows_exactly_the_registered_methods(toy: ScoreMethod, monkeypatch: pytest.MonkeyPatch) -> None:
    assert validate_section({"methods": ["selectivity", "toy"]}, ScoresConfig, "scores").methods == ["selectivity", "toy"]
    assert ScoresConfig().methods[-1] == "toy"  # the default is every registered method
    assert parse_method("selective-toy") == ("selective", "toy")
    monkeypatch.delitem(SCORE_METHODS, "toy")
    with pytest.raises(ConfigError, match="scores.methods.0"):
        validate_section({"methods": ["toy"]}, ScoresConfig, "scores")
    with pytest.raises(ValueError, match="unknown pruning method 'selective-toy'"):
        parse_method("selective-toy")


def test_toy_method_through_scores_and_prune(tmp_path: Path, toy: ScoreMethod) -> None:
    model = tiny_model("llama", d_ff=D_FF)
    base = tmp_path / "base"
    model.save_pretrained(base)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 96, size=int(rng.integers(2, 12))).astype(np.int32) for _ in range(8)]
    stats = tmp_path / "stats" / "math.parquet"
    stats.parent.mkdir()
    collect_stats(model, prompts, progress=False).to_frame().write_parquet(stats)

    scores = tmp_path / "scores" / "toy.parquet"
    assert main(["scores", "--method", "toy", "--target", str(stats), "--output", str(scores)]) == 0
    table = pl.read_parquet(scores)
    assert table.schema == pl.Schema({"layer": pl.Int64, "neuron": pl.Int64, "score": pl.Float64})
    assert table["score"].to_list() == [-float(j) for _ in range(2) for j in range(D_FF)]

    out = tmp_path / "pruned" / "selective-toy" / LEVEL / "0"
    argv = ["prune", "--checkpoint", str(base), "--method", "selective-toy", "--level", LEVEL, "--seed", "0",
            "--scores", str(scores), "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "pruning.json").read_text())
    assert (record["score_method"], record["direction"], record["level"], record["level_pct"]) == (
        "toy", "selective", LEVEL, 25.0)  # fmt: skip

    keep = D_FF - 20  # the 20 highest neuron indices score lowest and go
    with safe_open(next(out.glob("*.safetensors")), framework="pt") as fh:
        for layer, decoder in enumerate(model.model.layers):
            prefix, mlp = f"model.layers.{layer}.mlp", decoder.mlp
            assert fh.get_tensor(f"{prefix}.down_proj.weight").equal(mlp.down_proj.weight[:, :keep].detach())
            for proj in ("gate_proj", "up_proj"):
                assert fh.get_tensor(f"{prefix}.{proj}.weight").equal(getattr(mlp, proj).weight[:keep].detach())
