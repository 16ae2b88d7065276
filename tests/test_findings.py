"""Findings on hand-made per-item tables where each outcome is known by construction."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from taskprune.cli import main
from taskprune.report.claims import compute_findings
from taskprune.report.estimates import RULES, overall_outcome, paired
from taskprune.report.results import Items, validate_items
from taskprune.tasks.metric_names import MATH_HEADLINE_METRIC

Z = 1.959963984540054
N = 200  # items per task


# ------------------------------------------------------------------------------ table builders


def items(model: str, method: str, level: float, correct: list[int] | int, *, seed: int = 0, stage: str = "pruned",
          task: str = "math", role: str = "target", n: int = N, recovery: str | None = None) -> list[dict]:
    """Rows of one variant on one task. ``correct``: the indices of the items scored 1, or a count (the first ones)."""
    hits = set(range(correct)) if isinstance(correct, int) else set(correct)
    if method == "base":
        level, stage, seed = 0, "base", 0
    return [{"model": model, "method": method, "level": f"{level:g}", "level_pct": float(level), "seed": seed,
             "stage": stage, "recovery": recovery, "task": task, "role": role, "id": f"q{i}",
             "metric": MATH_HEADLINE_METRIC, "score": float(i in hits)} for i in range(n)]


def table(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={
        "model": pl.String, "method": pl.String, "level": pl.String, "level_pct": pl.Float64, "seed": pl.Int64,
        "stage": pl.String, "recovery": pl.String, "task": pl.String, "role": pl.String, "id": pl.String,
        "metric": pl.String, "score": pl.Float64})


def run(rows: list[dict], eff: pl.DataFrame | None = None) -> dict:
    return compute_findings(validate_items(table(rows), "test"), eff)


def claim(findings: dict, cid: str) -> dict:
    return next(c for c in findings["claims"] if c["id"] == cid)


def wilson(k: int, n: int) -> tuple[float, float]:
    p, z2 = k / n, Z * Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return centre - half, centre + half


def unpaired_tie(ka: int, kb: int, n: int) -> bool:
    """The old rule: two independent Wilson intervals combined; True when it calls A - B a tie."""
    se = [(hi - lo) / (2 * Z) for lo, hi in (wilson(ka, n), wilson(kb, n))]
    d, se_d = (ka - kb) / n, math.hypot(*se)
    return d - Z * se_d <= 0 <= d + Z * se_d


# ------------------------------------------------------------------------------ the statistics


def test_paired_bootstrap_by_hand():
    # A is right on items 0..149, B on 0..139: every discordant item favours A, d = +0.05 exactly.
    a = Items(table(items("m", "selective", 10, 150))).get("m", "selective", 10)
    b = Items(table(items("m", "random", 10, 140))).get("m", "random", 10)
    c = paired(a, b)
    assert c.diff == pytest.approx(0.05) and c.n_items == N
    # Independent truth: the per-item differences are 1 on 10 items and 0 on 190, so the normal-theory paired
    # interval is d -/+ 1.96 * sd(d_i) / sqrt(n) with sd(d_i) = sqrt(0.05 * 0.95): width 0.0604.
    width = 2 * Z * math.sqrt(0.05 * 0.95 / N)
    assert c.verdict == "higher" and c.ci_high - c.ci_low == pytest.approx(width, rel=0.15)
    # Identical sides: a zero difference with a zero-width interval, a tie.
    same = paired(a, a)
    assert (same.diff, same.ci_low, same.ci_high, same.verdict) == (0.0, 0.0, 0.0, "tie")


def test_bootstrap_is_seeded_and_records_its_resamples():
    rows = items("m", "base", 0, N) + items("m", "selective", 10, 150) + items("m", "random", 10, 120, seed=33)
    first, second = run(rows), run(rows)
    assert first == second
    assert first["rules"]["constants"]["bootstrap_resamples"] == RULES.bootstrap_resamples >= 1000
    assert first["rules"]["constants"]["bootstrap_seed"] == RULES.bootstrap_seed
    assert set(first["outcomes"]) == {"reproduced", "not reproduced", "contradicted", "inconclusive"}


def test_random_seeds_are_resampled_with_items():
    # Two random seeds that disagree on which items they get right: the seed spread widens the interval.
    base = items("m", "base", 0, N)
    sel = items("m", "selective", 10, range(50, 200))
    agree = items("m", "random", 10, range(60, 200), seed=33) + items("m", "random", 10, range(60, 200), seed=42)
    spread = items("m", "random", 10, range(20, 200), seed=33) + items("m", "random", 10, range(100, 200), seed=42)
    def width(rows):
        lv = run(base + sel + rows)["claims"][0]["per_model"]["m"]["per_level"][0]["comparison"]
        return lv["ci95"][1] - lv["ci95"][0], lv["diff"]
    (w_agree, d_agree), (w_spread, d_spread) = width(agree), width(spread)
    assert d_agree == pytest.approx(d_spread) == pytest.approx(0.05)
    assert w_spread > 2 * w_agree


# ---------------------------------------------------------------------- claim 1: selective vs random


def _curves(model: str, base: int, selective: list[int], random: list[int], levels: list[float]) -> list[dict]:
    """Base right on its first ``base`` items; at each level selective/random (2 seeds) right on their first k."""
    rows = items(model, "base", 0, base)
    for lv, s, r in zip(levels, selective, random, strict=True):
        rows += items(model, "selective", lv, s)
        rows += items(model, "random", lv, r, seed=33) + items(model, "random", lv, r, seed=42)
    return rows


def test_ceiling_levels_are_listed_but_not_counted():
    # 7 levels; at the first two random (and selective) score exactly the base: a ceiling, no loss possible.
    # Selective is higher at 3 of the 5 informative levels and lower at none: reproduced. The old rule counted
    # all 7 levels and needed 4 wins, so it said "not reproduced".
    levels = [5.71, 10, 15.71, 20, 25.71, 30, 35.71]
    rows = _curves("tiny-code", 194, [194, 194, 190, 180, 170, 150, 120], [194, 194, 190, 150, 130, 110, 118], levels)
    m = claim(run(rows), "selective_beats_random")["per_model"]["tiny-code"]
    assert m["ceiling_levels"] == ["5.71", "10"]
    assert [x["informative"] for x in m["per_level"]] == [False, False, True, True, True, True, True]
    assert (m["informative_levels"], m["a_higher_at"], m["a_lower_at"]) == (5, 3, 0)
    assert m["status"] == "reproduced"
    assert m["a_higher_at"] < math.ceil(len(levels) / 2)  # what the old denominator demanded


def test_paired_test_says_higher_where_unpaired_intervals_tie():
    # Both fail the same hard items; selective fails 10 fewer. Unpaired Wilson intervals overlap; paired does not.
    rows = _curves("m", N, [150], [140], [15.71])
    assert unpaired_tie(150, 140, N)
    m = claim(run(rows), "selective_beats_random")["per_model"]["m"]
    cmp = m["per_level"][0]["comparison"]
    assert cmp["verdict"] == "higher" and cmp["ci95"][0] > 0
    assert m["status"] == "reproduced"


def test_contradicted_when_random_beats_selective():
    rows = _curves("m", N, [100, 60, 20], [160, 140, 120], [10, 20, 30])
    c = claim(run(rows), "selective_beats_random")
    m = c["per_model"]["m"]
    assert m["b_beats_a"] is True and m["a_beats_b"] is False
    assert m["status"] == "contradicted" and c["status"] == "contradicted"


def test_not_reproduced_when_the_signal_is_mixed():
    # Random lost accuracy at every level (informative); selective higher at one, lower at another.
    rows = _curves("m", N, [180, 100, 150], [150, 150, 150], [10, 20, 30])
    m = claim(run(rows), "selective_beats_random")["per_model"]["m"]
    assert (m["a_higher_at"], m["a_lower_at"]) == (1, 1) and m["status"] == "not reproduced"


def test_inconclusive_when_random_never_lost_accuracy():
    # Random equals the base everywhere; selective a little lower (within noise): nothing to decide.
    rows = _curves("m", 180, [178, 179, 177], [180, 180, 180], [10, 20, 30])
    c = claim(run(rows), "selective_beats_random")
    assert c["per_model"]["m"]["informative_levels"] == 0
    assert c["per_model"]["m"]["status"] == "inconclusive" and c["status"] == "inconclusive"


def test_missing_method_is_inconclusive():
    rows = items("m", "base", 0, 150) + items("m", "selective", 10, 140)
    c = claim(run(rows), "selective_beats_random")
    assert c["status"] == "inconclusive" and "random" in c["per_model"]["m"]["summary"]


def test_overall_rule_over_specialists():
    assert overall_outcome(["reproduced", "inconclusive"]) == "reproduced"
    assert overall_outcome(["reproduced", "not reproduced"]) == "not reproduced"
    assert overall_outcome(["contradicted", "contradicted"]) == "contradicted"
    assert overall_outcome(["reproduced", "contradicted"]) == "not reproduced"
    assert overall_outcome(["inconclusive", "inconclusive"]) == "inconclusive"
    good = _curves("tiny-math", N, [190, 180], [150, 120], [10, 20])
    flat = _curves("tiny-code", N, [150, 120], [150, 120], [10, 20])
    c = claim(run(good + flat), "selective_beats_random")
    assert c["per_model"]["tiny-math"]["status"] == "reproduced"
    assert c["per_model"]["tiny-code"]["status"] == "not reproduced" and c["status"] == "not reproduced"


def test_code_kind_distractor_of_a_math_model_does_not_count_as_accuracy():
    # The math model's target is right on 150 items at every variant; its code distractor is at 0 for random
    # and 1 for selective. If the distractor were averaged in as another "seed", the claims would move.
    rows = items("tiny-math", "base", 0, 190) + items("tiny-math", "base", 0, N, task="code", role="distractor")
    for lv in (10, 20):
        rows += items("tiny-math", "selective", lv, 150)
        rows += items("tiny-math", "selective", lv, N, task="code", role="distractor")
        rows += items("tiny-math", "random", lv, 150, seed=33)
        rows += items("tiny-math", "random", lv, 0, task="code", role="distractor", seed=33)
    f = run(rows)
    m = claim(f, "selective_beats_random")["per_model"]["tiny-math"]
    assert [x["comparison"]["diff"] for x in m["per_level"]] == [0.0, 0.0]
    assert m["per_level"][0]["selective"]["value"] == pytest.approx(0.75)
    assert m["status"] == "not reproduced"  # random lost accuracy; selective is not higher
    assert f["ranking"]["per_model"]["tiny-math"]["best"] == []


# ------------------------------------------------------------------------------- claim 2: collapse


def _collapse_rows(reverse: dict[float, int], random: dict[float, int], base: int = 180) -> list[dict]:
    rows = items("m", "base", 0, base)
    rows += [r for lv, k in reverse.items() for r in items("m", "reverse", lv, k)]
    rows += [r for lv, k in random.items() for r in items("m", "random", lv, k, seed=33)]
    return rows


def test_reverse_collapse_reproduced_with_cliff_level():
    rows = _collapse_rows({5: 170, 10: 20, 15: 5}, {5: 178, 10: 176, 15: 170})
    m = claim(run(rows), "reverse_collapse")["per_model"]["m"]
    assert m["level"] == "10" and m["status"] == "reproduced"
    assert m["cliff_level"] == "10"


def test_reverse_collapse_not_reproduced_when_random_collapses_too():
    # Reverse is far below half the base, but random pruning at the same level is just as low: a fragile model.
    rows = _collapse_rows({10: 20}, {10: 22})
    m = claim(run(rows), "reverse_collapse")["per_model"]["m"]
    assert m["reverse_minus_half_base"]["verdict"] == "lower" and m["reverse_vs_random"]["verdict"] == "tie"
    assert m["status"] == "not reproduced" and m["cliff_level"] is None


def test_reverse_collapse_contradicted_when_reverse_keeps_most_accuracy():
    rows = _collapse_rows({10: 160}, {10: 170})
    assert claim(run(rows), "reverse_collapse")["per_model"]["m"]["status"] == "contradicted"


def test_reverse_collapse_inconclusive_without_a_level_near_ten_or_random():
    assert claim(run(_collapse_rows({20: 0, 30: 0}, {20: 150})), "reverse_collapse")["status"] == "inconclusive"
    assert claim(run(_collapse_rows({10: 10}, {})), "reverse_collapse")["status"] == "inconclusive"


# ------------------------------------------------------------------------------- claim 3: recovery


def _recovery_rows(pruned: dict[float, int], recovered: dict[float, int], base: int = 180) -> list[dict]:
    rows = items("m", "base", 0, base)
    rows += [r for lv, k in pruned.items() for r in items("m", "selective", lv, k)]
    rows += [r for lv, k in recovered.items() for r in items("m", "selective", lv, k, stage="recovered",
                                                               recovery="lora")]
    return rows


def test_recovery_reproduced():
    c = claim(run(_recovery_rows({10: 179, 20: 100, 30: 60}, {10: 180, 20: 160, 30: 130})), "recovery")
    m = c["per_model"]["m"]
    assert [x["lost_accuracy"] for x in m["variants"]] == [False, True, True]
    assert m["status"] == "reproduced"
    assert m["variants"][1]["gap_closed"] == pytest.approx((160 - 100) / (180 - 100))


def test_recovery_inconclusive_on_one_variant():
    # One recovered variant that lost accuracy, and it recovers: not enough to decide.
    c = claim(run(_recovery_rows({30: 60}, {30: 150})), "recovery")
    assert c["per_model"]["m"]["status"] == "inconclusive" and c["status"] == "inconclusive"


def test_recovery_contradicted_and_not_reproduced():
    worse = claim(run(_recovery_rows({20: 120, 30: 100}, {20: 60, 30: 40})), "recovery")
    assert worse["per_model"]["m"]["status"] == "contradicted"
    flat = claim(run(_recovery_rows({20: 120, 30: 100}, {20: 121, 30: 99})), "recovery")
    assert flat["per_model"]["m"]["status"] == "not reproduced"


# ------------------------------------------------------------------------------------- the control


def test_selectivity_beyond_magnitude():
    rows = items("m", "base", 0, 180)
    for lv, rev, mag in ((10, 10, 120), (20, 5, 90)):
        rows += items("m", "reverse", lv, rev) + items("m", "reverse-magnitude", lv, mag)
    assert claim(run(rows), "selectivity_beyond_magnitude")["status"] == "reproduced"


# --------------------------------------------------------------------------------------- ranking


def test_random_beaten_is_never_best():
    rows = items("m", "base", 0, N)
    for lv, sel, wanda, rnd in ((10, 190, 189, 150), (20, 170, 171, 120)):
        rows += items("m", "selective", lv, sel) + items("m", "selective-wanda", lv, wanda)
        rows += items("m", "random", lv, rnd, seed=33) + items("m", "random", lv, rnd, seed=42)
    r = run(rows)["ranking"]["per_model"]["m"]
    by = {x["method"]: x for x in r["ranking"]}
    assert by["random"]["level_wins"] == 0 and by["random"]["copeland"] < 0
    assert set(by["random"]["beaten_by"]) == {"selective", "selective-wanda"}
    assert "random" not in r["best"] and set(r["best"]) == {"selective", "selective-wanda"}


def test_no_method_beats_another():
    rows = items("m", "base", 0, N)
    for lv in (10, 20):
        rows += items("m", "selective", lv, 150) + items("m", "random", lv, 150, seed=33)
    r = run(rows)["ranking"]["per_model"]["m"]
    assert r["best"] == [] and r["summary"] == "no method beats another beyond noise at these levels"


# --------------------------------------------------------------------------------------- trends


def test_trends_describe_retention_and_trap_rate():
    rows = items("m", "base", 0, N)
    for lv, ret, trap in ((10, 180, 10), (20, 140, 40), (30, 100, 90)):
        rows += items("m", "selective", lv, 150)
        d = items("m", "selective", lv, ret, task="conversation", role="distractor")
        rows += [r | {"hit_limit": float(int(r["id"][1:]) < trap)} for r in d]
    df = table(rows).with_columns(pl.Series("hit_limit", [r.get("hit_limit") for r in rows], dtype=pl.Float64))
    t = compute_findings(validate_items(df, "test"))["trends"]["per_model"]["m"]["selective"]
    assert t["distractor_retention"]["spearman"] == pytest.approx(-1.0)
    assert t["distractor_retention"]["reading"] == "falls with the level beyond noise"
    assert t["trap_rate"]["spearman"] == pytest.approx(1.0) and t["trap_rate"]["ci95"][0] > 0


# ------------------------------------------------------------------------------ claim 4: efficiency


def eff_table(ci=(1.10, 1.30), noisy=False, params=(1000, 900, 800), memory=(100e6, 90e6, 80e6)) -> pl.DataFrame:
    rows = []
    for lv, p, m in zip((0, 10, 20), params, memory, strict=True):
        method = "base" if lv == 0 else "selective"
        for engine in ("stock", "tight"):
            for bs in (1, 8):
                lo, hi = (1.0, 1.0) if lv == 0 else ci
                rows.append({"shapes": "tiny", "variant": f"tiny/{method}/{lv}", "method": method, "level": f"{lv:g}",
                             "level_pct": float(lv), "batch_size": bs, "phase": "decode", "engine": engine,
                             "measured_speedup": (lo + hi) / 2, "measured_speedup_ci_low": lo,
                             "measured_speedup_ci_high": hi if engine == "stock" else 9.0, "ideal_speedup": 1.25,
                             "ideal_speedup_bytes": 1.2, "realised_fraction": 0.8, "n_pairs": 9, "noisy": noisy,
                             "params_total": p, "peak_memory_bytes": m})  # fmt: skip
    return pl.DataFrame(rows)


def test_efficiency_outcomes_from_the_stock_engine_ci():
    acc = items("m", "base", 0, N)
    assert claim(run(acc, eff_table()), "efficiency")["per_model"]["tiny"]["status"] == "reproduced"
    slower = claim(run(acc, eff_table(ci=(0.80, 0.95))), "efficiency")["per_model"]["tiny"]
    assert slower["checks"]["throughput"] == "contradicted" and slower["status"] == "contradicted"
    straddles = claim(run(acc, eff_table(ci=(0.95, 1.20))), "efficiency")["per_model"]["tiny"]
    assert straddles["status"] == "inconclusive"
    noisy = claim(run(acc, eff_table(ci=(1.5, 1.9), noisy=True)), "efficiency")["per_model"]["tiny"]
    assert noisy["checks"]["throughput"] == "inconclusive" and noisy["status"] == "inconclusive"
    flat = claim(run(acc, eff_table(memory=(100e6, 99.8e6, 99.5e6))), "efficiency")["per_model"]["tiny"]
    assert flat["checks"]["memory"] == "not reproduced"


def test_efficiency_without_paired_columns_or_table_is_inconclusive():
    acc = items("m", "base", 0, N)
    assert claim(run(acc, None), "efficiency")["status"] == "inconclusive"
    old = eff_table().drop("engine", "measured_speedup_ci_low", "measured_speedup_ci_high")
    c = claim(run(acc, old), "efficiency")["per_model"]["tiny"]
    assert c["checks"] == {"params": "reproduced", "memory": "reproduced", "throughput": "inconclusive"}


# ------------------------------------------------------------------------------------------- CLI


def test_cli_end_to_end_on_a_per_item_table(tmp_path):
    rows = _curves("m", N, [200, 185, 170], [200, 150, 120], [10, 20, 30])  # level 10: a ceiling
    rows += items("m", "reverse", 10, 5) + items("m", "reverse", 20, 0) + items("m", "reverse", 30, 0)
    rows += items("m", "selective", 20, 198, stage="recovered") + items("m", "selective", 30, 196, stage="recovered")
    path, eff = tmp_path / "items.parquet", tmp_path / "eff.parquet"
    table(rows).drop("recovery").write_parquet(path)  # the recovery column is optional
    eff_table().write_parquet(eff)
    out, md, page = tmp_path / "f.json", tmp_path / "f.md", tmp_path / "f.html"
    assert main(["findings", "--items", str(path), "--efficiency", str(eff), "--out", str(out),
                 "--markdown", str(md), "--html", str(page)]) == 0
    f = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    status = {c["id"]: c["status"] for c in f["claims"]}
    assert status == {"selective_beats_random": "reproduced", "reverse_collapse": "reproduced",
                      "recovery": "reproduced", "efficiency": "reproduced",
                      "selectivity_beyond_magnitude": "inconclusive"}
    text = md.read_text()
    assert "REPRODUCED" in text and "INCONCLUSIVE" in text and "no: ceiling" in text and "| claim |" in text
    assert page.read_text().startswith("<!DOCTYPE html>")
    # --efficiency is optional
    assert main(["findings", "--items", str(path), "--out", str(out)]) == 0
    assert claim(json.loads(out.read_text()), "efficiency")["status"] == "inconclusive"


def test_bad_items_table_is_one_line_error(tmp_path, capsys):
    path = tmp_path / "items.parquet"
    pl.DataFrame({"model": ["m"], "score": [0.5]}).write_parquet(path)
    assert main(["findings", "--items", str(path), "--out", str(tmp_path / "f.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing column(s)" in err and str(path) in err
    assert not (tmp_path / "f.json").exists()
    bad = table(items("m", "base", 0, 10)).with_columns(pl.lit("targt").alias("role"))
    bad.write_parquet(path)
    assert main(["findings", "--items", str(path), "--out", str(tmp_path / "f.json")]) == 2
    assert "'role'" in capsys.readouterr().err


# ------------------------------------------------------------------- the per-item table (gather step)


def _eval_dir(root, variant, model, method, level, seed, stage, tables):
    """Write results/eval/{variant}/: each task's per-item table and the variant's metrics rows."""
    from taskprune.evaluate import task_metric_rows
    from taskprune.metrics import metrics_frame

    d = root / variant
    d.mkdir(parents=True)
    rows = []
    for task, (kind, df) in tables.items():
        df.write_parquet(d / f"{task}.parquet")
        for metric, value, n, lo, hi in task_metric_rows(kind, df):
            rows.append({"model": model, "method": method, "direction": method.split("-")[0], "score": "selectivity",
                         "level": level, "level_pct": float(level), "seed": seed, "stage": stage, "task": task,
                         "task_kind": kind, "metric": metric, "value": value, "n": n, "ci_low": lo, "ci_high": hi})
    metrics_frame(rows).write_parquet(d / "metrics.parquet")
    return str(d / "metrics.parquet")


def test_gather_writes_items_keyed_by_the_target_task(tmp_path):
    # A math model with a code-kind distractor and a conversation distractor; two samples per code item.
    math_df = pl.DataFrame({"id": ["a", "b", "c", "d"], "correct_formatted": [True, False, False, False],
                            "correct_numeric": [True, True, False, False], "hit_limit": [False, False, True, False],
                            "n_tokens": [5, 6, 7, 8]})
    code_df = pl.DataFrame({"id": ["x", "x", "y", "y"], "correct": [True, False, True, True],
                            "program_passed": [True, False, True, True], "hit_limit": [False, True, False, False],
                            "n_tokens": [3, 3, 3, 3]})
    conv_df = pl.DataFrame({"id": ["u", "v"], "token_f1": [0.5, 0.25], "chrf": [0.4, 0.2],
                            "hit_limit": [False, False], "n_tokens": [4, 4]})
    tables = {"code": ("code", code_df), "math": ("math", math_df), "conversation": ("conversation", conv_df)}
    files = [_eval_dir(tmp_path, "tiny-math/base", "tiny-math", "base", "0", 0, "base", tables),
             _eval_dir(tmp_path, "tiny-math/selective/10/0/recovered", "tiny-math", "selective", "10", 0,
                       "recovered", tables)]
    out, items_out = tmp_path / "metrics.parquet", tmp_path / "items.parquet"
    assert main(["metrics", "--inputs", *files, "--target", "tiny-math=math", "--out", str(out),
                 "--items", str(items_out)]) == 0
    it = pl.read_parquet(items_out)
    assert it.columns[:12] == ["model", "method", "level", "level_pct", "seed", "stage", "recovery", "task", "role",
                               "id", "metric", "score"]
    base = it.filter(pl.col("stage") == "base")
    assert base.filter(pl.col("role") == "target")["task"].unique().to_list() == ["math"]
    assert dict(base.filter(pl.col("task") == "math").select("id", "score").iter_rows()) == {
        "a": 1.0, "b": 1.0, "c": 0.0, "d": 0.0}
    assert base.filter(pl.col("task") == "math")["metric"].unique().to_list() == [MATH_HEADLINE_METRIC]
    code = base.filter(pl.col("task") == "code")
    assert code["role"].unique().to_list() == ["distractor"]
    assert dict(code.select("id", "score").iter_rows()) == {"x": 0.5, "y": 1.0}  # pass@1 estimate per item
    assert dict(code.select("id", "hit_limit").iter_rows()) == {"x": 0.5, "y": 0.0}
    assert dict(base.filter(pl.col("task") == "conversation").select("id", "score").iter_rows()) == {"u": 0.5, "v": 0.25}
    assert it.filter(pl.col("stage") == "recovered")["recovery"].unique().to_list() == ["lora"]
    assert base["recovery"].null_count() == base.height
    m = pl.read_parquet(out)
    assert {"recovery", "role"} <= set(m.columns)
    # metrics.parquet and items.parquet agree: the target's headline metric is the mean of its item scores.
    row = m.filter((pl.col("stage") == "base") & (pl.col("task") == "math") & (pl.col("metric") == MATH_HEADLINE_METRIC))
    assert row["value"].item() == pytest.approx(base.filter(pl.col("task") == "math")["score"].mean())
    assert m.filter(pl.col("task") == "code")["role"].unique().to_list() == ["distractor"]
    # and the findings read it: the recovered variant has a pruned counterpart missing, so recovery is inconclusive
    assert main(["findings", "--items", str(items_out), "--out", str(tmp_path / "f.json")]) == 0
