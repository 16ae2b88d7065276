"""How the figures look: colours and line styles per pruning method, panel helpers, saving.

What lives here: method labels, colours, line styles and their order (stable across all figures), the
styles of reference lines, and the drawing helpers every figure uses (a method's curve with its band, the
base line, empty panels, level ticks, titles, one legend, atomic PNG/SVG saving). Imported by
:mod:`taskprune.report.figures`, :mod:`taskprune.report.tables` and :mod:`taskprune.report.results`;
also the per-level aggregation the curves draw (:func:`curve`) and the efficiency figure's panels (its rows per
shape family, the paired decode-speedup panel). polars, pandas, matplotlib and seaborn are imported only when
a function runs, so importing this module is cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskprune.io import atomic_path

if TYPE_CHECKING:  # heavy imports stay out of module import: the Snakefile imports FIGURES at parse time
    import pandas as pd
    import polars as pl
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FORMATS: tuple[str, ...] = ("png", "svg")
DPI = 150

RETENTION_METRICS: dict[str, str] = {
    "retention_token_f1": "token F1",
    "retention_chrf": "chrF",
    "retention_embedding": "embedding cosine",
}
LEVEL_AXIS = "pruning level (% of MLP neurons removed)"
IDEAL_STYLE: dict[str, Any] = {"color": "#e67e22", "linestyle": "--", "linewidth": 1.6, "zorder": 3}


#: line style per recovery recipe in :func:`fig_recovery_recipes` (a recipe not listed gets the last one)
RECIPE_STYLES: dict[str, dict[str, Any]] = {
    "lora": {"color": "#1f4e9c", "linestyle": "-", "marker": "o"},
    "lora-kd": {"color": "#16a085", "linestyle": "-", "marker": "D"},
    "other": {"color": "#8e44ad", "linestyle": "-", "marker": "^"},
}
PRUNED_REFERENCE_STYLE: dict[str, Any] = {"color": "0.55", "linestyle": "--", "marker": "x"}
BYTES_IDEAL_STYLE: dict[str, Any] = {"color": "#8e44ad", "linestyle": ":", "linewidth": 1.4, "zorder": 3}


# ------------------------------------------------------------------------------- method styling


def method_label(method: str) -> str:
    """'selective-taker' -> 'selective (taker)', 'reverse' -> 'reverse (selectivity)'."""
    if method in ("base", "random"):
        return method
    direction, _, score = method.partition("-")
    return f"{direction} ({score or 'selectivity'})"


SCORE_ORDER = ("selectivity", "taker", "wanda", "magnitude")


def score_of(method: str) -> str:
    return "random" if method == "random" else (method.partition("-")[2] or "selectivity")


def method_style(method: str) -> dict[str, Any]:
    """Colour, line style and marker for a method, stable across figures."""
    import seaborn as sns

    if method == "random":
        return {"color": "0.45", "linestyle": "-", "marker": "s"}
    if method == "base":
        return {"color": "black", "linestyle": ":", "marker": None}
    direction = method.partition("-")[0]
    score = score_of(method)
    idx = SCORE_ORDER.index(score) if score in SCORE_ORDER else len(SCORE_ORDER)
    if direction == "selective":
        colors = sns.color_palette("Blues_r", 6)
        return {"color": colors[min(idx, 5)] if idx else "#1f4e9c", "linestyle": "-", "marker": "o"}
    colors = ["#c0392b", "#e67e22", "#8e44ad", "#a0522d", "#d35400"]
    return {"color": colors[min(idx, len(colors) - 1)], "linestyle": "--", "marker": "v"}


def method_order(methods: Sequence[str]) -> list[str]:
    def key(m: str) -> tuple[int, int, str]:
        direction = "random" if m == "random" else m.partition("-")[0]
        d = {"selective": 0, "random": 1, "reverse": 2}.get(direction, 3)
        s = score_of(m)
        return d, SCORE_ORDER.index(s) if s in SCORE_ORDER else 9, m

    return sorted(set(methods), key=key)


# --------------------------------------------------------------------------------- small helpers


def empty_panel(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.4", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def set_level_ticks(ax: Axes, ticks: Sequence[tuple[float, str]]) -> None:
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


def subplots(nrows: int, ncols: int, figsize: tuple[float, float], **kw: Any) -> tuple[Figure, Any]:
    """Subplots with constrained layout, so titles, legends outside the axes and colour bars never overlap."""
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, layout="constrained", **kw)


def legend_below(fig: Figure, axes: Sequence[Axes], ncol: int = 4) -> None:
    """One legend for the whole figure, collected from every panel, below the panels."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, lbl in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lbl, h)
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), loc="outside lower center", ncol=min(ncol, len(seen)),
                   frameon=False)  # fmt: skip


def finish_figure(fig: Figure, title: str, subtitle: str | None = None) -> None:
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


# ----------------------------------------------------------------------------------- aggregation




def curve(df: pl.DataFrame) -> pd.DataFrame:
    """Per level: mean over seeds, its 95% band and the seed range (rows of one method/stage/metric).

    Columns: level_pct, level, value, low, high, seed_min, seed_max, n_seeds. A single seed's band is its
    item interval; several seeds get the band of :func:`taskprune.report.estimates.estimate` (seed spread and
    item noise) and their min-max range.
    """
    import pandas as pd

    from taskprune.report.estimates import estimate

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



# ------------------------------------------------------------------------------ efficiency panels


def bench_method(eff: pl.DataFrame, model: str) -> tuple[pl.DataFrame, pl.DataFrame, str | None]:
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


def family_rows(eff: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
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



def throughput_panel(ax: Axes, rows: pl.DataFrame, palette: dict[int, Any]) -> str:
    """Decode speedup over the base per batch size: paired median with its 95% CI (hollow: noisy), next to
    the FLOP ideal (dashed) and the byte ideal (dotted); the stock engine solid, ``tight`` (an upper bound)
    faded. Returns the engines drawn, for the title."""
    import polars as pl

    if "measured_speedup" not in rows.columns:
        empty_panel(ax, "no paired speedups in the table")
        return ""
    dec = rows.filter((pl.col("phase") == "decode") & pl.col("measured_speedup").is_not_null())
    if dec.height == 0:
        empty_panel(ax, "no decode benchmark")
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
