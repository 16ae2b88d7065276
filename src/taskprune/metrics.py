"""Collect every variant's evaluation metrics into the one long table the figures and findings read.

Each ``taskprune evaluate`` job writes ``results/eval/{variant}/metrics.parquet`` (and each
``taskprune harness`` job ``results/harness/{variant}.parquet``, same schema); ``taskprune metrics``
concatenates them into ``results/metrics.parquet`` (one row per model, method, level, seed, stage, task
and metric), checking each file against the schema below so a stale or foreign file fails with one line.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taskprune.errors import DataError

logger = logging.getLogger(__name__)

#: Column -> polars dtype name of results/metrics.parquet (and of each variant's metrics.parquet).
METRICS_COLUMNS: dict[str, str] = {
    "model": "String",
    "method": "String",
    "direction": "String",
    "score": "String",
    "level": "String",
    "level_pct": "Float64",
    "seed": "Int64",
    "stage": "String",
    "task": "String",
    "task_kind": "String",
    "metric": "String",
    "value": "Float64",
    "n": "Int64",
    "ci_low": "Float64",
    "ci_high": "Float64",
}

#: Key columns: at most one row per combination.
METRICS_KEY: tuple[str, ...] = ("model", "method", "level", "seed", "stage", "task", "metric")


def metrics_schema() -> Any:
    import polars as pl

    return pl.Schema({name: getattr(pl, dtype)() for name, dtype in METRICS_COLUMNS.items()})


def metrics_frame(rows: Sequence[dict[str, Any]]) -> Any:
    """A metrics DataFrame with the contract's columns and dtypes from a list of row dicts."""
    import polars as pl

    return pl.DataFrame(list(rows), schema=metrics_schema(), orient="row") if rows else metrics_schema().to_frame()


def validate_metrics(df: Any, source: str) -> Any:
    """Check columns, dtypes (casting integer/float widths) and key uniqueness; return the table in the
    contract's column order."""
    import polars as pl

    missing = [c for c in METRICS_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{source}: metrics table is missing column(s) {', '.join(missing)}")
    schema = metrics_schema()
    try:
        df = df.select([pl.col(c).cast(schema[c], strict=True) for c in METRICS_COLUMNS])
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"{source}: metrics column has the wrong type ({str(exc).splitlines()[0]})") from None
    dup = df.group_by(list(METRICS_KEY)).len().filter(pl.col("len") > 1)
    if dup.height:
        first = dup.row(0, named=True)
        key = "/".join(str(first[k]) for k in METRICS_KEY)
        raise DataError(f"{source}: duplicated metrics row {key}")
    return df


def collect(paths: Sequence[str | Path]) -> Any:
    """Concatenate and validate the per-variant metrics files."""
    import polars as pl

    from taskprune.io import read_parquet

    frames = [validate_metrics(read_parquet(p, METRICS_COLUMNS, what="variant metrics"), str(p)) for p in paths]
    if not frames:
        return metrics_frame([])
    table = pl.concat(frames, how="vertical")
    return validate_metrics(table, "results/metrics.parquet").sort(
        ["model", "stage", "method", "level_pct", "seed", "task", "metric"], maintain_order=True
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inputs", nargs="+", default=[], metavar="FILE",
                        help="results/eval/{variant}/metrics.parquet files")
    parser.add_argument("--eval-dir", help="instead of listing inputs: every metrics.parquet under this directory")
    parser.add_argument("--harness-inputs", nargs="*", default=[], metavar="FILE",
                        help="results/harness/{variant}.parquet files (lm-evaluation-harness rows, same schema)")
    parser.add_argument("--out", default="results/metrics.parquet", help="output file")


def run(args: argparse.Namespace) -> int:
    from taskprune.io import write_parquet

    paths = [Path(p) for p in args.inputs]
    if args.eval_dir:
        root = Path(args.eval_dir)
        if not root.is_dir():
            raise DataError(f"{root}: --eval-dir is not a directory")
        paths += sorted(root.rglob("metrics.parquet"))
    if not paths:
        raise DataError("no metrics files given (list results/eval/{variant}/metrics.parquet files or use --eval-dir)")
    harness_paths = [Path(p) for p in args.harness_inputs]
    table = collect(paths + harness_paths)
    meta: dict[str, Any] = {"inputs": [str(p) for p in paths], "bootstrap_seed": 0, "sampling_seed": 0}
    if harness_paths:
        from taskprune.io import read_parquet_metadata

        meta["harness_inputs"] = [str(p) for p in harness_paths]
        meta["lm_eval_versions"] = sorted({str(read_parquet_metadata(p).get("lm_eval_version")) for p in harness_paths})
    write_parquet(table, args.out, metadata=meta)
    logger.info("%s: %d rows from %d variant(s)", args.out, table.height, len(paths))
    return 0
