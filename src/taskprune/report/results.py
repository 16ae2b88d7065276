"""The results tables as the report reads them.

What lives here: the per-item table (``results/items.parquet``: :func:`load_items`, its checks
:func:`validate_items`, and :class:`Items`, its scores as :class:`~taskprune.report.estimates.Side` objects
per variant group, which the claims compare), the metrics and efficiency tables, and the figures' inputs
(:class:`Results` with its lookups, :func:`load_results` with score tables and pruning manifests). Used by
the claims, the figures and the tables of :mod:`taskprune.report`, and by the findings and figures stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from taskprune.errors import DataError
from taskprune.io import read_json, read_parquet
from taskprune.report.estimates import RULES, Side
from taskprune.report.style import method_order
from taskprune.tasks.metric_names import HEADLINE_METRIC

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


# ------------------------------------------------------------------------------- metrics, efficiency

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


#: Columns the figures' efficiency panels read (the findings need fewer, see :func:`claim_efficiency`).
EFFICIENCY_COLUMNS = (
    "model", "method", "level", "level_pct", "seed", "stage", "batch_size", "phase",
    "params_total", "peak_memory_bytes", "tokens_per_s", "tokens_per_s_q1", "tokens_per_s_q3",
)  # fmt: skip
EFFICIENCY_REQUIRED = ("method", "level_pct", "batch_size", "phase")


def load_efficiency(path: str | Path) -> pl.DataFrame:
    """The efficiency table as the figures read it."""
    df = read_parquet(path, EFFICIENCY_COLUMNS, what="efficiency table")
    return df.with_columns(pl.col("level_pct").cast(pl.Float64))


def load_efficiency_for_findings(path: str | Path) -> pl.DataFrame:
    """The efficiency table with only the columns every efficiency check needs."""
    df = read_parquet(path, EFFICIENCY_REQUIRED, what="efficiency table")
    return df.with_columns(pl.col("level_pct").cast(pl.Float64))



# ------------------------------------------------------------------------ the figures' inputs


class Results:
    """The tables the figures read, with lookups shared by the figure functions."""

    def __init__(self, metrics: pl.DataFrame, efficiency: pl.DataFrame | None = None,
                 scores: dict[tuple[str, str], pl.DataFrame] | None = None,
                 manifests: pl.DataFrame | None = None, widths: dict[str, list[int]] | None = None,
                 findings: dict[str, Any] | None = None, overlap: pl.DataFrame | None = None) -> None:  # fmt: skip
        from taskprune.recipes import with_recovery

        if "role" in metrics.columns:  # a target-kind distractor's accuracy is not the model's accuracy
            metrics = metrics.filter(~((pl.col("metric") == "accuracy") & (pl.col("role") == "distractor")))
        self.overlap = overlap  # results/tables/neuron_overlap.parquet (taskprune.overlap), if given
        self.metrics = with_recovery(metrics)
        self.efficiency = efficiency
        self.scores = scores or {}
        self.manifests = manifests
        self.widths = widths or {}
        self.findings = findings
        self.models = sorted(metrics["model"].unique().to_list())
        targets = metrics.filter(pl.col("metric") == HEADLINE_METRIC).select("model", "task").unique()
        self.target_task = dict(targets.iter_rows())

    def rows(self, model: str, metric: str, *, task: str | None = None, method: str | None = None,
             stage: str = "pruned", recovery: str | None = None) -> pl.DataFrame:  # fmt: skip
        """Rows of one model, metric and stage; recovered rows of the paper's recipe unless ``recovery``
        names another (so two recipes never mix in one curve)."""
        from taskprune.recipes import PAPER_RECIPE

        cond = (pl.col("model") == model) & (pl.col("metric") == metric) & (pl.col("stage") == stage)
        if stage == "recovered":
            cond &= pl.col("recovery") == (recovery or PAPER_RECIPE)
        if task is not None:
            cond &= pl.col("task") == task
        if method is not None:
            cond &= pl.col("method") == method
        return self.metrics.filter(cond)

    def base(self, model: str, metric: str, task: str | None = None) -> dict[str, Any] | None:
        r = self.rows(model, metric, task=task, stage="base")
        return r.row(0, named=True) if r.height else None

    def methods(self, model: str, metric: str = HEADLINE_METRIC, stage: str = "pruned") -> list[str]:
        return method_order(self.rows(model, metric, stage=stage)["method"].unique().to_list())

    def recipes(self, model: str, method: str) -> list[str]:
        """Recovery recipes with recovered rows of ``model`` and ``method`` (registry order)."""
        from taskprune.recipes import RECIPES

        m = self.metrics.filter((pl.col("model") == model) & (pl.col("method") == method)
                                & (pl.col("stage") == "recovered"))  # fmt: skip
        found = set(m["recovery"].drop_nulls().unique().to_list())
        return [r for r in RECIPES if r in found] + sorted(found - set(RECIPES))

    def distractors(self, model: str) -> list[str]:
        d = self.metrics.filter((pl.col("model") == model) & pl.col("metric").str.starts_with("retention_"))
        return sorted(d["task"].unique().to_list())

    def levels_for(self, model: str) -> list[float]:
        """Pruning levels evaluated for ``model`` (any method, pruned stage)."""
        return [x for x, _ in self.level_ticks(model)]

    def level_ticks(self, model: str) -> list[tuple[float, str]]:
        """(level_pct, level as written) of every pruned level of ``model`` (models may differ: 1.5B vs 7B)."""
        m = self.metrics.filter((pl.col("model") == model) & (pl.col("stage") != "base"))
        return sorted({(float(a), str(b)) for a, b in m.select("level_pct", "level").unique().iter_rows()})

    def task_label(self, model: str) -> str:
        return self.target_task.get(model, "target task")

    def verdict(self, claim_id: str) -> str | None:
        if not self.findings:
            return None
        for c in self.findings.get("claims", []):
            if c["id"] == claim_id:
                return f"Finding: {c['status'].upper()} — {c['summary']}."
        return None



# ------------------------------------------------------------------------------------ loading


def _load_scores(paths: Sequence[str]) -> dict[tuple[str, str], pl.DataFrame]:
    """``results/scores/{model}/{score}.parquet`` -> {(model, score): table}."""
    out = {}
    for p in paths:
        path = Path(p)
        out[(path.parent.name, path.stem)] = read_parquet(path, ("layer", "neuron", "score"), what="score table")
    return out


def _manifest_files(root: str | None, items: Sequence[str]) -> list[Path]:
    files = []
    if root:
        # skip hidden entries: '.<name>.*.tmpdir' is what a killed job's atomic write leaves behind
        files += sorted(
            f for f in Path(root).glob("*/*/*/*/manifest.parquet")
            if not any(part.startswith(".") for part in f.relative_to(root).parts)
        )
    for it in items:
        p = Path(it)
        files.append(p / "manifest.parquet" if p.is_dir() else p)
    return list(dict.fromkeys(files))


def _load_manifests(files: Sequence[Path]) -> tuple[pl.DataFrame | None, dict[str, list[int]]]:
    """Stack manifests with model/method/level/seed parsed from ``.../{model}/{method}/{level}/{seed}/``."""
    frames, widths = [], {}
    for f in files:
        parts = f.parent.parts
        if len(parts) < 4:
            raise DataError(f"{f}: expected .../{{model}}/{{method}}/{{level}}/{{seed}}/manifest.parquet")
        model, method, level, seed = parts[-4:]
        df = read_parquet(f, ("layer", "neuron"), what="pruning manifest")
        try:
            frames.append(df.select(pl.col("layer").cast(pl.Int64), pl.col("neuron").cast(pl.Int64)).with_columns(
                model=pl.lit(model), method=pl.lit(method), level=pl.lit(level),
                level_pct=pl.lit(float(level)), seed=pl.lit(int(seed))))  # fmt: skip
        except ValueError as exc:
            raise DataError(f"{f}: level '{level}' or seed '{seed}' in the path is not a number") from exc
        record = f.parent / "pruning.json"
        if model not in widths and record.is_file():
            d_ff = read_json(record, what="pruning record").get("d_ff_before")
            if isinstance(d_ff, list) and d_ff:
                widths[model] = [int(w) for w in d_ff]
    return (pl.concat(frames) if frames else None), widths


def load_results(metrics: str, efficiency: str | None = None, scores: Sequence[str] = (),
                 pruned_root: str | None = None, manifests: Sequence[str] = (),
                 findings: str | None = None, overlap: str | None = None) -> Results:  # fmt: skip
    m = load_metrics(metrics)
    eff = load_efficiency(efficiency) if efficiency else None
    sc = _load_scores(scores)
    man, widths = _load_manifests(_manifest_files(pruned_root, manifests))
    for (model, _), table in sc.items():  # widths from a score table when no pruning.json was found
        if model not in widths:
            counts = table.group_by("layer").agg(pl.len()).sort("layer")
            widths[model] = [int(n) for n in counts["len"].to_list()]
    f = read_json(findings, what="findings") if findings else None
    ov = read_parquet(overlap, ["analysis", "model_a", "model_b", "layer", "value", "chance"], what="overlap table") if overlap else None
    return Results(m, eff, sc, man, widths, f, ov)
