"""The summary tables of a run: one row per (model, method, stage, level), seeds averaged.

What lives here: :func:`summary_table` (the numbers, written as ``results/tables/summary.csv``), its
formatted reading version (``summary.md``, ``summary.html``) and :func:`write_tables`. Used by the figures
stage.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskprune.io import atomic_path, write_text
from taskprune.report.estimates import estimate
from taskprune.report.render import render_html
from taskprune.report.style import RETENTION_METRICS, method_label, method_order
from taskprune.tasks.metric_names import HEADLINE_METRIC

if TYPE_CHECKING:
    import pandas as pd

    from taskprune.report.results import Results

TABLES: tuple[str, ...] = ("summary.csv", "summary.md", "summary.html")


# ------------------------------------------------------------------------------------- the table


def summary_table(res: Results) -> pd.DataFrame:
    """One row per (model, method, stage, level), seeds averaged: the paper's result-table layout."""
    import pandas as pd
    import polars as pl

    m = res.metrics
    keys = ["model", "method", "stage", "recovery", "level", "level_pct"]
    stage_rank = {"base": 0, "pruned": 1, "recovered": 2}
    methods = method_order(m["method"].unique().to_list())
    groups = sorted(m.select(keys).unique().to_dicts(), key=lambda g: (
        g["model"], stage_rank.get(g["stage"], 3), g["recovery"] or "",
        methods.index(g["method"]) if g["method"] in methods else -1, g["level_pct"]))  # fmt: skip
    eff = res.efficiency
    rows = []
    for g in groups:
        sel = m.filter(pl.all_horizontal([pl.col(k).eq_missing(g[k]) for k in keys]))
        target = res.target_task.get(g["model"])
        row: dict[str, Any] = {**g, "task": target}
        acc = sel.filter((pl.col("metric") == HEADLINE_METRIC) & (pl.col("task") == target)).to_dicts()
        row["n_seeds"] = len(acc)
        if acc:
            e = estimate(acc)
            row.update(accuracy=e.value, accuracy_ci_low=e.ci_low, accuracy_ci_high=e.ci_high,
                       accuracy_seed_min=min(e.seed_values), accuracy_seed_max=max(e.seed_values), n_items=e.n_items)  # fmt: skip
        for task in res.distractors(g["model"]):
            for metric in RETENTION_METRICS:
                r = sel.filter((pl.col("metric") == metric) & (pl.col("task") == task))["value"]
                if r.len():
                    row[f"{metric}_{task}"] = float(r.mean())
        trap = sel.filter((pl.col("metric") == "trap_rate") & (pl.col("task") == target))["value"]
        row["trap_rate"] = float(trap.mean()) if trap.len() else None
        if eff is not None:
            e_rows = eff.filter((pl.col("model") == g["model"]) & (pl.col("method") == g["method"])
                                & (pl.col("stage") == g["stage"]) & (pl.col("level_pct") == g["level_pct"]))  # fmt: skip
            if e_rows.height:
                row["params_total"] = float(e_rows["params_total"].median())
                mem = e_rows["peak_memory_bytes"].drop_nulls()
                row["peak_memory_mib"] = float(mem.median()) / 2**20 if mem.len() else None
                dec = e_rows.filter(pl.col("phase") == "decode")
                if dec.height:
                    bs = int(dec["batch_size"].max())
                    d = dec.filter(pl.col("batch_size") == bs)
                    row["decode_batch_size"] = bs
                    row["decode_tokens_per_s"] = float(d["tokens_per_s"].median())
                    if "measured_speedup" in d.columns:
                        row["decode_speedup"] = float(d["measured_speedup"].median())
                    if "ideal_speedup" in d.columns:
                        row["ideal_speedup"] = float(d["ideal_speedup"].median())
        rows.append(row)
    df = pd.DataFrame(rows)
    if "params_total" in df:
        base = df[df["stage"] == "base"].set_index("model")["params_total"].to_dict()
        df["params_fraction_of_base"] = df["params_total"] / df["model"].map(base)
    return df


def _fmt(v: Any, fmt: str, scale: float = 1.0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v * scale, fmt)


def summary_markdown(df: pd.DataFrame) -> pd.DataFrame:
    """The summary formatted for reading: percentages, CIs and units in the headers."""
    import pandas as pd

    out = pd.DataFrame()
    out["model"] = df["model"]
    out["method"] = [method_label(m) for m in df["method"]]
    out["stage"] = df["stage"]
    out["level %"] = df["level"]
    out["seeds"] = df["n_seeds"]
    acc = []
    for _, r in df.iterrows():
        s = _fmt(r.get("accuracy"), ".1f", 100)
        if s != "–" and not pd.isna(r.get("accuracy_ci_low")):
            s += f" [{100 * r['accuracy_ci_low']:.1f}, {100 * r['accuracy_ci_high']:.1f}]"
        acc.append(s)
    out["accuracy % [95% CI]"] = acc
    for col in [c for c in df.columns if c.startswith("retention_token_f1_")]:
        out[f"retention {col.removeprefix('retention_token_f1_')} (token F1 %)"] = [_fmt(v, ".1f", 100) for v in df[col]]
    out["trap rate %"] = [_fmt(v, ".1f", 100) for v in df.get("trap_rate", [None] * len(df))]
    if "params_total" in df:
        out["params (M)"] = [_fmt(v, ".3f", 1e-6) for v in df["params_total"]]
        out["peak memory (MiB)"] = [_fmt(v, ".1f") for v in df.get("peak_memory_mib", [None] * len(df))]
        bs = df["decode_batch_size"].dropna().max() if "decode_batch_size" in df else None
        label = f"decode tokens/s (batch {int(bs)})" if bs is not None and not pd.isna(bs) else "decode tokens/s"
        out[label] = [_fmt(v, ".0f") for v in df.get("decode_tokens_per_s", [None] * len(df))]
        sp = []
        for _, r in df.iterrows():
            s = _fmt(r.get("decode_speedup"), ".2f")
            if s != "–" and not pd.isna(r.get("ideal_speedup")):
                s += f"x (ideal {r['ideal_speedup']:.2f}x)"
            sp.append(s)
        out["speedup"] = sp
    return out


def write_tables(res: Results, tables_dir: Path) -> list[Path]:
    df = summary_table(res)
    pretty = summary_markdown(df)
    tables_dir.mkdir(parents=True, exist_ok=True)
    paths = [tables_dir / name for name in TABLES]
    with atomic_path(paths[0]) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    md = ("# Summary of results\n\nSeeds averaged; accuracy is the target task's headline metric with its 95% "
          "interval; retention is similarity to the unpruned model's answers; efficiency at batch 1 (memory) and "
          "the largest benchmarked batch (tokens/s).\n\n" + pretty.to_markdown(index=False) + "\n")  # fmt: skip
    write_text(md, paths[1])
    blocks = [("h1", "Summary of results"), ("table", (list(pretty.columns), pretty.astype(str).values.tolist()))]
    write_text(render_html(blocks, "taskprune summary"), paths[2])
    return paths
