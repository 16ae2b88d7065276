"""The whole DAG on config/smoke.yaml runs end to end and writes every contract file."""

from __future__ import annotations

import polars as pl
import pytest
from conftest import run_snakemake

from taskprune.tasks.metric_names import HARNESS_TASK_PREFIX, HEADLINE_METRIC

pytestmark = pytest.mark.slow


def test_smoke_outputs_exist(smoke_run):
    wd = smoke_run
    for task in ("math", "code", "conversation", "qna"):
        for split in ("train", "calibration", "eval"):
            assert (wd / f"results/data/{task}/{split}.parquet").is_file()
    for model in ("tiny-math", "tiny-code"):
        assert (wd / f"results/models/{model}/training.json").is_file()
        assert (wd / f"results/scores/{model}/selectivity.parquet").is_file()
        assert (wd / f"results/pruned/{model}/selective/35.71/0/manifest.parquet").is_file()
        for recipe in ("lora", "lora-kd"):
            assert (wd / f"results/recovered/{model}/selective/35.71/0/{recipe}/config.json").is_file()
    for f in ("metrics.parquet", "bench/efficiency.parquet", "findings.json", "findings.md",
              "bench/stats_collection.parquet", "bench/generation.parquet", "tables/summary.csv"):
        assert (wd / "results" / f).is_file(), f
    assert list((wd / "results/figures").glob("*.png"))


def test_smoke_metrics_cover_the_grid(smoke_run):
    m = pl.read_parquet(smoke_run / "results/metrics.parquet")
    stages = set(m["stage"].unique())
    assert stages == {"base", "pruned", "recovered"}
    selective = m.filter((pl.col("stage") == "recovered") & (pl.col("method") == "selective"))
    levels = {(r,): sorted(set(g["level"].to_list())) for (r,), g in selective.group_by("recovery")}
    assert levels == {("lora",): ["10", "35.71"], ("lora-kd",): ["35.71"]}  # lora-kd: the default's 2 levels
    assert m.filter(pl.col("stage") != "recovered")["recovery"].is_null().all()
    assert set(m["method"].unique()) >= {"base", "selective", "reverse", "random"}
    acc = m.filter(pl.col("metric") == HEADLINE_METRIC)
    assert acc.height > 0 and acc["value"].is_between(0, 1).all()


def test_smoke_harness_rows(smoke_run):
    """lm-evaluation-harness ran on the local GSM8K-format task for tiny-math base and selective 35.71%."""
    from taskprune.io import read_parquet_metadata

    for variant in ("tiny-math/base", "tiny-math/selective/35.71/0"):
        assert read_parquet_metadata(smoke_run / f"results/harness/{variant}.parquet")["lm_eval_version"]
    m = pl.read_parquet(smoke_run / "results/metrics.parquet")
    h = m.filter(pl.col("task").str.starts_with(HARNESS_TASK_PREFIX))
    assert set(h["task"]) == {HARNESS_TASK_PREFIX + "taskprune_math"}
    assert set(h["metric"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    assert sorted(set(zip(h["stage"], h["level"], strict=True))) == [("base", "0"), ("pruned", "35.71")]
    assert h["value"].is_between(0, 1).all() and (h["n"] == 3).all()
    assert (smoke_run / "results/figures/harness.png").is_file()


def test_second_run_has_nothing_to_do(smoke_run):
    proc = run_snakemake(smoke_run, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]


def test_report_builds(smoke_run):
    run_snakemake(smoke_run, "--report", "results/report.html")
    html = (smoke_run / "results/report.html").read_text(errors="replace")
    assert len(html) > 10_000 and "findings" in html.lower()


def test_smoke_items_and_four_outcome_findings(smoke_run):
    import json

    from taskprune.report.estimates import OUTCOMES
    from taskprune.report.results import ITEM_COLUMNS

    items = pl.read_parquet(smoke_run / "results/items.parquet")
    assert set(ITEM_COLUMNS) | {"recovery"} <= set(items.columns)
    assert set(items["role"].unique()) == {"target", "distractor"} and items["score"].is_between(0, 1).all()
    assert items.filter(pl.col("stage") == "recovered")["recovery"].null_count() == 0
    findings = json.loads((smoke_run / "results/findings.json").read_text())
    assert {c["status"] for c in findings["claims"]} <= set(OUTCOMES)
    assert all(v["status"] in OUTCOMES for c in findings["claims"] for v in c["per_model"].values())


def test_benchmark_files_record_the_real_job(smoke_run):
    """Snakemake's benchmark: files measure the job's own process tree, so they must show what the stage
    really used: a model job that imports torch and transformers holds > 200 MB and burns CPU seconds.
    (A job handed to a warm fork server would show only its small client: ~16 MB, ~0.05 s.) The evaluation
    jobs, which do run forked, have no benchmark file; their logs end with their usage line instead."""
    import csv

    heavy = [
        smoke_run / "benchmarks/train/tiny-math.tsv",
        smoke_run / "benchmarks/stats/tiny-math/math.tsv",
        *sorted((smoke_run / "benchmarks/recover").rglob("*.tsv"))[:1],
    ]
    assert len(heavy) == 3
    for path in heavy:
        rows = list(csv.DictReader(path.open(), delimiter="\t"))
        assert rows, path
        row = rows[-1]
        assert float(row["max_rss"]) > 200, f"{path}: max_rss {row['max_rss']} MB is not the job's"
        assert float(row["cpu_time"]) > 1.0, f"{path}: cpu_time {row['cpu_time']} s is not the job's"
    log = (smoke_run / "logs/evaluate/tiny-math/base.log").read_text()
    usage = [line for line in log.splitlines() if "resources: cpu_time=" in line]
    assert usage, "the evaluation log does not record its usage"
    assert float(usage[-1].split("max_rss=")[1].split()[0]) > 200, usage[-1]
