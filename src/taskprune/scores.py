"""Neuron score tables from activation statistics: which neurons matter for the target task.

Every score is computed per (layer, neuron) from the statistics files of :mod:`taskprune.stats` (the target
task's and, for contrastive scores, each distractor's), with polars. Higher always means "more important
for the target task": ``selective`` pruning removes the lowest scores, ``reverse`` the highest.

With ``v_p`` the per-prompt mean |activation| (see :mod:`taskprune.stats`), ``T`` the target prompts,
``D`` all distractor prompts pooled, ``A = T + D``, and ``eps = scores.epsilon`` (1e-6):

``selectivity`` (the paper)
    ``S = (mu_T - mu_D) / (sigma_A + eps)`` with ``mu_D`` the mean of ``v_p`` over ``D`` and ``sigma_A`` the
    population std (ddof 0) of ``v_p`` over ``A``. ``mu_D`` and ``sigma_A`` are exact merges of the
    per-dataset ``n, mean, m2`` (Chan et al.), so adding a distractor only adds its own statistics job:
    ``n = sum n_i``, ``mean = sum n_i mean_i / n``, ``m2 = sum m2_i + sum n_i (mean_i - mean)^2``.
    **sigma_A = 0** (the neuron's ``v_p`` is the same on every prompt, e.g. a neuron that never fires) gives
    ``S = 0`` exactly: it carries no evidence for or against the target task.
``taker`` (ratio of target to distractor importance, as in TAKER-style selective pruning)
    ``(mu_T + eps) / (mu_D + eps)``; a neuron silent on both sets scores 1 (neutral).
``wanda`` (Wanda's |W| x ||X||, per neuron)
    ``||W_out[:, j]||_2 * sqrt(mean over target tokens of a_j^2)``: the L2 norm of what the neuron writes,
    times the RMS of its activation on the target task (the token-level L2 norm divided by sqrt(N_tokens),
    a per-table constant that does not change any ranking). A silent neuron scores 0.
``magnitude``
    ``mu_T``, the mean target activation (the control "reverse pruning by target activation magnitude").
    A silent neuron scores 0.
``random``
    i.i.d. uniform [0, 1) draws from ``numpy.random.default_rng(scores.random_seed)`` in (layer, neuron)
    order; it needs only the target statistics for the table's shape.

The methods are registered in :data:`taskprune.score_methods.SCORE_METHODS` (name, whether it needs
distractors, and its function here); every score function has the signature
``(target, distractors, epsilon, seed) -> layer, neuron, score``.

Output: ``results/scores/{model}/{method}.parquet`` with ``layer, neuron, score`` (int64, int64, float64),
sorted by layer and neuron.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from taskprune.errors import ConfigError, DataError, ModelError
from taskprune.score_methods import SCORE_METHODS

log = logging.getLogger(__name__)

KEYS = ["layer", "neuron"]


def pool(frames: Sequence[Any]) -> Any:
    """Exact merge of per-dataset statistics: one ``layer, neuron, n, mean, m2`` row per neuron.

    ``n = sum n_i``, ``mean = sum n_i mean_i / n``, ``m2 = sum_i [m2_i + n_i (mean_i - mean)^2]``.
    """
    import polars as pl

    stacked = pl.concat([f.select(*KEYS, "n", "mean", "m2") for f in frames])
    n_total = pl.col("n").sum().over(KEYS)
    pooled_mean = (pl.col("n") * pl.col("mean")).sum().over(KEYS) / n_total
    return (
        stacked.with_columns(pooled_mean.alias("_pooled"))
        .group_by(KEYS, maintain_order=True)
        .agg(
            pl.col("n").sum(),
            pl.col("_pooled").first().alias("mean"),
            (pl.col("m2") + pl.col("n") * (pl.col("mean") - pl.col("_pooled")) ** 2).sum().alias("m2"),
        )
        .sort(KEYS)
    )


def check_compatible(frames: dict[str, Any]) -> None:
    """All statistics must describe the same neurons of the same model (one-line error otherwise)."""
    import polars as pl

    items = list(frames.items())
    first_path, first = items[0]
    first_shape = _shape(first)
    for path, df in items[1:]:
        shape = _shape(df)
        if shape != first_shape:
            raise ModelError(
                f"{path}: statistics have layer widths {shape} but {first_path} has {first_shape} "
                "(statistics of different models?)"
            )
        if "w_out_norm" in df.columns and "w_out_norm" in first.columns:
            joined = first.select(*KEYS, "w_out_norm").join(df.select(*KEYS, "w_out_norm"), on=KEYS)
            differs = joined.select(
                ((pl.col("w_out_norm") - pl.col("w_out_norm_right")).abs()
                 > 1e-2 * pl.col("w_out_norm").abs() + 1e-8).any()
            ).item()
            if differs:
                raise ModelError(
                    f"{path}: statistics come from a different model than {first_path} "
                    "(output-projection weight norms differ)"
                )


def _shape(df: Any) -> list[int]:
    """Layer widths, requiring neurons 0..d_ff-1 in every layer."""
    import polars as pl

    per_layer = df.group_by("layer").agg(pl.len().alias("width"), pl.col("neuron").max().alias("top")).sort("layer")
    layers = per_layer["layer"].to_list()
    if layers != list(range(len(layers))) or (per_layer["top"] != per_layer["width"] - 1).any():
        raise DataError("statistics do not cover layers 0..L-1 and neurons 0..d_ff-1 (not a full statistics file)")
    return per_layer["width"].to_list()


def selectivity(target: Any, distractors: Sequence[Any], epsilon: float, seed: int) -> Any:
    """The paper's ``S = (mu_T - mu_D) / (sigma_A + eps)``; ``S = 0`` where ``sigma_A = 0``."""
    import polars as pl

    if not distractors:
        raise ConfigError("selectivity needs at least one distractor statistics file (--distractors)")
    mu_d = pool(distractors).select(*KEYS, pl.col("mean").alias("mu_d"))
    everything = pool([target, *distractors]).select(
        *KEYS, (pl.col("m2") / pl.col("n")).sqrt().alias("sigma_all")
    )
    return (
        target.select(*KEYS, pl.col("mean").alias("mu_t"))
        .join(mu_d, on=KEYS)
        .join(everything, on=KEYS)
        .select(
            *KEYS,
            pl.when(pl.col("sigma_all") == 0)
            .then(0.0)
            .otherwise((pl.col("mu_t") - pl.col("mu_d")) / (pl.col("sigma_all") + epsilon))
            .alias("score"),
        )
    )


def taker(target: Any, distractors: Sequence[Any], epsilon: float, seed: int) -> Any:
    """``(mu_T + eps) / (mu_D + eps)`` with ``mu_D`` pooled over the distractors."""
    import polars as pl

    if not distractors:
        raise ConfigError("taker needs at least one distractor statistics file (--distractors)")
    mu_d = pool(distractors).select(*KEYS, pl.col("mean").alias("mu_d"))
    return target.join(mu_d, on=KEYS).select(
        *KEYS, ((pl.col("mean") + epsilon) / (pl.col("mu_d") + epsilon)).alias("score")
    )


def wanda(target: Any, distractors: Sequence[Any], epsilon: float, seed: int) -> Any:
    """``||W_out[:, j]||_2 * sqrt(sq_mean_T[j])`` (needs the stats columns ``w_out_norm`` and ``sq_mean``)."""
    import polars as pl

    missing = [c for c in ("w_out_norm", "sq_mean") if c not in target.columns]
    if missing or target["w_out_norm"].is_nan().any():
        raise DataError(
            f"target statistics lack {', '.join(missing) or 'w_out_norm values'} needed by the wanda score "
            "(rerun taskprune stats)"
        )
    return target.select(*KEYS, (pl.col("w_out_norm") * pl.col("sq_mean").sqrt()).alias("score"))


def magnitude(target: Any, distractors: Sequence[Any], epsilon: float, seed: int) -> Any:
    """``mu_T``: the mean per-prompt |activation| on the target task."""
    import polars as pl

    return target.select(*KEYS, pl.col("mean").alias("score"))


def random_scores(target: Any, distractors: Sequence[Any], epsilon: float, seed: int) -> Any:
    """Uniform [0, 1) scores, seeded, in (layer, neuron) order."""
    import polars as pl

    rng = np.random.default_rng(seed)
    return target.select(*KEYS).with_columns(pl.Series("score", rng.random(target.height), dtype=pl.Float64))


def compute_scores(
    method: str, target: Any, distractors: Sequence[Any] = (), *, epsilon: float = 1e-6, seed: int = 42
) -> Any:
    """The score table ``layer, neuron, score`` (int64, int64, float64) of one method."""
    import polars as pl

    entry = SCORE_METHODS.get(method)
    if entry is None:
        raise ConfigError(f"unknown score method '{method}' (allowed: {', '.join(SCORE_METHODS)})")
    module, _, name = entry.function.partition(":")
    table = getattr(importlib.import_module(module), name)(target, distractors, epsilon, seed)
    table = table.sort(KEYS).select(
        pl.col("layer").cast(pl.Int64), pl.col("neuron").cast(pl.Int64), pl.col("score").cast(pl.Float64)
    )
    if not table["score"].is_finite().all():
        raise DataError(f"{method} scores are not all finite (check the statistics files)")
    if table.height != target.height:
        raise DataError(f"{method}: {table.height} scores for {target.height} neurons (statistics do not match)")
    return table


# -------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: Any) -> None:
    from taskprune.options import add_config_arguments

    parser.add_argument("--method", required=True, choices=SCORE_METHODS, help="score to compute")
    parser.add_argument("--target", required=True, help="statistics Parquet of the model on its target task")
    parser.add_argument(
        "--distractors", nargs="*", default=[], metavar="STATS",
        help="statistics Parquet of each distractor set (selectivity and taker need at least one)",
    )
    parser.add_argument("--output", required=True, help="score table to write (results/scores/{model}/{method}.parquet)")
    parser.add_argument(
        "--model-path", help="accepted for compatibility and recorded; unused (the statistics hold the weight norms)"
    )
    add_config_arguments(parser)


def run(args: Any) -> int:
    from taskprune.config import ScoresConfig
    from taskprune.io import write_parquet
    from taskprune.model.activations import read_stats
    from taskprune.options import stage_options

    opts = stage_options(args, {"scores": ScoresConfig})
    cfg: ScoresConfig = opts.scores
    if SCORE_METHODS[args.method].needs_distractors and not args.distractors:
        raise ConfigError(f"--distractors: score method '{args.method}' needs at least one distractor statistics file")
    paths = [args.target, *args.distractors]
    if len({str(Path(p).resolve()) for p in paths}) != len(paths):
        raise ConfigError("--target/--distractors: the same statistics file is given twice")
    frames = {str(p): read_stats(p) for p in paths}
    check_compatible(frames)
    target, *distractors = frames.values()
    table = compute_scores(args.method, target, distractors, epsilon=cfg.epsilon, seed=cfg.random_seed)
    metadata = {
        "method": args.method,
        "target": str(args.target),
        "distractors": [str(d) for d in args.distractors],
        "epsilon": cfg.epsilon,
        "random_seed": cfg.random_seed if args.method == "random" else None,
        "model_path": args.model_path,
        "n_target": int(target["n"][0]),
        "n_distractors": [int(d["n"][0]) for d in distractors],
    }
    write_parquet(table, args.output, metadata=metadata)
    log.info("wrote %s: %d neurons, %s", args.output, table.height, args.method)
    return 0
