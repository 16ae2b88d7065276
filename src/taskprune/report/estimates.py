"""Estimates and verdict words of the findings: the rules' constants, intervals, paired bootstrap comparisons.

What lives here: the four outcome words (:data:`OUTCOMES`), every threshold and constant of the verdicts
(:data:`RULES`, recorded in ``findings.json``), the one :func:`wilson_interval` with :data:`Z95`, the
paired bootstrap over items (and seeds) of :class:`Side` objects (:func:`paired`, :func:`summarise`,
:func:`spearman_trend`), the beats-over-levels rule (:func:`directed_outcome`) and the overall rule over
specialists (:func:`overall_outcome`), and the per-row summaries the figures and tables draw
(:func:`estimate`). The claims themselves are in :mod:`taskprune.report.claims`.

Imports numpy and the package's spine only (scipy lazily), so any stage may use it: ``taskprune.evaluate``
takes its Wilson interval from here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from taskprune.errors import DataError
from taskprune.recipes import PAPER_RECIPE

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


# ------------------------------------------------------------------------------------ intervals

Z95 = 1.959963984540054  # two-sided 95% normal quantile (Wilson intervals, the figures' bands)


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` items; (NaN, NaN) for n = 0.

    The one Wilson interval of the package: the evaluation's proportion metrics
    (:func:`taskprune.evaluate.proportion_row`) and the figures' rebuilt item intervals (:func:`estimate`,
    which only asks for n > 0)."""
    if n <= 0:
        return (math.nan, math.nan)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))




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



def clear_caches() -> None:
    """Forget the cached comparisons and summaries (they hold the sides alive; a next table starts afresh)."""
    paired.cache_clear()
    _summary.cache_clear()


# ------------------------------------------------------------------------------------- verdicts


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


OVERALL_RULE = (
        "over specialists: inconclusive when no specialist is decisive (every one inconclusive); reproduced "
        "when every decisive specialist reproduces; contradicted when every decisive specialist contradicts; "
        "else not reproduced"
    )


def overall_outcome(statuses: Sequence[str]) -> str:
    """:data:`OVERALL_RULE`: the outcome of a claim over its specialists."""
    decisive = [s for s in statuses if s != INCONCLUSIVE]
    if not decisive:
        return INCONCLUSIVE
    if all(s == REPRODUCED for s in decisive):
        return REPRODUCED
    if all(s == CONTRADICTED for s in decisive):
        return CONTRADICTED
    return NOT_REPRODUCED



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
