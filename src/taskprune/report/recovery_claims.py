"""Findings beyond the paper: does distillation from the unpruned model recover more than LoRA on labels?

The paper recovers with one recipe (``lora``: cross-entropy on the task's labels). ``taskprune recover``
also runs ``lora-kd`` (KL from the unpruned base model's token distributions) at a matched budget: the
same adapters, examples, order, steps and schedule. From the per-item table (``results/items.parquet``)
this module decides, per specialist and pruning method recovered with both recipes:

1. ``kd_recovers_more_accuracy``: is ``lora-kd``'s target score higher than ``lora``'s?
2. ``kd_keeps_more_retention``: is ``lora-kd``'s distractor retention (every distractor item pooled)
   higher than ``lora``'s?
3. per recipe and level, the share of the pruning loss it recovers,
   ``(recovered - pruned) / (base - pruned)`` (descriptive, no verdict), for the target and the distractors.

It reuses the findings' rules and helpers (:mod:`taskprune.report.estimates`): paired bootstrap comparisons
over the items both sides answered (:func:`~taskprune.report.estimates.paired`), the beats-over-levels rule
with its four outcomes (:func:`~taskprune.report.estimates.directed_outcome`) and the overall rule over
specialists (:func:`~taskprune.report.estimates.overall_outcome`). A level is *informative* only where the pruned model lost
against the base beyond noise (for the target, or for the distractors' retention): where pruning lost
nothing there is nothing to recover, so such levels are listed and never counted. Both recipes share the
pruned model as their reference, so the same levels are informative for "lora-kd beats lora" and for
its opposite (``contradicted``: lora beats lora-kd by the same rule).

Used by :mod:`taskprune.report.claims` (the findings' ``recovery_recipes``); its report blocks are
rendered by :func:`taskprune.report.render.recipe_blocks`.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from taskprune.recipes import PAPER_RECIPE
from taskprune.report.estimates import (
    INCONCLUSIVE,
    OVERALL_RULE,
    Side,
    directed_outcome,
    overall_outcome,
    paired,
    summarise,
)
from taskprune.report.results import Items

CHALLENGER_RECIPE = "lora-kd"
BASELINE_RECIPE = PAPER_RECIPE

RULES: dict[str, str] = {
    "kd_recovers_more_accuracy": (
        f"per specialist and pruning method recovered with both recipes: at every level both were evaluated at, "
        f"the paired target score difference {CHALLENGER_RECIPE} - {BASELINE_RECIPE}; a level counts only where "
        f"the pruned model is lower than the base beyond noise; {CHALLENGER_RECIPE} beats {BASELINE_RECIPE} by the "
        "beats-over-levels rule (reproduced), the opposite holds by the same rule (contradicted), too few "
        "informative levels (inconclusive), else not reproduced"
    ),
    "kd_keeps_more_retention": (
        "the same rule on the distractors' retention (every distractor item pooled; similarity to the base "
        "model's answers), counting the levels where the pruned model's retention is lower than the base's "
        "beyond noise"
    ),
    "share_recovered": (
        "per recipe and informative level: (recovered - pruned) / (base - pruned) of the mean scores over the "
        "items; descriptive, no verdict"
    ),
}


def _pruned_reference(pruned: Side, recovered: Side) -> Side:
    """The pruned side restricted to the recovered side's seeds (a method recovered at its first seed only)."""
    seeds = [s for s in recovered.seeds if s in pruned.seeds]
    if len(seeds) == 1 and len(pruned.seeds) > 1:
        return pruned.seed(seeds[0])
    return pruned


def _share(base: Side, pruned: Side, recovered: Side) -> float | None:
    lost = base.mean - pruned.mean
    return (recovered.mean - pruned.mean) / lost if lost > 0 else None


def compare_recipes(acc: Items, model: str, method: str) -> dict[str, Any] | None:
    """Per level: both recipes, the pruned model and the base, the paired lora-kd - lora difference, and
    the beats-over-levels outcome (None without a base or a level recovered with both recipes)."""
    base = acc.base(model)
    shared = sorted(set(acc.levels(model, method, "recovered", BASELINE_RECIPE))
                    & set(acc.levels(model, method, "recovered", CHALLENGER_RECIPE)))  # fmt: skip
    if base is None or not shared:
        return None
    per_level = []
    for level in shared:
        kd = acc.recovered_side(model, method, CHALLENGER_RECIPE, level)
        lora = acc.recovered_side(model, method, BASELINE_RECIPE, level)
        pruned_all = acc.get(model, method, level)
        if kd is None or lora is None or pruned_all is None:
            continue
        pruned = _pruned_reference(pruned_all, lora)
        lost = paired(pruned, base)
        informative = lost.verdict == "lower"
        per_level.append({
            "level": acc.label(level), "level_pct": level, "pruned": summarise(pruned),
            BASELINE_RECIPE: summarise(lora), CHALLENGER_RECIPE: summarise(kd),
            "pruned_vs_base": lost.to_json(), "comparison": paired(kd, lora).to_json(),
            f"{BASELINE_RECIPE}_vs_pruned": paired(lora, pruned).to_json(),
            f"{CHALLENGER_RECIPE}_vs_pruned": paired(kd, pruned).to_json(),
            "share_recovered": {r: _share(base, pruned, s) if informative else None
                                for r, s in ((BASELINE_RECIPE, lora), (CHALLENGER_RECIPE, kd))},
            "informative": informative, "informative_reverse": informative,
        })  # fmt: skip
    if not per_level:
        return None
    return {"a": CHALLENGER_RECIPE, "b": BASELINE_RECIPE, "method": method, "base": summarise(base),
            "per_level": per_level, **directed_outcome(per_level)}  # fmt: skip


def _claim(cid: str, text: str, acc: Items) -> dict[str, Any]:
    per_model: dict[str, Any] = {}
    for model in acc.models:
        methods = sorted({m for m, r, _ in acc.recovered(model) if r == CHALLENGER_RECIPE})
        for method in methods:
            entry = compare_recipes(acc, model, method)
            key = f"{model}/{method}"
            if entry is None:
                per_model[key] = {"status": INCONCLUSIVE,
                                  "summary": f"no level recovered with both {BASELINE_RECIPE} and {CHALLENGER_RECIPE}"}
                continue
            entry["summary"] = (
                f"{CHALLENGER_RECIPE} higher than {BASELINE_RECIPE} at {entry['a_higher_at']} of "
                f"{entry['informative_levels']} informative levels, lower at {entry['a_lower_at']}; "
                f"{len(entry['ceiling_levels'])} level(s) not counted (pruning lost nothing there)"
            )
            per_model[key] = entry
    status = overall_outcome([v["status"] for v in per_model.values()])
    summary = "; ".join(f"{k}: {v['status']}, {v['summary']}" for k, v in per_model.items())
    return {"id": cid, "claim": text, "source": "beyond the paper", "rule": RULES[cid],
            "overall_rule": OVERALL_RULE, "status": status, "per_model": per_model,
            "summary": summary or f"no variant recovered with {CHALLENGER_RECIPE}"}  # fmt: skip


def recovery_recipe_findings(items: pl.DataFrame) -> dict[str, Any]:
    """The two recipe claims (target accuracy, distractor retention) from a validated per-item table."""
    target = Items(items.filter(pl.col("role") == "target"))
    distractor = Items(items.filter(pl.col("role") == "distractor"))
    return {
        "rules": RULES,
        "recipes": [BASELINE_RECIPE, CHALLENGER_RECIPE],
        "claims": [
            _claim("kd_recovers_more_accuracy",
                   f"At the same budget, {CHALLENGER_RECIPE} (distillation from the unpruned model) recovers more "
                   f"target accuracy than {BASELINE_RECIPE} (LoRA on labels).", target),
            _claim("kd_keeps_more_retention",
                   f"At the same budget, {CHALLENGER_RECIPE} keeps more distractor retention than "
                   f"{BASELINE_RECIPE}.", distractor),
        ],
    }  # fmt: skip
