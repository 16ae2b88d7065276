"""Extending the figures along their axis: a toy figure, registered with the ``@figure`` decorator in a
monkeypatched registry, is rendered by the figures stage from a small hand-made metrics table.

Adding a figure touches one module (:mod:`taskprune.report.figures`): the decorator carries its name and
caption file, the stage renders whatever is registered (and ``--only`` accepts it), the Snakefile reads the
same registry for the rule's outputs."""

from __future__ import annotations

import pytest

from taskprune.cli import main
from taskprune.report import figures
from taskprune.report.style import curve, finish_figure, plot_base, plot_curve, subplots
from taskprune.tasks.metric_names import HEADLINE_METRIC

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_metrics(path) -> str:
    """One model's target accuracy: the base, selective at two levels (one seed), random at one (two seeds)."""
    import polars as pl

    variants = [("base", 0, 0, "base", 0.80), ("selective", 10, 0, "pruned", 0.75), ("selective", 30, 0, "pruned", 0.60),
                ("random", 10, 1, "pruned", 0.55), ("random", 10, 2, "pruned", 0.65)]  # fmt: skip
    rows = [{"model": "toy-model", "method": m, "direction": m, "score": "selectivity" if m == "selective" else m,
             "level": f"{lv:g}", "level_pct": float(lv), "seed": seed, "stage": stage, "task": "math",
             "task_kind": "math", "metric": HEADLINE_METRIC, "value": v, "n": 40, "ci_low": v - 0.1, "ci_high": v + 0.1}
            for m, lv, seed, stage, v in variants]  # fmt: skip
    pl.DataFrame(rows).write_parquet(path)
    return str(path)


def test_a_toy_figure_registered_by_the_decorator_is_rendered_by_the_stage(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "FIGURES", {})  # only the toy figure is registered while the test runs
    drawn: list[list[str]] = []

    @figures.figure("toy_accuracy", caption="toy_accuracy.rst")
    def fig_toy_accuracy(res):
        fig, axes = subplots(1, len(res.models), (4.0, 3.0))
        for ax, model in zip(axes[0], res.models, strict=True):
            for method in res.methods(model):
                plot_curve(ax, curve(res.rows(model, HEADLINE_METRIC, method=method)), method)
            plot_base(ax, res.base(model, HEADLINE_METRIC))
        finish_figure(fig, "A toy figure", "target accuracy per method")
        drawn.append(list(res.models))
        return fig

    spec = figures.FIGURES["toy_accuracy"]
    assert (spec.name, spec.caption, spec.draw) == ("toy_accuracy", "toy_accuracy.rst", fig_toy_accuracy)
    with pytest.raises(ValueError, match="registered twice"):
        figures.figure("toy_accuracy", caption="other.rst")(fig_toy_accuracy)

    metrics = write_metrics(tmp_path / "metrics.parquet")
    out, tables = tmp_path / "figures", tmp_path / "tables"
    assert main(["figures", "--metrics", metrics, "--out-dir", str(out), "--tables-dir", str(tables),
                 "--only", "toy_accuracy"]) == 0  # fmt: skip
    assert drawn == [["toy-model"]]
    assert sorted(p.name for p in out.iterdir()) == ["toy_accuracy.png", "toy_accuracy.svg"]
    assert (out / "toy_accuracy.png").read_bytes()[:8] == PNG_MAGIC
    assert b"<svg" in (out / "toy_accuracy.svg").read_bytes()
    summary = (tables / "summary.csv").read_text()
    assert "toy-model" in summary and "selective" in summary and "random" in summary


def test_the_real_registry_is_back_after_the_monkeypatch():
    assert "toy_accuracy" not in figures.FIGURES and "accuracy_vs_level" in figures.FIGURES
