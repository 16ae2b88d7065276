"""lm-evaluation-harness stage: the local GSM8K-format task, lm-eval's exact-match scoring, the CLI's
metrics rows on tiny random-weight checkpoints (by path and, for per-layer widths, through load_pruned)."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest
from conftest import tiny_model
from test_generate import VOCAB, byte_bpe_tokenizer
from test_prune import prune_cli, write_scores

from taskprune.cli import main
from taskprune.config import HarnessConfig
from taskprune.io import read_parquet_metadata
from taskprune.metrics import METRICS_COLUMNS
from taskprune.tasks.metric_names import HARNESS_TASK_PREFIX

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.model import LM  # noqa: E402

N_ITEMS = 6


def _write_math(path):
    """A GSM8K-format math eval split: answer lines end in '#### N' (N up to 4 digits, so commas appear)."""
    rows = [{"id": f"m{i}", "question": f"what is {i * 500} + {i}?", "answer": f"{i * 500} + {i} = {i * 501}\n#### {i * 501}",
             "reference": str(i * 501), "prompt": f"Question: what is {i * 500} + {i}?\nAnswer:"} for i in range(N_ITEMS)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(path)
    return rows


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    rows = _write_math(root / "data" / "math" / "eval.parquet")
    model = tiny_model("llama", vocab_size=VOCAB, seed=0, layers=2)
    model.generation_config.eos_token_id = 2
    model.save_pretrained(root / "base")
    byte_bpe_tokenizer().save_pretrained(root / "base")
    return root, rows


class AnswerSheet(LM):
    """A "model" that answers each question from a hand-written sheet (known-correct or known-wrong)."""

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__()
        self.answers = answers
        self.contexts: list[str] = []

    def generate_until(self, requests, disable_tqdm: bool = False):
        out = []
        for req in requests:
            context, _ = req.args
            self.contexts.append(context)
            question = re.search(r"Question: (.*)\nAnswer:$", context).group(1)
            out.append(self.answers[question])
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False):  # pragma: no cover - generation task
        raise NotImplementedError

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):  # pragma: no cover
        raise NotImplementedError


def _sheet_results(workspace, answer_for):
    from pathlib import Path

    from taskprune.harness import LOCAL_TASK_DIR, evaluate_lm, harness_metric_rows

    root, rows = workspace
    lm = AnswerSheet({r["question"]: answer_for(i, r) for i, r in enumerate(rows)})
    task_dir = Path(__file__).resolve().parents[1] / LOCAL_TASK_DIR
    results = evaluate_lm(lm, HarnessConfig(), {"taskprune_math": root / "data" / "math" / "eval.parquet"}, task_dir)
    assert len(lm.contexts) == N_ITEMS and all(c.startswith("Question: ") for c in lm.contexts)
    return {metric: (value, n) for _, metric, value, n, *_ in harness_metric_rows(results)}


def test_exact_match_of_known_answers(workspace):
    """lm-eval's GSM8K filters on hand-made answers whose verdicts are known."""

    def ref(r):
        return int(r["reference"])

    # known-correct: reasoning, then '#### N' with a thousands comma -> both filters match every item
    correct = _sheet_results(workspace, lambda i, r: f" some steps\n#### {ref(r):,}")
    assert correct["exact_match,strict-match"] == (1.0, N_ITEMS)
    assert correct["exact_match,flexible-extract"] == (1.0, N_ITEMS)
    # the number without '####': strict-match finds nothing, flexible-extract (last number) matches
    bare = _sheet_results(workspace, lambda i, r: f" so it is {ref(r)}")
    assert bare["exact_match,strict-match"] == (0.0, N_ITEMS)
    assert bare["exact_match,flexible-extract"] == (1.0, N_ITEMS)
    # right after '####' but a wrong last number: strict 1, flexible 0 (for items 0, 2, 4 only)
    mixed = _sheet_results(workspace, lambda i, r: f" #### {ref(r)} or {ref(r) + 1}" if i % 2 == 0 else f" #### {ref(r) + 1}")
    assert mixed["exact_match,strict-match"] == (pytest.approx(0.5), N_ITEMS)
    assert mixed["exact_match,flexible-extract"] == (0.0, N_ITEMS)


def _harness_cli(root, model_dir, variant, **harness):
    opts = {"harness": {"enabled": True, "limit": 4, "max_gen_toks": 8, "batch_size": 4, **harness}, "device": "cpu"}
    out = root / "harness" / f"{variant}.parquet"
    argv = ["harness", "--variant", variant, "--model-path", str(model_dir), "--out", str(out),
            "--local-task", f"taskprune_math={root / 'data' / 'math' / 'eval.parquet'}",
            "--options", json.dumps(opts)]
    return main(argv), out


def test_cli_on_tiny_model_by_path(workspace):
    root, _ = workspace
    rc, out = _harness_cli(root, root / "base", "tiny/base")
    assert rc == 0
    df = pl.read_parquet(out)
    assert list(df.columns) == list(METRICS_COLUMNS)
    assert set(df["task"]) == {HARNESS_TASK_PREFIX + "taskprune_math"}
    assert set(df["metric"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert set(df["n"]) == {4} and set(df["stage"]) == {"base"} and set(df["task_kind"]) == {"harness"}
    for r in df.iter_rows(named=True):
        assert 0.0 <= r["ci_low"] <= r["value"] <= r["ci_high"] <= 1.0
    meta = read_parquet_metadata(out)
    assert meta["lm_eval_version"] == lm_eval.__version__ and meta["loaded_by"] == "path"

    # the metrics gather appends the harness rows to our own evaluation's rows
    from taskprune.evaluate import variant_columns
    from taskprune.grid import parse_variant
    from taskprune.metrics import metrics_frame

    (root / "own").mkdir()
    own = root / "own" / "metrics.parquet"  # our evaluation of one variant: metric rows beside its item table
    pl.DataFrame({"id": ["a", "b", "c", "d"], "correct_numeric": [True, False, True, False]}).write_parquet(
        root / "own" / "math.parquet")
    metrics_frame([{**variant_columns(parse_variant("tiny/base")), "task": "math", "task_kind": "math",
                    "metric": "accuracy", "value": 0.5, "n": 4, "ci_low": 0.1, "ci_high": 0.9}]).write_parquet(own)
    merged = root / "metrics.parquet"
    assert main(["metrics", "--inputs", str(own), "--harness-inputs", str(out), "--out", str(merged),
                 "--items", str(root / "items.parquet")]) == 0
    table = pl.read_parquet(merged)
    assert table.height == 1 + df.height and set(table["task"]) == {"math", HARNESS_TASK_PREFIX + "taskprune_math"}
    assert read_parquet_metadata(merged)["lm_eval_versions"] == [lm_eval.__version__]
    assert set(table.filter(pl.col("task").str.starts_with(HARNESS_TASK_PREFIX))["role"]) == {"harness"}
    assert pl.read_parquet(root / "items.parquet")["task"].unique().to_list() == ["math"]  # harness: no item rows


def test_cli_global_allocation_goes_through_load_pruned(workspace):
    root, _ = workspace
    scores = write_scores(root / "selectivity.parquet", [80, 80], layer_offset=1.0)
    pruned = root / "pruned"
    assert prune_cli(root / "base", pruned, "selective", "40", scores=scores,
                     options={"pruning": {"allocation": "global"}}) == 0
    widths = json.loads((pruned / "config.json").read_text())["taskprune_layer_widths"]
    assert len(set(widths)) == 2  # per-layer widths: stock from_pretrained cannot build this model
    rc, out = _harness_cli(root, pruned, "tiny/selective/40/0")
    assert rc == 0
    df = pl.read_parquet(out)
    assert set(df["stage"]) == {"pruned"} and set(df["level"]) == {"40"} and set(df["n"]) == {4}
    assert read_parquet_metadata(out)["loaded_by"] == "load_pruned"


def test_cli_bad_inputs(workspace, capsys):
    """One-line errors before any model is loaded (an unknown hub task is refused by lm-eval's own task
    index, which takes ~15 s to build, so it is not exercised here)."""
    root, _ = workspace
    base = ["harness", "--variant", "tiny/base", "--model-path", str(root / "base")]
    assert main([*base, "--local-task", f"taskprune_math={root / 'missing.parquet'}"]) != 0
    assert "missing.parquet" in capsys.readouterr().err
    assert main(base) != 0  # the local task is configured but not bound to data
    assert "needs --local-task taskprune_math=PATH" in capsys.readouterr().err
    assert main([*base, "--local-task", "taskprune_math"]) != 0
    assert "expected NAME=PATH" in capsys.readouterr().err
    opts = json.dumps({"harness": {"variants": [{"method": "selectiv"}]}})
    assert main([*base, "--options", opts]) != 0
    assert "selectiv" in capsys.readouterr().err


def test_config_selects_harness_variants():
    """config.yaml: tiny-math base, selective at 10/20/35.71 pruned and 35.71 recovered; paper.yaml: base,
    selective at every level and recovered at every level, for all four models."""
    from pathlib import Path

    from taskprune.config import load_config
    from taskprune.grid import harness_variants

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(str(root / "config" / "config.yaml"))
    got = sorted(v.path for v in harness_variants(cfg))
    assert got == sorted(["tiny-math/base", "tiny-math/selective/10/0", "tiny-math/selective/20/0",
                          "tiny-math/selective/35.71/0", "tiny-math/selective/35.71/0/recovered-lora"])  # the paper's recipe only
    paper = load_config(str(root / "config" / "paper.yaml"))
    variants = harness_variants(paper)
    for model in paper.models:
        mine = [v for v in variants if v.model == model]
        n_levels = len(paper.levels_for(model))
        assert [v.stage for v in mine].count("base") == 1
        assert sum(v.stage == "pruned" and v.method == "selective" for v in mine) == n_levels
        assert sum(v.stage == "recovered" and v.method == "selective" for v in mine) == n_levels
        assert {v.recovery for v in mine if v.stage == "recovered"} == {"lora"}  # lora-kd is not harnessed
        assert len(mine) == 1 + 2 * n_levels
    assert set(paper.harness.tasks) == {"gsm8k", "arc_easy", "hellaswag", "mmlu"} and paper.harness.limit
