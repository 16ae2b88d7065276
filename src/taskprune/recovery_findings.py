"""Findings beyond the paper: does distillation from the unpruned model recover more than LoRA on labels?

The paper recovers with one recipe (``lora``: cross-entropy on the task's labels). ``taskprune recover``
also runs ``lora-kd`` (KL from the unpruned base model's token distributions) at a matched budget: the
same adapters, examples, order, steps and schedule. This module decides, from the per-item table
``results/items.parquet`` (columns ``model, method, level, level_pct, seed, stage, recovery, task, role, id,
metric, score``), three things per specialist and pruning method:

1. ``kd_recovers_more_accuracy``: does ``lora-kd`` reach a higher target score than ``lora``?
2. ``kd_keeps_more_retention``: does ``lora-kd`` keep a higher distractor retention than ``lora``?
3. per recipe and level, the share of the pruning loss it recovers (descriptive, no verdict).

Rules (:data:`RULES`, also written into the output). Both recipes answer the same items, so every
comparison is paired: per item (scores averaged over seeds first, when a side has several), the
difference ``d_i = a_i - b_i``; the mean difference has ``se = sd(d) / sqrt(n)`` and a 95% normal interval.
A is *higher* when the interval is above 0, *lower* when below, else a *tie*. A comparison unit (a level
for the target; a (distractor, level) pair for retention) is *informative* only where the pruned model lost
against the base beyond noise, by the same paired test: where pruning lost nothing there is nothing to
recover, and such units are listed, never counted. Over the n informative units of a specialist, with w
units where lora-kd is higher and l where it is lower:

- ``inconclusive`` when n < :data:`MIN_INFORMATIVE_UNITS`;
- ``reproduced`` when w >= ceil(n / 2) and l = 0;
- ``contradicted`` when l >= ceil(n / 2) and w = 0 (lora is better by the same rule);
- ``not reproduced`` otherwise.

Over specialists: ``inconclusive`` when none is decisive (every other outcome is); else ``reproduced``
when every decisive specialist reproduces, ``contradicted`` when every decisive one contradicts, else
``not reproduced``.

This module is self-contained on purpose: the project's shared paired helpers (findings.py, issue 15)
had not landed when it was written; :func:`paired_difference` is the one place to swap for them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from taskprune.errors import DataError

Z95 = 1.959963984540054
MIN_INFORMATIVE_UNITS = 2
BASELINE_RECIPE = "lora"  # the paper's (taskprune.recover.PAPER_RECIPE)
CHALLENGER_RECIPE = "lora-kd"
ITEM_COLUMNS = ("model", "method", "level", "level_pct", "seed", "stage", "recovery", "task", "role", "id",
                "metric", "score")  # fmt: skip

REPRODUCED, NOT_REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "not reproduced", "contradicted", "inconclusive"

RULES: dict[str, str] = {
    "paired_comparison": (
        "per item (scores averaged over seeds first), d_i = A_i - B_i over the items both sides answered; "
        "mean(d) with se = sd(d)/sqrt(n) and a 95% normal interval: higher when above 0, lower when below, "
        "else tie"
    ),
    "informative_unit": (
        "a level (target) or a (distractor, level) pair (retention) counts only where the pruned model is "
        "lower than the base beyond noise by the paired comparison"
    ),
    "per_specialist": (
        f"n informative units, w where {CHALLENGER_RECIPE} is higher than {BASELINE_RECIPE}, l where lower: "
        f"inconclusive when n < {MIN_INFORMATIVE_UNITS}; reproduced when w >= ceil(n/2) and l = 0; "
        "contradicted when l >= ceil(n/2) and w = 0; else not reproduced"
    ),
    "overall": (
        "inconclusive when no specialist is decisive; reproduced when every decisive specialist reproduces; "
        "contradicted when every decisive specialist contradicts; else not reproduced"
    ),
    "share_recovered": (
        "per recipe and informative unit: (recovered - pruned) / (base - pruned), the means over the items "
        "all three answered; descriptive, no verdict"
    ),
}


# ----------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class PairedDifference:
    """mean(A_i - B_i) over ``n`` shared items, its 95% interval and the verdict (A relative to B)."""

    diff: float
    se: float
    ci_low: float
    ci_high: float
    n: int
    verdict: str  # higher | lower | tie

    def to_json(self) -> dict[str, Any]:
        return {"diff": self.diff, "ci95": [self.ci_low, self.ci_high], "se": self.se, "n_items": self.n,
                "verdict": self.verdict}  # fmt: skip


def paired_difference(a: dict[Any, float], b: dict[Any, float]) -> PairedDifference | None:
    """A vs B over the item keys both have (``None`` when they share none)."""
    keys = sorted(a.keys() & b.keys(), key=repr)
    n = len(keys)
    if n == 0:
        return None
    d = [a[k] - b[k] for k in keys]
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    se = sd / math.sqrt(n)
    lo, hi = mean - Z95 * se, mean + Z95 * se
    return PairedDifference(mean, se, lo, hi, n, "higher" if lo > 0 else "lower" if hi < 0 else "tie")


# ---------------------------------------------------------------------------------------- tables


def _check(items: pl.DataFrame, source: str) -> pl.DataFrame:
    missing = [c for c in ITEM_COLUMNS if c not in items.columns]
    if missing:
        raise DataError(f"{source}: per-item table is missing column(s) {', '.join(missing)}")
    if items.height == 0:
        raise DataError(f"{source}: per-item table is empty")
    return items.with_columns(pl.col("level_pct").cast(pl.Float64), pl.col("score").cast(pl.Float64))


def _scores(df: pl.DataFrame) -> dict[tuple[str, str, str], float]:
    """(task, id, metric) -> score averaged over seeds."""
    g = df.group_by(["task", "id", "metric"]).agg(pl.col("score").mean())
    return {(t, str(i), m): float(s) for t, i, m, s in g.iter_rows()}


@dataclass
class _Side:
    """The item scores of one (model, method) for one role: base, pruned per level, recovered per recipe."""

    base: dict[str, dict[tuple[str, str, str], float]]  # task -> items
    pruned: dict[tuple[float, str], dict[tuple[str, str, str], float]]  # (level, task) -> items
    recovered: dict[tuple[str, float, str], dict[tuple[str, str, str], float]]  # (recipe, level, task)
    labels: dict[float, str]


def _side(items: pl.DataFrame, model: str, method: str, role: str) -> _Side:
    rows = items.filter((pl.col("model") == model) & (pl.col("role") == role))
    base = {t: _scores(g) for (t,), g in rows.filter(pl.col("stage") == "base").group_by(["task"])}
    mine = rows.filter(pl.col("method") == method)
    pruned = {(float(lv), t): _scores(g)
              for (lv, t), g in mine.filter(pl.col("stage") == "pruned").group_by(["level_pct", "task"])}  # fmt: skip
    recovered = {(r, float(lv), t): _scores(g) for (r, lv, t), g in
                 mine.filter(pl.col("stage") == "recovered").group_by(["recovery", "level_pct", "task"])}  # fmt: skip
    labels = {float(a): str(b) for a, b in mine.select("level_pct", "level").unique().iter_rows()}
    return _Side(base, pruned, recovered, labels)


# ------------------------------------------------------------------------------------------ rules


def _outcome(units: Sequence[dict[str, Any]]) -> tuple[str, int, int, int]:
    informative = [u for u in units if u["informative"] and u.get("challenger_vs_baseline")]
    n = len(informative)
    wins = sum(u["challenger_vs_baseline"]["verdict"] == "higher" for u in informative)
    losses = sum(u["challenger_vs_baseline"]["verdict"] == "lower" for u in informative)
    if n < MIN_INFORMATIVE_UNITS:
        return INCONCLUSIVE, n, wins, losses
    if wins >= math.ceil(n / 2) and losses == 0:
        return REPRODUCED, n, wins, losses
    if losses >= math.ceil(n / 2) and wins == 0:
        return CONTRADICTED, n, wins, losses
    return NOT_REPRODUCED, n, wins, losses


def overall_outcome(outcomes: Sequence[str]) -> str:
    decisive = [o for o in outcomes if o != INCONCLUSIVE]
    if not decisive:
        return INCONCLUSIVE
    if all(o == REPRODUCED for o in decisive):
        return REPRODUCED
    if all(o == CONTRADICTED for o in decisive):
        return CONTRADICTED
    return NOT_REPRODUCED


def _share(base: dict, pruned: dict, recovered: dict) -> float | None:
    keys = base.keys() & pruned.keys() & recovered.keys()
    if not keys:
        return None
    b, p, r = (sum(x[k] for k in keys) / len(keys) for x in (base, pruned, recovered))
    return (r - p) / (b - p) if b - p > 0 else None


def _units(side: _Side, recipes: Sequence[str]) -> list[dict[str, Any]]:
    """One entry per (level, task) where both compared recipes were recovered."""
    out = []
    keys = sorted({(lv, t) for (r, lv, t) in side.recovered if r in recipes})
    for level, task in keys:
        base, pruned = side.base.get(task), side.pruned.get((level, task))
        loss = paired_difference(base, pruned) if base and pruned else None
        unit: dict[str, Any] = {
            "level": side.labels.get(level, f"{level:g}"), "level_pct": level, "task": task,
            "base_minus_pruned": loss.to_json() if loss else None,
            "informative": bool(loss and loss.verdict == "higher"),
            "recipes": {},
        }  # fmt: skip
        for recipe in recipes:
            rec = side.recovered.get((recipe, level, task))
            if rec is None:
                continue
            gain = paired_difference(rec, pruned) if pruned else None
            unit["recipes"][recipe] = {
                "mean": sum(rec.values()) / len(rec),
                "recovered_minus_pruned": gain.to_json() if gain else None,
                "share_of_loss_recovered": _share(base, pruned, rec) if unit["informative"] else None,
            }
        a = side.recovered.get((CHALLENGER_RECIPE, level, task))
        b = side.recovered.get((BASELINE_RECIPE, level, task))
        cmp = paired_difference(a, b) if a and b else None
        unit["challenger_vs_baseline"] = cmp.to_json() if cmp else None
        out.append(unit)
    return out


def _per_model_claim(units: list[dict[str, Any]], what: str) -> dict[str, Any]:
    status, n, wins, losses = _outcome(units)
    listed = len(units) - n
    summary = (f"{CHALLENGER_RECIPE} higher than {BASELINE_RECIPE} at {wins} of {n} informative {what}, lower at "
               f"{losses}; {listed} not counted (pruning lost nothing there, or a recipe is missing)")  # fmt: skip
    return {"status": status, "informative_units": n, "challenger_higher_at": wins, "challenger_lower_at": losses,
            "summary": summary, "units": units}  # fmt: skip


def recovery_recipe_findings(items: pl.DataFrame, source: str = "items table") -> dict[str, Any]:
    """The recipe claims and the share of the pruning loss each recipe recovers, as a JSON-ready dict.

    Keys: ``rules``, ``constants``, ``claims`` (two, each with ``status``, ``summary`` and ``per_model``
    keyed ``"{model}/{method}"``) and ``share_recovered`` (per model/method, role, recipe and unit).
    """
    items = _check(items, source)
    recovered = items.filter(pl.col("stage") == "recovered")
    pairs = sorted({(m, me) for m, me in recovered.select("model", "method").unique().iter_rows()})
    recipes = [BASELINE_RECIPE, CHALLENGER_RECIPE]
    target_pm: dict[str, Any] = {}
    retention_pm: dict[str, Any] = {}
    shares: dict[str, Any] = {}
    for model, method in pairs:
        key = f"{model}/{method}"
        present = set(recovered.filter((pl.col("model") == model) & (pl.col("method") == method))["recovery"]
                      .drop_nulls().to_list())  # fmt: skip
        target_units = _units(_side(items, model, method, "target"), recipes)
        retention_units = _units(_side(items, model, method, "distractor"), recipes)
        if not set(recipes) <= present:
            why = f"only recipe(s) {', '.join(sorted(present))} recovered"
            target_pm[key] = {"status": INCONCLUSIVE, "summary": f"inconclusive ({why})", "units": target_units}
            retention_pm[key] = {"status": INCONCLUSIVE, "summary": f"inconclusive ({why})", "units": retention_units}
        else:
            target_pm[key] = _per_model_claim(target_units, "levels")
            retention_pm[key] = _per_model_claim(retention_units, "(distractor, level) pairs")
        shares[key] = {
            role: {recipe: [{"level": u["level"], "level_pct": u["level_pct"], "task": u["task"],
                             "share": u["recipes"][recipe]["share_of_loss_recovered"]}
                            for u in units if recipe in u["recipes"] and u["informative"]]
                   for recipe in sorted(present)}
            for role, units in (("target", target_units), ("distractor", retention_units))
        }  # fmt: skip

    def claim(cid: str, text: str, per_model: dict[str, Any]) -> dict[str, Any]:
        status = overall_outcome([v["status"] for v in per_model.values()])
        summary = "; ".join(f"{k}: {v['summary']}" for k, v in per_model.items()) or "no recovered variant"
        return {"id": cid, "claim": text, "source": "beyond the paper", "rule": RULES["per_specialist"],
                "status": status, "summary": summary, "per_model": per_model}  # fmt: skip

    return {
        "rules": RULES,
        "constants": {"z95": Z95, "min_informative_units": MIN_INFORMATIVE_UNITS,
                      "baseline_recipe": BASELINE_RECIPE, "challenger_recipe": CHALLENGER_RECIPE},
        "claims": [
            claim("kd_recovers_more_accuracy",
                  f"At the same budget, {CHALLENGER_RECIPE} (distillation from the unpruned model) recovers more "
                  f"target accuracy than {BASELINE_RECIPE} (LoRA on labels).", target_pm),
            claim("kd_keeps_more_retention",
                  f"At the same budget, {CHALLENGER_RECIPE} keeps more distractor retention than {BASELINE_RECIPE}.",
                  retention_pm),
        ],
        "share_recovered": shares,
    }  # fmt: skip


def _fmt(c: dict[str, Any] | None) -> str:
    if not c:
        return "n/a"
    lo, hi = c["ci95"]
    return f"{100 * c['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] ({c['verdict']})"


def recovery_recipe_markdown(result: dict[str, Any]) -> str:
    """The findings as a Markdown section (one table per claim and specialist), for findings.md."""
    lines = ["## Recovery recipes at a matched budget (beyond the paper)", ""]
    for c in result["claims"]:
        lines += [f"### {c['claim']}", "", f"**{c['status'].upper()}** — {c['summary']}", ""]
        for key, pm in c["per_model"].items():
            lines += [f"{key}:", "",
                      "| level % | task | base - pruned (pp) | lora-kd - lora (pp) | counted | share recovered "
                      f"({BASELINE_RECIPE} / {CHALLENGER_RECIPE}) |", "|---|---|---|---|---|---|"]  # fmt: skip
            for u in pm["units"]:
                shares = " / ".join(
                    "n/a" if (u["recipes"].get(r) or {}).get("share_of_loss_recovered") is None
                    else f"{100 * u['recipes'][r]['share_of_loss_recovered']:.0f}%"
                    for r in (BASELINE_RECIPE, CHALLENGER_RECIPE))  # fmt: skip
                lines.append(f"| {u['level']} | {u['task']} | {_fmt(u['base_minus_pruned'])} | "
                             f"{_fmt(u['challenger_vs_baseline'])} | {'yes' if u['informative'] else 'no'} | "
                             f"{shares} |")  # fmt: skip
            lines.append("")
    return "\n".join(lines) + "\n"
