"""Findings on hand-made metrics tables where each claim is known to hold, known to fail, or cannot be judged."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from taskprune import findings as F
from taskprune.cli import main
from taskprune.metric_names import HEADLINE_METRIC

Z = 1.959963984540054


# ------------------------------------------------------------------------------ table builders


def wilson(p: float, n: int) -> tuple[float, float]:
    """Textbook Wilson interval, written out independently of the module's."""
    z2 = Z * Z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return centre - half, centre + half


def acc_row(model: str, method: str, level: float, value: float, *, n: int = 200, seed: int = 0,
            stage: str = "pruned", task: str = "math", metric: str = HEADLINE_METRIC) -> dict:
    if method == "base":
        direction, score, stage, level = "base", "none", "base", 0
    elif method == "random":
        direction, score = "random", "random"
    else:
        direction, _, s = method.partition("-")
        score = s or "selectivity"
    lo, hi = wilson(value, n)
    return {"model": model, "method": method, "direction": direction, "score": score, "level": f"{level:g}",
            "level_pct": float(level), "seed": seed, "stage": stage, "task": task, "task_kind": "math",
            "metric": metric, "value": value, "n": n, "ci_low": lo, "ci_high": hi}


def table(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={
        "model": pl.String, "method": pl.String, "direction": pl.String, "score": pl.String, "level": pl.String,
        "level_pct": pl.Float64, "seed": pl.Int64, "stage": pl.String, "task": pl.String, "task_kind": pl.String,
        "metric": pl.String, "value": pl.Float64, "n": pl.Int64, "ci_low": pl.Float64, "ci_high": pl.Float64})


def grid(model: str, curves: dict[str, list[float] | dict[int, list[float]]], levels=(10, 20, 30), base=0.6,
         n: int = 200) -> list[dict]:
    """Rows for one model: ``curves`` maps a method to its accuracy per level (or seed -> accuracies)."""
    rows = [acc_row(model, "base", 0, base, n=n)]
    for method, vals in curves.items():
        per_seed = vals if isinstance(vals, dict) else {0: vals}
        for seed, accs in per_seed.items():
            rows += [acc_row(model, method, lv, a, n=n, seed=seed) for lv, a in zip(levels, accs, strict=True)]
    return rows


def claim(findings: dict, cid: str) -> dict:
    return next(c for c in findings["claims"] if c["id"] == cid)


def run_claims(rows: list[dict], eff: pl.DataFrame | None = None) -> dict:
    return F.compute_findings(table(rows), eff)


# ------------------------------------------------------------------------------ the statistics


def test_wilson_matches_textbook_value():
    # 50 successes out of 100: the Wilson 95% interval is [0.4038, 0.5962] (e.g. Agresti & Coull 1998).
    lo, hi = F.wilson_interval(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = F.wilson_interval(0.0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)


def test_estimate_and_compare_by_hand():
    sel = F.estimate([acc_row("m", "selective", 10, 0.6, n=200)])
    lo, hi = wilson(0.6, 200)
    assert sel.se == pytest.approx((hi - lo) / (2 * Z))
    # Two random seeds: se of the mean is the larger of seed spread and item noise.
    r1, r2 = acc_row("m", "random", 10, 0.30, seed=33), acc_row("m", "random", 10, 0.50, seed=42)
    rnd = F.estimate([r1, r2])
    seed_se = abs(0.5 - 0.3) / math.sqrt(2) / math.sqrt(2)  # sd (ddof 1) / sqrt(k)
    item_se = math.sqrt(sum(((r["ci_high"] - r["ci_low"]) / (2 * Z)) ** 2 for r in (r1, r2))) / 2
    assert rnd.value == pytest.approx(0.4)
    assert rnd.se == pytest.approx(max(seed_se, item_se))
    assert rnd.seed_sd == pytest.approx(math.sqrt(0.02))
    c = F.compare(sel, rnd)
    assert c.diff == pytest.approx(0.2)
    assert c.se == pytest.approx(math.sqrt(sel.se**2 + rnd.se**2))
    assert c.verdict == ("higher" if 0.2 - Z * c.se > 0 else "tie")


def test_missing_interval_is_rebuilt_as_wilson():
    row = acc_row("m", "selective", 10, 0.25, n=40) | {"ci_low": None, "ci_high": None}
    e = F.estimate([row])
    assert (e.ci_low, e.ci_high) == pytest.approx(wilson(0.25, 40))


# ---------------------------------------------------------------------- claim 1: selective vs random


def test_selective_beats_random_holds():
    rows = grid("tiny-math", {"selective": [0.58, 0.55, 0.50], "random": {33: [0.40, 0.25, 0.10], 42: [0.42, 0.22, 0.12]}})
    c = claim(run_claims(rows), "selective_beats_random")
    assert c["status"] == "reproduced" and c["reproduced"] is True
    m = c["per_model"]["tiny-math"]
    assert (m["levels_compared"], m["a_higher_at"], m["a_lower_at"]) == (3, 3, 0)
    lvl = m["per_level"][0]
    assert lvl["random"]["seed_values"] == [0.40, 0.42]
    assert lvl["comparison"]["diff"] == pytest.approx(0.58 - 0.41)


def test_selective_beats_random_fails_when_equal():
    rows = grid("tiny-math", {"selective": [0.40, 0.30, 0.20], "random": {33: [0.41, 0.29, 0.21], 42: [0.39, 0.31, 0.19]}})
    c = claim(run_claims(rows), "selective_beats_random")
    assert c["status"] == "not reproduced" and c["reproduced"] is False
    assert c["per_model"]["tiny-math"]["a_higher_at"] == 0


def test_one_loss_beyond_noise_fails_the_claim():
    rows = grid("tiny-math", {"selective": [0.60, 0.55, 0.05], "random": {33: [0.30, 0.25, 0.40], 42: [0.30, 0.25, 0.40]}})
    m = claim(run_claims(rows), "selective_beats_random")["per_model"]["tiny-math"]
    assert (m["a_higher_at"], m["a_lower_at"], m["status"]) == (2, 1, "not reproduced")


def test_beats_means_beyond_item_noise():
    # The same 10-point gap is noise on 20 items and a real difference on 2000.
    small = grid("m", {"selective": [0.6], "random": {33: [0.5], 42: [0.5]}}, levels=(20,), n=20)
    large = grid("m", {"selective": [0.6], "random": {33: [0.5], 42: [0.5]}}, levels=(20,), n=2000)
    assert claim(run_claims(small), "selective_beats_random")["status"] == "not reproduced"
    assert claim(run_claims(large), "selective_beats_random")["status"] == "reproduced"


def test_beats_means_beyond_seed_spread():
    # Thousands of items, but the two random seeds disagree wildly: the gap to their mean is not beyond noise.
    rows = grid("m", {"selective": [0.55], "random": {33: [0.15], 42: [0.65]}}, levels=(20,), n=5000)
    m = claim(run_claims(rows), "selective_beats_random")["per_model"]["m"]
    assert m["per_level"][0]["comparison"]["verdict"] == "tie" and m["status"] == "not reproduced"
    rows = grid("m", {"selective": [0.55], "random": {33: [0.39], 42: [0.41]}}, levels=(20,), n=5000)
    assert claim(run_claims(rows), "selective_beats_random")["status"] == "reproduced"


def test_claim_must_hold_for_every_specialist():
    good = grid("tiny-math", {"selective": [0.6, 0.6, 0.6], "random": {33: [0.2, 0.2, 0.2], 42: [0.2, 0.2, 0.2]}})
    bad = grid("tiny-code", {"selective": [0.2, 0.2, 0.2], "random": {33: [0.2, 0.2, 0.2], 42: [0.2, 0.2, 0.2]}})
    c = claim(run_claims(good + bad), "selective_beats_random")
    assert c["status"] == "not reproduced"
    assert c["per_model"]["tiny-math"]["status"] == "reproduced"
    assert c["per_model"]["tiny-code"]["status"] == "not reproduced"


# ------------------------------------------------------------------------------- claim 2: collapse


def test_reverse_collapse_holds_and_uses_level_nearest_ten():
    rows = grid("m", {"reverse": [0.02, 0.55, 0.0], "random": {33: [0.5, 0.5, 0.5]}}, levels=(5.71, 10, 15.71))
    c = claim(run_claims(rows), "reverse_collapse")
    m = c["per_model"]["m"]
    # Level 10 is nearest to 10%: 0.55 there is no collapse, whatever happens at 5.71 and 15.71.
    assert m["level"] == "10" and c["status"] == "not reproduced"


def test_reverse_collapse_threshold_is_upper_bound_vs_half_base():
    # base 0.6 -> threshold 0.30; 0.22 on 200 items has an upper bound ~0.28 (< 0.30): collapsed.
    ok = grid("m", {"reverse": [0.22]}, levels=(10,), base=0.6)
    # 0.26 on 200 items has an upper bound ~0.32 (> 0.30): below half the base, but not beyond noise.
    noisy = grid("m", {"reverse": [0.26]}, levels=(10,), base=0.6)
    assert wilson(0.22, 200)[1] < 0.3 < wilson(0.26, 200)[1]
    assert claim(run_claims(ok), "reverse_collapse")["status"] == "reproduced"
    assert claim(run_claims(noisy), "reverse_collapse")["status"] == "not reproduced"


def test_reverse_collapse_not_evaluated_without_a_small_level():
    rows = grid("m", {"reverse": [0.0, 0.0]}, levels=(20, 30))
    c = claim(run_claims(rows), "reverse_collapse")
    assert c["status"] == "not evaluated" and c["reproduced"] is None


def test_control_selectivity_beyond_magnitude():
    holds = grid("m", {"reverse": [0.02, 0.01, 0.0], "reverse-magnitude": [0.45, 0.3, 0.2]})
    fails = grid("m", {"reverse": [0.02, 0.01, 0.0], "reverse-magnitude": [0.03, 0.0, 0.01]})
    c_holds = run_claims(holds)
    assert claim(c_holds, "selectivity_beyond_magnitude")["status"] == "reproduced"
    assert claim(run_claims(fails), "selectivity_beyond_magnitude")["status"] == "not reproduced"
    # Both reverse variants are reported for the collapse claim.
    other = claim(c_holds, "reverse_collapse")["other_reverse_methods"]["m"]
    assert other["reverse-magnitude"]["status"] == "not reproduced"


# ------------------------------------------------------------------------------- claim 3: recovery


def _recovery_rows(pruned: list[float], recovered: list[float], base: float = 0.6) -> list[dict]:
    rows = grid("m", {"selective": pruned}, base=base)
    rows += [acc_row("m", "selective", lv, a, stage="recovered") for lv, a in zip((10, 20, 30), recovered, strict=True)]
    return rows


def test_recovery_holds():
    # Level 10 lost nothing (listed, not counted); 20 and 30 lost accuracy and gain it back beyond noise.
    c = claim(run_claims(_recovery_rows([0.59, 0.30, 0.10], [0.60, 0.55, 0.40])), "recovery")
    assert c["status"] == "reproduced"
    v = c["per_model"]["m"]["variants"]
    assert [x["lost_accuracy"] for x in v] == [False, True, True]
    assert [x["recovers"] for x in v] == [False, True, True]
    assert v[1]["gap_closed"] == pytest.approx((0.55 - 0.30) / (0.6 - 0.30))


def test_recovery_fails_when_fine_tuning_does_not_help():
    c = claim(run_claims(_recovery_rows([0.30, 0.20, 0.10], [0.31, 0.19, 0.12])), "recovery")
    assert c["status"] == "not reproduced"


def test_recovery_fails_when_one_variant_gets_worse():
    c = claim(run_claims(_recovery_rows([0.30, 0.50, 0.10], [0.55, 0.20, 0.40])), "recovery")
    m = c["per_model"]["m"]
    assert sum(x["worse"] for x in m["variants"]) == 1 and c["status"] == "not reproduced"


def test_recovery_counts_every_recovered_method():
    # Selective lost nothing; the random control lost a lot and recovers: the claim is decided by random.
    rows = _recovery_rows([0.60, 0.59, 0.58], [0.60, 0.60, 0.59])
    rows += [acc_row("m", "random", 30, 0.10, seed=33), acc_row("m", "random", 30, 0.45, seed=33, stage="recovered")]
    c = claim(run_claims(rows), "recovery")
    assert c["status"] == "reproduced"
    tested = [x for x in c["per_model"]["m"]["variants"] if x["lost_accuracy"]]
    assert [(x["method"], x["level"], x["recovers"]) for x in tested] == [("random", "30", True)]
    assert "random 1/1" in c["summary"]


def test_recovery_not_evaluated_when_pruning_lost_nothing():
    # Pruned and recovered both sit at the base accuracy: there is nothing to recover, so no verdict.
    c = claim(run_claims(_recovery_rows([0.60, 0.59, 0.58], [0.60, 0.60, 0.59])), "recovery")
    assert c["status"] == "not evaluated" and "nothing to recover" in c["summary"]


# ------------------------------------------------------------------------------ claim 4: efficiency


def eff_table(params=(1000, 900, 800), memory=(100e6, 90e6, 80e6), tok=((100, 95, 105), (110, 105, 115), (130, 125, 135)),
              levels=(0, 10, 20), batch_sizes=(1, 8)) -> pl.DataFrame:
    rows = []
    for lv, p, m, (t, q1, q3) in zip(levels, params, memory, tok, strict=True):
        stage, method = ("base", "base") if lv == 0 else ("pruned", "selective")
        for bs in batch_sizes:
            for phase in ("prefill", "decode"):
                rows.append({"variant": f"m/{method}/{lv}/0", "model": "m", "method": method, "level": f"{lv:g}",
                             "level_pct": float(lv), "seed": 0, "stage": stage, "batch_size": bs, "phase": phase,
                             "params_total": p, "params_mlp": p // 2, "bytes_on_disk": 4 * p,
                             "peak_memory_bytes": m, "tokens_per_s": float(t * bs), "tokens_per_s_q1": float(q1 * bs),
                             "tokens_per_s_q3": float(q3 * bs), "ideal_speedup": 1000 / p, "measured_speedup": t / 100,
                             "realised_fraction": None, "device": "cpu"})
    return pl.DataFrame(rows)


def test_efficiency_holds():
    rows = grid("m", {"selective": [0.5, 0.4]}, levels=(10, 20))
    c = claim(run_claims(rows, eff_table()), "efficiency")
    assert c["status"] == "reproduced", c["summary"]
    m = c["per_model"]["m"]
    assert m["checks"] == {"params": True, "memory": True, "throughput": True}
    assert m["throughput"]["decode"][-1]["measured_speedup"] == pytest.approx(1.3)
    assert m["memory"]["reduction"] == pytest.approx(0.2)


def test_efficiency_fails_on_overlapping_throughput_or_flat_memory():
    rows = grid("m", {"selective": [0.5, 0.4]}, levels=(10, 20))
    overlapping = eff_table(tok=((100, 90, 110), (101, 91, 111), (105, 95, 115)))
    c = claim(run_claims(rows, overlapping), "efficiency")
    assert c["status"] == "not reproduced" and c["per_model"]["m"]["checks"]["throughput"] is False
    flat = eff_table(memory=(100e6, 99.8e6, 99.5e6))  # -0.5%: inside the 1% noise floor
    assert claim(run_claims(rows, flat), "efficiency")["per_model"]["m"]["checks"]["memory"] is False
    growing = eff_table(params=(1000, 800, 900))
    assert claim(run_claims(rows, growing), "efficiency")["per_model"]["m"]["checks"]["params"] is False


def test_efficiency_not_evaluated_without_table_or_measurement():
    rows = grid("m", {"selective": [0.5, 0.4]}, levels=(10, 20))
    assert claim(run_claims(rows, None), "efficiency")["status"] == "not evaluated"
    no_mem = eff_table().with_columns(pl.lit(None, dtype=pl.Float64).alias("peak_memory_bytes"))
    c = claim(run_claims(rows, no_mem), "efficiency")
    assert c["status"] == "not evaluated" and c["per_model"]["m"]["checks"]["memory"] is None


# --------------------------------------------------------------------------------------- ranking


def test_ranking_orders_methods_by_the_pairwise_rule():
    rows = grid("m", {
        "selective": [0.55, 0.50, 0.45],
        "selective-wanda": [0.58, 0.57, 0.56],
        "selective-taker": [0.40, 0.30, 0.25],
        "random": {33: [0.20, 0.10, 0.05], 42: [0.22, 0.12, 0.05]},
    }, n=1000)
    r = run_claims(rows)["ranking"]["per_model"]["m"]
    assert [x["method"] for x in r["ranking"]] == ["selective-wanda", "selective", "selective-taker", "random"]
    assert r["best"] == ["selective-wanda"]
    assert r["ranking"][0]["copeland"] == 3 and r["ranking"][-1]["copeland"] == -3


def test_ranking_reports_ties():
    rows = grid("m", {"selective": [0.5, 0.5], "selective-taker": [0.5, 0.51]}, levels=(10, 20))
    r = run_claims(rows)["ranking"]["per_model"]["m"]
    assert set(r["best"]) == {"selective", "selective-taker"}


# ------------------------------------------------------------------------------- partial grid, CLI


def test_partial_grid_says_not_evaluated(tmp_path):
    rows = grid("m", {"selective": [0.5, 0.4, 0.3]})  # no random, reverse, recovery, efficiency
    path = tmp_path / "metrics.parquet"
    table(rows).write_parquet(path)
    out, md, page = tmp_path / "findings.json", tmp_path / "findings.md", tmp_path / "findings.html"
    assert main(["findings", "--metrics", str(path), "--out", str(out), "--markdown", str(md), "--html", str(page)]) == 0
    f = json.loads(out.read_text())  # strict JSON: no NaN
    assert {c["id"]: c["status"] for c in f["claims"]} == {
        "selective_beats_random": "not evaluated",
        "reverse_collapse": "not evaluated",
        "recovery": "not evaluated",
        "efficiency": "not evaluated",
        "selectivity_beyond_magnitude": "not evaluated",
    }
    assert "missing pruned method(s): random" in claim(f, "selective_beats_random")["summary"]
    text = md.read_text()
    assert "NOT EVALUATED" in text and "| claim |" in text
    assert page.read_text().startswith("<!DOCTYPE html>")


def test_full_cli_roundtrip_is_strict_json(tmp_path):
    rows = grid("m", {"selective": [0.58, 0.55, 0.40], "reverse": [0.0, 0.0, 0.0],
                      "random": {33: [0.40, 0.25, 0.10], 42: [0.42, 0.22, 0.12]}})
    rows += [acc_row("m", "selective", 30, 0.58, stage="recovered")]  # pruned 0.40 vs base 0.6: lost, recovers
    metrics, eff = tmp_path / "metrics.parquet", tmp_path / "eff.parquet"
    table(rows).write_parquet(metrics)
    eff_table(levels=(0, 10, 30)).write_parquet(eff)
    out, md = tmp_path / "f.json", tmp_path / "f.md"
    assert main(["findings", "--metrics", str(metrics), "--efficiency", str(eff), "--out", str(out), "--markdown", str(md)]) == 0
    f = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert all(c["status"] == "reproduced" for c in f["claims"] if c["id"] != "selectivity_beyond_magnitude")
    assert "REPRODUCED" in md.read_text()


def test_bad_metrics_table_is_one_line_error(tmp_path, capsys):
    path = tmp_path / "metrics.parquet"
    pl.DataFrame({"model": ["m"], "value": [0.5]}).write_parquet(path)
    assert main(["findings", "--metrics", str(path), "--out", str(tmp_path / "f.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing column(s)" in err and str(path) in err
    assert not (tmp_path / "f.json").exists()
