"""The claims: decide from the per-item data whether each claim of the paper reproduced, by rules stated before looking.

The paper makes four claims about task-specific pruning of a specialist's MLP neurons:

1. **selective beats random**: removing the neurons least selective for the target task keeps target
   accuracy better than removing the same number of neurons at random;
2. **reverse collapse**: removing ~10% of the *most* selective neurons collapses the model;
3. **recovery**: LoRA fine-tuning recovers the pruned models;
4. **efficiency**: pruning cuts parameters and memory and raises throughput.

Every accuracy claim is decided per specialist from the per-item table ``results/items.parquet`` alone
(:mod:`taskprune.metrics` builds it; read by :mod:`taskprune.report.results`), the efficiency claim from ``results/bench/efficiency.parquet``. The
rules, thresholds and constants are one frozen :data:`~taskprune.report.estimates.RULES` object, written
into ``findings.json``; the rules in words are :data:`RULE_TEXT`.

How a reviewer would decide, and so how this module decides:

- **Paired comparisons.** Both sides of a comparison answered the same items, so ``d = mean(A) - mean(B)`` is
  judged by a bootstrap over items, resampled jointly on both sides; where a side has several random seeds
  the seeds are resampled jointly with the items (every replicate draws items and seeds). The 95% percentile
  interval of ``d`` decides: *higher* when it lies above 0, *lower* below 0, else a *tie*. The bootstrap seed
  and the number of resamples are fixed in :data:`RULES`.
- **Informative levels only.** A level counts for "A beats B" only where the reference B lost target
  accuracy against the base beyond noise (paired, the same test). Ceiling levels, where the reference lost
  nothing, are listed and marked but never counted: no difference is possible there.
- **Four outcomes** for every claim and specialist: ``reproduced``; ``not reproduced`` (the signal is
  there, the claim's direction does not reach its rule); ``contradicted`` (the opposite direction holds by
  the same rule); ``inconclusive`` (too few informative comparisons to decide, or the inputs are missing).
  A claim's overall outcome over specialists follows :func:`~taskprune.report.estimates.overall_outcome`.

Beyond the paper, the same paired rule ranks every pruning score (Copeland counts over informative levels),
a control compares reverse pruning by selectivity with reverse pruning by target activation magnitude, and
descriptive trends (Spearman rank correlation with level, bootstrap CI) say how distractor retention and
the trap rate move with the level; they are descriptions, not claims.

Used by the findings stage (:func:`compute_findings`) and by :mod:`taskprune.report.render`.
"""


from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import polars as pl

from taskprune.errors import DataError
from taskprune.report.estimates import (
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_REPRODUCED,
    OUTCOMES,
    OVERALL_RULE,
    REPRODUCED,
    RULES,
    Side,
    clear_caches,
    directed_outcome,
    overall_outcome,
    paired,
    spearman_trend,
    summarise,
)
from taskprune.report.recovery_claims import recovery_recipe_findings
from taskprune.report.results import Items

# ------------------------------------------------------------------------------- the rules in words

_R = RULES
RULE_TEXT: dict[str, str] = {
    "comparison": (
        f"A vs B at one level: d = mean(A) - mean(B) over the items both answered; {_R.confidence:.0%} percentile "
        f"interval from {_R.bootstrap_resamples} bootstrap resamples of the items (seed {_R.bootstrap_seed}), "
        "with a side's random seeds resampled jointly with the items; higher when the interval is above 0, "
        "lower when below 0, else a tie"
    ),
    "informative_level": (
        "a level counts for 'A beats B' only where the reference B is lower than the base model beyond noise "
        "(paired, the same test); other levels are ceiling levels: listed and marked, never counted"
    ),
    "beats_over_levels": (
        f"A beats B when there are at least {_R.min_informative_levels} informative level(s) and A is higher beyond "
        f"noise at at least {_R.beats_share:g} (rounded up) of them and lower at none; reproduced when A beats B "
        "and B does not beat A (by the same rule, counted at the levels where A lost accuracy), contradicted when "
        "B beats A and A does not beat B, inconclusive when there are too few informative levels (and B does "
        "not beat A), else not reproduced"
    ),
    "overall": OVERALL_RULE,
    "selective_beats_random": (
        "per specialist: target accuracy of 'selective' (pruned) beats 'random' (pruned, all seeds) by the "
        "beats-over-levels rule, with random as the reference"
    ),
    "reverse_collapse": (
        f"per specialist: at the evaluated level nearest {_R.collapse_target_level:g}% (within "
        f"{_R.collapse_level_window[0]:g}-{_R.collapse_level_window[1]:g}%), 'reverse' (pruned) is below both "
        f"{_R.collapse_fraction:g} x the base model's accuracy and 'random' at the same level, each beyond noise "
        f"(paired); contradicted when reverse is above {_R.collapse_fraction:g} x base beyond noise; inconclusive "
        "without such a level, a base accuracy of 0 or random at that level; else not reproduced. The cliff "
        "level is the lowest evaluated level at which the collapse criterion holds"
    ),
    "recovery": (
        f"per specialist, over the '{_R.recovery_recipe}' recovered variants (any method, level and seed) whose "
        "pruned accuracy is below the base's beyond noise (variants that lost nothing are listed, not counted): "
        "a variant recovers when recovered is higher than pruned beyond noise (paired, same seed), gets worse "
        f"when lower; inconclusive with fewer than {_R.recovery_min_lost_variants} such variants; reproduced when "
        f"at least {_R.recovery_share:g} (rounded up) recover and none gets worse; contradicted when at least "
        f"{_R.recovery_share:g} get worse and none recovers; else not reproduced"
    ),
    "efficiency": (
        "per shape family (per model without a 'shapes' column), pruned variants: parameters below the base's "
        "at every level and non-increasing with the level (contradicted when not below); peak memory at the "
        f"highest level more than {_R.memory_noise_floor:.0%} below the base's (contradicted when more than "
        f"{_R.memory_noise_floor:.0%} above); throughput from engine '{_R.throughput_engine}' only, "
        f"{_R.throughput_phase} at the highest level and the largest batch size: reproduced when the paired "
        "speedup's CI lower bound is > 1, contradicted when its upper bound is < 1, inconclusive otherwise or "
        "when the row is marked noisy; the family's outcome: contradicted when any check contradicts, "
        "reproduced when all three reproduce, inconclusive when a check is inconclusive, else not reproduced"
    ),
    "selectivity_beyond_magnitude": (
        "per specialist: target accuracy of 'reverse-magnitude' (pruned) beats 'reverse' (pruned) by the "
        "beats-over-levels rule with reverse as the reference, i.e. removing the most task-selective neurons "
        "hurts more than removing the neurons most strongly active on the target task"
    ),
    "ranking": (
        "per specialist, every pair of ranked methods (selective-<score> and random) is compared at every shared "
        "level; A wins a level against B when A is higher beyond noise and the level is informative for A "
        "beating B (B lost accuracy against the base); Copeland score = level wins - level losses over all "
        "pairs; a method is best only if it has the top score and beats something (wins at a level); when no "
        "method wins anywhere: 'no method beats another beyond noise at these levels'"
    ),
    "trends": (
        "descriptive, not a claim: per method (pruned), Spearman rank correlation of the level with the mean "
        "distractor retention (pooled over distractor tasks) and with the trap rate (all tasks), "
        f"{_R.confidence:.0%} CI from bootstrap resamples of items (and seeds) jointly over levels; "
        f"reported with at least {_R.trend_min_levels} levels"
    ),
}




# ------------------------------------------------------------------------------------ levelwise


def levelwise(acc: Items, model: str, a: str, b: str, stage: str = "pruned") -> dict[str, Any] | None:
    """Paired A - B at every level both were evaluated at, each side against the base, and the outcome of
    "A beats B" by the beats-over-levels rule (None when no level is shared or there is no base)."""
    base = acc.base(model)
    shared = sorted(set(acc.levels(model, a, stage)) & set(acc.levels(model, b, stage)))
    if base is None or not shared:
        return None
    per_level = []
    for level in shared:
        sa, sb = acc.get(model, a, level, stage), acc.get(model, b, level, stage)
        assert sa is not None and sb is not None
        a_vs_base, b_vs_base = paired(sa, base), paired(sb, base)
        per_level.append({
            "level": acc.label(level), "level_pct": level, a: summarise(sa), b: summarise(sb),
            "comparison": paired(sa, sb).to_json(),
            f"{a}_vs_base": a_vs_base.to_json(), f"{b}_vs_base": b_vs_base.to_json(),
            "informative": b_vs_base.verdict == "lower",  # counts for "a beats b"
            "informative_reverse": a_vs_base.verdict == "lower",  # counts for "b beats a"
        })  # fmt: skip
    return {"a": a, "b": b, "base": summarise(base), "per_level": per_level, **directed_outcome(per_level)}



# ------------------------------------------------------------------------------------ the claims



def _claim(cid: str, text: str, source: str, per_model: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    status = overall_outcome([m["status"] for m in per_model.values()])
    decisive = [m for m, v in per_model.items() if v["status"] != INCONCLUSIVE]
    summary = "; ".join(f"{m}: {v['status']}, {v['summary']}" for m, v in per_model.items()) or "no data"
    return {
        "id": cid, "claim": text, "source": source, "rule": RULE_TEXT[cid], "overall_rule": RULE_TEXT["overall"],
        "status": status, "reproduced": status == REPRODUCED, "models_decisive": decisive,
        "models_inconclusive": [m for m in per_model if m not in decisive], "summary": summary,
        "per_model": per_model, **extra,
    }  # fmt: skip


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _pp(c: dict[str, Any]) -> str:
    lo, hi = c["ci95"]
    return f"{100 * c['diff']:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _missing(acc: Items, model: str, methods: Sequence[str]) -> str:
    if acc.base(model) is None:
        return "inconclusive: no base evaluation"
    missing = [m for m in methods if m not in acc.methods(model)]
    return f"inconclusive: missing pruned method(s) {', '.join(missing)}" if missing else "inconclusive: no level shared"


def _levelwise_claim(acc: Items, model: str, a: str, b: str, higher: str) -> dict[str, Any]:
    v = levelwise(acc, model, a, b)
    if v is None:
        return {"status": INCONCLUSIVE, "summary": _missing(acc, model, (a, b)).removeprefix("inconclusive: ")}
    ceiling = f"; ceiling levels (not counted): {', '.join(v['ceiling_levels'])}" if v["ceiling_levels"] else ""
    summary = (f"{higher} at {v['a_higher_at']} of {v['informative_levels']} informative levels, the opposite "
               f"at {v['a_lower_at']} ({v['levels_compared']} evaluated{ceiling})")  # fmt: skip
    if v["b_beats_a"]:
        summary += f"; {b} beats {a} at the levels where {a} lost accuracy"
    return {"summary": summary, **v}


def claim_selective_beats_random(acc: Items) -> dict[str, Any]:
    per_model = {m: _levelwise_claim(acc, m, "selective", "random", "selective higher than random")
                 for m in acc.models}  # fmt: skip
    return _claim("selective_beats_random",
                  "Selective pruning keeps target accuracy better than random pruning of the same size.",
                  "paper", per_model)  # fmt: skip


def claim_selectivity_beyond_magnitude(acc: Items) -> dict[str, Any]:
    per_model = {m: _levelwise_claim(acc, m, "reverse-magnitude", "reverse",
                                     "reverse (selectivity) lower than reverse-magnitude") for m in acc.models}  # fmt: skip
    return _claim("selectivity_beyond_magnitude",
                  "Control: removing the most task-selective neurons hurts more than removing the neurons "
                  "most strongly active on the target task (selectivity matters beyond activation magnitude).",
                  "beyond the paper", per_model)  # fmt: skip


def _collapse_level(levels: Sequence[float]) -> float | None:
    lo, hi = RULES.collapse_level_window
    inside = [x for x in levels if lo <= x <= hi]
    return min(inside, key=lambda x: (abs(x - RULES.collapse_target_level), x)) if inside else None


def _collapse_at(acc: Items, model: str, method: str, level: float, base: Side) -> dict[str, Any]:
    rev = acc.get(model, method, level)
    rnd = acc.get(model, "random", level)
    assert rev is not None
    vs_half = paired(rev, base, scale_b=RULES.collapse_fraction)
    out: dict[str, Any] = {"level": acc.label(level), "level_pct": level, method: summarise(rev),
                           "threshold": RULES.collapse_fraction * base.mean,
                           f"{method}_minus_half_base": vs_half.to_json()}  # fmt: skip
    if rnd is not None:
        vs_random = paired(rev, rnd)
        out |= {"random_same_level": summarise(rnd), f"{method}_vs_random": vs_random.to_json()}
    out["collapsed"] = vs_half.verdict == "lower" and rnd is not None and out[f"{method}_vs_random"]["verdict"] == "lower"
    return out


def reverse_collapse_at(acc: Items, model: str, method: str) -> dict[str, Any]:
    """RULE_TEXT['reverse_collapse'] for one reverse method of one specialist, with its cliff level."""
    base = acc.base(model)
    levels = acc.levels(model, method)
    level = _collapse_level(levels)
    lo, hi = RULES.collapse_level_window
    if base is None or level is None:
        why = "no base evaluation" if base is None else f"no '{method}' level within {lo:g}-{hi:g}%"
        return {"status": INCONCLUSIVE, "summary": why}
    at = _collapse_at(acc, model, method, level, base)
    per_level = [at if lv == level else _collapse_at(acc, model, method, lv, base) for lv in levels]
    cliff = next((x["level"] for x in per_level if x["collapsed"]), None)
    half = at[f"{method}_minus_half_base"]
    if base.mean <= 0:
        status, why = INCONCLUSIVE, "the base model scores 0, so a collapse cannot be observed"
    elif at["collapsed"]:
        status, why = REPRODUCED, "below half the base and below random, beyond noise"
    elif half["verdict"] == "higher":
        status, why = CONTRADICTED, "above half the base beyond noise"
    elif "random_same_level" not in at:
        status, why = INCONCLUSIVE, "no random variant at that level to compare with"
    elif half["verdict"] == "lower":
        status, why = NOT_REPRODUCED, "below half the base, but not below random beyond noise"
    else:
        status, why = NOT_REPRODUCED, "not below half the base beyond noise"
    rnd = at.get("random_same_level", {}).get("value")
    summary = (f"{method} at {at['level']}%: {_pct(at[method]['value'])} vs base {_pct(base.mean)} (half: "
               f"{_pct(at['threshold'])}), random {_pct(rnd)}: {why}; {method} - half base {_pp(half)}"
               + (f", {method} - random {_pp(at[f'{method}_vs_random'])}" if rnd is not None else "")
               + f"; cliff level: {cliff + '%' if cliff else 'none evaluated'}")  # fmt: skip
    return {"status": status, "summary": summary, "base": summarise(base), **at, "cliff_level": cliff,
            "per_level": per_level}  # fmt: skip


def claim_reverse_collapse(acc: Items) -> dict[str, Any]:
    per_model = {m: reverse_collapse_at(acc, m, "reverse") for m in acc.models}
    other = {m: {x: reverse_collapse_at(acc, m, x) for x in acc.methods(m) if x.startswith("reverse-")}
             for m in acc.models}  # fmt: skip
    return _claim("reverse_collapse",
                  "Removing ~10% of the most task-selective neurons (reverse pruning) collapses the model.",
                  "paper", per_model, other_reverse_methods=other)  # fmt: skip


def _recovery_variants(acc: Items, model: str, base: Side) -> list[dict[str, Any]]:
    out = []
    for method, recipe, level in acc.recovered(model):
        rec_all = acc.recovered_side(model, method, recipe, level)
        pruned_all = acc.get(model, method, level)
        if rec_all is None or pruned_all is None:
            continue
        for seed in sorted(set(rec_all.seeds) & set(pruned_all.seeds)):
            pruned, rec = pruned_all.seed(seed), rec_all.seed(seed)
            loss, gain = paired(pruned, base), paired(rec, pruned)
            lost = base.mean - pruned.mean
            out.append({
                "method": method, "recovery": recipe, "level": acc.label(level), "level_pct": level, "seed": seed,
                "pruned": summarise(pruned), "recovered": summarise(rec), "pruned_vs_base": loss.to_json(),
                "recovered_vs_pruned": gain.to_json(), "recovered_vs_base": paired(rec, base).to_json(),
                "gap_closed": (rec.mean - pruned.mean) / lost if lost > 0 else None,
                "lost_accuracy": loss.verdict == "lower", "recovers": gain.verdict == "higher",
                "worse": gain.verdict == "lower",
            })  # fmt: skip
    return out


def recovery_outcome(variants: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """(status, summary) of the recovery rule over the variants of one recipe."""
    tested = [x for x in variants if x["lost_accuracy"]]
    n_rec, n_worse = sum(x["recovers"] for x in tested), sum(x["worse"] for x in tested)
    need = math.ceil(RULES.recovery_share * len(tested))
    summary = (f"{n_rec} of {len(tested)} variants that lost accuracy recover beyond noise, {n_worse} get worse "
               f"({len(variants) - len(tested)} more lost nothing)")  # fmt: skip
    if len(tested) < RULES.recovery_min_lost_variants:
        return INCONCLUSIVE, summary + f"; fewer than {RULES.recovery_min_lost_variants} variants lost accuracy"
    if n_rec >= need and n_worse == 0:
        return REPRODUCED, summary
    if n_worse >= need and n_rec == 0:
        return CONTRADICTED, summary
    return NOT_REPRODUCED, summary


def claim_recovery(acc: Items) -> dict[str, Any]:
    per_model: dict[str, dict[str, Any]] = {}
    for model in acc.models:
        base = acc.base(model)
        variants = _recovery_variants(acc, model, base) if base is not None else []
        if not variants:
            why = "no base evaluation" if base is None else "no recovered variant with a pruned counterpart"
            per_model[model] = {"status": INCONCLUSIVE, "summary": why}
            continue
        recipes = list(dict.fromkeys(x["recovery"] for x in variants))
        by_recipe = {}
        for r in recipes:
            status, summary = recovery_outcome([x for x in variants if x["recovery"] == r])
            by_recipe[r] = {"status": status, "summary": summary}
        main = by_recipe.get(RULES.recovery_recipe, {"status": INCONCLUSIVE,
                                                     "summary": f"no '{RULES.recovery_recipe}' recovered variant"})  # fmt: skip
        per_model[model] = {**main, "base": summarise(base), "variants": variants, "by_recipe": by_recipe}
    return _claim("recovery", "LoRA fine-tuning recovers the accuracy that pruning lost.", "paper", per_model)


def rank_methods(acc: Items) -> dict[str, Any]:
    """Copeland ranking of selective-<score> methods and random per specialist over informative levels."""
    out: dict[str, Any] = {}
    for model in acc.models:
        methods = [m for m in acc.methods(model) if m == "random" or m.split("-")[0] in RULES.ranked_directions]
        if len(methods) < 2 or acc.base(model) is None:
            out[model] = {"status": INCONCLUSIVE, "summary": "fewer than two rankable methods or no base",
                          "methods": methods, "best": []}  # fmt: skip
            continue
        wins = {m: 0 for m in methods}
        losses = {m: 0 for m in methods}
        level_wins: dict[tuple[str, str], int] = {}
        pairs = []
        for i, a in enumerate(methods):
            for b in methods[i + 1 :]:
                v = levelwise(acc, model, a, b)
                if v is None:
                    continue
                a_w = sum(x["informative"] and x["comparison"]["verdict"] == "higher" for x in v["per_level"])
                b_w = sum(x["informative_reverse"] and x["comparison"]["verdict"] == "lower" for x in v["per_level"])
                level_wins[(a, b)], level_wins[(b, a)] = a_w, b_w
                wins[a] += a_w
                losses[b] += a_w
                wins[b] += b_w
                losses[a] += b_w
                pairs.append({"a": a, "b": b, "levels_compared": v["levels_compared"], "a_wins_at": a_w,
                              "b_wins_at": b_w, "a_beats_b": v["a_beats_b"], "b_beats_a": v["b_beats_a"]})  # fmt: skip
        score = {m: wins[m] - losses[m] for m in methods}
        means = {m: float(np.mean([s.mean for lv in acc.levels(model, m) if (s := acc.get(model, m, lv))]))
                 for m in methods}  # fmt: skip
        order = sorted(methods, key=lambda m: (-score[m], -means[m], m))
        table = [{"rank": i, "method": m, "copeland": score[m], "level_wins": wins[m], "level_losses": losses[m],
                  "mean_accuracy_over_levels": means[m], "levels": len(acc.levels(model, m)),
                  "beats": [o for o in methods if level_wins.get((m, o), 0) > 0],
                  "beaten_by": [o for o in methods if level_wins.get((o, m), 0) > 0]}
                 for i, m in enumerate(order, 1)]  # fmt: skip
        contenders = [t for t in table if t["level_wins"] > 0]
        best = [t["method"] for t in contenders if t["copeland"] == contenders[0]["copeland"]] if contenders else []
        if best:
            summary = "best: " + " = ".join(best) + (" (tied by the rule)" if len(best) > 1 else "")
        else:
            summary = "no method beats another beyond noise at these levels"
        out[model] = {"status": "ranked", "summary": summary, "best": best, "order": order, "ranking": table,
                      "pairs": pairs}  # fmt: skip
    return {"id": "ranking", "rule": RULE_TEXT["ranking"], "per_model": out}


def describe_trends(items: pl.DataFrame) -> dict[str, Any]:
    """RULE_TEXT['trends']: distractor retention and trap rate against the level, per method."""
    quantities = {
        "distractor_retention": Items(items.filter(pl.col("role") == "distractor")),
        "trap_rate": Items(items, value="hit_limit"),
    }
    out: dict[str, Any] = {}
    models = sorted(set(items["model"].unique().to_list()))
    for model in models:
        per_method: dict[str, Any] = {}
        for name, table in quantities.items():
            for method in table.methods(model):
                levels = table.levels(model, method)
                entry: dict[str, Any]
                if len(levels) < RULES.trend_min_levels:
                    entry = {"reading": f"fewer than {RULES.trend_min_levels} levels", "levels": levels}
                else:
                    sides = [table.get(model, method, lv) for lv in levels]
                    entry = spearman_trend(levels, [s for s in sides if s is not None])
                per_method.setdefault(method, {})[name] = entry
        for name, table in quantities.items():
            if not table.methods(model):
                why = "no distractor rows" if name == "distractor_retention" else "no hit_limit column"
                per_method.setdefault("(all)", {})[name] = {"reading": f"not available ({why})"}
        out[model] = per_method
    return {"id": "trends", "rule": RULE_TEXT["trends"], "per_model": out}


# ------------------------------------------------------------------------------------ efficiency

THROUGHPUT_COLUMNS = ("engine", "measured_speedup", "measured_speedup_ci_low", "measured_speedup_ci_high")


def is_finite(x: Any) -> bool:
    return x is not None and isinstance(x, int | float) and math.isfinite(float(x))



def fmt_number(x: Any, fmt: str = ".0f") -> str:
    return format(float(x), fmt) if is_finite(x) else "n/a"


def _efficiency_family(rows: pl.DataFrame) -> dict[str, Any]:
    """The efficiency checks of one shape family (or model)."""
    is_base = (pl.col("method") == "base") | (pl.col("level_pct") == 0)
    base, pruned = rows.filter(is_base), rows.filter(~is_base)
    if base.height == 0 or pruned.height == 0:
        return {"status": INCONCLUSIVE, "summary": "no base benchmark" if base.height == 0 else "no pruned benchmark"}
    methods = sorted(pruned["method"].unique().to_list())
    method = "selective" if "selective" in methods else methods[0]
    pruned = pruned.filter(pl.col("method") == method)
    out: dict[str, Any] = {"method": method}
    checks: dict[str, str] = {}

    def median_per_level(df: pl.DataFrame, col: str) -> list[tuple[float, float]]:
        if col not in df.columns:
            return []
        g = df.filter(pl.col(col).is_not_null()).group_by("level_pct").agg(pl.col(col).cast(pl.Float64).median())
        return [(float(a), float(b)) for a, b in g.sort("level_pct").iter_rows() if is_finite(b)]

    p_base, p_levels = median_per_level(base, "params_total"), median_per_level(pruned, "params_total")
    if not p_base or not p_levels:
        checks["params"] = INCONCLUSIVE
    else:
        pb = p_base[0][1]
        below = all(p < pb for _, p in p_levels)
        monotone = all(b <= a for (_, a), (_, b) in zip(p_levels, p_levels[1:], strict=False))
        checks["params"] = REPRODUCED if below and monotone else CONTRADICTED if not below else NOT_REPRODUCED
        out["params"] = {"base": pb, "per_level": [{"level_pct": lv, "params_total": p, "fraction_of_base": p / pb}
                                                   for lv, p in p_levels]}  # fmt: skip

    m_base, m_levels = median_per_level(base, "peak_memory_bytes"), median_per_level(pruned, "peak_memory_bytes")
    if not m_base or not m_levels or m_base[0][1] <= 0:
        checks["memory"] = INCONCLUSIVE
    else:
        mb, (top, mt) = m_base[0][1], m_levels[-1]
        reduction = 1 - mt / mb
        floor = RULES.memory_noise_floor
        checks["memory"] = REPRODUCED if reduction > floor else CONTRADICTED if reduction < -floor else NOT_REPRODUCED
        out["memory"] = {"base_bytes": mb, "highest_level_pct": top, "highest_level_bytes": mt, "reduction": reduction}

    missing = [c for c in THROUGHPUT_COLUMNS if c not in rows.columns]
    if missing:
        checks["throughput"] = INCONCLUSIVE
        out["throughput"] = {"note": "no paired stock-engine speedups in the table (missing column(s) "
                             + ", ".join(missing) + ")"}  # fmt: skip
    else:
        stock = pruned.filter((pl.col("engine") == RULES.throughput_engine) & (pl.col("phase") == RULES.throughput_phase))
        if stock.height == 0:
            checks["throughput"] = INCONCLUSIVE
            out["throughput"] = {"note": f"no '{RULES.throughput_engine}' {RULES.throughput_phase} rows"}
        else:
            top = float(stock["level_pct"].max())
            at_top = stock.filter(pl.col("level_pct") == top).sort("batch_size")
            per_batch = []
            for bs in sorted(set(at_top["batch_size"].to_list())):
                r = at_top.filter(pl.col("batch_size") == bs).row(0, named=True)
                noisy = bool(r.get("noisy")) if r.get("noisy") is not None else False
                lo, hi = r["measured_speedup_ci_low"], r["measured_speedup_ci_high"]
                if noisy or not (is_finite(lo) and is_finite(hi)):
                    verdict = INCONCLUSIVE
                else:
                    verdict = REPRODUCED if lo > 1 else CONTRADICTED if hi < 1 else INCONCLUSIVE
                per_batch.append({"batch_size": int(bs), "measured_speedup": r["measured_speedup"], "ci95": [lo, hi],
                                  "ideal_speedup": r.get("ideal_speedup"), "ideal_speedup_bytes": r.get("ideal_speedup_bytes"),
                                  "realised_fraction": r.get("realised_fraction"), "n_pairs": r.get("n_pairs"),
                                  "noisy": noisy, "verdict": verdict})  # fmt: skip
            checks["throughput"] = per_batch[-1]["verdict"]
            out["throughput"] = {"engine": RULES.throughput_engine, "phase": RULES.throughput_phase,
                                 "highest_level_pct": top, "per_batch": per_batch,
                                 "rule_batch_size": per_batch[-1]["batch_size"]}  # fmt: skip

    values = list(checks.values())
    if CONTRADICTED in values:
        status = CONTRADICTED
    elif all(v == REPRODUCED for v in values):
        status = REPRODUCED
    elif INCONCLUSIVE in values:
        status = INCONCLUSIVE
    else:
        status = NOT_REPRODUCED
    parts = []
    if "params" in out:
        parts.append(f"params {out['params']['per_level'][-1]['fraction_of_base']:.0%} of base at the highest level")
    if "memory" in out:
        parts.append(f"peak memory {-out['memory']['reduction']:+.1%}")
    t = out.get("throughput", {})
    if t.get("per_batch"):
        b = t["per_batch"][-1]
        ci = b["ci95"]
        parts.append(f"{t['phase']} speedup x{fmt_number(b['measured_speedup'], '.2f')} [{fmt_number(ci[0], '.2f')}, "
                     f"{fmt_number(ci[1], '.2f')}] ({t['engine']}, batch {b['batch_size']}"
                     + (", noisy" if b["noisy"] else "") + ")")  # fmt: skip
    elif t.get("note"):
        parts.append(t["note"])
    parts.append("checks: " + ", ".join(f"{k} {v}" for k, v in checks.items()))
    return {"status": status, "summary": "; ".join(parts), "checks": checks, **out}


def claim_efficiency(eff: pl.DataFrame | None) -> dict[str, Any]:
    if eff is None:
        per_model = {"(all)": {"status": INCONCLUSIVE, "summary": "no efficiency table given"}}
    else:
        key = "shapes" if "shapes" in eff.columns and eff["shapes"].null_count() < eff.height else "model"
        if key not in eff.columns:
            raise DataError("efficiency table has neither a 'shapes' nor a 'model' column")
        per_model = {str(g): _efficiency_family(eff.filter(pl.col(key) == g))
                     for g in sorted(eff[key].drop_nulls().unique().to_list())}  # fmt: skip
    return _claim("efficiency", "Pruning cuts parameters and peak memory and raises throughput.", "paper", per_model,
                  grouped_by=None if eff is None else key)  # fmt: skip


# ------------------------------------------------------------------------------------ all of it


def compute_findings(items: pl.DataFrame, efficiency: pl.DataFrame | None = None) -> dict[str, Any]:
    """Every claim, its rule, outcome and evidence, as a JSON-ready dict (from the per-item table)."""
    try:
        return _compute_findings(items, efficiency)
    finally:  # the caches hold the sides alive; a next table starts afresh
        clear_caches()


def _compute_findings(items: pl.DataFrame, efficiency: pl.DataFrame | None) -> dict[str, Any]:
    acc = Items(items.filter(pl.col("role") == "target"))
    claims = [
        claim_selective_beats_random(acc),
        claim_reverse_collapse(acc),
        claim_recovery(acc),
        claim_efficiency(efficiency),
        claim_selectivity_beyond_magnitude(acc),
    ]
    metrics = items.filter(pl.col("role") == "target").group_by("model").agg(pl.col("metric").unique().sort()).sort("model")
    return _json_safe({
        "rules": {**RULE_TEXT, "constants": asdict(RULES)},
        "outcomes": list(OUTCOMES),
        "target_metrics": {m: list(v) for m, v in metrics.iter_rows()},
        "models": acc.models,
        "claims": claims,
        "ranking": rank_methods(acc),
        "trends": describe_trends(items),
        "recovery_recipes": recovery_recipe_findings(items),
    })  # fmt: skip


def _json_safe(obj: Any) -> Any:
    """NaN and infinities become null (JSON has no NaN); tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "__dataclass_fields__"):
        return _json_safe(asdict(obj))
    return obj
