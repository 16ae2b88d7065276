"""Decide from the data whether each claim of the paper reproduced, by rules stated before looking.

The paper makes four claims about task-specific pruning of a specialist's MLP neurons:

1. **selective beats random** — removing the neurons least selective for the target task keeps target
   accuracy better than removing the same number of neurons at random;
2. **reverse collapse** — removing ~10% of the *most* selective neurons collapses the model;
3. **recovery** — LoRA fine-tuning recovers the pruned models;
4. **efficiency** — pruning cuts parameters and memory and raises throughput.

Each claim is decided per specialist by a fixed rule (the constants below, written into
``findings.json``), from ``results/metrics.parquet`` and ``results/bench/efficiency.parquet`` only. A
claim that does not hold is reported as not reproduced; a claim whose inputs are missing from a partial
grid is reported as not evaluated. Nothing here is tuned on the results.

Uncertainty. Every metric row carries a 95% interval over evaluation items (Wilson for proportions,
bootstrap for means). Its standard error is taken as ``se = (ci_high - ci_low) / (2 * 1.96)``. A method
with several random seeds is summarised by the mean over seeds, with
``se(mean) = max(sd_seeds / sqrt(k), sqrt(sum_i se_i^2) / k)`` — the larger of the seed spread and the
item noise, so two seeds that happen to agree do not make the mean look exact. Two estimates A and B are
compared by ``d = A - B`` with ``se_d = sqrt(se_A^2 + se_B^2)`` (conservative: the items are shared, so
a paired test would be tighter): A is *higher* when ``d - 1.96 se_d > 0``, *lower* when
``d + 1.96 se_d < 0``, else a *tie*. "Beats" therefore always means beyond noise.

Beyond the paper, the same pairwise rule ranks every pruning score (selectivity, taker, wanda, ...,
random), and a control compares reverse pruning by selectivity with reverse pruning by target activation
magnitude: if selectivity only picked strongly active neurons, both would hurt equally.
"""

from __future__ import annotations

import argparse
import html
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from taskprune.errors import DataError
from taskprune.io import read_parquet, write_json, write_text
from taskprune.metric_names import HEADLINE_METRIC

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------- the rules

Z95 = 1.959963984540054  # two-sided 95% normal quantile
COLLAPSE_TARGET_LEVEL = 10.0  # "~10% of the most selective neurons"
COLLAPSE_LEVEL_WINDOW = (5.0, 15.0)  # a level counts as "~10%" inside this range (the nearest one is used)
COLLAPSE_FRACTION = 0.5  # collapsed: 95% upper bound below this fraction of the base accuracy
MEMORY_NOISE_FLOOR = 0.01  # peak memory must fall by more than 1% to count as cut
RANKED_DIRECTIONS = ("selective", "random")  # methods ranked against each other

RULES: dict[str, str] = {
    "comparison": (
        "A is higher than B beyond noise when the 95% interval of d = A - B excludes 0, with "
        "se_d = sqrt(se_A^2 + se_B^2); se of a row = (ci_high - ci_low)/(2*1.96) from its interval over "
        "evaluation items; se of a seed mean = max(sd over seeds / sqrt(k), sqrt(sum se_i^2)/k)"
    ),
    "beats_over_levels": (
        "A beats B when A is higher beyond noise at at least half (rounded up) of the levels both were "
        "evaluated at, and lower beyond noise at none"
    ),
    "selective_beats_random": (
        "per specialist: target accuracy of 'selective' (pruned) beats the mean over seeds of 'random' "
        "(pruned) by the beats-over-levels rule; reproduced when it holds for every evaluated specialist"
    ),
    "reverse_collapse": (
        f"per specialist: at the evaluated level nearest {COLLAPSE_TARGET_LEVEL:g}% (within "
        f"{COLLAPSE_LEVEL_WINDOW[0]:g}-{COLLAPSE_LEVEL_WINDOW[1]:g}%), the 95% upper bound of the target "
        f"accuracy of 'reverse' (pruned) is below {COLLAPSE_FRACTION:g} x the base model's accuracy; "
        "reproduced when it holds for every evaluated specialist"
    ),
    "recovery": (
        "per specialist, over every recovered variant (any pruning method and level; by default selective at "
        "every level and random at the highest) whose pruned accuracy is below the base model's beyond noise "
        "(a variant that lost nothing has nothing to recover and is only listed): a variant recovers when its "
        "recovered accuracy is higher than its pruned accuracy beyond noise; the claim holds for the specialist "
        "when at least half (rounded up) of those variants recover and no recovered variant is lower than its "
        "pruned one beyond noise; reproduced when it holds for every evaluated specialist"
    ),
    "efficiency": (
        "per specialist, pruned 'selective' variants (another pruned method when 'selective' was not "
        "benchmarked; shapes, not scores, set efficiency): parameters are below the base's at every level "
        "and non-increasing with the level; peak memory at the highest level is more than "
        f"{MEMORY_NOISE_FLOOR:.0%} below the base's; decode tokens/s at the highest level and the largest "
        "batch size has its interquartile range entirely above the base's (q1 pruned > q3 base); "
        "reproduced when all three hold for every evaluated specialist"
    ),
    "selectivity_beyond_magnitude": (
        "per specialist: target accuracy of 'reverse-magnitude' (pruned) beats 'reverse' (pruned) by the "
        "beats-over-levels rule, i.e. removing the most task-selective neurons hurts more than removing "
        "the neurons most strongly active on the target task; holds when true for every evaluated specialist"
    ),
    "ranking": (
        "per specialist, every pair of ranked methods (selective-<score> and random) is compared with the "
        "beats-over-levels rule; methods are ranked by wins minus losses over those pairs (Copeland score), "
        "ties broken by mean accuracy over their levels"
    ),
}

NOT_EVALUATED = "not evaluated"
REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"


# ------------------------------------------------------------------------------- the statistics


@dataclass(frozen=True)
class Estimate:
    """One method's value at one (model, level, stage), summarised over its seeds."""

    value: float  # mean over seeds
    se: float  # standard error used in comparisons (see module docstring)
    ci_low: float  # 95%: the item interval for one seed, value -/+ 1.96 se for several
    ci_high: float
    n_items: int  # evaluation items per seed (the smallest, if they differ)
    seeds: tuple[int, ...] = ()
    seed_values: tuple[float, ...] = ()

    @property
    def seed_sd(self) -> float | None:
        """Sample standard deviation (ddof 1) over seeds; None with fewer than two seeds."""
        k = len(self.seed_values)
        if k < 2:
            return None
        mean = sum(self.seed_values) / k
        return math.sqrt(sum((v - mean) ** 2 for v in self.seed_values) / (k - 1))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "value": self.value,
            "ci95": [self.ci_low, self.ci_high],
            "se": self.se,
            "n_items": self.n_items,
        }
        if len(self.seeds) > 1:
            out["seeds"] = list(self.seeds)
            out["seed_values"] = list(self.seed_values)
            out["seed_sd"] = self.seed_sd
            out["seed_range"] = [min(self.seed_values), max(self.seed_values)]
        return out


@dataclass(frozen=True)
class Comparison:
    """d = A - B with its 95% interval and the verdict 'higher' | 'lower' | 'tie' (A relative to B)."""

    diff: float
    se: float
    ci_low: float
    ci_high: float
    verdict: str

    def to_json(self) -> dict[str, Any]:
        return {"diff": self.diff, "ci95": [self.ci_low, self.ci_high], "se": self.se, "verdict": self.verdict}


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` items."""
    if n <= 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _row_interval(value: float, n: int, ci_low: float | None, ci_high: float | None) -> tuple[float, float]:
    """The row's 95% item interval; a missing one is rebuilt as Wilson when the value is a proportion."""
    if ci_low is not None and ci_high is not None and not (math.isnan(ci_low) or math.isnan(ci_high)):
        return (float(ci_low), float(ci_high))
    if 0.0 <= value <= 1.0 and n > 0:
        return wilson_interval(value, n)
    return (value, value)


def estimate(rows: Sequence[dict[str, Any]]) -> Estimate:
    """Summarise the rows of one method at one level (one row per seed) as an :class:`Estimate`."""
    if not rows:
        raise ValueError("estimate() needs at least one row")
    values, ses, seeds = [], [], []
    intervals = []
    n_items = min(int(r.get("n") or 0) for r in rows)
    for r in sorted(rows, key=lambda r: int(r.get("seed") or 0)):
        v = float(r["value"])
        lo, hi = _row_interval(v, int(r.get("n") or 0), r.get("ci_low"), r.get("ci_high"))
        values.append(v)
        ses.append((hi - lo) / (2 * Z95))
        intervals.append((lo, hi))
        seeds.append(int(r.get("seed") or 0))
    k = len(values)
    mean = sum(values) / k
    if k == 1:
        return Estimate(mean, ses[0], intervals[0][0], intervals[0][1], n_items, tuple(seeds), tuple(values))
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    se = max(sd / math.sqrt(k), math.sqrt(sum(s * s for s in ses)) / k)
    return Estimate(mean, se, mean - Z95 * se, mean + Z95 * se, n_items, tuple(seeds), tuple(values))


def compare(a: Estimate, b: Estimate) -> Comparison:
    """A vs B: ``d = a - b``, ``se_d = sqrt(se_a^2 + se_b^2)``, verdict by whether the 95% interval excludes 0."""
    d = a.value - b.value
    se = math.sqrt(a.se**2 + b.se**2)
    lo, hi = d - Z95 * se, d + Z95 * se
    verdict = "higher" if lo > 0 else "lower" if hi < 0 else "tie"
    return Comparison(d, se, lo, hi, verdict)


@dataclass
class LevelwiseVerdict:
    """The beats-over-levels rule applied to A vs B: per-level comparisons and the overall decision."""

    a: str
    b: str
    levels: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.levels)

    @property
    def wins(self) -> int:
        return sum(1 for x in self.levels if x["comparison"]["verdict"] == "higher")

    @property
    def losses(self) -> int:
        return sum(1 for x in self.levels if x["comparison"]["verdict"] == "lower")

    @property
    def beats(self) -> bool | None:
        """None when no level was shared; else wins >= ceil(n/2) and no loss."""
        if self.n == 0:
            return None
        return self.wins >= math.ceil(self.n / 2) and self.losses == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "levels_compared": self.n,
            "a_higher_at": self.wins,
            "a_lower_at": self.losses,
            "ties": self.n - self.wins - self.losses,
            "a_beats_b": self.beats,
            "per_level": self.levels,
        }


# ---------------------------------------------------------------------------------- the tables

METRIC_COLUMNS = (
    "model", "method", "direction", "score", "level", "level_pct", "seed", "stage",
    "task", "task_kind", "metric", "value", "n", "ci_low", "ci_high",
)  # fmt: skip
EFFICIENCY_COLUMNS = (
    "model", "method", "level", "level_pct", "seed", "stage", "batch_size", "phase",
    "params_total", "peak_memory_bytes", "tokens_per_s", "tokens_per_s_q1", "tokens_per_s_q3",
)  # fmt: skip
TARGET_METRIC = HEADLINE_METRIC  # the target task's headline metric (taskprune.metric_names)


def load_metrics(path: str | Path) -> pl.DataFrame:
    df = read_parquet(path, METRIC_COLUMNS, what="metrics table")
    if df.height == 0:
        raise DataError(f"{path}: metrics table is empty (expected one row per variant, task and metric)")
    return df.with_columns(pl.col("level_pct").cast(pl.Float64), pl.col("seed").cast(pl.Int64))


def load_efficiency(path: str | Path) -> pl.DataFrame:
    df = read_parquet(path, EFFICIENCY_COLUMNS, what="efficiency table")
    return df.with_columns(pl.col("level_pct").cast(pl.Float64))


class Accuracy:
    """Target-task accuracy rows indexed by (model, method, stage, level): the input of every accuracy claim."""

    def __init__(self, metrics: pl.DataFrame, metric: str = TARGET_METRIC) -> None:
        acc = metrics.filter(pl.col("metric") == metric)
        self.rows: dict[tuple[str, str, str, float], list[dict[str, Any]]] = {}
        self.labels: dict[float, str] = {}
        for r in acc.iter_rows(named=True):
            key = (r["model"], r["method"], r["stage"], round(float(r["level_pct"]), 6))
            self.rows.setdefault(key, []).append(r)
            self.labels[round(float(r["level_pct"]), 6)] = str(r["level"])
        self.models = sorted({k[0] for k in self.rows})

    def methods(self, model: str, stage: str = "pruned") -> list[str]:
        return sorted({k[1] for k in self.rows if k[0] == model and k[2] == stage})

    def levels(self, model: str, method: str, stage: str = "pruned") -> list[float]:
        return sorted(k[3] for k in self.rows if k[0] == model and k[1] == method and k[2] == stage)

    def get(self, model: str, method: str, level: float, stage: str = "pruned") -> Estimate | None:
        rows = self.rows.get((model, method, stage, round(level, 6)))
        return estimate(rows) if rows else None

    def base(self, model: str) -> Estimate | None:
        rows = [r for k, v in self.rows.items() if k[0] == model and k[2] == "base" for r in v]
        return estimate(rows[:1]) if rows else None

    def recovered_pairs(self, model: str, method: str) -> list[tuple[float, int]]:
        """(level, seed) pairs of ``method`` with both a pruned and a recovered row."""
        pairs = []
        for level in self.levels(model, method, "recovered"):
            rec = {int(r["seed"]) for r in self.rows[(model, method, "recovered", level)]}
            pruned = {int(r["seed"]) for r in self.rows.get((model, method, "pruned", level), [])}
            pairs += [(level, s) for s in sorted(rec & pruned)]
        return pairs

    def seed_row(self, model: str, method: str, level: float, seed: int, stage: str) -> Estimate | None:
        rows = [r for r in self.rows.get((model, method, stage, level), []) if int(r["seed"]) == seed]
        return estimate(rows) if rows else None

    def label(self, level: float) -> str:
        return self.labels.get(round(level, 6), f"{level:g}")


def levelwise(acc: Accuracy, model: str, a: str, b: str, stage: str = "pruned") -> LevelwiseVerdict:
    """Apply the beats-over-levels rule to methods ``a`` vs ``b`` at the levels both were evaluated at."""
    out = LevelwiseVerdict(a, b)
    for level in sorted(set(acc.levels(model, a, stage)) & set(acc.levels(model, b, stage))):
        ea, eb = acc.get(model, a, level, stage), acc.get(model, b, level, stage)
        assert ea is not None and eb is not None
        out.levels.append(
            {"level": acc.label(level), "level_pct": level, a: ea.to_json(), b: eb.to_json(),
             "comparison": compare(ea, eb).to_json()}
        )  # fmt: skip
    return out


# ------------------------------------------------------------------------------------ the claims


def _overall(per_model: dict[str, dict[str, Any]]) -> tuple[str, bool | None]:
    """A claim holds overall when it holds for every specialist it could be evaluated on."""
    decided = [m["status"] for m in per_model.values() if m["status"] != NOT_EVALUATED]
    if not decided:
        return NOT_EVALUATED, None
    ok = all(s == REPRODUCED for s in decided)
    return (REPRODUCED if ok else NOT_REPRODUCED), ok


def _status(ok: bool | None) -> str:
    return NOT_EVALUATED if ok is None else REPRODUCED if ok else NOT_REPRODUCED


def _claim(cid: str, text: str, source: str, per_model: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    status, ok = _overall(per_model)
    evaluated = [m for m, v in per_model.items() if v["status"] != NOT_EVALUATED]
    summary = "; ".join(f"{m}: {v['summary']}" for m, v in per_model.items()) or "no data"
    return {
        "id": cid,
        "claim": text,
        "source": source,
        "rule": RULES[cid],
        "status": status,
        "reproduced": ok,
        "models_evaluated": evaluated,
        "models_not_evaluated": [m for m in per_model if m not in evaluated],
        "summary": summary,
        "per_model": per_model,
        **extra,
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def claim_selective_beats_random(acc: Accuracy) -> dict[str, Any]:
    per_model: dict[str, dict[str, Any]] = {}
    for model in acc.models:
        v = levelwise(acc, model, "selective", "random")
        if v.n == 0:
            missing = [m for m in ("selective", "random") if m not in acc.methods(model)]
            why = f"missing pruned method(s): {', '.join(missing)}" if missing else "no level shared"
            per_model[model] = {"status": NOT_EVALUATED, "summary": f"not evaluated ({why})"}
            continue
        summary = f"selective higher at {v.wins} of {v.n} levels, lower at {v.losses}"
        per_model[model] = {"status": _status(v.beats), "summary": summary, **v.to_json()}
    return _claim("selective_beats_random",
                  "Selective pruning keeps target accuracy better than random pruning of the same size.",
                  "paper", per_model)  # fmt: skip


def _collapse_level(levels: Iterable[float]) -> float | None:
    lo, hi = COLLAPSE_LEVEL_WINDOW
    inside = [x for x in levels if lo <= x <= hi]
    return min(inside, key=lambda x: (abs(x - COLLAPSE_TARGET_LEVEL), x)) if inside else None


def reverse_collapse_at(acc: Accuracy, model: str, method: str) -> dict[str, Any]:
    """Whether ``method`` (a reverse method) collapses the model at the level nearest ~10%."""
    base = acc.base(model)
    level = _collapse_level(acc.levels(model, method))
    if base is None or level is None:
        why = "no base evaluation" if base is None else (
            f"no '{method}' level within {COLLAPSE_LEVEL_WINDOW[0]:g}-{COLLAPSE_LEVEL_WINDOW[1]:g}%")
        return {"status": NOT_EVALUATED, "summary": f"not evaluated ({why})"}
    rev = acc.get(model, method, level)
    assert rev is not None
    threshold = COLLAPSE_FRACTION * base.value
    collapsed = rev.ci_high < threshold
    out: dict[str, Any] = {
        "status": _status(collapsed),
        "level": acc.label(level),
        "level_pct": level,
        "base": base.to_json(),
        method: rev.to_json(),
        "threshold": threshold,
        "retained_fraction_of_base": rev.value / base.value if base.value > 0 else None,
        "summary": f"{method} at {acc.label(level)}%: {_pct(rev.value)} (95% CI up to {_pct(rev.ci_high)}) "
        f"vs base {_pct(base.value)}, collapse threshold {_pct(threshold)}",
    }
    if base.value <= 0:
        out["note"] = "the base model scores 0: a collapse cannot be observed"
    for other in ("random", "selective"):
        e = acc.get(model, other, level)
        if e is not None:
            out[f"{other}_same_level"] = e.to_json()
            out[f"{method}_vs_{other}"] = compare(rev, e).to_json()
    return out


def claim_reverse_collapse(acc: Accuracy) -> dict[str, Any]:
    per_model = {model: reverse_collapse_at(acc, model, "reverse") for model in acc.models}
    other_reverse = {
        model: {m: reverse_collapse_at(acc, model, m) for m in acc.methods(model) if m.startswith("reverse-")}
        for model in acc.models
    }
    return _claim("reverse_collapse",
                  "Removing ~10% of the most task-selective neurons (reverse pruning) collapses the model.",
                  "paper", per_model, other_reverse_methods=other_reverse)  # fmt: skip


def recovery_for(acc: Accuracy, model: str, methods: Sequence[str]) -> dict[str, Any]:
    """The recovery rule over every recovered (method, level, seed) of ``methods`` for one specialist."""
    base = acc.base(model)
    pairs = [(m, level, seed) for m in methods for level, seed in acc.recovered_pairs(model, m)]
    if not pairs:
        return {"status": NOT_EVALUATED, "summary": "not evaluated (no recovered variant)"}
    if base is None:
        return {"status": NOT_EVALUATED, "summary": "not evaluated (no base evaluation)"}
    items = []
    for method, level, seed in pairs:
        pruned = acc.seed_row(model, method, level, seed, "pruned")
        rec = acc.seed_row(model, method, level, seed, "recovered")
        assert pruned is not None and rec is not None
        gain = compare(rec, pruned)
        loss = compare(pruned, base)
        lost = base.value - pruned.value
        items.append({
            "method": method, "level": acc.label(level), "level_pct": level, "seed": seed,
            "pruned": pruned.to_json(), "recovered": rec.to_json(),
            "pruned_vs_base": loss.to_json(),
            "recovered_vs_pruned": gain.to_json(),
            "recovered_vs_base": compare(rec, base).to_json(),
            "gap_closed": (rec.value - pruned.value) / lost if lost > 0 else None,
            "lost_accuracy": loss.verdict == "lower",
            "recovers": loss.verdict == "lower" and gain.verdict == "higher",
            "worse": gain.verdict == "lower",
        })  # fmt: skip
    tested = [x for x in items if x["lost_accuracy"]]
    n_rec = sum(x["recovers"] for x in tested)
    n_worse = sum(x["worse"] for x in items)
    out: dict[str, Any] = {"base": base.to_json(), "variants": items}
    if not tested and n_worse == 0:
        out["status"] = NOT_EVALUATED
        out["summary"] = (f"not evaluated (none of the {len(items)} recovered variants lost accuracy beyond noise "
                          "when pruned, so there is nothing to recover)")  # fmt: skip
        return out
    ok = bool(tested) and n_rec >= math.ceil(len(tested) / 2) and n_worse == 0
    out["status"] = _status(ok)
    by_method = ", ".join(
        f"{m} {sum(x['recovers'] for x in tested if x['method'] == m)}/{sum(x['method'] == m for x in tested)}"
        for m in dict.fromkeys(x["method"] for x in tested)
    )
    out["summary"] = (f"{n_rec} of {len(tested)} variants that lost accuracy recover beyond noise ({by_method}; "
                      f"{len(items) - len(tested)} more lost nothing), {n_worse} get worse")  # fmt: skip
    return out


def claim_recovery(acc: Accuracy) -> dict[str, Any]:
    per_model = {model: recovery_for(acc, model, acc.methods(model, "recovered")) for model in acc.models}
    control: dict[str, Any] = {}
    for model in acc.models:
        # Does recovery close the selective-random gap? Compare at levels where both were recovered.
        shared = sorted(set(acc.levels(model, "selective", "recovered")) & set(acc.levels(model, "random", "recovered")))
        rows = []
        for level in shared:
            row: dict[str, Any] = {"level": acc.label(level), "level_pct": level}
            for stage in ("pruned", "recovered"):
                s, r = acc.get(model, "selective", level, stage), acc.get(model, "random", level, stage)
                if s is not None and r is not None:
                    row[f"selective_minus_random_{stage}"] = compare(s, r).to_json()
            rows.append(row)
        if rows:
            control[model] = rows
    return _claim("recovery", "LoRA fine-tuning recovers the accuracy that pruning lost.", "paper",
                  per_model, selective_vs_random_after_recovery=control)  # fmt: skip


def claim_selectivity_beyond_magnitude(acc: Accuracy) -> dict[str, Any]:
    per_model: dict[str, dict[str, Any]] = {}
    for model in acc.models:
        v = levelwise(acc, model, "reverse-magnitude", "reverse")
        if v.n == 0:
            missing = [m for m in ("reverse", "reverse-magnitude") if m not in acc.methods(model)]
            why = f"missing pruned method(s): {', '.join(missing)}" if missing else "no level shared"
            per_model[model] = {"status": NOT_EVALUATED, "summary": f"not evaluated ({why})"}
            continue
        summary = (f"reverse (selectivity) lower than reverse-magnitude at {v.wins} of {v.n} levels, "
                   f"higher at {v.losses}")  # fmt: skip
        per_model[model] = {"status": _status(v.beats), "summary": summary, **v.to_json()}
    return _claim("selectivity_beyond_magnitude",
                  "Control: removing the most task-selective neurons hurts more than removing the neurons "
                  "most strongly active on the target task (selectivity matters beyond activation magnitude).",
                  "beyond the paper", per_model)  # fmt: skip


def rank_methods(acc: Accuracy) -> dict[str, Any]:
    """Rank selective-<score> methods and random per specialist with the pairwise beats-over-levels rule."""
    from taskprune.config import parse_method

    out: dict[str, Any] = {}
    for model in acc.models:
        methods = [m for m in acc.methods(model) if parse_method(m)[0] in RANKED_DIRECTIONS]
        if len(methods) < 2:
            out[model] = {"status": NOT_EVALUATED, "summary": "fewer than two rankable methods", "methods": methods}
            continue
        pairs = []
        score = {m: 0 for m in methods}
        beats: dict[str, list[str]] = {m: [] for m in methods}
        for i, a in enumerate(methods):
            for b in methods[i + 1 :]:
                ab, ba = levelwise(acc, model, a, b), levelwise(acc, model, b, a)
                pairs.append({"a": a, "b": b, "levels_compared": ab.n, "a_higher_at": ab.wins,
                              "a_lower_at": ab.losses, "a_beats_b": ab.beats, "b_beats_a": ba.beats})  # fmt: skip
                if ab.beats:
                    score[a] += 1
                    score[b] -= 1
                    beats[a].append(b)
                if ba.beats:
                    score[b] += 1
                    score[a] -= 1
                    beats[b].append(a)
        means = {}
        for m in methods:
            vals = [e.value for lv in acc.levels(model, m) if (e := acc.get(model, m, lv)) is not None]
            means[m] = sum(vals) / len(vals) if vals else float("nan")
        order = sorted(methods, key=lambda m: (-score[m], -means[m], m))
        table = []
        for rank, m in enumerate(order, 1):
            table.append({"rank": rank, "method": m, "score": parse_method(m)[1], "copeland": score[m],
                          "mean_accuracy_over_levels": means[m], "levels": len(acc.levels(model, m)),
                          "beats": beats[m], "beaten_by": [o for o in methods if m in beats[o]]})  # fmt: skip
        best = [t["method"] for t in table if t["copeland"] == table[0]["copeland"]]
        summary = ("best: " + " = ".join(best) + (" (tied by the rule)" if len(best) > 1 else "")
                   + "; order: " + " > ".join(order))  # fmt: skip
        out[model] = {"status": "ranked", "summary": summary, "best": best, "ranking": table, "pairs": pairs}
    return {"id": "ranking", "rule": RULES["ranking"], "per_model": out}


def _efficiency_model(eff: pl.DataFrame, model: str) -> dict[str, Any]:
    """The efficiency claim for one specialist (see RULES['efficiency'])."""
    rows = eff.filter(pl.col("model") == model)
    base = rows.filter(pl.col("stage") == "base")
    pruned = rows.filter(pl.col("stage") == "pruned")
    if base.height == 0 or pruned.height == 0:
        why = "no base benchmark" if base.height == 0 else "no pruned benchmark"
        return {"status": NOT_EVALUATED, "summary": f"not evaluated ({why})"}
    methods = sorted(pruned["method"].unique().to_list())
    method = "selective" if "selective" in methods else methods[0]
    pruned = pruned.filter(pl.col("method") == method)
    first_seed = pruned["seed"].min()
    pruned = pruned.filter(pl.col("seed") == first_seed)

    def per_level(df: pl.DataFrame, col: str) -> list[tuple[float, float]]:
        g = df.filter(pl.col(col).is_not_null() & pl.col(col).is_not_nan()) if df[col].dtype.is_float() else (
            df.filter(pl.col(col).is_not_null()))
        g = g.group_by("level_pct").agg(pl.col(col).median()).sort("level_pct")
        return [(float(a), float(b)) for a, b in g.iter_rows()]

    def base_value(col: str) -> float | None:
        vals = [float(x) for x in base[col].drop_nulls().to_list() if not math.isnan(float(x))]
        return sorted(vals)[len(vals) // 2] if vals else None

    out: dict[str, Any] = {"method": method, "seed": int(first_seed)}
    checks: dict[str, bool | None] = {}

    # Parameters: exact counts, so no noise floor.
    p_base, p_levels = base_value("params_total"), per_level(pruned, "params_total")
    if p_base is None or not p_levels:
        checks["params"] = None
    else:
        below = all(p < p_base for _, p in p_levels)
        monotone = all(b <= a for (_, a), (_, b) in zip(p_levels, p_levels[1:], strict=False))
        checks["params"] = below and monotone
        out["params"] = {"base": p_base, "per_level": [{"level_pct": lv, "params_total": p,
                         "fraction_of_base": p / p_base} for lv, p in p_levels],
                         "all_below_base": below, "non_increasing": monotone}  # fmt: skip

    # Peak memory at batch 1 at the highest level.
    m_base, m_levels = base_value("peak_memory_bytes"), per_level(pruned, "peak_memory_bytes")
    if m_base is None or not m_levels:
        checks["memory"] = None
    else:
        top_level, m_top = m_levels[-1]
        reduction = 1 - m_top / m_base if m_base > 0 else float("nan")
        checks["memory"] = reduction > MEMORY_NOISE_FLOOR
        out["memory"] = {"base_bytes": m_base, "highest_level_pct": top_level, "highest_level_bytes": m_top,
                         "reduction": reduction, "per_level": [{"level_pct": lv, "peak_memory_bytes": m}
                                                                for lv, m in m_levels]}  # fmt: skip

    # Decode throughput at the highest level, every batch size; the rule reads the largest.
    dec_b = base.filter(pl.col("phase") == "decode")
    dec_p = pruned.filter(pl.col("phase") == "decode")
    if dec_b.height == 0 or dec_p.height == 0:
        checks["throughput"] = None
    else:
        top = float(dec_p["level_pct"].max())
        batches = sorted(set(dec_b["batch_size"].to_list()) & set(dec_p.filter(pl.col("level_pct") == top)["batch_size"].to_list()))
        per_batch = []
        for bs in batches:
            b = dec_b.filter(pl.col("batch_size") == bs).row(0, named=True)
            p = dec_p.filter((pl.col("batch_size") == bs) & (pl.col("level_pct") == top)).row(0, named=True)
            q1, q3 = p["tokens_per_s_q1"], b["tokens_per_s_q3"]
            known = q1 is not None and q3 is not None and not (math.isnan(q1) or math.isnan(q3))
            raised = bool(q1 > q3) if known else None
            item = {"batch_size": int(bs), "base_tokens_per_s": b["tokens_per_s"],
                    "base_iqr": [b["tokens_per_s_q1"], b["tokens_per_s_q3"]],
                    "pruned_tokens_per_s": p["tokens_per_s"], "pruned_iqr": [p["tokens_per_s_q1"], p["tokens_per_s_q3"]],
                    "measured_speedup": p["tokens_per_s"] / b["tokens_per_s"] if b["tokens_per_s"] else None,
                    "ideal_speedup": p.get("ideal_speedup"), "realised_fraction": p.get("realised_fraction"),
                    "raised_beyond_iqr": raised}  # fmt: skip
            per_batch.append(item)
        checks["throughput"] = per_batch[-1]["raised_beyond_iqr"] if per_batch else None
        out["throughput"] = {"highest_level_pct": top, "decode": per_batch,
                             "rule_batch_size": per_batch[-1]["batch_size"] if per_batch else None}  # fmt: skip

    out["checks"] = checks
    if any(v is False for v in checks.values()):
        out["status"] = NOT_REPRODUCED
    elif any(v is None for v in checks.values()):
        out["status"] = NOT_EVALUATED
    else:
        out["status"] = REPRODUCED
    parts = []
    if "params" in out:
        parts.append(f"params {out['params']['per_level'][-1]['fraction_of_base']:.0%} of base at the highest level")
    if "memory" in out:
        parts.append(f"peak memory -{out['memory']['reduction']:.1%}")
    if out.get("throughput", {}).get("decode") and out["throughput"]["decode"][-1]["measured_speedup"]:
        t = out["throughput"]["decode"][-1]
        ideal = f" (ideal {t['ideal_speedup']:.2f}x)" if t.get("ideal_speedup") else ""
        parts.append(f"decode x{t['measured_speedup']:.2f}{ideal} at batch {t['batch_size']}")
    missing = [k for k, v in checks.items() if v is None]
    if missing:
        parts.append("not measured: " + ", ".join(missing))
    out["summary"] = ", ".join(parts)
    return out


def claim_efficiency(eff: pl.DataFrame | None, models: Sequence[str]) -> dict[str, Any]:
    names = sorted(set(models) | (set(eff["model"].unique().to_list()) if eff is not None else set()))
    if eff is None:
        per_model = {m: {"status": NOT_EVALUATED, "summary": "not evaluated (no efficiency table)"} for m in names}
    else:
        per_model = {m: _efficiency_model(eff, m) for m in names}
    return _claim("efficiency", "Pruning cuts parameters and peak memory and raises decode throughput.", "paper",
                  per_model)  # fmt: skip


def compute_findings(metrics: pl.DataFrame, efficiency: pl.DataFrame | None) -> dict[str, Any]:
    """Every claim, its rule, verdict and evidence, as a JSON-ready dict."""
    acc = Accuracy(metrics)
    claims = [
        claim_selective_beats_random(acc),
        claim_reverse_collapse(acc),
        claim_recovery(acc),
        claim_efficiency(efficiency, acc.models),
        claim_selectivity_beyond_magnitude(acc),
    ]
    return _json_safe({
        "rules": {**RULES, "constants": {"z95": Z95, "collapse_target_level": COLLAPSE_TARGET_LEVEL,
                  "collapse_level_window": list(COLLAPSE_LEVEL_WINDOW), "collapse_fraction": COLLAPSE_FRACTION,
                  "memory_noise_floor": MEMORY_NOISE_FLOOR}},
        "metric": TARGET_METRIC,
        "models": acc.models,
        "claims": claims,
        "ranking": rank_methods(acc),
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


# ------------------------------------------------------------------------------ human-readable


def _num(x: float | None, fmt: str = ".0f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _fmt_est(e: dict[str, Any] | None) -> str:
    if not e or e.get("value") is None:
        return "n/a"
    lo, hi = e.get("ci95") or [None, None]
    s = f"{100 * e['value']:.1f}"
    if lo is not None and hi is not None:
        s += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
    if e.get("seed_range"):
        a, b = e["seed_range"]
        s += f" (seeds {100 * a:.1f}-{100 * b:.1f})"
    return s


def _fmt_cmp(c: dict[str, Any] | None) -> str:
    if not c:
        return "n/a"
    lo, hi = c["ci95"]
    return f"{100 * c['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] {c['verdict']}"


def _levelwise_table(entry: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    if not entry.get("per_level"):
        return None
    a, b = entry["a"], entry["b"]
    head = ["level %", f"{a} acc. % [95% CI]", f"{b} acc. % [95% CI]", f"{a} - {b} (pp) [95% CI]"]
    rows = [[x["level"], _fmt_est(x[a]), _fmt_est(x[b]), _fmt_cmp(x["comparison"])] for x in entry["per_level"]]
    return head, rows


def _claim_tables(claim: dict[str, Any], model: str, entry: dict[str, Any]) -> list[tuple[list[str], list[list[str]]]]:
    cid = claim["id"]
    if entry["status"] == NOT_EVALUATED and cid not in ("efficiency", "recovery"):
        return []
    if cid in ("selective_beats_random", "selectivity_beyond_magnitude"):
        t = _levelwise_table(entry)
        return [t] if t else []
    if cid == "reverse_collapse":
        rows = []
        for method, e in {"reverse": entry, **claim.get("other_reverse_methods", {}).get(model, {})}.items():
            if e.get("status") == NOT_EVALUATED:
                continue
            rows.append([method, e["level"], _fmt_est(e.get(method)), _fmt_est(e["base"]),
                         f"{100 * e['threshold']:.1f}", _fmt_est(e.get("random_same_level")), e["status"]])  # fmt: skip
        head = ["method", "level %", "acc. % [95% CI]", "base %", "collapse below %", "random same level %", "verdict"]
        return [(head, rows)] if rows else []
    if cid == "recovery":
        head = ["method", "level %", "seed", "pruned %", "pruned - base (pp)", "recovered %",
                "recovered - pruned (pp)", "gap closed", "recovers"]  # fmt: skip
        rows = [[x["method"], x["level"], str(x["seed"]), _fmt_est(x["pruned"]), _fmt_cmp(x["pruned_vs_base"]),
                 _fmt_est(x["recovered"]), _fmt_cmp(x["recovered_vs_pruned"]),
                 "n/a" if x["gap_closed"] is None else f"{x['gap_closed']:.0%}",
                 ("yes" if x["recovers"] else "no") if x["lost_accuracy"] else "nothing lost"]
                for x in entry.get("variants", [])]  # fmt: skip
        return [(head, rows)] if rows else []
    if cid == "efficiency":
        rows = []
        if "params" in entry:
            for x in entry["params"]["per_level"]:
                rows.append(["parameters", f"{x['level_pct']:g}", f"{entry['params']['base']:,.0f}",
                             f"{x['params_total']:,.0f}", f"{x['fraction_of_base']:.3f}x"])  # fmt: skip
        if "memory" in entry:
            m = entry["memory"]
            rows.append(["peak memory (MiB, batch 1)", f"{m['highest_level_pct']:g}", f"{m['base_bytes'] / 2**20:.1f}",
                         f"{m['highest_level_bytes'] / 2**20:.1f}", f"-{m['reduction']:.1%}"])  # fmt: skip
        for t in entry.get("throughput", {}).get("decode", []):
            ideal = "" if t.get("ideal_speedup") is None else f" (ideal {t['ideal_speedup']:.2f}x)"
            rows.append([f"decode tokens/s, batch {t['batch_size']} [IQR]",
                         f"{entry['throughput']['highest_level_pct']:g}",
                         f"{_num(t['base_tokens_per_s'])} [{_num(t['base_iqr'][0])}, {_num(t['base_iqr'][1])}]",
                         f"{_num(t['pruned_tokens_per_s'])} [{_num(t['pruned_iqr'][0])}, {_num(t['pruned_iqr'][1])}]",
                         f"{_num(t['measured_speedup'], '.2f')}x{ideal}"])  # fmt: skip
        head = ["quantity", "level %", "base", "pruned", "ratio"]
        return [(head, rows)] if rows else []
    return []


def report_blocks(findings: dict[str, Any]) -> list[tuple[str, Any]]:
    """The findings as a list of blocks ('h1'|'h2'|'h3'|'p'|'table', content), rendered to Markdown or HTML."""
    blocks: list[tuple[str, Any]] = [("h1", "Findings: did the paper's claims reproduce?")]
    blocks.append(("p", "Each claim is decided by the rule stated under it, fixed before the run; accuracy is "
                   f"the target task's headline metric ('{findings['metric']}'), in percent, with 95% intervals "
                   "over evaluation items (Wilson) or over seeds and items for random pruning; pp = "
                   "percentage points."))  # fmt: skip
    head = ["claim", "source", "verdict", "specialists"]
    rows = [[c["claim"], c["source"], c["status"].upper(), "; ".join(
        f"{m}: {v['status']}" for m, v in c["per_model"].items()) or "none"] for c in findings["claims"]]
    blocks.append(("table", (head, rows)))
    for c in findings["claims"]:
        blocks.append(("h2", f"{c['claim']} — {c['status'].upper()}"))
        blocks.append(("p", f"Rule: {c['rule']}."))
        for model, entry in c["per_model"].items():
            blocks.append(("h3", f"{model}: {entry['status']}"))
            blocks.append(("p", entry["summary"] + "." + (f" Note: {entry['note']}." if entry.get("note") else "")))
            for table in _claim_tables(c, model, entry):
                blocks.append(("table", table))
        if c["id"] == "recovery":
            for model, rows in c.get("selective_vs_random_after_recovery", {}).items():
                head = ["level %", "selective - random, pruned (pp)", "selective - random, recovered (pp)"]
                body = [[r["level"], _fmt_cmp(r.get("selective_minus_random_pruned")),
                         _fmt_cmp(r.get("selective_minus_random_recovered"))] for r in rows]  # fmt: skip
                blocks.append(("p", f"{model}, control: does recovery close the selective-random gap?"))
                blocks.append(("table", (head, body)))
    rk = findings["ranking"]
    blocks.append(("h2", "Which score prunes best? (beyond the paper)"))
    blocks.append(("p", f"Rule: {rk['rule']}."))
    for model, entry in rk["per_model"].items():
        blocks.append(("h3", model))
        blocks.append(("p", entry["summary"] + "."))
        if entry.get("ranking"):
            head = ["rank", "method", "wins - losses", "mean acc. over levels %", "levels", "beats", "beaten by"]
            body = [[str(r["rank"]), r["method"], f"{r['copeland']:+d}",
                     "n/a" if r["mean_accuracy_over_levels"] is None else f"{100 * r['mean_accuracy_over_levels']:.1f}",
                     str(r["levels"]), ", ".join(r["beats"]) or "-", ", ".join(r["beaten_by"]) or "-"]
                    for r in entry["ranking"]]  # fmt: skip
            blocks.append(("table", (head, body)))
    return blocks


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[tuple[str, Any]]) -> str:
    out = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + content)
        elif kind == "p":
            out.append(content)
        elif kind == "table":
            head, rows = content
            out.append("| " + " | ".join(_md_cell(h) for h in head) + " |")
            out.append("|" + "|".join("---" for _ in head) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


def render_html(blocks: list[tuple[str, Any]], title: str = "taskprune findings") -> str:
    esc = html.escape
    body = []
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{esc(content)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{esc(content)}</p>")
        elif kind == "table":
            head, rows = content
            body.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>")
            body += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows]
            body.append("</tbody></table>")
    style = ("body{font-family:sans-serif;max-width:70em;margin:1em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #bbb;padding:.2em .5em;"
             "font-size:90%;text-align:left}th{background:#eee}")  # fmt: skip
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")  # fmt: skip


# ------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", required=True, help="results/metrics.parquet")
    parser.add_argument("--efficiency", help="results/bench/efficiency.parquet (without it, the efficiency "
                        "claim is 'not evaluated')")  # fmt: skip
    parser.add_argument("--out", required=True, help="findings JSON to write (results/findings.json)")
    parser.add_argument("--markdown", help="also write the findings as Markdown (results/findings.md)")
    parser.add_argument("--html", help="also write the findings as a standalone HTML page for the report")


def run(args: argparse.Namespace) -> int:
    metrics = load_metrics(args.metrics)
    efficiency = load_efficiency(args.efficiency) if args.efficiency else None
    findings = compute_findings(metrics, efficiency)
    findings["inputs"] = {"metrics": str(args.metrics), "efficiency": args.efficiency}
    write_json(findings, args.out)
    blocks = report_blocks(findings)
    if args.markdown:
        write_text(render_markdown(blocks), args.markdown)
    if args.html:
        write_text(render_html(blocks), args.html)
    for c in findings["claims"]:
        log.info("%s: %s (%s)", c["id"], c["status"], c["summary"])
    return 0
