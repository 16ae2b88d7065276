"""Are task-specific neurons task-specific? Overlap of two specialists' most selective neurons, and how each
specialist's selectivity relates to its generalist's.

Why: the embedded specialists continue from one generalist, so neuron ``j`` of layer ``l`` is the same
neuron in all three models. That lets us ask what the paper cannot: whether the neurons reverse pruning
removes for math are the ones it removes for code, and whether specialisation *created* selective neurons
or amplified ones the generalist already had.

Rows of ``results/tables/neuron_overlap.parquet`` (one per layer and one with ``layer`` null = all layers):

``analysis = "jaccard"``
    For each reverse level ``L`` (``pruning.levels``) and layer: the sets ``A``, ``B`` of the ``k =
    round(L/100 * d_ff)`` most selective neurons of two models (exactly the neurons ``reverse`` pruning
    removes: :func:`taskprune.model.pruning.select_uniform`), ``value = |A & B| / |A | B|``. ``chance`` is the
    **exact** expectation of that Jaccard index for two independent uniformly random k-subsets of the
    layer's d_ff neurons: ``|A & B| = I ~ Hypergeometric(d_ff, k, k)`` and ``E[I / (2k - I)] = sum_i
    P(I = i) i / (2k - i)``. ``expected_intersection`` is ``E[I] = k^2 / d_ff``. For all layers the index
    pools the counts, ``sum_l |A_l & B_l| / sum_l |A_l | B_l|``, and its chance value is the exact
    expectation of ``S / (2K - S)`` with ``S`` the sum of the layers' independent hypergeometric
    intersections (their pmfs convolved) and ``K = sum_l k_l``. Pairs: the two specialists (each with its
    own task's selectivity), and the generalist's own selectivity for the two tasks (the baseline: how much
    the tasks overlap before specialisation).
``analysis = "spearman"``
    Spearman rank correlation (``scipy.stats.spearmanr``, ties averaged) between a specialist's
    selectivity and the generalist's selectivity computed on the same target and distractor statistics,
    per layer and over all neurons pooled; ``level`` is null. High: specialisation amplified neurons that
    were already selective; near zero: it created new ones.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from taskprune.errors import ConfigError, DataError
from taskprune.levels import Level

log = logging.getLogger(__name__)

COLUMNS = ("analysis", "model_a", "model_b", "layer", "level", "level_pct", "k", "width", "value", "chance",
           "expected_intersection")  # fmt: skip


def read_score_layers(path: str | Path) -> list[np.ndarray]:
    """A score table (``layer, neuron, score``) as one score array per layer, neurons in index order."""
    import polars as pl

    from taskprune.io import read_parquet

    df = read_parquet(path, ["layer", "neuron", "score"], what="score table").sort("layer", "neuron")
    if df.height == 0:
        raise DataError(f"{path}: score table is empty (0 rows)")
    out = []
    for layer, part in enumerate(df.partition_by("layer", maintain_order=True)):
        if part["layer"][0] != layer or part["neuron"].to_list() != list(range(part.height)):
            raise DataError(f"{path}: layers and neurons must be numbered 0..n-1 without gaps (layer {layer})")
        out.append(part["score"].cast(pl.Float64).to_numpy())
    return out


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A & B| / |A | B| of two index sets (1.0 for two empty sets)."""
    sa, sb = set(a.tolist()), set(b.tolist())
    union = len(sa | sb)
    return len(sa & sb) / union if union else 1.0


def intersection_pmf(k: int, width: int) -> np.ndarray:
    """P(|A & B| = i), i = 0..k, for two independent uniform k-subsets of ``width`` items (hypergeometric)."""
    from scipy.stats import hypergeom

    return hypergeom.pmf(np.arange(k + 1), width, k, k)


def chance_jaccard(ks: list[int], widths: list[int]) -> float:
    """Exact E[S / (2K - S)] with S the sum of independent per-layer intersections, K = sum k (one layer:
    E[I / (2k - I)])."""
    pmf = np.ones(1)
    for k, width in zip(ks, widths, strict=True):
        pmf = np.convolve(pmf, intersection_pmf(k, width))
    total = sum(ks)
    if total == 0:
        return 1.0
    s = np.arange(pmf.size)
    return float(np.sum(pmf * s / (2 * total - s)))


def _jaccard_rows(name_a: str, name_b: str, scores_a: list[np.ndarray], scores_b: list[np.ndarray],
                  levels: list[Level], multiple_of: int) -> list[dict[str, Any]]:  # fmt: skip
    from taskprune.model.pruning import removal_count, select_uniform

    widths = [s.size for s in scores_a]
    if widths != [s.size for s in scores_b]:
        raise DataError(f"{name_a} and {name_b}: score tables of different shapes ({widths} vs {[s.size for s in scores_b]})")
    rows = []
    for level in levels:
        ks = [removal_count(level, w, multiple_of) for w in widths]
        if sum(ks) == 0:
            continue
        top_a = select_uniform("reverse", widths, ks, scores_a)
        top_b = select_uniform("reverse", widths, ks, scores_b)
        inter = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(top_a, top_b, strict=True)]
        base = {"analysis": "jaccard", "model_a": name_a, "model_b": name_b, "level": level.label,
                "level_pct": level.pct}  # fmt: skip
        for layer, (a, b, k, w) in enumerate(zip(top_a, top_b, ks, widths, strict=True)):
            rows.append({**base, "layer": layer, "k": k, "width": w, "value": jaccard(a, b),
                         "chance": chance_jaccard([k], [w]), "expected_intersection": k * k / w})  # fmt: skip
        union = sum(2 * k - i for k, i in zip(ks, inter, strict=True))
        rows.append({**base, "layer": None, "k": sum(ks), "width": sum(widths), "value": sum(inter) / union,
                     "chance": chance_jaccard(ks, widths),
                     "expected_intersection": sum(k * k / w for k, w in zip(ks, widths, strict=True))})  # fmt: skip
    return rows


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties); NaN when either side is constant."""
    from scipy.stats import spearmanr

    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)


def _spearman_rows(specialist: str, generalist: str, spec: list[np.ndarray], gen: list[np.ndarray]) -> list[dict[str, Any]]:
    if [s.size for s in spec] != [g.size for g in gen]:
        raise DataError(f"{specialist} and {generalist}: score tables of different shapes")
    base = {"analysis": "spearman", "model_a": specialist, "model_b": generalist, "level": None, "level_pct": None,
            "k": None, "chance": 0.0, "expected_intersection": None}  # fmt: skip
    rows = [{**base, "layer": layer, "width": s.size, "value": spearman(s, g)}
            for layer, (s, g) in enumerate(zip(spec, gen, strict=True))]  # fmt: skip
    rows.append({**base, "layer": None, "width": sum(s.size for s in spec),
                 "value": spearman(np.concatenate(spec), np.concatenate(gen))})  # fmt: skip
    return rows


def overlap_table(specialists: dict[str, list[np.ndarray]], generalist: str,
                  generalist_scores: dict[str, list[np.ndarray]], levels: list[Level], multiple_of: int = 1) -> Any:  # fmt: skip
    """The table described in the module docstring.

    ``specialists``: two specialists' own selectivity (name -> per-layer arrays); ``generalist_scores``: the
    generalist's selectivity in each specialist's setting (same target and distractors), by specialist name.
    """
    import polars as pl

    if len(specialists) != 2:
        raise ConfigError(f"the overlap analysis compares exactly two specialists, got {len(specialists)}")
    missing = [s for s in specialists if s not in generalist_scores]
    if missing:
        raise ConfigError(f"no generalist scores for specialist(s) {', '.join(missing)}")
    (name_a, a), (name_b, b) = specialists.items()
    rows = _jaccard_rows(name_a, name_b, a, b, levels, multiple_of)
    rows += _jaccard_rows(f"{generalist}@{name_a}", f"{generalist}@{name_b}", generalist_scores[name_a],
                          generalist_scores[name_b], levels, multiple_of)  # fmt: skip
    for name, scores in specialists.items():
        rows += _spearman_rows(name, generalist, scores, generalist_scores[name])
    schema = {"analysis": pl.String, "model_a": pl.String, "model_b": pl.String, "layer": pl.Int64,
              "level": pl.String, "level_pct": pl.Float64, "k": pl.Int64, "width": pl.Int64, "value": pl.Float64,
              "chance": pl.Float64, "expected_intersection": pl.Float64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema).select(COLUMNS)


# =============================================================================================== CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--specialist", action="append", default=[], metavar="NAME=PARQUET", required=True,
                        help="a specialist's own selectivity table (give two)")  # fmt: skip
    parser.add_argument("--generalist", required=True, help="the generalist's name")
    parser.add_argument("--generalist-scores", action="append", default=[], metavar="SPECIALIST=PARQUET",
                        help="the generalist's selectivity on that specialist's target and distractors")  # fmt: skip
    parser.add_argument("--levels", nargs="+", required=True, help="reverse pruning levels (% of neurons)")
    parser.add_argument("--multiple-of", type=int, default=1, help="pruning.multiple_of")
    parser.add_argument("--out", required=True, help="results/tables/neuron_overlap.parquet")


def run(args: argparse.Namespace) -> int:
    from taskprune.io import write_parquet
    from taskprune.options import parse_assignments

    specialists = {n: read_score_layers(p) for n, p in parse_assignments(args.specialist, "--specialist", "NAME=PARQUET").items()}
    general = {n: read_score_layers(p) for n, p in parse_assignments(args.generalist_scores, "--generalist-scores", "NAME=PARQUET").items()}
    try:
        levels = [Level.from_label(str(x)) for x in args.levels]
    except ValueError as exc:
        raise ConfigError(f"--level: {exc}") from None
    table = overlap_table(specialists, args.generalist, general, levels, args.multiple_of)
    write_parquet(table, args.out, metadata={"generalist": args.generalist, "specialists": list(specialists)})
    for row in table.filter(table["layer"].is_null()).iter_rows(named=True):
        log.info("%s %s vs %s level %s: %.3f (chance %.3f)", row["analysis"], row["model_a"], row["model_b"],
                 row["level"], row["value"], row["chance"])  # fmt: skip
    return 0
