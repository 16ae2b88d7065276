"""Recovery-recipe findings (lora-kd vs lora) on hand-made per-item tables whose outcomes are known."""

from __future__ import annotations

import polars as pl
import pytest

from taskprune.report.claims import compute_findings
from taskprune.report.estimates import CONTRADICTED, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, paired
from taskprune.report.recovery_claims import recovery_recipe_findings
from taskprune.report.render import recipe_blocks, render_markdown, report_blocks
from taskprune.report.results import validate_items

N = 100  # items per task
LEVELS = (10.0, 20.0, 30.0)
BASE_RETENTION = 0.9


def _rows(model, method, level, stage, recovery, task, role, scores, seed=0):
    return [{"model": model, "method": method, "level": f"{level:g}", "level_pct": float(level), "seed": seed,
             "stage": stage, "recovery": recovery, "task": task, "role": role, "id": f"{task}-{i}",
             "metric": "score", "score": float(s)} for i, s in enumerate(scores)]  # fmt: skip


def _correct(k: int) -> list[int]:
    """The first ``k`` of N items right (nested sets: a larger k is right wherever a smaller one is)."""
    return [1] * k + [0] * (N - k)


def _spread(mean: float) -> list[float]:
    """Item scores with exactly this mean, the same spread for every variant."""
    return [mean + 0.05 * ((i % 5) - 2) for i in range(N)]


def _table(model: str, pruned: dict[float, int], lora: dict[float, int], kd: dict[float, int],
           retention: dict[str, float] | None = None) -> list[dict]:
    ret = retention or {"pruned": BASE_RETENTION, "lora": BASE_RETENTION, "lora-kd": BASE_RETENTION}
    rows = _rows(model, "base", 0, "base", None, "math", "target", _correct(N))
    rows += _rows(model, "base", 0, "base", None, "conv", "distractor", _spread(BASE_RETENTION))
    for level in LEVELS:
        rows += _rows(model, "selective", level, "pruned", None, "math", "target", _correct(pruned[level]))
        rows += _rows(model, "selective", level, "pruned", None, "conv", "distractor", _spread(ret["pruned"]))
        for recipe, k in (("lora", lora), ("lora-kd", kd)):
            rows += _rows(model, "selective", level, "recovered", recipe, "math", "target", _correct(k[level]))
            rows += _rows(model, "selective", level, "recovered", recipe, "conv", "distractor", _spread(ret[recipe]))
    return rows


def _result(rows: list[dict]) -> dict[str, dict]:
    items = validate_items(pl.DataFrame(rows, infer_schema_length=None), "test")
    try:
        return {c["id"]: c for c in recovery_recipe_findings(items)["claims"]}
    finally:
        paired.cache_clear()


def test_kd_higher_at_every_informative_level_reproduces_with_exact_shares():
    c = _result(_table("m", dict.fromkeys(LEVELS, 50), dict.fromkeys(LEVELS, 60), dict.fromkeys(LEVELS, 80)))
    acc = c["kd_recovers_more_accuracy"]
    entry = acc["per_model"]["m/selective"]
    assert acc["status"] == REPRODUCED and (entry["a_higher_at"], entry["informative_levels"]) == (3, 3)
    level = entry["per_level"][0]
    assert level["comparison"]["diff"] == pytest.approx(0.20) and level["comparison"]["verdict"] == "higher"
    assert level["pruned_vs_base"]["diff"] == pytest.approx(-0.50) and level["informative"]
    assert level["share_recovered"] == pytest.approx({"lora": 0.2, "lora-kd": 0.6})  # (60-50)/50, (80-50)/50
    # retention never dropped: no informative level, nothing can be decided
    assert c["kd_keeps_more_retention"]["status"] == INCONCLUSIVE


def test_lora_higher_is_contradicted():
    c = _result(_table("m", dict.fromkeys(LEVELS, 50), dict.fromkeys(LEVELS, 80), dict.fromkeys(LEVELS, 60)))
    assert c["kd_recovers_more_accuracy"]["status"] == CONTRADICTED


def test_ceiling_levels_are_listed_not_counted():
    c = _result(_table("m", dict.fromkeys(LEVELS, N), dict.fromkeys(LEVELS, 60), dict.fromkeys(LEVELS, 80)))
    entry = c["kd_recovers_more_accuracy"]["per_model"]["m/selective"]
    assert c["kd_recovers_more_accuracy"]["status"] == INCONCLUSIVE and entry["informative_levels"] == 0
    assert len(entry["per_level"]) == 3 and entry["ceiling_levels"] == ["10", "20", "30"]


def test_mixed_directions_are_not_reproduced():
    c = _result(_table("m", dict.fromkeys(LEVELS, 50), {10.0: 60, 20.0: 80, 30.0: 70}, {10.0: 80, 20.0: 60, 30.0: 70}))
    entry = c["kd_recovers_more_accuracy"]["per_model"]["m/selective"]
    assert (entry["a_higher_at"], entry["a_lower_at"]) == (1, 1)
    assert c["kd_recovers_more_accuracy"]["status"] == NOT_REPRODUCED


def test_retention_claim_pairs_distractor_items():
    retention = {"pruned": 0.4, "lora": 0.5, "lora-kd": 0.7}
    c = _result(_table("m", dict.fromkeys(LEVELS, 50), dict.fromkeys(LEVELS, 60), dict.fromkeys(LEVELS, 60), retention))
    assert c["kd_keeps_more_retention"]["status"] == REPRODUCED
    assert c["kd_recovers_more_accuracy"]["status"] == NOT_REPRODUCED  # identical answers: ties everywhere
    level = c["kd_keeps_more_retention"]["per_model"]["m/selective"]["per_level"][0]
    assert level["share_recovered"] == pytest.approx({"lora": 0.2, "lora-kd": 0.6})  # (x - 0.4) / (0.9 - 0.4)


def test_overall_over_specialists_and_a_missing_recipe():
    lost = dict.fromkeys(LEVELS, 50)
    rows = _table("a", lost, dict.fromkeys(LEVELS, 60), dict.fromkeys(LEVELS, 80))
    rows += _table("b", dict.fromkeys(LEVELS, N), dict.fromkeys(LEVELS, 60), dict.fromkeys(LEVELS, 80))
    rows += [r for r in _table("c", lost, dict.fromkeys(LEVELS, 60), dict.fromkeys(LEVELS, 80))
             if r["recovery"] != "lora-kd"]  # no lora-kd at all: not a specialist of this claim  # fmt: skip
    c = _result(rows)["kd_recovers_more_accuracy"]
    assert c["status"] == REPRODUCED  # a reproduces, b is inconclusive (ceiling)
    assert c["per_model"]["b/selective"]["status"] == INCONCLUSIVE and "c/selective" not in c["per_model"]


def test_findings_json_and_report_carry_the_recipe_claims_and_the_paper_claim_reads_lora():
    rows = _table("m", dict.fromkeys(LEVELS, 50), dict.fromkeys(LEVELS, 80), dict.fromkeys(LEVELS, 10))
    result = compute_findings(validate_items(pl.DataFrame(rows, infer_schema_length=None), "test"))
    recovery = next(c for c in result["claims"] if c["id"] == "recovery")["per_model"]["m"]
    # lora recovers at every level; lora-kd (10 right, below the pruned 50) gets worse: recipes never mix
    assert recovery["status"] == REPRODUCED and recovery["by_recipe"]["lora-kd"]["status"] == CONTRADICTED
    recipes = {c["id"]: c for c in result["recovery_recipes"]["claims"]}
    assert recipes["kd_recovers_more_accuracy"]["status"] == CONTRADICTED
    md = render_markdown(report_blocks(result))
    assert "Recovery recipes at a matched budget" in md and "lora-kd - lora (pp, paired)" in md
    assert any(b[0] == "table" for b in recipe_blocks(result["recovery_recipes"]))
