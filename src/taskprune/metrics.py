"""Collect every variant's evaluation into the two long tables the figures and findings read.

Each ``taskprune evaluate`` job writes ``results/eval/{variant}/{task}.parquet`` (one row per item) and
``results/eval/{variant}/metrics.parquet`` (that variant's metric rows, computed from those item rows);
each ``taskprune harness`` job writes ``results/harness/{variant}.parquet`` (lm-evaluation-harness rows in
the metrics schema, tasks ``harness:<task>``, no per-item rows).
``taskprune metrics`` gathers them into

- ``results/items.parquet``, the **per-item table** the findings decide from: one row per (model, method,
  level, seed, stage, recovery, task, item) with columns :data:`ITEMS_COLUMNS`. Target rows carry the
  task's headline per-item score (math: flexible exact match, 0/1; code: the item's pass@1 estimate),
  distractor rows the retention similarity to the base model's answer (token F1); a distractor of a
  target kind (e.g. a code task beside a math specialist) carries that kind's headline score. The role is
  the model's: ``target`` for the model's target task (``--target MODEL=TASK``, else the first task its
  evaluation lists), ``distractor`` otherwise, so an accuracy-like row of a distractor can never pass for
  a target row. A sibling column ``hit_limit`` (share of the item's generations that reached the token
  limit) lets the findings describe the trap rate.
- ``results/metrics.parquet``: one row per model, method, level, seed, stage, recovery, task and metric,
  the per-variant rows (derived by ``evaluate`` from the same item rows) with the ``recovery`` recipe and
  the task's ``role`` added, followed by the harness rows.

Each file is checked against its schema, so a stale or foreign file fails with one line.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taskprune.errors import DataError
from taskprune.recipes import with_recovery

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

#: Columns the gather step adds to results/metrics.parquet: the recovery recipe (null unless recovered)
#: and the task's role for the model (target | distractor).
GATHERED_COLUMNS: dict[str, str] = {"recovery": "String", "role": "String"}

#: Column -> polars dtype of results/items.parquet (the contract's columns, then the sibling hit_limit).
ITEMS_COLUMNS: dict[str, str] = {
    "model": "String",
    "method": "String",
    "level": "String",
    "level_pct": "Float64",
    "seed": "Int64",
    "stage": "String",
    "recovery": "String",
    "task": "String",
    "role": "String",
    "id": "String",
    "metric": "String",
    "score": "Float64",
    "hit_limit": "Float64",
}
ITEMS_KEY: tuple[str, ...] = ("model", "method", "level", "seed", "stage", "recovery", "task", "id")
ROLES = ("target", "distractor")


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


def item_scores(kind: str, role: str, df: Any) -> tuple[str, Any]:
    """(metric name, per-item frame ``id, score, hit_limit``) of one scored task table.

    Math: the final-answer numeric match (0/1; math-verify's verdict when evaluation ran it); code: the item's pass@1 estimate, i.e. the share of its samples that
    passed (``pass_at_k(n, c, 1) = c / n``); conversation/qna: the retention similarity (token F1 to the base
    model's answer). ``hit_limit`` is the share of the item's generations that reached the token limit.
    """
    import polars as pl

    from taskprune.tasks import TASK_KINDS
    from taskprune.tasks import metric_names as names

    spec = TASK_KINDS.get(kind)
    if spec is not None:
        metric, column = spec.item_metric(df.columns)
    else:
        metric, column = names.RETENTION_HEADLINE_METRIC, names.RETENTION_HEADLINE_COLUMN
    if column not in df.columns:
        raise DataError(f"per-item table of a {kind} task ({role}) has no column '{column}'")
    per_item = df.group_by("id", maintain_order=True).agg(
        score=pl.col(column).cast(pl.Float64).mean(),
        hit_limit=pl.col("hit_limit").cast(pl.Float64).mean() if "hit_limit" in df.columns else pl.lit(None, dtype=pl.Float64),
    )
    return metric, per_item.with_columns(pl.col("id").cast(pl.String))


def collect(paths: Sequence[str | Path], targets: dict[str, str] | None = None) -> tuple[Any, Any]:
    """Gather the per-variant metrics files and the item tables beside them.

    Returns ``(metrics, items)``: results/metrics.parquet and results/items.parquet as DataFrames.
    """
    import polars as pl

    from taskprune.io import read_parquet

    targets = dict(targets or {})
    metric_frames, item_frames = [], []
    for p in paths:
        path = Path(p)
        raw = read_parquet(path, METRICS_COLUMNS, what="variant metrics")
        if raw.height == 0:
            raise DataError(f"{path}: variant metrics table has no rows (rerun its evaluation)")
        variant_metrics = validate_metrics(raw, str(path)).with_columns(with_recovery(raw)["recovery"])
        ident = variant_metrics.row(0, named=True)
        tasks = list(dict.fromkeys(variant_metrics["task"].to_list()))
        kinds = dict(zip(variant_metrics["task"].to_list(), variant_metrics["task_kind"].to_list(), strict=True))
        target = targets.setdefault(ident["model"], tasks[0])
        roles = {t: "target" if t == target else "distractor" for t in tasks}
        metric_frames.append(variant_metrics.with_columns(pl.col("task").replace_strict(roles).alias("role")))
        for task in tasks:
            item_path = path.parent / f"{task}.parquet"
            df = read_parquet(item_path, ("id",), what=f"per-item evaluation of '{task}'")
            try:
                metric, per_item = item_scores(kinds[task], roles[task], df)
            except DataError as exc:
                raise DataError(f"{item_path}: {exc}") from None
            item_frames.append(per_item.with_columns(
                model=pl.lit(ident["model"]), method=pl.lit(ident["method"]), level=pl.lit(ident["level"]),
                level_pct=pl.lit(float(ident["level_pct"])), seed=pl.lit(int(ident["seed"]), dtype=pl.Int64),
                stage=pl.lit(ident["stage"]), recovery=pl.lit(ident["recovery"], dtype=pl.String),
                task=pl.lit(task), role=pl.lit(roles[task]), metric=pl.lit(metric),
            ))  # fmt: skip
    metric_cols = {**METRICS_COLUMNS, **GATHERED_COLUMNS}
    if metric_frames:
        metrics = pl.concat(metric_frames, how="vertical").select(list(metric_cols))
        dup = metrics.group_by([*METRICS_KEY, "recovery"]).len().filter(pl.col("len") > 1)
        if dup.height:
            raise DataError(f"results/metrics.parquet: duplicated metrics row {'/'.join(str(v) for v in dup.row(0))}")
        metrics = metrics.sort(["model", "stage", "method", "level_pct", "seed", "recovery", "task", "metric"],
                               maintain_order=True, nulls_last=False)  # fmt: skip
    else:
        metrics = pl.Schema({c: getattr(pl, t)() for c, t in metric_cols.items()}).to_frame()
    items_schema = pl.Schema({c: getattr(pl, t)() for c, t in ITEMS_COLUMNS.items()})
    if item_frames:
        items = pl.concat([f.select(list(ITEMS_COLUMNS)).cast(dict(items_schema)) for f in item_frames])
        items = items.sort(["model", "stage", "method", "level_pct", "seed", "recovery", "task", "id"],
                           maintain_order=True, nulls_last=False)  # fmt: skip
    else:
        items = items_schema.to_frame()
    return metrics, items


#: ``role`` of lm-evaluation-harness rows in metrics.parquet (general ability, neither target nor distractor).
HARNESS_ROLE = "harness"


def add_harness_rows(metrics: Any, paths: Sequence[str | Path]) -> Any:
    """``metrics`` followed by the rows of the ``results/harness/{variant}.parquet`` files (same schema,
    ``recovery`` as for evaluation rows, ``role`` :data:`HARNESS_ROLE`); keys stay unique."""
    import polars as pl

    from taskprune.io import read_parquet

    frames = [metrics]
    for p in paths:
        raw = read_parquet(p, METRICS_COLUMNS, what="harness metrics")
        rows = validate_metrics(raw, str(p)).with_columns(with_recovery(raw)["recovery"])
        frames.append(rows.with_columns(role=pl.lit(HARNESS_ROLE)).select(metrics.columns))
    table = pl.concat(frames, how="vertical")
    dup = table.group_by([*METRICS_KEY, "recovery"]).len().filter(pl.col("len") > 1)
    if dup.height:
        raise DataError(f"results/metrics.parquet: duplicated metrics row {'/'.join(str(v) for v in dup.row(0))}")
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inputs", nargs="+", default=[], metavar="FILE",
                        help="results/eval/{variant}/metrics.parquet files (their {task}.parquet item tables are "
                        "read from the same directory)")  # fmt: skip
    parser.add_argument("--eval-dir", help="instead of listing inputs: every metrics.parquet under this directory")
    parser.add_argument("--target", dest="targets", action="append", default=[], metavar="MODEL=TASK",
                        help="a model's target task (repeat per model; default: the first task its evaluation "
                        "lists)")  # fmt: skip
    parser.add_argument("--harness-inputs", nargs="*", default=[], metavar="FILE",
                        help="results/harness/{variant}.parquet files (lm-evaluation-harness rows, same schema)")
    parser.add_argument("--out", default="results/metrics.parquet", help="metrics table to write")
    parser.add_argument("--items", default="results/items.parquet", help="per-item table to write")


def run(args: argparse.Namespace) -> int:
    from taskprune.io import write_parquet
    from taskprune.options import parse_assignments

    paths = [Path(p) for p in args.inputs]
    if args.eval_dir:
        root = Path(args.eval_dir)
        if not root.is_dir():
            raise DataError(f"{root}: --eval-dir is not a directory")
        paths += sorted(root.rglob("metrics.parquet"))
    if not paths:
        raise DataError("no metrics files given (list results/eval/{variant}/metrics.parquet files or use --eval-dir)")
    metrics, items = collect(paths, parse_assignments(args.targets, "--target", "MODEL=TASK"))
    meta: dict[str, Any] = {"inputs": [str(p) for p in paths], "bootstrap_seed": 0, "sampling_seed": 0}
    harness_paths = [Path(p) for p in args.harness_inputs]
    if harness_paths:
        from taskprune.io import read_parquet_metadata

        metrics = add_harness_rows(metrics, harness_paths)
        meta["harness_inputs"] = [str(p) for p in harness_paths]
        meta["lm_eval_versions"] = sorted({str(read_parquet_metadata(p).get("lm_eval_version")) for p in harness_paths})
    write_parquet(items, args.items, metadata=meta)
    write_parquet(metrics, args.out, metadata=meta)
    logger.info("%s: %d rows, %s: %d rows, from %d variant(s) and %d harness file(s)", args.out, metrics.height,
                args.items, items.height, len(paths), len(harness_paths))  # fmt: skip
    return 0
