"""Gathering: ``results/bench/efficiency.parquet`` from the per-variant files and the shape-family files.

``taskprune bench gather`` attaches each family's throughput rows (:mod:`taskprune.perf.paired`) to every
variant they describe, with the variant's own parameters, bytes and peak memory from its per-variant file
(:mod:`taskprune.perf.measure`); columns: :data:`CONTRACT_COLUMNS`, then the rest.

Imported by the ``bench`` stage.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from taskprune.errors import DataError
from taskprune.perf.measure import per_variant_columns

# Columns of results/bench/efficiency.parquet fixed by the contract (written by gather_efficiency).
CONTRACT_COLUMNS: tuple[str, ...] = (
    "shapes", "variant", "measured_variant", "model", "method", "level", "level_pct", "seed", "stage",
    "batch_size", "phase", "engine", "measured_speedup", "measured_speedup_ci_low", "measured_speedup_ci_high",
    "ideal_speedup", "ideal_speedup_bytes", "realised_fraction", "realised_fraction_ci_low",
    "realised_fraction_ci_high", "n_pairs", "noisy", "params_total", "params_mlp", "bytes_on_disk",
    "peak_memory_bytes", "tokens_per_s", "tokens_per_s_q1", "tokens_per_s_q3", "device",
)  # fmt: skip


def gather_efficiency(variant_paths: Sequence[str | os.PathLike[str]], family_paths: Sequence[str | os.PathLike[str]]) -> Any:
    """``results/bench/efficiency.parquet``: every family row, once per variant it describes.

    A family's rows label every variant of its models at the same level (``stage == "base"`` for the base),
    with the variant's own parameters, bytes and peak memory from its per-variant file; variants at levels
    the family did not time keep their memory rows with null throughput. A family that describes no model
    of the run (e.g. Qwen2.5-1.5B's shapes in the embedded default) gets rows of its own, named after it
    (``model = shapes``, ``method = "uniform"``, parameters from the closed form, memory null).
    """
    import polars as pl

    from taskprune.io import read_parquet

    if not family_paths:
        raise DataError("bench gather: no shape-family benchmark files given (--families)")
    variants = (
        pl.concat([read_parquet(p, required=per_variant_columns(), what="per-variant benchmark file")
                   .select(per_variant_columns()) for p in variant_paths], how="vertical_relaxed")  # fmt: skip
        if variant_paths else None
    )
    if variants is not None:
        dup = variants.group_by("variant").len().filter(pl.col("len") > 1)
        if dup.height:
            raise DataError(f"bench gather: variant '{dup['variant'][0]}' appears in {dup['len'][0]} per-variant files")
    frames = []
    for path in family_paths:
        fam = read_parquet(path, required=["shapes", "level_pct", "family_models"], what="shape-family benchmark file")
        models = fam["family_models"][0].to_list() if fam.height else []
        fam = fam.drop("family_models")
        if "family_only_variant" not in fam.columns:
            fam = fam.with_columns(pl.lit(None, dtype=pl.String).alias("family_only_variant"))
        mine = variants.filter(pl.col("model").is_in(models)) if variants is not None and models else None
        if mine is not None and mine.height:
            timed = fam.select(pl.col("level_pct").round(6).alias("_lv")).unique()
            rows = mine.with_columns(
                pl.when(pl.col("stage") == "base").then(0.0).otherwise(pl.col("level_pct")).round(6).alias("_lv")
            )
            joined = rows.join(fam.rename({"level": "_family_level", "level_pct": "_family_level_pct",
                                           "device": "_family_device"}).with_columns(
                pl.col("_family_level_pct").round(6).alias("_lv")), on="_lv", how="left")  # fmt: skip
            missing = rows.join(timed, on="_lv", how="anti")
            if missing.height and missing.height == rows.height:
                raise DataError(f"{path}: the family times none of the levels of its models' variants")
            # global allocation: a level's timing describes only the checkpoint timed; the others keep memory rows
            other = pl.col("family_only_variant").is_not_null() & (pl.col("family_only_variant") != pl.col("measured_variant"))
            kept = joined.filter(~other.fill_null(False))
            dropped = rows.join(kept.select("variant").unique(), on="variant", how="anti")
            frames.append(pl.concat([kept, dropped], how="diagonal_relaxed")
                          .drop("_lv", "_family_level", "_family_level_pct", "_family_device", "family_only_variant"))  # fmt: skip
        else:
            name = str(fam["shapes"][0])
            frames.append(fam.drop("family_only_variant").with_columns(
                pl.lit(name).alias("model"),
                pl.when(pl.col("level").is_null()).then(pl.lit("base")).otherwise(pl.lit("uniform")).alias("method"),
                pl.lit(0, dtype=pl.Int64).alias("seed"),
                pl.when(pl.col("level").is_null()).then(pl.lit("base")).otherwise(pl.lit("pruned")).alias("stage"),
                pl.col("level").fill_null("0"),
                pl.col("params_total_shapes").alias("params_total"), pl.col("params_mlp_shapes").alias("params_mlp"),
                pl.lit(None, dtype=pl.Int64).alias("bytes_on_disk"),
                pl.lit(None, dtype=pl.Int64).alias("peak_memory_bytes"),
            ).with_columns(
                pl.when(pl.col("stage") == "base").then(pl.format("{}/base", pl.col("model")))
                .otherwise(pl.format("{}/uniform/{}/0", pl.col("model"), pl.col("level"))).alias("variant"),
            ).with_columns(pl.col("variant").alias("measured_variant")))  # fmt: skip
    out = pl.concat(frames, how="diagonal_relaxed")
    order = [c for c in CONTRACT_COLUMNS if c in out.columns]
    rest = [c for c in out.columns if c not in order]
    return out.select(order + rest).sort(["shapes", "model", "stage", "method", "level_pct", "seed", "engine",
                                          "phase", "batch_size"], nulls_last=True)  # fmt: skip
