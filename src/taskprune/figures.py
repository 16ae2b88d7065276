"""Render the figures and summary tables of a run from its Parquet results alone.

Everything here reads finished tables (``results/metrics.parquet``, ``results/bench/efficiency.parquet``,
score tables, pruning manifests, optionally ``results/findings.json``) and never a model, so
``snakemake --forcerun figures`` re-renders in seconds. Each figure is written as PNG and SVG under a
fixed name (:data:`FIGURES`, which also names its caption in ``workflow/report/``), one row of panels per
specialist. A figure whose data is missing from a partial grid is still written, with the missing panels
saying so, so the rule's outputs always exist.

Colours and line styles are fixed per pruning method across all figures: blues for selective pruning
(one shade per score), grey for random (mean over seeds, band = min-max over seeds), reds for reverse
pruning (dashed), black dotted for the unpruned base model. Bands around single-seed lines are the 95%
intervals over evaluation items stored in the metrics table.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskprune.errors import DataError
from taskprune.io import atomic_path, read_json, read_parquet, write_text
from taskprune.tasks.metric_names import HEADLINE_METRIC

if TYPE_CHECKING:  # heavy imports stay out of module import: the Snakefile imports FIGURES at parse time
    import pandas as pd
    import polars as pl
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

# figure name (file stem in results/figures/) -> caption file in workflow/report/
FIGURES: dict[str, str] = {
    "accuracy_vs_level": "accuracy_vs_level.rst",
    "reverse_collapse": "reverse_collapse.rst",
    "recovery": "recovery.rst",
    "recovery_recipes": "recovery_recipes.rst",
    "distractor_retention": "distractor_retention.rst",
    "trap_rate": "trap_rate.rst",
    "efficiency": "efficiency.rst",
    "selectivity_distributions": "selectivity_distributions.rst",
    "removed_neurons": "removed_neurons.rst",
    "harness": "harness.rst",
    "neuron_overlap": "neuron_overlap.rst",
}
TABLES: tuple[str, ...] = ("summary.csv", "summary.md", "summary.html")
FORMATS: tuple[str, ...] = ("png", "svg")
DPI = 150

RETENTION_METRICS: dict[str, str] = {
    "retention_token_f1": "token F1",
    "retention_chrf": "chrF",
    "retention_embedding": "embedding cosine",
}
LEVEL_AXIS = "pruning level (% of MLP neurons removed)"
IDEAL_STYLE: dict[str, Any] = {"color": "#e67e22", "linestyle": "--", "linewidth": 1.6, "zorder": 3}


# ------------------------------------------------------------------------------- method styling


def method_label(method: str) -> str:
    """'selective-taker' -> 'selective (taker)', 'reverse' -> 'reverse (selectivity)'."""
    if method in ("base", "random"):
        return method
    direction, _, score = method.partition("-")
    return f"{direction} ({score or 'selectivity'})"


_SCORE_ORDER = ("selectivity", "taker", "wanda", "magnitude")


def _score_of(method: str) -> str:
    return "random" if method == "random" else (method.partition("-")[2] or "selectivity")


def method_style(method: str) -> dict[str, Any]:
    """Colour, line style and marker for a method, stable across figures."""
    import seaborn as sns

    if method == "random":
        return {"color": "0.45", "linestyle": "-", "marker": "s"}
    if method == "base":
        return {"color": "black", "linestyle": ":", "marker": None}
    direction = method.partition("-")[0]
    score = _score_of(method)
    idx = _SCORE_ORDER.index(score) if score in _SCORE_ORDER else len(_SCORE_ORDER)
    if direction == "selective":
        colors = sns.color_palette("Blues_r", 6)
        return {"color": colors[min(idx, 5)] if idx else "#1f4e9c", "linestyle": "-", "marker": "o"}
    colors = ["#c0392b", "#e67e22", "#8e44ad", "#a0522d", "#d35400"]
    return {"color": colors[min(idx, len(colors) - 1)], "linestyle": "--", "marker": "v"}


def method_order(methods: Sequence[str]) -> list[str]:
    def key(m: str) -> tuple[int, int, str]:
        direction = "random" if m == "random" else m.partition("-")[0]
        d = {"selective": 0, "random": 1, "reverse": 2}.get(direction, 3)
        s = _score_of(m)
        return d, _SCORE_ORDER.index(s) if s in _SCORE_ORDER else 9, m

    return sorted(set(methods), key=key)


# ----------------------------------------------------------------------------------- aggregation


def curve(df: pl.DataFrame) -> pd.DataFrame:
    """Per level: mean over seeds, its 95% band and the seed range (rows of one method/stage/metric).

    Columns: level_pct, level, value, low, high, seed_min, seed_max, n_seeds. A single seed's band is its
    item interval; several seeds get the band of :func:`taskprune.findings.estimate` (seed spread and
    item noise) and their min-max range.
    """
    import pandas as pd

    from taskprune.findings import estimate

    out = []
    for (level_pct,), g in df.group_by(["level_pct"], maintain_order=False):
        rows = g.to_dicts()
        e = estimate(rows)
        out.append({
            "level_pct": float(level_pct), "level": rows[0]["level"], "value": e.value, "low": e.ci_low,
            "high": e.ci_high, "seed_min": min(e.seed_values), "seed_max": max(e.seed_values),
            "n_seeds": len(e.seed_values),
        })  # fmt: skip
    cols = ["level_pct", "level", "value", "low", "high", "seed_min", "seed_max", "n_seeds"]
    return pd.DataFrame(out, columns=cols).sort_values("level_pct").reset_index(drop=True)


# --------------------------------------------------------------------------------- small helpers


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.4", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _level_ticks(ax: Axes, ticks: Sequence[tuple[float, str]]) -> None:
    """x ticks at the evaluated levels, labelled as written in the config (e.g. 15.71)."""
    if ticks:
        ax.set_xticks([x for x, _ in ticks])
        ax.set_xticklabels([lbl for _, lbl in ticks], rotation=45 if len(ticks) > 5 else 0)


def plot_curve(ax: Axes, c: pd.DataFrame, method: str, *, scale: float = 100.0, label: str | None = None,
               stage_style: dict[str, Any] | None = None, band: str = "fill", x_offset: float = 0.0) -> None:
    """One method's line: seed mean with markers.

    ``band``: 'fill' shades the seed range (several seeds) or the 95% item CI (one seed); 'errorbar' draws
    the same interval as error bars (shifted by ``x_offset`` so that two curves at one level stay apart);
    'none' draws the line only.
    """
    if c.empty:
        return
    style = {**method_style(method), **(stage_style or {})}
    x = c["level_pct"].to_numpy() + x_offset
    ax.plot(x, c["value"] * scale, label=label or method_label(method), color=style["color"],
            linestyle=style["linestyle"], marker=style["marker"], markersize=4.5, linewidth=1.6,
            markerfacecolor=style.get("markerfacecolor", style["color"]))  # fmt: skip
    multi = c["n_seeds"].max() > 1
    lo, hi = (c["seed_min"], c["seed_max"]) if multi else (c["low"], c["high"])
    if band == "fill":
        ax.fill_between(x, lo * scale, hi * scale, color=style["color"], alpha=0.22 if multi else 0.12, linewidth=0)
    elif band == "errorbar":
        v = c["value"]
        ax.errorbar(x, v * scale, yerr=[(v - lo).clip(lower=0) * scale, (hi - v).clip(lower=0) * scale],
                    fmt="none", ecolor=style["color"], elinewidth=0.9, capsize=2.5, alpha=0.8)  # fmt: skip


def plot_base(ax: Axes, base: dict[str, Any] | None, *, scale: float = 100.0, label: str = "base (unpruned)") -> None:
    if not base:
        return
    ax.axhline(base["value"] * scale, color="black", linestyle=":", linewidth=1.4, label=label)
    lo, hi = base.get("ci_low"), base.get("ci_high")
    if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
        ax.axhspan(lo * scale, hi * scale, color="black", alpha=0.06, linewidth=0)


def _subplots(nrows: int, ncols: int, figsize: tuple[float, float], **kw: Any) -> tuple[Figure, Any]:
    """Subplots with constrained layout, so titles, legends outside the axes and colour bars never overlap."""
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, layout="constrained", **kw)


def _legend_below(fig: Figure, axes: Sequence[Axes], ncol: int = 4) -> None:
    """One legend for the whole figure, collected from every panel, below the panels."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, lbl in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lbl, h)
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), loc="outside lower center", ncol=min(ncol, len(seen)),
                   frameon=False)  # fmt: skip


def _finish(fig: Figure, title: str, subtitle: str | None = None) -> None:
    """The figure's title and, below it, a subtitle (e.g. the finding) wrapped to the figure's width."""
    import textwrap

    text = title
    if subtitle:
        text += "\n" + "\n".join(textwrap.wrap(subtitle, max(40, int(fig.get_figwidth() * 12))))
    fig.suptitle(text, fontsize=11)


def save_figure(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``name``.png and .svg atomically (deterministic metadata) and close the figure."""
    import matplotlib.pyplot as plt

    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{name}.{fmt}"
        meta = {"Date": None} if fmt == "svg" else {"Software": None}
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, metadata=meta)
        paths.append(path)
    plt.close(fig)
    return paths


# ------------------------------------------------------------------------------------ the inputs


class Results:
    """The tables the figures read, with lookups shared by the figure functions."""

    def __init__(self, metrics: pl.DataFrame, efficiency: pl.DataFrame | None = None,
                 scores: dict[tuple[str, str], pl.DataFrame] | None = None,
                 manifests: pl.DataFrame | None = None, widths: dict[str, list[int]] | None = None,
                 findings: dict[str, Any] | None = None, overlap: pl.DataFrame | None = None) -> None:  # fmt: skip
        import polars as pl

        from taskprune.metrics import with_recovery

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
        import polars as pl

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
        import polars as pl

        from taskprune.recipes import RECIPES

        m = self.metrics.filter((pl.col("model") == model) & (pl.col("method") == method)
                                & (pl.col("stage") == "recovered"))  # fmt: skip
        found = set(m["recovery"].drop_nulls().unique().to_list())
        return [r for r in RECIPES if r in found] + sorted(found - set(RECIPES))

    def distractors(self, model: str) -> list[str]:
        import polars as pl

        d = self.metrics.filter((pl.col("model") == model) & pl.col("metric").str.starts_with("retention_"))
        return sorted(d["task"].unique().to_list())

    def levels_for(self, model: str) -> list[float]:
        """Pruning levels evaluated for ``model`` (any method, pruned stage)."""
        return [x for x, _ in self.level_ticks(model)]

    def level_ticks(self, model: str) -> list[tuple[float, str]]:
        """(level_pct, level as written) of every pruned level of ``model`` (models may differ: 1.5B vs 7B)."""
        import polars as pl

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


def _score_panels(res: Results, model: str) -> list[str]:
    """Score methods that drive pruning for this model, in a fixed order (one accuracy panel each)."""
    scores = {_score_of(m) for m in res.methods(model) if m != "random"}
    return [s for s in _SCORE_ORDER if s in scores] + sorted(scores - set(_SCORE_ORDER))


def _method_for(direction: str, score: str) -> str:
    return direction if score == "selectivity" else f"{direction}-{score}"


# --------------------------------------------------------------------------------------- figures


def fig_accuracy_vs_level(res: Results) -> Figure:
    """Target accuracy vs level, one row per specialist and one panel per score method."""

    panels = {m: _score_panels(res, m) for m in res.models}
    ncols = max([len(p) for p in panels.values()] + [1])
    fig, axes = _subplots(len(res.models), ncols, (3.6 * ncols + 0.6, 3.0 * len(res.models) + 1.6), sharey="row")
    for i, model in enumerate(res.models):
        task = res.task_label(model)
        base = res.base(model, HEADLINE_METRIC)
        random = curve(res.rows(model, HEADLINE_METRIC, method="random"))
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(panels[model]):
                _empty(ax, "")
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
            _level_ticks(ax, res.level_ticks(model))
    _finish(fig, "Target-task accuracy vs pruning level",
            res.verdict("selective_beats_random") or "bands: 95% CI over items (single seed) or range over seeds")
    _legend_below(fig, axes.ravel().tolist(), ncol=4)
    return fig


def fig_reverse_collapse(res: Results) -> Figure:
    """Reverse pruning at small levels: line vs level (left) and bars at the level nearest 10% (right)."""

    from taskprune.findings import COLLAPSE_FRACTION, COLLAPSE_LEVEL_WINDOW, COLLAPSE_TARGET_LEVEL

    fig, axes = _subplots(len(res.models), 2, (12, 3.3 * len(res.models) + 1.6), width_ratios=[1.5, 1])
    for i, model in enumerate(res.models):
        ax_line, ax_bar = axes[i]
        task = res.task_label(model)
        base = res.base(model, HEADLINE_METRIC)
        methods = [m for m in res.methods(model) if m.startswith("reverse") or m in ("selective", "random")]
        if not methods:
            _empty(ax_line, f"{model}: no reverse, selective or random variants evaluated")
            _empty(ax_bar, "")
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
        _level_ticks(ax_line, res.level_ticks(model))

        # Bars at the evaluated level nearest 10% inside the window.
        in_window = sorted({lv for c in curves.values() for lv in c["level_pct"]
                            if COLLAPSE_LEVEL_WINDOW[0] <= lv <= COLLAPSE_LEVEL_WINDOW[1]},
                           key=lambda x: (abs(x - COLLAPSE_TARGET_LEVEL), x))  # fmt: skip
        if not in_window:
            _empty(ax_bar, f"no level within {COLLAPSE_LEVEL_WINDOW[0]:g}-{COLLAPSE_LEVEL_WINDOW[1]:g}%")
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
    _finish(fig, "Reverse pruning: removing the most task-selective neurons",
            res.verdict("reverse_collapse"))
    _legend_below(fig, [axes[i][0] for i in range(len(res.models))], ncol=4)
    return fig


def fig_recovery(res: Results) -> Figure:
    """Pruned (dashed, open markers) vs recovered (solid) accuracy per level, for every recovered method."""

    fig, axes = _subplots(1, len(res.models), (5.4 * len(res.models) + 0.6, 5.0))
    for j, model in enumerate(res.models):
        ax = axes[0][j]
        methods = res.methods(model, stage="recovered")
        if not methods:
            _empty(ax, f"{model}: no recovered variants evaluated")
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
        _level_ticks(ax, res.level_ticks(model))
    _finish(fig, "Recovery: accuracy before (pruned) and after LoRA fine-tuning (recovered)",
            (res.verdict("recovery") or "") + " Error bars: 95% CI over items (seed range for several seeds).")
    _legend_below(fig, axes.ravel().tolist(), ncol=3)
    return fig


#: line style per recovery recipe in :func:`fig_recovery_recipes` (a recipe not listed gets the last one)
RECIPE_STYLES: dict[str, dict[str, Any]] = {
    "lora": {"color": "#1f4e9c", "linestyle": "-", "marker": "o"},
    "lora-kd": {"color": "#16a085", "linestyle": "-", "marker": "D"},
    "other": {"color": "#8e44ad", "linestyle": "-", "marker": "^"},
}
PRUNED_REFERENCE_STYLE: dict[str, Any] = {"color": "0.55", "linestyle": "--", "marker": "x"}


def _recipe_method(res: Results, model: str) -> str | None:
    """The pruning method whose recovered variants the recipe figure shows: the one recovered with the most
    recipes (selective by default), ties broken by method order."""
    methods = res.methods(model, stage="pruned")
    counts = {m: len(res.recipes(model, m)) for m in methods}
    best = max(counts.values(), default=0)
    return next((m for m in methods if counts[m] == best), None) if best else None


def fig_recovery_recipes(res: Results) -> Figure:
    """Recovered target accuracy and distractor retention vs level, one line per recovery recipe (lora,
    lora-kd, ...), with the pruned variant and the base model as references; one row per specialist."""
    import pandas as pd

    retention = next(iter(RETENTION_METRICS))
    distractors = {m: res.distractors(m) for m in res.models}
    ncols = 1 + max([len(d) for d in distractors.values()] + [0])
    fig, axes = _subplots(len(res.models), ncols, (3.8 * ncols + 0.6, 3.1 * len(res.models) + 1.8))
    for i, model in enumerate(res.models):
        method = _recipe_method(res, model)
        if method is None:
            for j in range(ncols):
                _empty(axes[i][j], f"{model}: no recovered variants evaluated" if j == 0 else "")
            continue
        recipes = res.recipes(model, method)
        ticks = res.level_ticks(model)
        spacing = min((b - a for (a, _), (b, _) in zip(ticks, ticks[1:], strict=False)), default=10.0)
        panels = [(res.task_label(model), "accuracy", None)] + [(d, retention, d) for d in distractors[model]]
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(panels):
                _empty(ax, "")
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
            _level_ticks(ax, res.level_ticks(model))
    _finish(fig, "Recovery recipes at a matched budget: LoRA on labels vs LoRA distilled from the unpruned model",
            "error bars: 95% CI over items; grey dashed: the pruned model before recovery; dotted: base")
    _legend_below(fig, axes.ravel().tolist(), ncol=4)
    return fig


def _per_task_figure(res: Results, title: str, metric_for: Callable[[str], list[tuple[str, str, str]]],
                     ylabel: Callable[[str, str], str], empty_text: str, subtitle: str = "") -> Figure:
    """Rows = specialists, columns = (task, metric) pairs given by ``metric_for(model)``; lines = methods."""

    cols = {m: metric_for(m) for m in res.models}
    ncols = max([len(c) for c in cols.values()] + [1])
    fig, axes = _subplots(len(res.models), ncols, (3.7 * ncols + 0.6, 3.0 * len(res.models) + 1.6))
    for i, model in enumerate(res.models):
        if not cols[model]:
            _empty(axes[i][0], f"{model}: {empty_text}")
            for j in range(1, ncols):
                _empty(axes[i][j], "")
            continue
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(cols[model]):
                _empty(ax, "")
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
            _level_ticks(ax, res.level_ticks(model))
    _finish(fig, title, subtitle or None)
    _legend_below(fig, axes.ravel().tolist(), ncol=4)
    return fig


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


def _bench_method(eff: pl.DataFrame, model: str) -> tuple[pl.DataFrame, pl.DataFrame, str | None]:
    """(base rows, pruned rows of one method/seed, that method) — shapes, not scores, set efficiency."""
    import polars as pl

    rows = eff.filter(pl.col("model") == model)
    base = rows.filter(pl.col("stage") == "base")
    pruned = rows.filter(pl.col("stage") == "pruned")
    if pruned.height == 0:
        return base, pruned, None
    methods = sorted(pruned["method"].unique().to_list())
    method = "selective" if "selective" in methods else methods[0]
    pruned = pruned.filter(pl.col("method") == method)
    return base, pruned.filter(pl.col("seed") == pruned["seed"].min()), method


def _family_rows(eff: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    """One (shape family, its rows for one model) per family: shape-identical models share one row of
    panels (their throughput is the same measurement)."""
    import polars as pl

    if "shapes" not in eff.columns:  # an older table: one family per model
        return [(m, eff.filter(pl.col("model") == m)) for m in sorted(eff["model"].unique().to_list())]
    out = []
    for fam in sorted(eff["shapes"].drop_nulls().unique().to_list()):
        rows = eff.filter(pl.col("shapes") == fam)
        model = sorted(rows["model"].unique().to_list())[0]
        out.append((fam, rows.filter(pl.col("model") == model)))
    return out


BYTES_IDEAL_STYLE: dict[str, Any] = {"color": "#8e44ad", "linestyle": ":", "linewidth": 1.4, "zorder": 3}


def _throughput_panel(ax: Axes, rows: pl.DataFrame, palette: dict[int, Any]) -> str:
    """Decode speedup over the base per batch size: paired median with its 95% CI (hollow: noisy), next to
    the FLOP ideal (dashed) and the byte ideal (dotted); the stock engine solid, ``tight`` (an upper bound)
    faded. Returns the engines drawn, for the title."""
    import polars as pl

    if "measured_speedup" not in rows.columns:
        _empty(ax, "no paired speedups in the table")
        return ""
    dec = rows.filter((pl.col("phase") == "decode") & pl.col("measured_speedup").is_not_null())
    if dec.height == 0:
        _empty(ax, "no decode benchmark")
        return ""
    # an older table without the paired columns: no interval, engine unnamed
    defaults = {"engine": pl.lit("unnamed"), "measured_speedup_ci_low": pl.col("measured_speedup"),
                "measured_speedup_ci_high": pl.col("measured_speedup"), "noisy": pl.lit(False),
                "ideal_speedup_bytes": pl.lit(None, dtype=pl.Float64)}  # fmt: skip
    dec = dec.with_columns(**{k: v for k, v in defaults.items() if k not in dec.columns})
    engines = [e for e in ("stock", "tight", "unnamed") if e in set(dec["engine"].to_list())]
    batches = sorted(int(b) for b in dec["batch_size"].unique().to_list())
    span = max(1.0, float(dec["level_pct"].max()))
    for e_i, engine in enumerate(engines):
        for b_i, bs in enumerate(batches):
            d = dec.filter((pl.col("engine") == engine) & (pl.col("batch_size") == bs)).sort("level_pct").to_pandas()
            if d.empty:
                continue
            x = d["level_pct"] + (b_i - (len(batches) - 1) / 2) * 0.012 * span  # side by side per level
            color = palette.get(bs, "C0")
            yerr = [(d["measured_speedup"] - d["measured_speedup_ci_low"]).clip(lower=0),
                    (d["measured_speedup_ci_high"] - d["measured_speedup"]).clip(lower=0)]  # fmt: skip
            base_tps = d.loc[d["level_pct"] == 0, "tokens_per_s"]
            label = f"{engine}{' (upper bound)' if engine == 'tight' else ''}, batch {bs}"
            if not base_tps.empty:
                label += f" (base {float(base_tps.iloc[0]):,.0f} tok/s)"
            ax.errorbar(x, d["measured_speedup"], yerr=yerr, fmt="o-" if engine == "stock" else "s--", color=color,
                        capsize=3, markersize=5, alpha=1.0 if engine == "stock" else 0.45, label=label)  # fmt: skip
            noisy = d[d["noisy"].fillna(False).astype(bool) & (d["level_pct"] > 0)]
            if not noisy.empty:
                ax.scatter(x[noisy.index], noisy["measured_speedup"], s=60, facecolors="white", edgecolors=color,
                           zorder=4, label="_nolegend_")  # fmt: skip
            if e_i == 0:
                ax.plot(x, d["ideal_speedup"], **{**IDEAL_STYLE, "color": color}, label="_nolegend_")
                if d["ideal_speedup_bytes"].notna().any():
                    ax.plot(x, d["ideal_speedup_bytes"], **{**BYTES_IDEAL_STYLE, "color": color}, label="_nolegend_")
    ax.plot([], [], **{**IDEAL_STYLE, "color": "grey"}, label="ideal: FLOP ratio base / variant")
    ax.plot([], [], **{**BYTES_IDEAL_STYLE, "color": "grey"}, label="ideal: byte ratio (bandwidth-bound)")
    ax.scatter([], [], s=60, facecolors="white", edgecolors="grey", label="noisy (no verdict)")
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1)
    ax.set_ylabel("decode speedup over base (x)")
    ax.legend(fontsize=7, loc="upper left", frameon=True, framealpha=0.8)
    return ", ".join(engines)


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
        fig, axes = _subplots(1, 1, (6, 3))
        _empty(axes[0][0], "no efficiency table (--efficiency)")
        _finish(fig, "Efficiency of the pruned checkpoints")
        return fig
    families = _family_rows(eff)
    fig, axes = _subplots(len(families), 3, (15, 3.6 * len(families) + 2.4))
    batches = sorted(int(b) for b in eff.filter(pl.col("phase") == "decode")["batch_size"].drop_nulls().unique().to_list())
    palette = dict(zip(batches, sns.color_palette("viridis", max(1, len(batches))), strict=False))
    for i, (family, fam_rows) in enumerate(families):
        model = str(fam_rows["model"][0])
        base, pruned, method = _bench_method(fam_rows, model)
        models = sorted(eff.filter(pl.col("shapes") == family)["model"].unique().to_list()) if "shapes" in eff.columns else [model]
        who = f"{family} ({', '.join(models)})" if models != [family] else family
        if base.height == 0 or pruned.height == 0:
            _empty(axes[i][0], f"{who}: no {'base' if base.height == 0 else 'pruned'} benchmark")
            _empty(axes[i][1], "")
            _empty(axes[i][2], "")
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
            _empty(ax, "peak memory not measured (shapes built from numbers)")
        ax.set_title(f"{who}: peak memory at batch 1", fontsize=10)

        # (c) paired decode speedup per batch size, with its CI, next to the FLOP and byte ideals.
        ax = axes[i][2]
        engines = _throughput_panel(ax, both, palette)
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
                _level_ticks(ax, [(0.0, "0 (base)"), *ticks])
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
    _finish(fig, "Efficiency per shape family: measured (solid, 95% CI) vs ideal (dashed: FLOPs, dotted: bytes)",
            device + "The stock transformers engine decides; tight is an upper bound. " + (res.verdict("efficiency") or ""))
    return fig


def fig_selectivity_distributions(res: Results) -> Figure:
    """Violin plot of the score of every neuron, per layer, one panel per (model, score table)."""
    import numpy as np
    import seaborn as sns

    keys = sorted(res.scores)
    if not keys:
        fig, axes = _subplots(1, 1, (6, 3))
        ax = axes[0][0]
        _empty(ax, "no score tables given (--scores)")
        _finish(fig, "Selectivity score distributions per layer")
        return fig
    from taskprune.findings import COLLAPSE_LEVEL_WINDOW, COLLAPSE_TARGET_LEVEL

    n_layers = max(int(df["layer"].max()) + 1 for df in res.scores.values())
    fig, axes = _subplots(len(keys), 1, (max(9.0, 0.45 * n_layers + 5.0), 2.9 * len(keys) + 1.0))
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
    _finish(fig, "Neuron score distributions per layer",
            "Violins: all neurons of a layer (dashed: quartiles), y clipped to the 0.5-99.5th percentile; "
            "ticks: the per-layer score cut-offs of the pruning methods")
    return fig


def fig_removed_neurons(res: Results) -> Figure:
    """Where the removed neurons sit: % of each layer removed (layer x level), and overlap between methods."""
    import numpy as np
    import polars as pl
    import seaborn as sns

    man = res.manifests
    if man is None or man.height == 0:
        fig, axes = _subplots(1, 1, (6, 3))
        ax = axes[0][0]
        _empty(ax, "no pruning manifests found (--pruned-root / --manifests)")
        _finish(fig, "Removed neurons by layer and level")
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
    fig, axes = _subplots(len(models), ncols, (4.6 * ncols + 1, 3.8 * len(models) + 1.0))
    for i, model in enumerate(models):
        for j in range(ncols - 1):
            ax = axes[i][j]
            if j >= len(panels[model]):
                _empty(ax, "")
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
            _empty(ax, "one method only: no overlap to show")
        else:
            top, jac = ov
            sns.heatmap(jac, ax=ax, annot=True, fmt=".0f", cmap="mako_r", vmin=0, vmax=100,
                        cbar_kws={"label": "Jaccard overlap (%)"}, annot_kws={"fontsize": 7})  # fmt: skip
            ax.tick_params(axis="x", rotation=45, labelsize=7.5)
            ax.tick_params(axis="y", labelsize=7.5)
            for lbl in ax.get_xticklabels():
                lbl.set_horizontalalignment("right")
            ax.set_title(f"{model}: overlap of removed neurons at {top:g}%", fontsize=9)
    _finish(fig, "Where the removed neurons sit: share of each layer removed, and overlap between methods",
            "panels with identical per-layer counts are merged (uniform allocation removes the same k in every layer)")
    return fig


def fig_neuron_overlap(res: Results) -> Figure:
    """Left: Jaccard overlap of the two specialists' reverse-pruned (most selective) sets per level, and of
    the generalist's own sets for the two tasks, against its exact chance value. Right: Spearman correlation
    of each specialist's selectivity with the generalist's, per layer and over all neurons."""
    import polars as pl

    fig, axes = _subplots(1, 2, (11, 3.8))
    left, right = axes[0][0], axes[0][1]
    df = res.overlap
    if df is None or df.height == 0:
        for ax in (left, right):
            _empty(ax, "no overlap table (needs two specialists continued from one generalist)")
        _finish(fig, "Are task-specific neurons task-specific?")
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
    _finish(fig, "Are task-specific neurons task-specific?",
            "chance: exact expected Jaccard of two random k-subsets per layer (hypergeometric)")
    return fig


FIGURE_FUNCTIONS: dict[str, Callable[[Results], Figure]] = {
    "accuracy_vs_level": fig_accuracy_vs_level,
    "reverse_collapse": fig_reverse_collapse,
    "recovery": fig_recovery,
    "recovery_recipes": fig_recovery_recipes,
    "distractor_retention": fig_distractor_retention,
    "trap_rate": fig_trap_rate,
    "efficiency": fig_efficiency,
    "selectivity_distributions": fig_selectivity_distributions,
    "removed_neurons": fig_removed_neurons,
    "harness": fig_harness,
    "neuron_overlap": fig_neuron_overlap,
}
assert set(FIGURE_FUNCTIONS) == set(FIGURES)


# ------------------------------------------------------------------------------------- the table


def summary_table(res: Results) -> pd.DataFrame:
    """One row per (model, method, stage, level), seeds averaged: the paper's result-table layout."""
    import pandas as pd
    import polars as pl

    from taskprune.findings import estimate

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
    from taskprune.findings import render_html

    blocks = [("h1", "Summary of results"), ("table", (list(pretty.columns), pretty.astype(str).values.tolist()))]
    write_text(render_html(blocks, "taskprune summary"), paths[2])
    return paths


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
    import polars as pl

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
    import polars as pl

    from taskprune.findings import load_efficiency, load_metrics

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


def render_all(res: Results, out_dir: Path, only: Sequence[str] | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.85)
    plt.rcParams.update({"svg.hashsalt": "taskprune", "figure.dpi": DPI})
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fn in FIGURE_FUNCTIONS.items():
        if only and name not in only:
            continue
        log.info("figure %s", name)
        written += save_figure(fn(res), out_dir, name)
    return written


# ------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", required=True, help="results/metrics.parquet")
    parser.add_argument("--efficiency", help="results/bench/efficiency.parquet (efficiency figure and columns)")
    parser.add_argument("--findings", help="results/findings.json: each figure's subtitle states the verdict")
    parser.add_argument("--scores", nargs="*", default=[], metavar="PARQUET",
                        help="score tables results/scores/{model}/{score}.parquet (score distributions)")  # fmt: skip
    parser.add_argument("--pruned-root", help="directory holding {model}/{method}/{level}/{seed}/manifest.parquet")
    parser.add_argument("--manifests", nargs="*", default=[], metavar="PATH",
                        help="pruning manifests (files or checkpoint directories), in addition to --pruned-root")  # fmt: skip
    parser.add_argument("--overlap", nargs="?", default=None, help="results/tables/neuron_overlap.parquet (neuron_overlap)")
    parser.add_argument("--out-dir", required=True, help="figure directory (results/figures)")
    parser.add_argument("--tables-dir", required=True, help="table directory (results/tables)")
    parser.add_argument("--only", nargs="*", choices=list(FIGURES), help="render only these figures")


def run(args: argparse.Namespace) -> int:
    res = load_results(args.metrics, args.efficiency, args.scores, args.pruned_root, args.manifests, args.findings,
                       args.overlap)  # fmt: skip
    paths = render_all(res, Path(args.out_dir), args.only)
    paths += write_tables(res, Path(args.tables_dir))
    log.info("wrote %d files: %s", len(paths), ", ".join(str(p) for p in paths))
    return 0
