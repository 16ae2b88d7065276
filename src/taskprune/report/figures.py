"""The figures of a run, drawn from its Parquet results alone, and their registry.

Everything here reads finished tables (``results/metrics.parquet``, ``results/bench/efficiency.parquet``,
score tables, pruning manifests, optionally ``results/findings.json``), never a model. A figure is a
function of the :class:`~taskprune.report.results.Results`, registered in :data:`FIGURES` by the
:func:`figure` decorator with its name (written as PNG and SVG) and its caption file in ``workflow/report/``;
the figures stage renders every registered figure in registration order, one row of panels per
specialist. A figure whose data is missing from a partial grid is still written, its panels saying so.

Colours and line styles are fixed per pruning method (:mod:`taskprune.report.style`): blues for selective,
grey for random (mean over seeds, band = min-max over seeds), reds for reverse (dashed), black dotted for
the base model. Bands around single-seed lines are the 95% item intervals of the metrics table.

The Snakefile imports :data:`FIGURES` at parse time, so module import stays light: polars, pandas,
matplotlib and seaborn are imported inside the functions. Used by the figures stage and the Snakefile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from taskprune.report.style import (
    DPI,
    IDEAL_STYLE,
    LEVEL_AXIS,
    PRUNED_REFERENCE_STYLE,
    RECIPE_STYLES,
    RETENTION_METRICS,
    SCORE_ORDER,
    bench_method,
    curve,
    empty_panel,
    family_rows,
    finish_figure,
    legend_below,
    method_label,
    method_order,
    method_style,
    plot_base,
    plot_curve,
    save_figure,
    score_of,
    set_level_ticks,
    subplots,
    throughput_panel,
)
from taskprune.tasks.metric_names import HEADLINE_METRIC

if TYPE_CHECKING:  # heavy imports stay out of module import: the Snakefile imports FIGURES at parse time
    import pandas as pd
    from matplotlib.figure import Figure

    from taskprune.report.results import Results

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FigureSpec:
    """One registered figure: its name (file stem in results/figures/), caption file and drawing function."""

    name: str
    caption: str  # file in workflow/report/ (the Snakemake report's caption)
    draw: Callable[[Results], Figure]


#: figure name -> its spec, in registration order (the order the figures stage renders them)
FIGURES: dict[str, FigureSpec] = {}

DrawFn = TypeVar("DrawFn", bound=Callable[..., Any])


def figure(name: str, caption: str) -> Callable[[DrawFn], DrawFn]:
    """Register the decorated function as figure ``name``, captioned by ``workflow/report/{caption}``."""

    def register(fn: DrawFn) -> DrawFn:
        if name in FIGURES:
            raise ValueError(f"figure '{name}' is registered twice")
        FIGURES[name] = FigureSpec(name, caption, fn)
        return fn

    return register


def _score_panels(res: Results, model: str) -> list[str]:
    """Score methods that drive pruning for this model, in a fixed order (one accuracy panel each)."""
    scores = {score_of(m) for m in res.methods(model) if m != "random"}
    return [s for s in SCORE_ORDER if s in scores] + sorted(scores - set(SCORE_ORDER))


def _method_for(direction: str, score: str) -> str:
    return direction if score == "selectivity" else f"{direction}-{score}"


# --------------------------------------------------------------------------------------- figures


@figure("accuracy_vs_level", caption="accuracy_vs_level.rst")
def fig_accuracy_vs_level(res: Results) -> Figure:
    """Target accuracy vs level, one row per specialist and one panel per score method."""

    panels = {m: _score_panels(res, m) for m in res.models}
    ncols = max([len(p) for p in panels.values()] + [1])
    fig, axes = subplots(len(res.models), ncols, (3.6 * ncols + 0.6, 3.0 * len(res.models) + 1.6), sharey="row")
    for i, model in enumerate(res.models):
        task = res.task_label(model)
        base = res.base(model, HEADLINE_METRIC)
        random = curve(res.rows(model, HEADLINE_METRIC, method="random"))
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(panels[model]):
                empty_panel(ax, "")
                continue
            score = panels[model][j]
            for direction in ("selective", "reverse"):
                m = _method_for(direction, score)
                plot_curve(ax, curve(res.rows(model, HEADLINE_METRIC, method=m)), m)
            plot_curve(ax, random, "random", label="random (mean; band = range over seeds)")
            plot_base(ax, base)
            ax.set_title(f"{model} — pruning by {score}", fontsize=10)
            ax.set_xlabel(LEVEL_AXIS, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{task} accuracy (%)")
            ax.set_ylim(bottom=0)
            set_level_ticks(ax, res.level_ticks(model))
    finish_figure(fig, "Target-task accuracy vs pruning level",
            res.verdict("selective_beats_random") or "bands: 95% CI over items (single seed) or range over seeds")
    legend_below(fig, axes.ravel().tolist(), ncol=4)
    return fig


@figure("reverse_collapse", caption="reverse_collapse.rst")
def fig_reverse_collapse(res: Results) -> Figure:
    """Reverse pruning at small levels: line vs level (left) and bars at the level nearest 10% (right)."""

    from taskprune.report.estimates import COLLAPSE_FRACTION, COLLAPSE_LEVEL_WINDOW, COLLAPSE_TARGET_LEVEL

    fig, axes = subplots(len(res.models), 2, (12, 3.3 * len(res.models) + 1.6), width_ratios=[1.5, 1])
    for i, model in enumerate(res.models):
        ax_line, ax_bar = axes[i]
        task = res.task_label(model)
        base = res.base(model, HEADLINE_METRIC)
        methods = [m for m in res.methods(model) if m.startswith("reverse") or m in ("selective", "random")]
        if not methods:
            empty_panel(ax_line, f"{model}: no reverse, selective or random variants evaluated")
            empty_panel(ax_bar, "")
            continue
        curves = {m: curve(res.rows(model, HEADLINE_METRIC, method=m)) for m in methods}
        for m, c in curves.items():
            plot_curve(ax_line, c, m, label="random (mean; band = range over seeds)" if m == "random" else None)
        plot_base(ax_line, base)
        if base:
            ax_line.axhline(COLLAPSE_FRACTION * base["value"] * 100, color="#c0392b", linewidth=0.9, alpha=0.7,
                            linestyle=(0, (1, 2)), label=f"collapse threshold ({COLLAPSE_FRACTION:g} x base)")  # fmt: skip
        ax_line.axvspan(*COLLAPSE_LEVEL_WINDOW, color="#f4d03f", alpha=0.15, linewidth=0, label="~10% window")
        ax_line.set_title(f"{model}: accuracy vs level", fontsize=10)
        ax_line.set_xlabel(LEVEL_AXIS, fontsize=9)
        ax_line.set_ylabel(f"{task} accuracy (%)")
        ax_line.set_ylim(bottom=0)
        set_level_ticks(ax_line, res.level_ticks(model))

        # Bars at the evaluated level nearest 10% inside the window.
        in_window = sorted({lv for c in curves.values() for lv in c["level_pct"]
                            if COLLAPSE_LEVEL_WINDOW[0] <= lv <= COLLAPSE_LEVEL_WINDOW[1]},
                           key=lambda x: (abs(x - COLLAPSE_TARGET_LEVEL), x))  # fmt: skip
        if not in_window:
            empty_panel(ax_bar, f"no level within {COLLAPSE_LEVEL_WINDOW[0]:g}-{COLLAPSE_LEVEL_WINDOW[1]:g}%")
            continue
        level = in_window[0]
        bars = []
        if base:
            bars.append(("base", base["value"], base["ci_low"], base["ci_high"]))
        for m in method_order(curves):
            c = curves[m][curves[m]["level_pct"] == level]
            if not c.empty:
                r = c.iloc[0]
                bars.append((m, r["value"], r["low"], r["high"]))
        names = [method_label(b[0]) for b in bars]
        vals = [100 * b[1] for b in bars]
        # clipped at 0: float round-off (or a mean outside a seed range) must not make a negative error bar
        err = [[max(0.0, 100 * (b[1] - b[2])) for b in bars], [max(0.0, 100 * (b[3] - b[1])) for b in bars]]
        colors = [method_style(b[0])["color"] for b in bars]
        y = list(range(len(bars)))
        ax_bar.barh(y, vals, xerr=err, color=colors, alpha=0.85, capsize=3, error_kw={"linewidth": 1})
        ax_bar.set_yticks(y)
        ax_bar.set_yticklabels(names, fontsize=8.5)
        ax_bar.invert_yaxis()
        for yy, v, b in zip(y, vals, bars, strict=True):
            ax_bar.text(100 * b[3] + 1, yy, f"{v:.1f}", va="center", fontsize=8)
        if base:
            ax_bar.axvline(COLLAPSE_FRACTION * base["value"] * 100, color="#c0392b", linewidth=0.9,
                           linestyle=(0, (1, 2)))  # fmt: skip
        label = curves[methods[0]].set_index("level_pct")["level"].to_dict().get(level, f"{level:g}")
        ax_bar.set_title(f"{model}: at {label}% removed (bars: 95% CI)", fontsize=10)
        ax_bar.set_xlabel(f"{task} accuracy (%)")
        ax_bar.set_xlim(0, max([100 * b[3] for b in bars] + [1]) * 1.15)
    finish_figure(fig, "Reverse pruning: removing the most task-selective neurons",
            res.verdict("reverse_collapse"))
    legend_below(fig, [axes[i][0] for i in range(len(res.models))], ncol=4)
    return fig


@figure("recovery", caption="recovery.rst")
def fig_recovery(res: Results) -> Figure:
    """Pruned (dashed, open markers) vs recovered (solid) accuracy per level, for every recovered method."""

    fig, axes = subplots(1, len(res.models), (5.4 * len(res.models) + 0.6, 5.0))
    for j, model in enumerate(res.models):
        ax = axes[0][j]
        methods = res.methods(model, stage="recovered")
        if not methods:
            empty_panel(ax, f"{model}: no recovered variants evaluated")
            continue
        ticks = res.level_ticks(model)
        spacing = min((b - a for (a, _), (b, _) in zip(ticks, ticks[1:], strict=False)), default=10.0)
        for m in methods:
            rec = curve(res.rows(model, HEADLINE_METRIC, method=m, stage="recovered"))
            pruned = curve(res.rows(model, HEADLINE_METRIC, method=m))
            pruned = pruned[pruned["level_pct"].isin(rec["level_pct"])]
            color = method_style(m)["color"]
            plot_curve(ax, pruned, m, label=f"{method_label(m)}: pruned", band="errorbar", x_offset=-0.08 * spacing,
                       stage_style={"linestyle": "--", "markerfacecolor": "white"})  # fmt: skip
            plot_curve(ax, rec, m, label=f"{method_label(m)}: recovered (LoRA)", band="errorbar",
                       x_offset=0.08 * spacing)  # fmt: skip
            for _, r in rec.iterrows():
                p = pruned[pruned["level_pct"] == r["level_pct"]]
                if not p.empty and abs(r["value"] - p.iloc[0]["value"]) >= 0.02:
                    ax.annotate("", xy=(r["level_pct"] + 0.08 * spacing, 100 * r["value"]),
                                xytext=(r["level_pct"] - 0.08 * spacing, 100 * p.iloc[0]["value"]),
                                arrowprops={"arrowstyle": "->", "color": color, "alpha": 0.5, "linewidth": 1})  # fmt: skip
        plot_base(ax, res.base(model, HEADLINE_METRIC))
        ax.set_title(f"{model}", fontsize=10)
        ax.set_xlabel(LEVEL_AXIS, fontsize=9)
        ax.set_ylabel(f"{res.task_label(model)} accuracy (%)")
        ax.set_ylim(bottom=0)
        set_level_ticks(ax, res.level_ticks(model))
    finish_figure(fig, "Recovery: accuracy before (pruned) and after LoRA fine-tuning (recovered)",
            (res.verdict("recovery") or "") + " Error bars: 95% CI over items (seed range for several seeds).")
    legend_below(fig, axes.ravel().tolist(), ncol=3)
    return fig


def _recipe_method(res: Results, model: str) -> str | None:
    """The pruning method whose recovered variants the recipe figure shows: the one recovered with the most
    recipes (selective by default), ties broken by method order."""
    methods = res.methods(model, stage="pruned")
    counts = {m: len(res.recipes(model, m)) for m in methods}
    best = max(counts.values(), default=0)
    return next((m for m in methods if counts[m] == best), None) if best else None


@figure("recovery_recipes", caption="recovery_recipes.rst")
def fig_recovery_recipes(res: Results) -> Figure:
    """Recovered target accuracy and distractor retention vs level, one line per recovery recipe (lora,
    lora-kd, ...), with the pruned variant and the base model as references; one row per specialist."""
    import pandas as pd

    retention = next(iter(RETENTION_METRICS))
    distractors = {m: res.distractors(m) for m in res.models}
    ncols = 1 + max([len(d) for d in distractors.values()] + [0])
    fig, axes = subplots(len(res.models), ncols, (3.8 * ncols + 0.6, 3.1 * len(res.models) + 1.8))
    for i, model in enumerate(res.models):
        method = _recipe_method(res, model)
        if method is None:
            for j in range(ncols):
                empty_panel(axes[i][j], f"{model}: no recovered variants evaluated" if j == 0 else "")
            continue
        recipes = res.recipes(model, method)
        ticks = res.level_ticks(model)
        spacing = min((b - a for (a, _), (b, _) in zip(ticks, ticks[1:], strict=False)), default=10.0)
        panels = [(res.task_label(model), "accuracy", None)] + [(d, retention, d) for d in distractors[model]]
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(panels):
                empty_panel(ax, "")
                continue
            task, metric, distractor = panels[j]
            recovered = {r: curve(res.rows(model, metric, task=distractor, method=method, stage="recovered",
                                           recovery=r)) for r in recipes}  # fmt: skip
            levels = sorted({x for c in recovered.values() for x in c["level_pct"]})
            pruned = curve(res.rows(model, metric, task=distractor, method=method))
            pruned = pruned[pruned["level_pct"].isin(levels)] if levels else pd.DataFrame(columns=pruned.columns)
            plot_curve(ax, pruned, method, label=f"{method_label(method)}: pruned", band="none",
                       stage_style=PRUNED_REFERENCE_STYLE)  # fmt: skip
            for k, (recipe, c) in enumerate(recovered.items()):
                style = RECIPE_STYLES.get(recipe, RECIPE_STYLES["other"])
                offset = (k - (len(recovered) - 1) / 2) * 0.08 * spacing  # recipes side by side at a level
                plot_curve(ax, c, method, label=f"recovered: {recipe}", band="errorbar", stage_style=style,
                           x_offset=offset)  # fmt: skip
            plot_base(ax, res.base(model, metric, task=distractor))
            what = "accuracy" if distractor is None else f"retention ({RETENTION_METRICS[retention]})"
            ax.set_title(f"{model} — {task} {what}", fontsize=10)
            ax.set_xlabel(LEVEL_AXIS, fontsize=9)
            ax.set_ylabel(f"{task} {what} (%)", fontsize=9)
            ax.set_ylim(bottom=0)
            set_level_ticks(ax, res.level_ticks(model))
    finish_figure(fig, "Recovery recipes at a matched budget: LoRA on labels vs LoRA distilled from the unpruned model",
            "error bars: 95% CI over items; grey dashed: the pruned model before recovery; dotted: base")
    legend_below(fig, axes.ravel().tolist(), ncol=4)
    return fig


def _per_task_figure(res: Results, title: str, metric_for: Callable[[str], list[tuple[str, str, str]]],
                     ylabel: Callable[[str, str], str], empty_text: str, subtitle: str = "") -> Figure:
    """Rows = specialists, columns = (task, metric) pairs given by ``metric_for(model)``; lines = methods."""

    cols = {m: metric_for(m) for m in res.models}
    ncols = max([len(c) for c in cols.values()] + [1])
    fig, axes = subplots(len(res.models), ncols, (3.7 * ncols + 0.6, 3.0 * len(res.models) + 1.6))
    for i, model in enumerate(res.models):
        if not cols[model]:
            empty_panel(axes[i][0], f"{model}: {empty_text}")
            for j in range(1, ncols):
                empty_panel(axes[i][j], "")
            continue
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(cols[model]):
                empty_panel(ax, "")
                continue
            task, metric, title_part = cols[model][j]
            for m in res.methods(model, metric):
                c = curve(res.rows(model, metric, task=task, method=m))
                plot_curve(ax, c, m, label="random (mean; band = range over seeds)" if m == "random" else None,
                           band="fill" if m == "random" else "none")  # fmt: skip
            plot_base(ax, res.base(model, metric, task))
            ax.set_title(f"{model} — {title_part}", fontsize=10)
            ax.set_xlabel(LEVEL_AXIS, fontsize=9)
            ax.set_ylabel(ylabel(task, metric), fontsize=9)
            ax.set_ylim(bottom=0)
            set_level_ticks(ax, res.level_ticks(model))
    finish_figure(fig, title, subtitle or None)
    legend_below(fig, axes.ravel().tolist(), ncol=4)
    return fig


@figure("distractor_retention", caption="distractor_retention.rst")
def fig_distractor_retention(res: Results) -> Figure:
    import polars as pl

    def metric_for(model: str) -> list[tuple[str, str, str]]:
        out = []
        for task in res.distractors(model):
            have = set(res.metrics.filter((pl.col("model") == model) & (pl.col("task") == task))["metric"].to_list())
            out += [(task, m, f"{task}, {lbl}") for m, lbl in RETENTION_METRICS.items() if m in have]
        return out

    return _per_task_figure(
        res, "Distractor retention: similarity of each variant's answers to the base model's",
        metric_for, lambda task, metric: f"{RETENTION_METRICS[metric]} vs base answers (%)",
        "no distractor retention metrics",
        "100% = identical to the unpruned model's answers; band = range over random seeds",
    )  # fmt: skip


@figure("trap_rate", caption="trap_rate.rst")
def fig_trap_rate(res: Results) -> Figure:
    import polars as pl

    def metric_for(model: str) -> list[tuple[str, str, str]]:
        tasks = res.metrics.filter((pl.col("model") == model) & (pl.col("metric") == "trap_rate"))["task"].unique()
        target = res.target_task.get(model)
        ordered = ([target] if target in tasks.to_list() else []) + sorted(t for t in tasks.to_list() if t != target)
        return [(t, "trap_rate", f"{t}" + (" (target)" if t == target else "")) for t in ordered]

    return _per_task_figure(
        res, "Trap rate: share of generations that hit the token limit without stopping", metric_for,
        lambda task, metric: f"trap rate on {task} (% of items)", "no trap-rate metric",
        "a pruned model that loses its stopping behaviour loops until max_new_tokens",
    )  # fmt: skip


@figure("efficiency", caption="efficiency.rst")
def fig_efficiency(res: Results) -> Figure:
    """One row per shape family: parameters, peak memory and the paired decode speedup vs level.

    Ideal lines: parameters = base - level/100 x base MLP parameters; peak memory = base peak - weight bytes
    removed (bytes on disk); decode speedup = the FLOP ratio (dashed) and the byte ratio (dotted) of base to
    variant. Measured speedups are medians of paired base/variant ratios with their bootstrap 95% CI.
    """
    import polars as pl
    import seaborn as sns

    eff = res.efficiency
    if eff is None or eff.height == 0:
        fig, axes = subplots(1, 1, (6, 3))
        empty_panel(axes[0][0], "no efficiency table (--efficiency)")
        finish_figure(fig, "Efficiency of the pruned checkpoints")
        return fig
    families = family_rows(eff)
    fig, axes = subplots(len(families), 3, (15, 3.6 * len(families) + 2.4))
    batches = sorted(int(b) for b in eff.filter(pl.col("phase") == "decode")["batch_size"].drop_nulls().unique().to_list())
    palette = dict(zip(batches, sns.color_palette("viridis", max(1, len(batches))), strict=False))
    for i, (family, fam_rows) in enumerate(families):
        model = str(fam_rows["model"][0])
        base, pruned, method = bench_method(fam_rows, model)
        models = sorted(eff.filter(pl.col("shapes") == family)["model"].unique().to_list()) if "shapes" in eff.columns else [model]
        who = f"{family} ({', '.join(models)})" if models != [family] else family
        if base.height == 0 or pruned.height == 0:
            empty_panel(axes[i][0], f"{who}: no {'base' if base.height == 0 else 'pruned'} benchmark")
            empty_panel(axes[i][1], "")
            empty_panel(axes[i][2], "")
            continue
        both = pl.concat([base, pruned], how="diagonal_relaxed").sort("level_pct")
        optional = [c for c in ("params_mlp", "bytes_on_disk") if c in both.columns]
        per_level = (
            both.group_by("level_pct")
            .agg(pl.col("params_total", "peak_memory_bytes", *optional).median())
            .sort("level_pct")
            .to_pandas()
        )
        b0 = per_level.iloc[0]
        x = per_level["level_pct"]

        # (a) parameters
        ax = axes[i][0]
        ax.plot(x, per_level["params_total"] / 1e6, "o-", color="#1f4e9c", label="measured: all parameters")
        if "params_mlp" in per_level and per_level["params_mlp"].notna().all():
            ax.plot(x, per_level["params_mlp"] / 1e6, "o-", color="#5dade2", label="measured: MLP parameters")
            ideal = (b0["params_total"] - x / 100 * b0["params_mlp"]) / 1e6
            ax.plot(x, ideal, **IDEAL_STYLE, label="ideal: base - level x base MLP")
        top = per_level.iloc[-1]
        ax.annotate(f"{top['params_total'] / b0['params_total'] - 1:+.1%}", (top["level_pct"], top["params_total"] / 1e6),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)  # fmt: skip
        ax.set_ylabel("parameters (millions)")
        ax.set_title(f"{who}: parameters", fontsize=10)
        ax.set_ylim(bottom=0)

        # (b) peak memory, y not from zero so that a few % are visible; the change is annotated.
        ax = axes[i][1]
        mem = per_level["peak_memory_bytes"]
        if mem.notna().any():
            ax.plot(x, mem / 2**20, "o-", color="#117a65", label="measured: peak memory, batch 1")
            if "bytes_on_disk" in per_level and per_level["bytes_on_disk"].notna().all():
                ideal = (b0["peak_memory_bytes"] - (b0["bytes_on_disk"] - per_level["bytes_on_disk"])) / 2**20
                ax.plot(x, ideal, **IDEAL_STYLE, label="ideal: base - weight bytes removed")
            ax.annotate(f"{mem.iloc[-1] / mem.iloc[0] - 1:+.1%}", (x.iloc[-1], mem.iloc[-1] / 2**20),
                        textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)  # fmt: skip
            ax.set_ylabel("peak memory (MiB)")
        else:
            empty_panel(ax, "peak memory not measured (shapes built from numbers)")
        ax.set_title(f"{who}: peak memory at batch 1", fontsize=10)

        # (c) paired decode speedup per batch size, with its CI, next to the FLOP and byte ideals.
        ax = axes[i][2]
        engines = throughput_panel(ax, both, palette)
        method_note = ""
        if "timing_method" in both.columns and "composed" in set(both["timing_method"].drop_nulls().to_list()):
            method_note = ", composed depth"
        ax.set_title(f"{family}: decode speedup, paired median + 95% CI ({engines or 'no'} engine{method_note})",
                     fontsize=9)  # fmt: skip
        for ax in axes[i]:
            if ax.has_data():
                ax.set_xlabel("pruning level (% of MLP neurons removed)", fontsize=9)
                ticks = res.level_ticks(model) if model in res.models else [
                    (float(v), f"{float(v):g}") for v in sorted(set(both["level_pct"].to_list())) if v > 0]
                set_level_ticks(ax, [(0.0, "0 (base)"), *ticks])
    # Legends of the parameter and memory columns under the bottom row (throughput has one per panel).
    for ax in axes[-1][:2]:
        handles: dict[str, Any] = {}
        for row in axes[:, list(axes[-1]).index(ax)]:
            for h, lbl in zip(*row.get_legend_handles_labels(), strict=True):
                handles.setdefault(lbl, h)
        if handles:
            ax.legend(list(handles.values()), list(handles.keys()), loc="upper center", bbox_to_anchor=(0.5, -0.32),
                      fontsize=8, frameon=False, ncol=1)  # fmt: skip
    device = ""
    if "device" in eff.columns:
        device = f"Device: {', '.join(sorted(str(d) for d in eff['device'].drop_nulls().unique().to_list()))}. "
    finish_figure(fig, "Efficiency per shape family: measured (solid, 95% CI) vs ideal (dashed: FLOPs, dotted: bytes)",
            device + "The stock transformers engine decides; tight is an upper bound. " + (res.verdict("efficiency") or ""))
    return fig


@figure("selectivity_distributions", caption="selectivity_distributions.rst")
def fig_selectivity_distributions(res: Results) -> Figure:
    """Violin plot of the score of every neuron, per layer, one panel per (model, score table)."""
    import numpy as np
    import seaborn as sns

    keys = sorted(res.scores)
    if not keys:
        fig, axes = subplots(1, 1, (6, 3))
        ax = axes[0][0]
        empty_panel(ax, "no score tables given (--scores)")
        finish_figure(fig, "Selectivity score distributions per layer")
        return fig
    from taskprune.report.estimates import COLLAPSE_LEVEL_WINDOW, COLLAPSE_TARGET_LEVEL

    n_layers = max(int(df["layer"].max()) + 1 for df in res.scores.values())
    fig, axes = subplots(len(keys), 1, (max(9.0, 0.45 * n_layers + 5.0), 2.9 * len(keys) + 1.0))
    for ax, (model, score) in zip(axes[:, 0], keys, strict=True):
        df = res.scores[(model, score)].to_pandas()
        lo, hi = np.nanpercentile(df["score"], [0.5, 99.5])
        pad = 0.05 * (hi - lo or 1)
        sns.violinplot(data=df, x="layer", y="score", ax=ax, color="#aed6f1", inner="quart", cut=0,
                       linewidth=0.8, density_norm="width")  # fmt: skip
        levels = res.levels_for(model)
        small = [lv for lv in levels if COLLAPSE_LEVEL_WINDOW[0] <= lv <= COLLAPSE_LEVEL_WINDOW[1]]
        marks = []
        if levels:  # selective removes the lowest scores at the highest level
            marks.append((max(levels), "low", "#1f4e9c", "selective at {:g}%: neurons below are removed"))
        if small:  # reverse removes the highest scores at the level nearest 10%
            lv = min(small, key=lambda x: (abs(x - COLLAPSE_TARGET_LEVEL), x))
            marks.append((lv, "high", "#c0392b", "reverse at {:g}%: neurons above are removed"))
        for level, side, color, text in marks:
            cuts = []
            for _, g in df.groupby("layer"):
                s = np.sort(g["score"].to_numpy())
                k = int(round(level / 100 * len(s)))
                cuts.append(np.nan if k == 0 else s[k - 1] if side == "low" else s[len(s) - k])
            ax.scatter(np.arange(len(cuts)), cuts, marker="_", s=400, linewidths=2, color=color, zorder=3,
                       label=text.format(level))  # fmt: skip
        if marks:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.axhline(0, color="0.5", linewidth=0.6)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(f"{model}: {score} score of each MLP neuron", fontsize=10)
        ax.set_xlabel("decoder layer")
        ylabel = r"$S = (\mu_T - \mu_D)\,/\,\sigma_{all}$" if score == "selectivity" else f"{score} score"
        ax.set_ylabel(ylabel, fontsize=9)
    finish_figure(fig, "Neuron score distributions per layer",
            "Violins: all neurons of a layer (dashed: quartiles), y clipped to the 0.5-99.5th percentile; "
            "ticks: the per-layer score cut-offs of the pruning methods")
    return fig


@figure("removed_neurons", caption="removed_neurons.rst")
def fig_removed_neurons(res: Results) -> Figure:
    """Where the removed neurons sit: % of each layer removed (layer x level), and overlap between methods."""
    import numpy as np
    import polars as pl
    import seaborn as sns

    man = res.manifests
    if man is None or man.height == 0:
        fig, axes = subplots(1, 1, (6, 3))
        ax = axes[0][0]
        empty_panel(ax, "no pruning manifests found (--pruned-root / --manifests)")
        finish_figure(fig, "Removed neurons by layer and level")
        return fig
    models = sorted(man["model"].unique().to_list())
    panels: dict[str, list[tuple[list[str], pd.DataFrame]]] = {}
    overlaps: dict[str, tuple[float, pd.DataFrame] | None] = {}
    for model in models:
        mm = man.filter(pl.col("model") == model)
        # Count matrices per method (first seed), grouped when identical (uniform allocation).
        counts = mm.group_by("method", "seed", "level_pct", "layer").agg(pl.len().alias("removed"))
        first_seed = counts.group_by("method").agg(pl.col("seed").min().alias("s"))
        counts = counts.join(first_seed, on="method").filter(pl.col("seed") == pl.col("s"))
        widths = res.widths.get(model)
        groups: dict[bytes, tuple[list[str], pd.DataFrame]] = {}
        for method in method_order(counts["method"].unique().to_list()):
            c = counts.filter(pl.col("method") == method).to_pandas()
            mat = c.pivot_table(index="layer", columns="level_pct", values="removed", fill_value=0).sort_index()
            if widths:
                mat = mat.div([widths[int(layer)] for layer in mat.index], axis=0) * 100
            key = mat.round(6).to_numpy().tobytes() + str(list(mat.columns)).encode()
            groups.setdefault(key, ([], mat))[0].append(method)
        panels[model] = list(groups.values())
        # Jaccard overlap of removed sets between methods at the highest common level (first seeds).
        sets = mm.join(first_seed, on="method").filter(pl.col("seed") == pl.col("s"))
        common = None
        for method in sets["method"].unique().to_list():
            lv = set(sets.filter(pl.col("method") == method)["level_pct"].to_list())
            common = lv if common is None else common & lv
        if common and sets["method"].n_unique() > 1:
            top = max(common)
            top_sets = {m: set(zip(g["layer"].to_list(), g["neuron"].to_list(), strict=True))
                        for (m,), g in sets.filter(pl.col("level_pct") == top).group_by(["method"])}  # fmt: skip
            names = method_order(top_sets)
            jac = np.array([[len(top_sets[a] & top_sets[b]) / max(1, len(top_sets[a] | top_sets[b])) * 100
                             for b in names] for a in names])  # fmt: skip
            import pandas as pd

            overlaps[model] = (top, pd.DataFrame(jac, index=[method_label(n) for n in names],
                                                 columns=[method_label(n) for n in names]))  # fmt: skip
        else:
            overlaps[model] = None
    ncols = max(len(p) for p in panels.values()) + 1
    fig, axes = subplots(len(models), ncols, (4.6 * ncols + 1, 3.8 * len(models) + 1.0))
    for i, model in enumerate(models):
        for j in range(ncols - 1):
            ax = axes[i][j]
            if j >= len(panels[model]):
                empty_panel(ax, "")
                continue
            methods, mat = panels[model][j]
            pct = bool(res.widths.get(model))
            sns.heatmap(mat, ax=ax, annot=mat.shape[0] * mat.shape[1] <= 120, fmt=".1f" if pct else ".0f",
                        cmap="rocket_r", vmin=0, cbar_kws={"label": "% of layer removed" if pct else "neurons removed"},
                        annot_kws={"fontsize": 7})  # fmt: skip
            ax.set_xticklabels([f"{float(t.get_text()):g}" for t in ax.get_xticklabels()], rotation=0)
            ax.set_xlabel(LEVEL_AXIS.replace(" removed", ""), fontsize=9)
            ax.set_ylabel("decoder layer")
            n_methods = sum(len(ms) for ms, _ in panels[model])
            who = f"all {n_methods} methods" if len(methods) == n_methods > 1 else ", ".join(
                method_label(m) for m in methods)  # fmt: skip
            ax.set_title(f"{model} — {who}", fontsize=9, wrap=True)
        ax = axes[i][ncols - 1]
        ov = overlaps[model]
        if ov is None:
            empty_panel(ax, "one method only: no overlap to show")
        else:
            top, jac = ov
            sns.heatmap(jac, ax=ax, annot=True, fmt=".0f", cmap="mako_r", vmin=0, vmax=100,
                        cbar_kws={"label": "Jaccard overlap (%)"}, annot_kws={"fontsize": 7})  # fmt: skip
            ax.tick_params(axis="x", rotation=45, labelsize=7.5)
            ax.tick_params(axis="y", labelsize=7.5)
            for lbl in ax.get_xticklabels():
                lbl.set_horizontalalignment("right")
            ax.set_title(f"{model}: overlap of removed neurons at {top:g}%", fontsize=9)
    finish_figure(fig, "Where the removed neurons sit: share of each layer removed, and overlap between methods",
            "panels with identical per-layer counts are merged (uniform allocation removes the same k in every layer)")
    return fig


@figure("harness", caption="harness.rst")
def fig_harness(res: Results) -> Figure:
    """lm-evaluation-harness metrics (tasks ``harness:*``, lm-eval's own metric names) vs pruning level."""
    import polars as pl

    from taskprune.tasks.metric_names import HARNESS_TASK_PREFIX

    def metric_for(model: str) -> list[tuple[str, str, str]]:
        rows = res.metrics.filter((pl.col("model") == model) & pl.col("task").str.starts_with(HARNESS_TASK_PREFIX))
        pairs = sorted(set(rows.select("task", "metric").iter_rows()))
        return [(t, m, f"{t.removeprefix(HARNESS_TASK_PREFIX)}, {m}") for t, m in pairs]

    return _per_task_figure(
        res, "lm-evaluation-harness: general and task ability vs pruning level", metric_for,
        lambda task, metric: f"{metric.split(',')[0]} (%)", "no lm-evaluation-harness results (harness.enabled)",
        "lm-eval's prompts, filters and metrics unchanged; dotted = base model (95% band)",
    )  # fmt: skip


@figure("neuron_overlap", caption="neuron_overlap.rst")
def fig_neuron_overlap(res: Results) -> Figure:
    """Left: Jaccard overlap of the two specialists' reverse-pruned (most selective) sets per level, and of
    the generalist's own sets for the two tasks, against its exact chance value. Right: Spearman correlation
    of each specialist's selectivity with the generalist's, per layer and over all neurons."""
    import polars as pl

    fig, axes = subplots(1, 2, (11, 3.8))
    left, right = axes[0][0], axes[0][1]
    df = res.overlap
    if df is None or df.height == 0:
        for ax in (left, right):
            empty_panel(ax, "no overlap table (needs two specialists continued from one generalist)")
        finish_figure(fig, "Are task-specific neurons task-specific?")
        return fig
    jac = df.filter((pl.col("analysis") == "jaccard") & pl.col("layer").is_null()).sort("level_pct")
    for i, ((a, b), part) in enumerate(jac.group_by(["model_a", "model_b"], maintain_order=True)):
        color = ("#1f4e9c", "#7f8c8d")[i % 2]
        left.plot(part["level_pct"], part["value"], marker="o", color=color, label=f"{a} vs {b}")
        if i == 0:  # every pair has the same k and d_ff per layer, so the same chance value
            left.plot(part["level_pct"], part["chance"], linestyle=":", color="0.3", label="chance (random k-subsets)")
    left.set(xlabel="reverse pruning level (% of MLP neurons, most selective first)", ylabel="Jaccard overlap (all layers)",
             title="overlap of the most selective sets", ylim=(0, 1))  # fmt: skip
    left.legend(fontsize=7)
    rho = df.filter(pl.col("analysis") == "spearman")
    specialists = list(dict.fromkeys(rho["model_a"].to_list()))
    n_layers = int(rho["layer"].max()) + 1 if rho["layer"].drop_nulls().len() else 0
    width = 0.8 / max(1, len(specialists))
    for i, name in enumerate(specialists):
        part = rho.filter(pl.col("model_a") == name)
        values = [part.filter(pl.col("layer") == layer)["value"][0] for layer in range(n_layers)]
        values.append(part.filter(pl.col("layer").is_null())["value"][0])
        right.bar([x + i * width for x in range(n_layers + 1)], values, width=width, label=f"{name} vs {part['model_b'][0]}")
    right.set_xticks([x + 0.4 - width / 2 for x in range(n_layers + 1)], [*map(str, range(n_layers)), "all"])
    right.axhline(0, color="0.3", lw=0.8)
    right.set(xlabel="layer", ylabel="Spearman rho of selectivity", title="specialist vs generalist selectivity", ylim=(-1, 1))
    right.legend(fontsize=7)
    finish_figure(fig, "Are task-specific neurons task-specific?",
            "chance: exact expected Jaccard of two random k-subsets per layer (hypergeometric)")
    return fig


def render_all(res: Results, out_dir: Path, only: Sequence[str] | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.85)
    plt.rcParams.update({"svg.hashsalt": "taskprune", "figure.dpi": DPI})
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, spec in FIGURES.items():
        if only and name not in only:
            continue
        log.info("figure %s", name)
        written += save_figure(spec.draw(res), out_dir, name)
    return written
