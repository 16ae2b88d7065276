"""Determinism: two smoke runs from scratch on CPU give identical results, and the seeds are on record.

The shared ``smoke_run`` (the whole DAG) is compared with one more run from scratch in another temp dir,
up to ``results/metrics.parquet``. ``metrics.parquet`` must be identical as a table (every value exact,
NaN = NaN) and as bytes (``taskprune.io.write_parquet`` writes no timestamps); when only the bytes differ,
the test says whether the difference is in the stored metadata. A second test walks every Parquet table
and safetensors file both runs have, so a difference in the metrics can be traced to the first stage that
is not deterministic.

Where the seeds are recorded (checked below, per output):

* ``results/data/{task}/{split}.parquet``: metadata ``seed`` (= ``data.seed``); the calibration split's
  ``for_stats`` mask depends on ``data.split_seed`` and ``data.calibration_stats_fraction``, not recorded;
* ``results/models/{model}/training.json``: ``training.seed``;
* ``results/stats/...``: no randomness, no seed;
* ``results/scores/{model}/random.parquet``: metadata ``random_seed`` (``None`` for the other scores);
* ``results/pruned/.../pruning.json`` and ``results/pruning/....json``: ``seed`` (0 for deterministic methods);
* ``results/recovered/.../recovery.json``: ``seed`` (= ``recovery.seed``);
* ``results/eval/{variant}/*.parquet`` and ``results/metrics.parquet``: the confidence intervals come from a
  bootstrap seeded with a constant in evaluate.py (and pass@k sampling likewise), not recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from conftest import ROOT, copy_workflow, run_snakemake
from polars.testing import assert_frame_equal

from taskprune.io import read_parquet_metadata, sha256_file

METRICS = "results/metrics.parquet"
#: Columns that measure the run itself (training loss tables: wall-clock seconds per step), not results.
TIMING_COLUMNS = {"seconds"}


@pytest.fixture(scope="module")
def second_run(tmp_path_factory) -> Path:
    """A second smoke run from scratch, in its own temp dir, up to results/metrics.parquet."""
    workdir = copy_workflow(tmp_path_factory.mktemp("determinism") / "wf")
    run_snakemake(workdir, "--", METRICS)
    return workdir


def _parquet_difference(a: Path, b: Path) -> str | None:
    """None if the files hold the same table (timing columns aside); else the first difference."""
    ta, tb = pl.read_parquet(a), pl.read_parquet(b)
    if ta.columns != tb.columns or ta.height != tb.height:
        return f"shape {ta.shape} {ta.columns} vs {tb.shape} {tb.columns}"
    for col in (c for c in ta.columns if c not in TIMING_COLUMNS):
        try:
            assert_frame_equal(ta.select(col), tb.select(col), check_exact=True)
        except AssertionError:
            return f"column '{col}' differs"
    return None


@pytest.mark.slow
def test_two_runs_from_scratch_give_identical_metrics(smoke_run: Path, second_run: Path) -> None:
    a, b = smoke_run / METRICS, second_run / METRICS
    table_a, table_b = pl.read_parquet(a), pl.read_parquet(b)
    assert table_a.height > 0
    assert_frame_equal(table_a, table_b, check_exact=True)
    if sha256_file(a) != sha256_file(b):
        meta_a, meta_b = read_parquet_metadata(a), read_parquet_metadata(b)
        where = "only in the stored metadata" if meta_a != meta_b else "not in the metadata (encoding?)"
        pytest.fail(f"same table, but the bytes differ, {where}: {meta_a} vs {meta_b}")


@pytest.mark.slow
def test_every_table_and_weight_file_of_both_runs_is_identical(smoke_run: Path, second_run: Path) -> None:
    """Parquet tables by content (their metadata and the loss tables' ``seconds`` column hold timings),
    safetensors by bytes; bench timings are measurements and not compared."""
    compared, differences = 0, []
    for path in sorted((second_run / "results").rglob("*")):
        rel = path.relative_to(second_run)
        if not path.is_file() or rel.parts[1] == "bench" or any(p.startswith(".") for p in rel.parts):
            continue
        other = smoke_run / rel
        if path.suffix == ".parquet":
            problem = _parquet_difference(path, other)
        elif path.suffix == ".safetensors":
            problem = None if sha256_file(path) == sha256_file(other) else "bytes differ"
        else:
            continue
        compared += 1
        if problem:
            differences.append(f"{rel}: {problem}")
    assert compared > 50, compared
    assert not differences, "\n".join(differences)


# --------------------------------------------------------------------------------------- seeds on record


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_seeds_are_recorded_where_the_stages_use_them(smoke_run: Path) -> None:
    from taskprune.config import load_config

    cfg = load_config(ROOT / "config/config.yaml", ROOT / "config/smoke.yaml")
    results = smoke_run / "results"  # the whole DAG: every score table, pruned and recovered variant
    for task in cfg.tasks:
        for split in ("train", "calibration", "eval"):
            assert read_parquet_metadata(results / "data" / task / f"{split}.parquet")["seed"] == cfg.data.seed
    for name, model in cfg.models.items():
        assert _json(results / "models" / name / "training.json")["training"]["seed"] == model.training.seed
        assert read_parquet_metadata(results / "scores" / name / "random.parquet")["random_seed"] == (
            cfg.scores.random_seed
        )
    pruned = sorted((results / "pruned").glob("*/*/*/*/pruning.json"))
    assert pruned, "no pruned checkpoints"
    for record in pruned:
        assert _json(record)["seed"] == int(record.parent.name)
        assert _json(results / "pruning" / record.parent.relative_to(results / "pruned").with_suffix(".json"))[
            "seed"
        ] == int(record.parent.name)
    recovered = sorted((results / "recovered").glob("*/*/*/*/*/recovery.json"))  # .../{seed}/{recipe}/
    assert recovered, "no recovered checkpoints"
    for record in recovered:
        assert _json(record)["seed"] == cfg.recovery.seed


@pytest.mark.slow
def test_calibration_split_records_the_seed_of_its_for_stats_mask(second_run: Path) -> None:
    meta = read_parquet_metadata(second_run / "results/data/math/calibration.parquet")
    flat = json.dumps(meta)
    assert "split_seed" in flat and "calibration_stats_fraction" in flat, meta


@pytest.mark.slow
def test_metrics_record_the_seed_of_their_confidence_intervals(second_run: Path) -> None:
    variant_meta = read_parquet_metadata(second_run / "results/eval/tiny-math/base/metrics.parquet")
    total_meta = read_parquet_metadata(second_run / METRICS)
    for meta in (variant_meta, total_meta):
        assert any("seed" in key for key in _flat_keys(meta)), meta


def _flat_keys(obj, prefix: str = "") -> list[str]:
    if isinstance(obj, dict):
        return [k for key, value in obj.items() for k in [f"{prefix}{key}", *_flat_keys(value, f"{prefix}{key}.")]]
    return []


def test_one_seed_in_the_config_sets_every_stage_seed(tmp_path: Path) -> None:
    from taskprune.config import load_config

    extra = tmp_path / "seed.yaml"
    extra.write_text("seed: 7\n")
    default = load_config(ROOT / "config/config.yaml")
    changed = load_config(ROOT / "config/config.yaml", extra)
    assert changed.seed == 7
    stage_seeds = lambda c: (c.data.seed, c.data.split_seed, c.scores.random_seed, c.recovery.seed,  # noqa: E731
                             tuple(m.training.seed for m in c.models.values()))
    assert stage_seeds(changed) != stage_seeds(default), "changing 'seed' changes no stage's seed"
