"""Recovery-recipe findings on hand-made per-item tables whose outcomes are known by construction."""

from __future__ import annotations

import polars as pl
import pytest

from taskprune.errors import DataError
from taskprune.recovery_findings import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    overall_outcome,
    paired_difference,
    recovery_recipe_findings,
    recovery_recipe_markdown,
)

N = 100  # items per task
LEVELS = (10.0, 20.0, 30.0)


def _rows(model, method, level, stage, recovery, task, role, scores, seed=0):
    return [{"model": model, "method": method, "level": f"{level:g}", "level_pct": float(level), "seed": seed,
             "stage": stage, "recovery": recovery, "task": task, "role": role, "id": f"{task}-{i}",
             "metric": "score", "score": float(s)} for i, s in enumerate(scores)]  # fmt: skip


def _correct(k: int) -> list[int]:
    """The first ``k`` of N items right (nested sets: a larger k is right wherever a smaller one is)."""
    return [1] * k + [0] * (N - k)


BASE_RETENTION = 0.9


def _spread(mean: float) -> list[float]:
    """Item scores around ``mean`` (exact mean, inside [0, 1] for 0.1 <= mean <= 0.9), the same spread for
    every variant, so the paired sd is zero only where two variants are equal."""
    return [mean + 0.05 * ((i % 5) - 2) for i in range(N)]


def _table(model: str, pruned: dict[float, int], lora: dict[float, int], kd: dict[float, int],
           retention: dict[str, dict[float, float]] | None = None) -> list[dict]:
    rows = _rows(model, "base", 0, "base", None, "math", "target", _correct(N))
    rows += _rows(model, "base", 0, "base", None, "conv", "distractor", _spread(BASE_RETENTION))
    for level in LEVELS:
        rows += _rows(model, "selective", level, "pruned", None, "math", "target", _correct(pruned[level]))
        for recipe, k in (("lora", lora), ("lora-kd", kd)):
            rows += _rows(model, "selective", level, "recovered", recipe, "math", "target", _correct(k[level]))
        ret = retention or {"pruned": dict.fromkeys(LEVELS, BASE_RETENTION), "lora": dict.fromkeys(LEVELS, BASE_RETENTION),
                            "lora-kd": dict.fromkeys(LEVELS, BASE_RETENTION)}  # fmt: skip
        for stage, recipe in (("pruned", None), ("recovered", "lora"), ("recovered", "lora-kd")):
            scores = _spread(ret[recipe or "pruned"][level])
            rows += _rows(model, "selective", level, stage, recipe, "conv", "distractor", scores)
    return rows


def _claims(rows: list[dict]) -> dict[str, dict]:
    out = recovery_recipe_findings(pl.DataFrame(rows, infer_schema_length=None))
    return {c["id"]: c for c in out["claims"]} | {"share": out["share_recovered"]}


def test_kd_higher_at_every_informative_level_reproduces_and_shares_are_exact():
    lost = dict.fromkeys(LEVELS, 50)
    c = _claims(_table("m", lost, dict.fromkeys(LEVELS, 60), dict.fromkeys(LEVELS, 80)))
    acc = c["kd_recovers_more_accuracy"]
    assert acc["status"] == REPRODUCED and acc["per_model"]["m/selective"]["challenger_higher_at"] == 3
    unit = acc["per_model"]["m/selective"]["units"][0]
    assert unit["challenger_vs_baseline"]["diff"] == pytest.approx(0.20)
    assert unit["base_minus_pruned"]["diff"] == pytest.approx(0.50) and unit["informative"]
    shares = c["share"]["m/selective"]["target"]
    assert [s["share"] for s in shares["lora"]] == pytest.approx([0.2] * 3)  # (60 - 50) / (100 - 50)
    assert [s["share"] for s in shares["lora-kd"]] == pytest.approx([0.6] * 3)
    # retention never dropped: no informative (distractor, level) pair, so nothing can be decided
    assert c["kd_keeps_more_retention"]["status"] == INCONCLUSIVE


def test_lora_higher_is_contradicted():
    lost = dict.fromkeys(LEVELS, 50)
    c = _claims(_table("m", lost, dict.fromkeys(LEVELS, 80), dict.fromkeys(LEVELS, 60)))
    assert c["kd_recovers_more_accuracy"]["status"] == CONTRADICTED


def test_ceiling_levels_are_listed_not_counted():
    # pruning lost nothing, so a higher lora-kd is no evidence about recovery
    c = _claims(_table("m", dict.fromkeys(LEVELS, N), dict.fromkeys(LEVELS, 60), dict.fromkeys(LEVELS, 80)))
    pm = c["kd_recovers_more_accuracy"]["per_model"]["m/selective"]
    assert c["kd_recovers_more_accuracy"]["status"] == INCONCLUSIVE and pm["informative_units"] == 0
    assert len(pm["units"]) == 3 and not any(u["informative"] for u in pm["units"])


def test_mixed_directions_are_not_reproduced():
    pruned = dict.fromkeys(LEVELS, 50)
    c = _claims(_table("m", pruned, {10.0: 60, 20.0: 80, 30.0: 70}, {10.0: 80, 20.0: 60, 30.0: 70}))
    pm = c["kd_recovers_more_accuracy"]["per_model"]["m/selective"]
    assert (pm["challenger_higher_at"], pm["challenger_lower_at"]) == (1, 1)
    assert c["kd_recovers_more_accuracy"]["status"] == NOT_REPRODUCED


def test_retention_claim_pairs_distractor_items():
    lost = dict.fromkeys(LEVELS, 50)
    retention = {"pruned": dict.fromkeys(LEVELS, 0.4), "lora": dict.fromkeys(LEVELS, 0.5),
                 "lora-kd": dict.fromkeys(LEVELS, 0.7)}  # fmt: skip
    c = _claims(_table("m", lost, dict.fromkeys(LEVELS, 60), dict.fromkeys(LEVELS, 60), retention))
    assert c["kd_keeps_more_retention"]["status"] == REPRODUCED
    assert c["kd_recovers_more_accuracy"]["status"] == NOT_REPRODUCED  # identical answers: ties everywhere
    shares = c["share"]["m/selective"]["distractor"]["lora-kd"]
    assert [s["share"] for s in shares] == pytest.approx([0.6] * 3)  # (0.7 - 0.4) / (0.9 - 0.4)


def test_overall_over_specialists_and_a_missing_recipe():
    lost = dict.fromkeys(LEVELS, 50)
    rows = _table("a", lost, dict.fromkeys(LEVELS, 60), dict.fromkeys(LEVELS, 80))
    rows += _table("b", dict.fromkeys(LEVELS, N), dict.fromkeys(LEVELS, 60), dict.fromkeys(LEVELS, 80))
    only_lora = [r for r in _table("c", lost, dict.fromkeys(LEVELS, 60), dict.fromkeys(LEVELS, 80))
                 if r["recovery"] != "lora-kd"]  # fmt: skip
    c = _claims(rows + only_lora)
    acc = c["kd_recovers_more_accuracy"]
    assert acc["status"] == REPRODUCED  # a reproduces, b and c are inconclusive (ceiling; no lora-kd)
    assert acc["per_model"]["c/selective"]["status"] == INCONCLUSIVE
    assert overall_outcome([REPRODUCED, CONTRADICTED]) == NOT_REPRODUCED
    assert overall_outcome([CONTRADICTED, INCONCLUSIVE]) == CONTRADICTED
    assert overall_outcome([INCONCLUSIVE]) == INCONCLUSIVE
    md = recovery_recipe_markdown(recovery_recipe_findings(pl.DataFrame(rows, infer_schema_length=None)))
    assert "REPRODUCED" in md and "| 10 | math |" in md


def test_paired_difference_against_brute_force():
    a = {i: float(i % 3 == 0) for i in range(30)}
    b = {i: float(i % 2 == 0) for i in range(30)}
    d = [a[i] - b[i] for i in range(30)]
    mean = sum(d) / 30
    sd = (sum((x - mean) ** 2 for x in d) / 29) ** 0.5
    p = paired_difference(a, b)
    assert p is not None and p.n == 30
    assert p.diff == pytest.approx(mean) and p.se == pytest.approx(sd / 30**0.5)
    assert paired_difference({1: 1.0}, {2: 1.0}) is None


def test_a_table_without_the_recovery_column_is_refused():
    rows = _table("m", dict.fromkeys(LEVELS, 50), dict.fromkeys(LEVELS, 60), dict.fromkeys(LEVELS, 80))
    with pytest.raises(DataError, match="missing column.*recovery"):
        recovery_recipe_findings(pl.DataFrame(rows, infer_schema_length=None).drop("recovery"))


def test_the_papers_recovery_claim_reads_the_lora_recipe_only():
    """lora-kd rows next to lora rows must not be averaged into the paper's recovered estimate."""
    from taskprune import findings as F

    def acc(level, value, stage, recovery=None):
        method = "base" if stage == "base" else "selective"
        return {"model": "m", "method": method, "direction": method, "score": "selectivity", "level": f"{level:g}",
                "level_pct": float(level), "seed": 0, "stage": stage, "recovery": recovery, "task": "math",
                "task_kind": "math", "metric": "accuracy", "value": value, "n": 400, "ci_low": value - 0.04,
                "ci_high": value + 0.04}  # fmt: skip

    rows = [acc(0, 0.8, "base")] + [acc(lv, 0.3, "pruned") for lv in LEVELS]
    rows += [acc(lv, 0.7, "recovered", "lora") for lv in LEVELS]
    lora_only = F.compute_findings(pl.DataFrame(rows, infer_schema_length=None), None)
    rows += [acc(lv, 0.1, "recovered", "lora-kd") for lv in LEVELS]  # would pull a mixed mean to 0.4
    both = F.compute_findings(pl.DataFrame(rows, infer_schema_length=None), None)

    def recovered_values(result):
        claim = next(c for c in result["claims"] if c["id"] == "recovery")
        return [x["recovered"]["value"] for x in claim["per_model"]["m"]["variants"]]

    assert recovered_values(both) == recovered_values(lora_only) == pytest.approx([0.7] * 3)
