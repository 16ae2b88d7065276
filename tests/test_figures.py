"""Figures and tables from small synthetic result tables: every file is written, non-empty and valid."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import polars as pl
import pytest

from taskprune.cli import main
from taskprune.report import figures
from taskprune.report.results import load_results
from taskprune.report.tables import TABLES
from taskprune.tasks.metric_names import HEADLINE_METRIC

LEVELS = (10, 30)
D_FF, LAYERS = 24, 2
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(model, method, level, seed, stage, task, metric, value, n=50):
    direction = {"base": "base", "random": "random"}.get(method, method.partition("-")[0])
    score = {"base": "none", "random": "random"}.get(method, method.partition("-")[2] or "selectivity")
    half = 1.96 * math.sqrt(max(value * (1 - value), 0.01) / n)
    return {"model": model, "method": method, "direction": direction, "score": score, "level": f"{level:g}",
            "level_pct": float(level), "seed": seed, "stage": stage, "task": task, "task_kind": task,
            "metric": metric, "value": value, "n": n, "ci_low": max(0.0, value - half), "ci_high": min(1.0, value + half)}


def synthetic_results(root: Path, methods=("selective", "reverse", "reverse-magnitude", "random"),
                      recovered=True, efficiency=True, manifests=True,
                      method_levels: dict[str, tuple[int, ...]] | None = None) -> dict[str, str]:
    """A small but complete results/ tree: metrics, efficiency, a score table and pruning manifests.
    ``method_levels`` gives a method its own levels (as ``pruning.method_levels``; default: every level)."""
    own = method_levels or {}
    rows, eff = [], []
    for model, task in (("tiny-math", "math"), ("tiny-code", "code")):
        variants = [("base", 0, 0, "base")]
        for m in methods:
            for seed in (33, 42) if m == "random" else (0,):
                variants += [(m, lv, seed, "pruned") for lv in own.get(m, LEVELS)]
        if recovered and "selective" in methods:
            variants += [("selective", lv, 0, "recovered") for lv in LEVELS]
        for method, lv, seed, stage in variants:
            drop = {"base": 0, "selective": 0.1, "random": 0.5, "reverse": 0.95}.get(method, 0.7) * lv / 30
            acc = 0.6 * (1 - drop) + (0.05 if stage == "recovered" else 0) + 0.01 * (seed % 2)
            rows.append(_row(model, method, lv, seed, stage, task, HEADLINE_METRIC, acc))
            rows.append(_row(model, method, lv, seed, stage, task, "trap_rate", 0.3 * drop))
            for d in ("conversation", "qna"):
                rows.append(_row(model, method, lv, seed, stage, d, "retention_token_f1", 1 - 0.5 * lv / 30))
                rows.append(_row(model, method, lv, seed, stage, d, "retention_chrf", 1 - 0.4 * lv / 30))
                rows.append(_row(model, method, lv, seed, stage, d, "trap_rate", 0.02))
            params = 1000 - 5 * lv
            for bs in (1, 4):
                for phase in ("prefill", "decode"):
                    t = 100.0 * bs * (1 + lv / 100)
                    eff.append({"variant": f"{model}/{method}/{lv}/{seed}", "model": model, "method": method,
                                "level": f"{lv:g}", "level_pct": float(lv), "seed": seed, "stage": stage,
                                "batch_size": bs, "phase": phase, "params_total": params, "params_mlp": params - 400,
                                "bytes_on_disk": 4 * params, "peak_memory_bytes": 1e6 + 4 * params,
                                "tokens_per_s": t, "tokens_per_s_q1": 0.98 * t, "tokens_per_s_q3": 1.02 * t,
                                "ideal_speedup": 1000 / params, "measured_speedup": 1 + lv / 100,
                                "realised_fraction": 0.9, "device": "cpu"})
    root.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": str(root / "metrics.parquet")}
    pl.DataFrame(rows).write_parquet(paths["metrics"])
    if efficiency:
        paths["efficiency"] = str(root / "efficiency.parquet")
        pl.DataFrame(eff).write_parquet(paths["efficiency"])
    score_path = root / "scores" / "tiny-math" / "selectivity.parquet"
    score_path.parent.mkdir(parents=True)
    scores = [(layer, j, math.sin(7 * j + layer)) for layer in range(LAYERS) for j in range(D_FF)]
    pl.DataFrame(scores, schema=["layer", "neuron", "score"], orient="row").write_parquet(score_path)
    paths["scores"] = str(score_path)
    if manifests:
        for m in methods:
            for lv in own.get(m, LEVELS):
                for seed in (33,) if m == "random" else (0,):
                    d = root / "pruned" / "tiny-math" / m / f"{lv:g}" / str(seed)
                    d.mkdir(parents=True)
                    k = round(lv / 100 * D_FF)
                    start = {"selective": 0, "reverse": D_FF - k}.get(m, 3)
                    pl.DataFrame({"layer": [layer for layer in range(LAYERS) for _ in range(k)],
                                  "neuron": [start + i for _ in range(LAYERS) for i in range(k)]}).write_parquet(
                        d / "manifest.parquet")
        paths["pruned_root"] = str(root / "pruned")
    return paths


def check_png(path: Path) -> None:
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert w > 300 and h > 200
        assert sum(1 for c in im.convert("L").histogram() if c) > 10, f"{path} looks blank"


def check_svg(path: Path) -> None:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg"), path
    assert sum(1 for _ in root.iter()) > 50, f"{path} has almost no elements"


def items_from_metrics(metrics_path: str, out: Path) -> str:
    """A per-item table whose per-variant means are the metrics table's accuracy/retention values."""
    rows = []
    for r in pl.read_parquet(metrics_path).iter_rows(named=True):
        if r["metric"] not in ("accuracy", "retention_token_f1"):
            continue
        ones = round(r["value"] * r["n"])
        role = "target" if r["metric"] == "accuracy" else "distractor"
        for i in range(r["n"]):
            score = float(i < ones) if role == "target" else r["value"]
            rows.append({k: r[k] for k in ("model", "method", "level", "level_pct", "seed", "stage", "task")}
                        | {"role": role, "id": f"q{i}", "metric": r["metric"], "score": score})
    pl.DataFrame(rows).write_parquet(out)
    return str(out)


def run_cli(paths: dict[str, str], out: Path, *extra: str) -> int:
    argv = ["figures", "--metrics", paths["metrics"], "--out-dir", str(out / "figures"),
            "--tables-dir", str(out / "tables"), "--scores", paths["scores"], *extra]
    if "efficiency" in paths:
        argv += ["--efficiency", paths["efficiency"]]
    if "pruned_root" in paths:
        argv += ["--pruned-root", paths["pruned_root"]]
    return main(argv)


def findings_and_figures(paths: dict[str, str], tmp_path: Path) -> Path:
    """Run `taskprune findings` on ``paths`` and then every figure and table with those findings; check
    every figure's PNG and SVG. Returns the findings.json path."""
    findings = tmp_path / "results" / "findings.json"
    items = items_from_metrics(paths["metrics"], tmp_path / "items.parquet")
    assert main(["findings", "--items", items, "--efficiency", paths["efficiency"], "--out", str(findings)]) == 0
    assert run_cli(paths, tmp_path, "--findings", str(findings)) == 0
    for name in figures.FIGURES:
        check_png(tmp_path / "figures" / f"{name}.png")
        check_svg(tmp_path / "figures" / f"{name}.svg")
    return findings


def test_every_figure_and_table_from_a_full_grid(tmp_path):
    paths = synthetic_results(tmp_path / "results")
    findings_and_figures(paths, tmp_path)
    for name in TABLES:
        assert (tmp_path / "tables" / name).stat().st_size > 100
    # No temporary files are left behind by the atomic writes.
    assert not [p for p in (tmp_path / "figures").iterdir() if ".tmp" in p.name]

    # The summary table's numbers, recomputed independently from the hand-made rows.
    table = pl.read_csv(tmp_path / "tables" / "summary.csv")
    rnd = table.filter((pl.col("model") == "tiny-math") & (pl.col("method") == "random") & (pl.col("level") == 30))
    expected = 0.6 * (1 - 0.5) + 0.01 * 0.5  # seeds 33 (+0.01) and 42 (+0) averaged
    assert rnd["accuracy"][0] == pytest.approx(expected, abs=1e-5)
    assert rnd["n_seeds"][0] == 2
    assert rnd["params_total"][0] == pytest.approx(1000 - 150)
    base = table.filter((pl.col("model") == "tiny-code") & (pl.col("stage") == "base"))
    assert base["accuracy"][0] == pytest.approx(0.6) and base["decode_batch_size"][0] == 4
    assert set(table["stage"].unique()) == {"base", "pruned", "recovered"}
    md = (tmp_path / "tables" / "summary.md").read_text()
    assert "| model" in md and "accuracy % [95% CI]" in md and "reverse (magnitude)" in md


def test_partial_grid_still_writes_every_figure(tmp_path):
    # Only selective pruning, no recovery, no efficiency table, no manifests: every output still exists.
    paths = synthetic_results(tmp_path / "results", methods=("selective",), recovered=False, efficiency=False,
                              manifests=False)
    assert run_cli(paths, tmp_path) == 0
    for name in figures.FIGURES:
        check_png(tmp_path / "figures" / f"{name}.png")
        check_svg(tmp_path / "figures" / f"{name}.svg")
    table = pl.read_csv(tmp_path / "tables" / "summary.csv")
    assert "params_total" not in table.columns and table.height == 2 * (1 + len(LEVELS))


def test_removed_neuron_counts_and_overlap(tmp_path):
    paths = synthetic_results(tmp_path / "results", methods=("selective", "reverse"), efficiency=False)
    res = load_results(paths["metrics"], scores=[paths["scores"]], pruned_root=paths["pruned_root"])
    man = res.manifests
    assert man is not None and set(man["method"].unique()) == {"selective", "reverse"}
    k10 = round(0.10 * D_FF)
    assert man.filter((pl.col("method") == "selective") & (pl.col("level_pct") == 10)).height == LAYERS * k10
    assert res.widths["tiny-math"] == [D_FF] * LAYERS  # from the score table when no pruning.json exists


def test_figure_names_have_captions():
    report = Path(__file__).resolve().parents[1] / "workflow" / "report"
    for name, spec in figures.FIGURES.items():
        assert spec.name == name and (report / spec.caption).is_file(), f"caption {spec.caption} of figure {name} is missing"


def test_bad_input_is_one_line_error(tmp_path, capsys):
    paths = synthetic_results(tmp_path / "results", methods=("selective",), efficiency=False, manifests=False)
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"layer": [0], "neuron": [1]}).write_parquet(bad)  # no score column
    assert main(["figures", "--metrics", paths["metrics"], "--scores", str(bad), "--out-dir", str(tmp_path / "f"),
                 "--tables-dir", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "score" in err and str(bad) in err


def test_findings_json_is_not_required_but_used(tmp_path):
    paths = synthetic_results(tmp_path / "results", methods=("selective", "random"), efficiency=False,
                              manifests=False)
    findings = tmp_path / "f.json"
    main(["findings", "--items", items_from_metrics(paths["metrics"], tmp_path / "items.parquet"), "--out", str(findings)])
    res = load_results(paths["metrics"], findings=str(findings))
    verdict = res.verdict("selective_beats_random")
    status = next(c for c in json.loads(findings.read_text())["claims"] if c["id"] == "selective_beats_random")
    assert verdict is not None and status["status"].upper() in verdict


def test_recovery_recipes_figure_keeps_recipes_apart(tmp_path):
    """Two recipes at one level: the paper's figure and table read lora only, the recipe figure draws both."""
    paths = synthetic_results(tmp_path / "results", methods=("selective",), efficiency=False, manifests=False)
    table = pl.read_parquet(paths["metrics"])
    recovered = pl.col("stage") == "recovered"
    lora = table.with_columns(pl.when(recovered).then(pl.lit("lora")).otherwise(pl.lit(None)).alias("recovery"))
    kd = lora.filter(recovered).with_columns(pl.lit("lora-kd").alias("recovery"), pl.col("value") * 0.5)
    pl.concat([lora, kd]).write_parquet(paths["metrics"])
    res = load_results(paths["metrics"])
    assert res.recipes("tiny-math", "selective") == ["lora", "lora-kd"]
    lora_rows = res.rows("tiny-math", "accuracy", method="selective", stage="recovered")
    kd_rows = res.rows("tiny-math", "accuracy", method="selective", stage="recovered", recovery="lora-kd")
    assert lora_rows.height == kd_rows.height == len(LEVELS)
    assert kd_rows["value"].to_list() == pytest.approx([0.5 * v for v in lora_rows["value"].to_list()])
    fig = figures.fig_recovery_recipes(res)
    labels = {t.get_text() for leg in fig.legends for t in leg.get_texts()}
    assert {"recovered: lora", "recovered: lora-kd", "selective (selectivity): pruned"} <= labels
    assert run_cli(paths, tmp_path) == 0
    check_png(tmp_path / "figures" / "recovery_recipes.png")
    summary = pl.read_csv(tmp_path / "tables" / "summary.csv")
    rec = summary.filter((pl.col("model") == "tiny-math") & (pl.col("stage") == "recovered") & (pl.col("level") == 30))
    assert sorted(rec["recovery"].to_list()) == ["lora", "lora-kd"] and (rec["n_seeds"] == 1).all()


def test_methods_at_their_own_levels(tmp_path):
    """pruning.method_levels: a comparison method evaluated at fewer levels than the others. Every figure and
    table is still written, the summary holds exactly the evaluated (method, level) pairs, and the paired
    magnitude claim compares reverse with reverse-magnitude at the one level they share."""
    methods = ("selective", "reverse", "reverse-magnitude", "random", "selective-taker")
    paths = synthetic_results(tmp_path / "results", methods=methods,
                              method_levels={"reverse-magnitude": (30,), "selective-taker": (10,)})  # fmt: skip
    findings = findings_and_figures(paths, tmp_path)
    table = pl.read_csv(tmp_path / "tables" / "summary.csv").filter(pl.col("model") == "tiny-math")
    pairs = {(m, lv) for m, lv in table.filter(pl.col("stage") == "pruned").select("method", "level").iter_rows()}
    assert pairs == {(m, lv) for m in ("selective", "reverse", "random") for lv in LEVELS} | {
        ("reverse-magnitude", 30), ("selective-taker", 10)}
    claims = {c["id"]: c for c in json.loads(findings.read_text())["claims"]}
    magnitude = claims["selectivity_beyond_magnitude"]["per_model"]["tiny-math"]
    assert magnitude["levels_compared"] == 1, magnitude
