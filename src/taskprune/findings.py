"""Decide from the per-item data whether each claim of the paper reproduced, by rules stated before looking.

The paper makes four claims about task-specific pruning of a specialist's MLP neurons:

1. **selective beats random**: removing the neurons least selective for the target task keeps target
   accuracy better than removing the same number of neurons at random;
2. **reverse collapse**: removing ~10% of the *most* selective neurons collapses the model;
3. **recovery**: LoRA fine-tuning recovers the pruned models;
4. **efficiency**: pruning cuts parameters and memory and raises throughput.

Every accuracy claim is decided per specialist from the per-item table ``results/items.parquet`` alone
(:mod:`taskprune.metrics` builds it), the efficiency claim from ``results/bench/efficiency.parquet``. The
rules, thresholds and constants are one frozen :data:`RULES` object, written into ``findings.json``.

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
  A claim's overall outcome over specialists follows :func:`overall_outcome`.

Beyond the paper, the same paired rule ranks every pruning score (Copeland counts over informative levels),
a control compares reverse pruning by selectivity with reverse pruning by target activation magnitude, and
descriptive trends (Spearman rank correlation with level, bootstrap CI) say how distractor retention and
the trap rate move with the level; they are descriptions, not claims.
"""

from __future__ import annotations

import argparse
import functools
import html
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from taskprune.errors import DataError
from taskprune.io import read_parquet, write_json, write_text
from taskprune.recipes import PAPER_RECIPE
from taskprune.tasks.metric_names import HEADLINE_METRIC

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------- the rules

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
OUTCOMES = (REPRODUCED, NOT_REPRODUCED, CONTRADICTED, INCONCLUSIVE)


@dataclass(frozen=True)
class Rules:
    """Every threshold and constant the verdicts use (recorded in findings.json as ``rules.constants``)."""

    confidence: float = 0.95  # two-sided percentile bootstrap interval
    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0  # every comparison draws from a generator seeded with this (order-independent)
    min_informative_levels: int = 1  # fewer informative levels than this: inconclusive
    beats_share: float = 0.5  # A beats B: higher at >= ceil(share * informative levels), lower at none
    collapse_target_level: float = 10.0  # "~10% of the most selective neurons"
    collapse_level_window: tuple[float, float] = (5.0, 15.0)  # the level nearest 10% inside this range
    collapse_fraction: float = 0.5  # collapsed: below this fraction of the base accuracy, beyond noise
    recovery_recipe: str = PAPER_RECIPE  # the paper's recipe decides the recovery claim; others are listed
    recovery_min_lost_variants: int = 2  # fewer recovered variants that lost accuracy: inconclusive
    recovery_share: float = 0.5  # reproduced: >= ceil(share * tested) recover, none gets worse
    trend_min_levels: int = 3  # a rank correlation over fewer levels is not reported
    memory_noise_floor: float = 0.01  # peak memory must fall by more than 1% to count as cut
    throughput_engine: str = "stock"  # the engine users run decides; 'tight' is an upper bound only
    throughput_phase: str = "decode"  # at the highest level and the largest batch size measured
    ranked_directions: tuple[str, ...] = ("selective", "random")  # methods ranked against each other

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence


RULES = Rules()

# Aliases kept for the figures (they draw the collapse threshold and window).
COLLAPSE_TARGET_LEVEL = RULES.collapse_target_level
COLLAPSE_LEVEL_WINDOW = RULES.collapse_level_window
COLLAPSE_FRACTION = RULES.collapse_fraction
MEMORY_NOISE_FLOOR = RULES.memory_noise_floor
Z95 = 1.959963984540054  # two-sided 95% normal quantile (Wilson bands of the figures)

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
    "overall": (
        "over specialists: inconclusive when no specialist is decisive (every one inconclusive); reproduced "
        "when every decisive specialist reproduces; contradicted when every decisive specialist contradicts; "
        "else not reproduced"
    ),
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


# ------------------------------------------------------------------------------- the statistics


@dataclass(frozen=True, eq=False)  # hashed by identity: comparisons of the same sides are computed once
class Side:
    """One side of a comparison: scores of ``k`` seeds on ``n`` items, aligned by item id."""

    ids: np.ndarray  # (n,) item ids (str), sorted
    values: np.ndarray  # (k, n) per-seed, per-item scores in [0, 1]
    seeds: tuple[int, ...]

    @property
    def mean(self) -> float:
        return float(self.values.mean()) if self.values.size else math.nan

    def seed(self, seed: int) -> Side:
        i = self.seeds.index(seed)
        return Side(self.ids, self.values[i : i + 1], (seed,))

    def align(self, ids: np.ndarray) -> np.ndarray:
        """(k, len(ids)) scores at ``ids`` (which must all be present)."""
        return self.values[:, np.searchsorted(self.ids, ids)]


@dataclass(frozen=True)
class Comparison:
    """d = A - scale * B over shared items, its bootstrap interval and verdict (A relative to B)."""

    diff: float
    ci_low: float
    ci_high: float
    verdict: str  # higher | lower | tie
    n_items: int

    def to_json(self) -> dict[str, Any]:
        return {"diff": self.diff, "ci95": [self.ci_low, self.ci_high], "verdict": self.verdict,
                "n_items": self.n_items}  # fmt: skip


def _rng() -> np.random.Generator:
    """The generator of the seed resamples (items are drawn by :func:`_item_weights`)."""
    return np.random.default_rng([RULES.bootstrap_seed, 1])


@functools.lru_cache(maxsize=64)
def _item_weights(n: int) -> np.ndarray:
    """(R, n) bootstrap counts: how often each of ``n`` items is drawn in each of R resamples (sum n per row).

    Drawn from a generator seeded with the bootstrap seed, so every comparison over n items uses the same
    resamples: results do not depend on the order in which comparisons are made."""
    r = RULES.bootstrap_resamples
    rng = np.random.default_rng(RULES.bootstrap_seed)
    drawn = rng.integers(0, n, size=(r, n)) + n * np.arange(r)[:, None]  # (R, n) item indices, row-offset
    weights = np.bincount(drawn.ravel(), minlength=r * n).reshape(r, n).astype(np.float64)
    weights.flags.writeable = False
    return weights


def _boot_means(values: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(R,) bootstrap means of a (k, n) side: items drawn by ``weights`` (R, n), its k seeds resampled per replicate."""
    per_seed = weights @ values.T / values.shape[1]  # (R, k)
    k = values.shape[0]
    if k == 1:
        return per_seed[:, 0]
    seed_idx = rng.integers(0, k, size=(per_seed.shape[0], k))  # (R, k)
    return np.take_along_axis(per_seed, seed_idx, axis=1).mean(axis=1)


def _interval(samples: np.ndarray) -> tuple[float, float]:
    a = 100 * RULES.alpha / 2
    lo, hi = np.nanpercentile(samples, [a, 100 - a])
    return float(lo), float(hi)


@functools.lru_cache(maxsize=4096)
def paired(a: Side, b: Side, scale_b: float = 1.0) -> Comparison:
    """Paired bootstrap of ``mean(A) - scale_b * mean(B)`` over the items both sides answered."""
    ids = np.intersect1d(a.ids, b.ids)
    if ids.size == 0:
        raise DataError("a comparison has no item in common between its two sides (item ids differ)")
    va, vb = a.align(ids), b.align(ids)
    diff = float(va.mean() - scale_b * vb.mean())
    rng = _rng()
    weights = _item_weights(int(ids.size))  # (R, n), shared by both sides: the pairing
    d = _boot_means(va, weights, rng) - scale_b * _boot_means(vb, weights, rng)  # (R,)
    lo, hi = _interval(d)
    verdict = "higher" if lo > 0 else "lower" if hi < 0 else "tie"
    return Comparison(diff, lo, hi, verdict, int(ids.size))


@functools.lru_cache(maxsize=4096)
def _summary(side: Side) -> tuple[tuple[str, Any], ...]:
    return tuple(_summarise(side).items())


def summarise(side: Side) -> dict[str, Any]:
    """Mean with its bootstrap interval (items and seeds), per-seed means and the item count (cached)."""
    return {k: list(v) if isinstance(v, list) else v for k, v in _summary(side)}


def _summarise(side: Side) -> dict[str, Any]:
    """Mean with its bootstrap interval (items and seeds), per-seed means and the item count."""
    rng = _rng()
    n = side.ids.size
    lo, hi = _interval(_boot_means(side.values, _item_weights(int(n)), rng))
    out: dict[str, Any] = {"value": side.mean, "ci95": [lo, hi], "n_items": int(n)}
    if len(side.seeds) > 1:
        seed_values = [float(v) for v in side.values.mean(axis=1)]
        out |= {"seeds": list(side.seeds), "seed_values": seed_values,
                "seed_range": [min(seed_values), max(seed_values)]}  # fmt: skip
    return out


def spearman_trend(levels: Sequence[float], sides: Sequence[Side]) -> dict[str, Any]:
    """Spearman correlation of level with each side's mean; CI from resampling shared items (and seeds)."""
    from scipy.stats import rankdata, spearmanr

    ids = sides[0].ids
    for s in sides[1:]:
        ids = np.intersect1d(ids, s.ids)
    means = [s.align(ids).mean() for s in sides]
    rho = float(spearmanr(levels, means).statistic) if len(set(means)) > 1 else math.nan
    rng = _rng()
    weights = _item_weights(int(ids.size))  # the same items at every level
    boot = np.stack([_boot_means(s.align(ids), weights, rng) for s in sides], axis=1)  # (R, L)
    ranks = rankdata(boot, axis=1)  # (R, L)
    level_ranks = rankdata(levels)  # (L,)
    rc = ranks - ranks.mean(axis=1, keepdims=True)
    lc = level_ranks - level_ranks.mean()
    denom = np.sqrt((rc**2).sum(axis=1) * (lc**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        rhos = np.where(denom > 0, (rc * lc).sum(axis=1) / denom, np.nan)  # (R,)
    lo, hi = _interval(rhos) if np.isfinite(rhos).any() else (math.nan, math.nan)
    reading = ("rises with the level beyond noise" if lo > 0 else "falls with the level beyond noise" if hi < 0
               else "no monotone trend beyond noise")  # fmt: skip
    return {"levels": list(levels), "means": [float(m) for m in means], "spearman": rho, "ci95": [lo, hi],
            "reading": reading, "n_items": int(ids.size)}  # fmt: skip


# ---------------------------------------------------------------------------------- the tables

ITEM_COLUMNS = ("model", "method", "level", "level_pct", "seed", "stage", "task", "role", "id", "metric", "score")
ROLES = ("target", "distractor")
STAGES = ("base", "pruned", "recovered")


def validate_items(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """Check the per-item table's columns, types and values; add ``recovery`` (null) and ``hit_limit`` when absent."""
    if df.height == 0:
        raise DataError(f"{source}: per-item table is empty (expected one row per variant, task and item)")
    casts = {"model": pl.String, "method": pl.String, "level": pl.String, "level_pct": pl.Float64,
             "seed": pl.Int64, "stage": pl.String, "task": pl.String, "role": pl.String, "id": pl.String,
             "metric": pl.String, "score": pl.Float64}  # fmt: skip
    if "recovery" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.String).alias("recovery"))
    if "hit_limit" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.Float64).alias("hit_limit"))
    casts |= {"recovery": pl.String, "hit_limit": pl.Float64}
    try:
        df = df.with_columns([pl.col(c).cast(t, strict=True) for c, t in casts.items()])
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{source}: per-item column has the wrong type ({str(exc).splitlines()[0]})") from None
    for col, allowed in (("role", ROLES), ("stage", STAGES)):
        bad = df.filter(~pl.col(col).is_in(list(allowed)))[col].unique().to_list()
        if bad:
            raise DataError(f"{source}: column '{col}' has value(s) {bad}; expected one of {', '.join(allowed)}")
    nulls = [c for c in ITEM_COLUMNS if df[c].null_count()]
    if nulls:
        raise DataError(f"{source}: per-item column(s) {', '.join(nulls)} have null values")
    out_of_range = df.filter(pl.col("score").is_nan() | (pl.col("score") < 0) | (pl.col("score") > 1))
    if out_of_range.height:
        r = out_of_range.row(0, named=True)
        raise DataError(f"{source}: score {r['score']} of item '{r['id']}' ({r['model']}/{r['method']}/{r['level']}) "
                        "is outside [0, 1]")  # fmt: skip
    key = ["model", "method", "level", "seed", "stage", "recovery", "task", "id"]
    dup = df.group_by(key).len().filter(pl.col("len") > 1)
    if dup.height:
        raise DataError(f"{source}: duplicated per-item row {'/'.join(str(v) for v in dup.row(0)[:-1])}")
    return df


def load_items(path: str | Path) -> pl.DataFrame:
    return validate_items(read_parquet(path, ITEM_COLUMNS, what="per-item table"), str(path))


Key = tuple[str, str, str, str | None, float]  # model, method, stage, recovery, level_pct


class Items:
    """Per-item scores of one role (target, distractor or trap) as :class:`Side` objects per variant group."""

    def __init__(self, df: pl.DataFrame, value: str = "score") -> None:
        self.sides: dict[Key, Side] = {}
        self.labels: dict[float, str] = {}
        df = df.filter(pl.col(value).is_not_null()).with_columns(
            item=pl.concat_str([pl.col("task"), pl.col("id")], separator="\x1f"),
            level_key=pl.col("level_pct").round(6),
        )
        for r in df.select("level_key", "level").unique().iter_rows():
            self.labels[float(r[0])] = str(r[1])
        groups = df.partition_by(["model", "method", "stage", "recovery", "level_key"], as_dict=True)
        for (model, method, stage, recovery, level), g in groups.items():
            wide = g.pivot(on="seed", index="item", values=value, aggregate_function="first").drop_nulls()
            wide = wide.sort("item")
            seeds = sorted(int(c) for c in wide.columns if c != "item")
            if wide.height == 0:
                continue
            values = np.stack([wide[str(s)].to_numpy().astype(np.float64) for s in seeds])  # (k, n)
            self.sides[(model, method, stage, recovery, float(level))] = Side(
                wide["item"].to_numpy().astype(str), values, tuple(seeds))
        self.models = sorted({k[0] for k in self.sides})

    def methods(self, model: str, stage: str = "pruned") -> list[str]:
        return sorted({k[1] for k in self.sides if k[0] == model and k[2] == stage})

    def levels(self, model: str, method: str, stage: str = "pruned", recovery: str | None = None) -> list[float]:
        return sorted(k[4] for k in self.sides if k[:4] == (model, method, stage, recovery))

    def get(self, model: str, method: str, level: float, stage: str = "pruned",
            recovery: str | None = None) -> Side | None:  # fmt: skip
        return self.sides.get((model, method, stage, recovery, round(level, 6)))

    def base(self, model: str) -> Side | None:
        found = [s for k, s in self.sides.items() if k[0] == model and k[2] == "base"]
        return found[0].seed(found[0].seeds[0]) if found else None

    def recovered(self, model: str) -> list[tuple[str, str, float]]:
        """(method, recipe, level) of every recovered group of ``model``."""
        return sorted((k[1], k[3] or RULES.recovery_recipe, k[4]) for k in self.sides
                      if k[0] == model and k[2] == "recovered")  # fmt: skip

    def recovered_side(self, model: str, method: str, recipe: str, level: float) -> Side | None:
        s = self.get(model, method, level, "recovered", recipe)
        if s is None and recipe == RULES.recovery_recipe:
            s = self.get(model, method, level, "recovered", None)
        return s

    def label(self, level: float) -> str:
        return self.labels.get(round(level, 6), f"{level:g}")


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


def _beats(wins: int, losses: int, n: int) -> bool:
    return n >= RULES.min_informative_levels and wins >= math.ceil(RULES.beats_share * n) and losses == 0


def directed_outcome(per_level: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The beats-over-levels rule for "a beats b" and its opposite over the per-level comparisons."""
    info = [x for x in per_level if x["informative"]]
    wins = sum(x["comparison"]["verdict"] == "higher" for x in info)
    losses = sum(x["comparison"]["verdict"] == "lower" for x in info)
    info_rev = [x for x in per_level if x["informative_reverse"]]
    rev_wins = sum(x["comparison"]["verdict"] == "lower" for x in info_rev)
    rev_losses = sum(x["comparison"]["verdict"] == "higher" for x in info_rev)
    a_beats, b_beats = _beats(wins, losses, len(info)), _beats(rev_wins, rev_losses, len(info_rev))
    if a_beats and not b_beats:
        status = REPRODUCED
    elif b_beats and not a_beats:
        status = CONTRADICTED
    elif len(info) < RULES.min_informative_levels and not b_beats:
        status = INCONCLUSIVE
    else:
        status = NOT_REPRODUCED
    return {
        "status": status, "levels_compared": len(per_level), "informative_levels": len(info),
        "ceiling_levels": [x["level"] for x in per_level if not x["informative"]],
        "a_higher_at": wins, "a_lower_at": losses, "a_beats_b": a_beats,
        "reverse_informative_levels": len(info_rev), "b_beats_a": b_beats,
    }  # fmt: skip


# ------------------------------------------------------------------------------------ the claims


def overall_outcome(statuses: Sequence[str]) -> str:
    """RULE_TEXT['overall']: the outcome of a claim over its specialists."""
    decisive = [s for s in statuses if s != INCONCLUSIVE]
    if not decisive:
        return INCONCLUSIVE
    if all(s == REPRODUCED for s in decisive):
        return REPRODUCED
    if all(s == CONTRADICTED for s in decisive):
        return CONTRADICTED
    return NOT_REPRODUCED


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

#: Columns the figures' efficiency panels read (the findings need fewer, see :func:`claim_efficiency`).
EFFICIENCY_COLUMNS = (
    "model", "method", "level", "level_pct", "seed", "stage", "batch_size", "phase",
    "params_total", "peak_memory_bytes", "tokens_per_s", "tokens_per_s_q1", "tokens_per_s_q3",
)  # fmt: skip
EFFICIENCY_REQUIRED = ("method", "level_pct", "batch_size", "phase")
THROUGHPUT_COLUMNS = ("engine", "measured_speedup", "measured_speedup_ci_low", "measured_speedup_ci_high")


def load_efficiency(path: str | Path) -> pl.DataFrame:
    """The efficiency table as the figures read it."""
    df = read_parquet(path, EFFICIENCY_COLUMNS, what="efficiency table")
    return df.with_columns(pl.col("level_pct").cast(pl.Float64))


def load_efficiency_for_findings(path: str | Path) -> pl.DataFrame:
    """The efficiency table with only the columns every efficiency check needs."""
    df = read_parquet(path, EFFICIENCY_REQUIRED, what="efficiency table")
    return df.with_columns(pl.col("level_pct").cast(pl.Float64))


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, int | float) and math.isfinite(float(x))


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
        return [(float(a), float(b)) for a, b in g.sort("level_pct").iter_rows() if _finite(b)]

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
                if noisy or not (_finite(lo) and _finite(hi)):
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
        parts.append(f"{t['phase']} speedup x{_num(b['measured_speedup'], '.2f')} [{_num(ci[0], '.2f')}, "
                     f"{_num(ci[1], '.2f')}] ({t['engine']}, batch {b['batch_size']}"
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
        paired.cache_clear()
        _summary.cache_clear()


def _compute_findings(items: pl.DataFrame, efficiency: pl.DataFrame | None) -> dict[str, Any]:
    from taskprune.recovery_findings import recovery_recipe_findings  # lazy: it imports this module

    acc = Items(items.filter(pl.col("role") == "target"))
    claims = [
        claim_selective_beats_random(acc),
        claim_reverse_collapse(acc),
        claim_recovery(acc),
        claim_efficiency(efficiency),
        claim_selectivity_beyond_magnitude(acc),
    ]
    metrics = items.filter(pl.col("role") == "target").group_by("model").agg(pl.col("metric").unique().sort())
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


# ------------------------------------------------------------------------------ human-readable


def _num(x: Any, fmt: str = ".0f") -> str:
    return format(float(x), fmt) if _finite(x) else "n/a"


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
    head = ["level %", f"{a} % [95% CI]", f"{b} % [95% CI]", f"{b} - base (pp, paired)",
            f"{a} - {b} (pp, paired) [95% CI]", "counted"]  # fmt: skip
    rows = [[x["level"], _fmt_est(x[a]), _fmt_est(x[b]), _fmt_cmp(x[f"{b}_vs_base"]), _fmt_cmp(x["comparison"]),
             "yes" if x["informative"] else f"no: ceiling ({b} lost nothing)"] for x in entry["per_level"]]  # fmt: skip
    return head, rows


def _claim_tables(claim: dict[str, Any], model: str, entry: dict[str, Any]) -> list[tuple[list[str], list[list[str]]]]:
    cid = claim["id"]
    if cid in ("selective_beats_random", "selectivity_beyond_magnitude"):
        t = _levelwise_table(entry)
        return [t] if t else []
    if cid == "reverse_collapse":
        rows = []
        for method, e in {"reverse": entry, **claim.get("other_reverse_methods", {}).get(model, {})}.items():
            for x in e.get("per_level", []):
                rows.append([method, x["level"], _fmt_est(x.get(method)), f"{100 * x['threshold']:.1f}",
                             _fmt_est(x.get("random_same_level")), _fmt_cmp(x.get(f"{method}_minus_half_base")),
                             _fmt_cmp(x.get(f"{method}_vs_random")),
                             ("yes" if x["collapsed"] else "no") + (" (decides)" if x["level"] == e["level"] else "")])  # fmt: skip
        head = ["method", "level %", "acc. % [95% CI]", "half base %", "random same level %",
                "minus half base (pp)", "minus random (pp)", "collapsed"]  # fmt: skip
        return [(head, rows)] if rows else []
    if cid == "recovery":
        head = ["method", "recipe", "level %", "seed", "pruned %", "pruned - base (pp)", "recovered %",
                "recovered - pruned (pp)", "gap closed", "counted / recovers"]  # fmt: skip
        rows = [[x["method"], x["recovery"], x["level"], str(x["seed"]), _fmt_est(x["pruned"]),
                 _fmt_cmp(x["pruned_vs_base"]), _fmt_est(x["recovered"]), _fmt_cmp(x["recovered_vs_pruned"]),
                 "n/a" if x["gap_closed"] is None else f"{x['gap_closed']:.0%}",
                 ("yes / " + ("recovers" if x["recovers"] else "worse" if x["worse"] else "tie"))
                 if x["lost_accuracy"] else "no: lost nothing"] for x in entry.get("variants", [])]  # fmt: skip
        return [(head, rows)] if rows else []
    if cid == "efficiency":
        rows = []
        for x in entry.get("params", {}).get("per_level", []):
            rows.append(["parameters", f"{x['level_pct']:g}", f"{entry['params']['base']:,.0f}",
                         f"{x['params_total']:,.0f}", f"{x['fraction_of_base']:.3f}x", entry["checks"]["params"]])  # fmt: skip
        if "memory" in entry:
            m = entry["memory"]
            rows.append(["peak memory (MiB, batch 1)", f"{m['highest_level_pct']:g}", f"{m['base_bytes'] / 2**20:.1f}",
                         f"{m['highest_level_bytes'] / 2**20:.1f}", f"{-m['reduction']:+.1%}", entry["checks"]["memory"]])  # fmt: skip
        t = entry.get("throughput", {})
        for b in t.get("per_batch", []):
            ideal = "" if not _finite(b.get("ideal_speedup")) else f", ideal x{b['ideal_speedup']:.2f}"
            rows.append([f"{t['phase']} speedup ({t['engine']}), batch {b['batch_size']}", f"{t['highest_level_pct']:g}",
                         "1", f"x{_num(b['measured_speedup'], '.2f')}",
                         f"[{_num(b['ci95'][0], '.2f')}, {_num(b['ci95'][1], '.2f')}]{ideal}"
                         + (" noisy" if b["noisy"] else ""), b["verdict"]])  # fmt: skip
        head = ["quantity", "level %", "base", "pruned", "ratio / 95% CI", "check"]
        return [(head, rows)] if rows else []
    return []


def report_blocks(findings: dict[str, Any]) -> list[tuple[str, Any]]:
    """The findings as a list of blocks ('h1'|'h2'|'h3'|'p'|'table', content), rendered to Markdown or HTML."""
    c = findings["rules"]["constants"]
    metrics = "; ".join(f"{m}: {', '.join(v)}" for m, v in findings.get("target_metrics", {}).items())
    blocks: list[tuple[str, Any]] = [("h1", "Findings: did the paper's claims reproduce?")]
    blocks.append(("p", "Each claim is decided by the rule stated under it, fixed before the run, with one of four "
                   "outcomes: reproduced, not reproduced (the signal is there, the claim's direction does not reach "
                   "its rule), contradicted (the opposite holds by the same rule), inconclusive (too few informative "
                   f"comparisons). Target scores in percent ({metrics}); pp = percentage points. Every comparison is "
                   f"paired over the items both sides answered: {c['confidence']:.0%} bootstrap intervals from "
                   f"{c['bootstrap_resamples']} resamples (seed {c['bootstrap_seed']}), random seeds resampled "
                   f"jointly with items. {RULE_TEXT['informative_level'][0].upper() + RULE_TEXT['informative_level'][1:]}. Overall: "
                   f"{RULE_TEXT['overall']}."))  # fmt: skip
    head = ["claim", "source", "outcome", "specialists"]
    rows = [[cl["claim"], cl["source"], cl["status"].upper(), "; ".join(
        f"{m}: {v['status']}" for m, v in cl["per_model"].items()) or "none"] for cl in findings["claims"]]
    blocks.append(("table", (head, rows)))
    for cl in findings["claims"]:
        blocks.append(("h2", f"{cl['claim']} — {cl['status'].upper()}"))
        blocks.append(("p", f"Rule: {cl['rule']}."))
        for model, entry in cl["per_model"].items():
            blocks.append(("h3", f"{model}: {entry['status']}"))
            blocks.append(("p", entry["summary"] + "."))
            if cl["id"] == "recovery" and len(entry.get("by_recipe", {})) > 1:
                blocks.append(("p", "By recipe: " + "; ".join(f"{r}: {v['status']} ({v['summary']})"
                                                            for r, v in entry["by_recipe"].items()) + "."))  # fmt: skip
            for table in _claim_tables(cl, model, entry):
                blocks.append(("table", table))
    rk = findings["ranking"]
    blocks.append(("h2", "Which score prunes best? (beyond the paper)"))
    blocks.append(("p", f"Rule: {rk['rule']}."))
    for model, entry in rk["per_model"].items():
        blocks.append(("h3", model))
        blocks.append(("p", entry["summary"] + "."))
        if entry.get("ranking"):
            head = ["rank", "method", "Copeland (level wins - losses)", "mean acc. over levels %", "levels",
                    "wins at a level against", "loses at a level against"]  # fmt: skip
            body = [[str(r["rank"]), r["method"], f"{r['copeland']:+d} ({r['level_wins']} - {r['level_losses']})",
                     _num(100 * r["mean_accuracy_over_levels"] if _finite(r["mean_accuracy_over_levels"]) else None, ".1f"),
                     str(r["levels"]), ", ".join(r["beats"]) or "-", ", ".join(r["beaten_by"]) or "-"]
                    for r in entry["ranking"]]  # fmt: skip
            blocks.append(("table", (head, body)))
    if findings.get("recovery_recipes"):
        from taskprune.recovery_findings import report_blocks as recipe_blocks

        blocks += recipe_blocks(findings["recovery_recipes"])
    tr = findings["trends"]
    blocks.append(("h2", "How distractor retention and trap rate move with the level (descriptive)"))
    blocks.append(("p", f"Rule: {tr['rule']}."))
    for model, per_method in tr["per_model"].items():
        blocks.append(("h3", model))
        head = ["method", "quantity", "levels", "means %", "Spearman rho [95% CI]", "reading"]
        body = []
        for method, quantities in per_method.items():
            for name, e in quantities.items():
                rho = (f"{e['spearman']:+.2f} [{_num(e['ci95'][0], '+.2f')}, {_num(e['ci95'][1], '+.2f')}]"
                       if "ci95" in e and _finite(e.get("spearman")) else "n/a")  # fmt: skip
                body.append([method, name.replace("_", " "), ", ".join(f"{x:g}" for x in e.get("levels", [])),
                             ", ".join(f"{100 * x:.1f}" for x in e.get("means", [])), rho, e["reading"]])  # fmt: skip
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


# ------------------------------------------------------------------- row summaries for the figures


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


METRIC_COLUMNS = (
    "model", "method", "direction", "score", "level", "level_pct", "seed", "stage",
    "task", "task_kind", "metric", "value", "n", "ci_low", "ci_high",
)  # fmt: skip
TARGET_METRIC = HEADLINE_METRIC  # the target task's headline metric (taskprune.tasks.metric_names)


def load_metrics(path: str | Path) -> pl.DataFrame:
    """results/metrics.parquet as the figures read it."""
    df = read_parquet(path, METRIC_COLUMNS, what="metrics table")
    if df.height == 0:
        raise DataError(f"{path}: metrics table is empty (expected one row per variant, task and metric)")
    return df.with_columns(pl.col("level_pct").cast(pl.Float64), pl.col("seed").cast(pl.Int64))


# ------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--items", required=True, help="results/items.parquet (the per-item table)")
    parser.add_argument("--efficiency", help="results/bench/efficiency.parquet (without it, the efficiency "
                        "claim is inconclusive)")  # fmt: skip
    parser.add_argument("--out", required=True, help="findings JSON to write (results/findings.json)")
    parser.add_argument("--markdown", help="also write the findings as Markdown (results/findings.md)")
    parser.add_argument("--html", help="also write the findings as a standalone HTML page for the report")


def run(args: argparse.Namespace) -> int:
    items = load_items(args.items)
    efficiency = load_efficiency_for_findings(args.efficiency) if args.efficiency else None
    findings = compute_findings(items, efficiency)
    findings["inputs"] = {"items": str(args.items), "efficiency": args.efficiency}
    blocks = report_blocks(findings)
    markdown = render_markdown(blocks) if args.markdown else None
    page = render_html(blocks) if args.html else None
    write_json(findings, args.out)
    if markdown is not None:
        write_text(markdown, args.markdown)
    if page is not None:
        write_text(page, args.html)
    for c in findings["claims"]:
        log.info("%s: %s (%s)", c["id"], c["status"], c["summary"])
    return 0
