"""A new task kind is one module and one registry entry: a toy kind added to ``TASK_KINDS`` from inside the
test runs through the data stage (synthetic suites, skeleton-disjoint splits) and the evaluation stage
(generation with its stop strings, its scoring, its metrics rows and headline) on a tiny random-weight
Llama model, with no other code touched."""

from __future__ import annotations

import json
import random
from typing import Any

import polars as pl
import pytest
from conftest import tiny_model
from test_generate import VOCAB, byte_bpe_tokenizer

from taskprune import data, tasks
from taskprune.cli import main
from taskprune.config import SPLITS, DataConfig, TaskConfig
from taskprune.metrics import item_scores
from taskprune.tasks import TASK_KINDS, TaskKind
from taskprune.tasks.splits import read_split

COLOURS = ("red", "green", "blue", "cyan", "black", "white", "amber", "olive", "pink", "gold", "grey", "teal")


# ------------------------------------------------------------------------------ the toy kind ("echo")


def make_echo(rng: random.Random, words: dict[str, Any]) -> dict[str, Any]:
    """Repeat a colour and a number: the skeleton is the pair, so held-out pairs are unseen combinations."""
    del words
    colour, n = rng.choice(COLOURS), rng.randint(0, 99)
    return {"word": f"{colour} {n}", "skeleton": f"echo|{colour}|{n}"}


def format_echo(row: dict[str, Any], synthetic: bool) -> None:
    row["prompt"] = f"Say: {row['word']}\nEcho:" if synthetic else str(row["word"])
    row["completion"] = f" {row['word']}"
    row["reference"] = row["word"]


def score_echo(df: Any, options: Any) -> Any:
    del options
    refs = [str(r) for r in df["reference"].to_list()]
    echoed = [g.strip() == r for g, r in zip(df["generation"].to_list(), refs, strict=True)]
    return df.with_columns(pl.Series("echoed", echoed, dtype=pl.Boolean))


def echo_metrics(df: Any, n_samples: int) -> list[tuple[str, str, list[Any]]]:
    del n_samples
    return [("echo_match", "proportion", df["echoed"].to_list())]


ECHO = TaskKind(
    name="echo",
    fields=("word",),
    default_fields={"word": "word"},
    make=make_echo,
    format_row=format_echo,
    stop_strings=("\nSay:",),
    eval_columns=("reference",),
    headline_metric="echo_match",
    metric_values=echo_metrics,
    item_metric=lambda columns: ("echo_match", "echoed"),
    train_size=60, eval_size=6, validation_size=4, max_new_tokens=5,
    score=score_echo,
    correct=lambda gens, refs: [g.strip() == str(r) for g, r in zip(gens, refs, strict=True)],
)


@pytest.fixture
def echo_kind(monkeypatch):
    monkeypatch.setitem(TASK_KINDS, "echo", ECHO)
    return ECHO


def test_toy_kind_through_data_and_evaluate(echo_kind, tmp_path, caplog):
    # ---- data: the defaults for the new kind come from its registry entry
    cfg = DataConfig(calibration_size=10)
    assert cfg.train_size["echo"] == 60 and cfg.eval_size["echo"] == 6
    # a kind registered at runtime is not in config's import-time Literal: build the task config unvalidated
    task_cfg = TaskConfig.model_construct(kind="echo")
    paths = data.prepare_task("echo", task_cfg, cfg, tmp_path / "data" / "echo")
    frames = {s: read_split(paths[s], "echo") for s in SPLITS}
    assert {s: f.height for s, f in frames.items()} == {"train": 60, "calibration": 10, "validation": 4, "eval": 6}
    eval_df = frames["eval"]
    assert eval_df.columns[:5] == ["id", "prompt", "completion", "reference", "word"]
    assert all(p.startswith("Say: ") and p.endswith("\nEcho:") for p in eval_df["prompt"])
    held_out = set(frames["eval"]["skeleton"]) | set(frames["validation"]["skeleton"])
    assert not held_out & (set(frames["train"]["skeleton"]) | set(frames["calibration"]["skeleton"]))
    # byte-identical on rerun
    again = data.prepare_task("echo", task_cfg, cfg, tmp_path / "again")
    assert all(paths[s].read_bytes() == again[s].read_bytes() for s in SPLITS)
    assert tasks.stop_strings_for("echo") == ["\nSay:"]

    # ---- evaluate: a tiny random-weight Llama model, the toy kind beside a built-in one
    model_dir = tmp_path / "model"
    model = tiny_model("llama", vocab_size=VOCAB, seed=0)
    model.generation_config.eos_token_id = 2
    model.save_pretrained(model_dir)
    byte_bpe_tokenizer().save_pretrained(model_dir)
    options = {"evaluation": {"max_new_tokens": {"echo": 5}, "embedding_model": "none"},
               "device": "cpu", "chat_template": False}
    out = tmp_path / "eval"
    rc = main(["evaluate", "--variant", "tiny/base", "--model-path", str(model_dir), "--out-dir", str(out),
               "--options", json.dumps(options), "--no-progress",
               "--task", f"echo=echo:{paths['eval']}"])  # fmt: skip
    assert rc == 0
    items = pl.read_parquet(out / "echo.parquet")
    assert items["id"].to_list() == eval_df["id"].to_list()
    assert {"generation", "n_tokens", "hit_limit", "echoed"} <= set(items.columns)
    assert (items["n_tokens"] <= 5).all()
    metrics = pl.read_parquet(out / "metrics.parquet")
    assert metrics["task_kind"].unique().to_list() == ["echo"]
    assert metrics["metric"].to_list() == ["echo_match", "trap_rate", "mean_new_tokens"]
    row = metrics.row(0, named=True)
    assert row["value"] == pytest.approx(items["echoed"].mean()) and row["n"] == 6
    assert row["ci_low"] - 1e-12 <= row["value"] <= row["ci_high"] + 1e-12  # Wilson, in floating point
    # the paired analyses' per-item score comes from the registry too
    metric, per_item = item_scores("echo", "base", items)
    assert metric == "echo_match" and per_item["score"].to_list() == [float(x) for x in items["echoed"]]


def test_unknown_kind_is_a_one_line_error(echo_kind, tmp_path, capsys):
    rc = main(["evaluate", "--variant", "tiny/base", "--model-path", str(tmp_path), "--task", "x=poetry:x.parquet"])
    assert rc != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "KIND one of math, code, conversation, qna, echo" in err[0]
