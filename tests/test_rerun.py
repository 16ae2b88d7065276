"""Only stale jobs rerun: Snakemake's own dry-run plan after a complete smoke run.

Each case changes one thing (a config key through an extra config file, or a source file in the run's
copy of the workflow) and reads the plan of ``snakemake -n``; the expected jobs are derived from the smoke
grid (2 models, levels 10 and 35.71, selective / reverse / random seed 33, recovery of selective at every
level and random at the highest) and the DAG's meaning, not from the Snakefile:

* a second run has nothing to do;
* a new pruning level schedules that level's pruning, recovery, evaluation and benchmark jobs and the
  tables that gather every variant, nothing else;
* a new distractor for one model schedules its data, its statistics (no other statistics job), that
  model's scores and what depends on them;
* a change to src/taskprune/prune.py reruns pruning and what depends on it, not the statistics (the rules
  carry their modules' source hash in ``params:``);
* a change to a file no rule uses (README, a comment in the Snakefile) reruns nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import conftest
import pytest
import yaml
from conftest import ROOT, copy_workflow, run_snakemake
from test_paper_config import PlannedJob, dry_run_jobs

pytestmark = pytest.mark.slow

MODELS = ("tiny-math", "tiny-code")
PRUNE_METHODS = {"selective": "0", "reverse": "0", "random": "33"}  # method -> its seed in the smoke grid
LEVELS = ("10", "35.71")
# rules that gather every variant (or every result): any change below them reruns them
# bench_family: the paired throughput of a shape family interleaves the base with every level, so any new or
# changed level re-times the family (one job per family)
GATHER_RULES = {"bench_family", "bench_gather", "metrics", "findings", "figures", "report_assets", "neuron_overlap"}
GENERALIST = "tiny-base"  # the smoke grid's specialists both continue from it


@pytest.fixture(scope="session")
def finished_run(request, tmp_path_factory) -> Path:
    """A complete smoke run whose workflow copy includes src/ (the rules hash src/taskprune/*.py).

    Reuses the shared ``smoke_run`` when conftest copies src/ into it; otherwise runs its own.
    """
    if "src" in conftest.WORKFLOW_FILES:
        return request.getfixturevalue("smoke_run")
    workdir = copy_workflow(tmp_path_factory.mktemp("rerun") / "wf")
    shutil.copytree(ROOT / "src", workdir / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    run_snakemake(workdir)
    return workdir


def plan(workdir: Path, extra_config: dict | None = None, tmp_path: Path | None = None) -> list[PlannedJob]:
    """The jobs ``snakemake -n`` would run, with ``extra_config`` merged over the smoke config."""
    args = ["-n"]
    if extra_config is not None:
        extra = tmp_path / "extra.yaml"
        extra.write_text(yaml.safe_dump(extra_config))
        args += ["--configfile", "config/smoke.yaml", str(extra)]
    proc = run_snakemake(workdir, *args)
    text = proc.stdout + proc.stderr
    jobs = [j for j in dry_run_jobs(text) if j.rule != "all"]
    if not jobs:
        assert "Nothing to be done" in text, text[-3000:]
    return jobs


@contextmanager
def edited(path: Path, append: str) -> Iterator[None]:
    """Append ``append`` to a file for the duration of the block, then restore it byte for byte."""
    existed = path.exists()
    original = path.read_bytes() if existed else b""
    path.write_bytes(original + append.encode())
    try:
        yield
    finally:
        if existed:
            path.write_bytes(original)
        else:
            path.unlink()


def by_rule(jobs: list[PlannedJob]) -> dict[str, list[PlannedJob]]:
    out: dict[str, list[PlannedJob]] = {}
    for j in jobs:
        key = "evaluate" if j.rule.startswith("evaluate_") else j.rule
        out.setdefault(key, []).append(j)
    return out


def variant_of(job: PlannedJob) -> tuple[str, ...]:
    """(model, method, level, seed[, 'recovered-{recipe}']) of a per-variant job, from its wildcards."""
    w = job.wildcards
    if "variant" in w:
        return tuple(w["variant"].split("/"))
    recovered = (f"recovered-{w['recipe']}",) if "recipe" in w else ()
    return (w["model"], w["method"], w["level"], w["seed"], *recovered)


def test_second_run_has_nothing_to_do(finished_run):
    assert plan(finished_run) == []


def test_new_level_schedules_only_that_level(finished_run, tmp_path):
    jobs = by_rule(plan(finished_run, {"pruning": {"levels": [10, 35.71, 20]}}, tmp_path))
    new = {(m, method, "20", seed) for m in MODELS for method, seed in PRUNE_METHODS.items()}
    assert {variant_of(j) for j in jobs.pop("prune")} == new
    # recovery: selective at every level with lora, and with lora-kd at 20 (one of the embedded default's
    # three lora-kd levels); random only at the highest, still 35.71
    recovered = {(m, "selective", "20", "0", f"recovered-{r}") for m in MODELS for r in ("lora", "lora-kd")}
    assert {variant_of(j) for j in jobs.pop("recover")} == recovered
    evaluated = {variant_of(j) for j in jobs.pop("evaluate")}
    assert evaluated == new | recovered
    # one efficiency benchmark per new set of shapes: the two specialists share one architecture, so a
    # single checkpoint at level 20 is measured and labels every level-20 variant of both
    benched = [variant_of(j) for j in jobs.pop("bench")]
    assert len(benched) == 1 and benched[0][0] in MODELS and benched[0][2] == "20", benched
    assert set(jobs) <= GATHER_RULES, f"unexpected jobs: {sorted(set(jobs) - GATHER_RULES)}"


def test_new_distractor_reruns_its_stats_and_downstream_only(finished_run, tmp_path):
    extra = {
        "tasks": {"chat2": {"kind": "conversation"}},
        "models": {"tiny-math": {"distractors": ["conversation", "qna", "chat2"]}},
    }
    jobs = by_rule(plan(finished_run, extra, tmp_path))
    assert [j.wildcards["task"] for j in jobs.pop("data")] == ["chat2"]
    # the one statistics job of the new (model, dataset); the other datasets' statistics are reused
    assert [(j.wildcards["model"], j.wildcards["dataset"]) for j in jobs.pop("stats")] == [("tiny-math", "chat2")]
    assert "train" not in jobs, "adding a distractor must not retrain the specialist (nor the generalist)"
    # the generalist's selectivity in tiny-math's setting needs its statistics on the new distractor too
    assert [(j.wildcards["generalist"], j.wildcards["dataset"]) for j in jobs.pop("generalist_stats")] == [
        (GENERALIST, "chat2")
    ]
    assert [j.wildcards["model"] for j in jobs.pop("generalist_selectivity")] == ["tiny-math"]
    scores = jobs.pop("scores")
    assert {j.wildcards["model"] for j in scores} == {"tiny-math"}
    assert "selectivity" in {j.wildcards["score"] for j in scores}
    # selectivity-based pruning of tiny-math reruns; random pruning does not read scores
    assert {variant_of(j) for j in jobs.pop("prune")} == {
        ("tiny-math", method, level, "0") for method in ("selective", "reverse") for level in LEVELS
    }
    # every variant of tiny-math is evaluated on the new distractor; tiny-code is untouched
    evaluated = {variant_of(j) for j in jobs.pop("evaluate")}
    assert {v[0] for v in evaluated} == {"tiny-math"} and ("tiny-math", "base") in evaluated
    for rule in ("recover", "bench"):
        assert {variant_of(j)[0] for j in jobs.pop(rule, [])} <= {"tiny-math"}
    # lm-eval harness (smoke: tiny-math base and selective 35.71): only the re-pruned checkpoint
    assert {variant_of(j) for j in jobs.pop("harness")} == {("tiny-math", "selective", "35.71", "0")}
    assert set(jobs) <= GATHER_RULES, f"unexpected jobs: {sorted(set(jobs) - GATHER_RULES)}"


def test_pruning_code_change_reruns_pruning_and_downstream_not_stats(finished_run):
    with edited(finished_run / "src/taskprune/prune.py", "\n# a change to the pruning module\n"):
        jobs = by_rule(plan(finished_run))
    all_pruned = {(m, method, level, seed) for m in MODELS for method, seed in PRUNE_METHODS.items() for level in LEVELS}
    assert {variant_of(j) for j in jobs.pop("prune")} == all_pruned
    recovered = {variant_of(j) for j in jobs.pop("recover")}
    assert recovered == {(m, "selective", lv, "0", "recovered-lora") for m in MODELS for lv in LEVELS} | {
        (m, "random", "35.71", "33", "recovered-lora") for m in MODELS
    } | {(m, "selective", "35.71", "0", "recovered-lora-kd") for m in MODELS}  # lora-kd's smoke level
    evaluated = {variant_of(j) for j in jobs.pop("evaluate")}
    assert evaluated == all_pruned | recovered  # not the base models
    # the bench stage does not import prune (shape families are pruned by taskprune.model.pruning's rule), so only
    # the measured pruned variants' memory benchmarks rerun (downstream of their checkpoints), not the base's
    assert {variant_of(j)[1:] for j in jobs.pop("bench")} == {("selective", lv, "0") for lv in LEVELS}
    # the harness stage loads pruned checkpoints with taskprune.model.checkpoint, not prune: only the job of the
    # re-pruned checkpoint reruns (downstream), not the base model's
    assert {variant_of(j) for j in jobs.pop("harness")} == {("tiny-math", "selective", "35.71", "0")}
    for upstream in ("data", "train", "stats", "scores", "bench_stats", "bench_generation", "generalist_stats"):
        assert upstream not in jobs, f"{upstream} must not rerun after a change to prune.py"
    assert set(jobs) <= GATHER_RULES, f"unexpected jobs: {sorted(set(jobs) - GATHER_RULES)}"
    assert plan(finished_run) == [], "restoring prune.py must make the run complete again"


@pytest.mark.parametrize("path, text", [("README.md", "\nA note.\n"), ("Snakefile", "\n# a comment\n")])
def test_unrelated_change_reruns_nothing(finished_run, path, text):
    with edited(finished_run / path, text):
        assert plan(finished_run) == []


# A module -> the rules whose jobs must rerun when it changes: the rules whose stage imports it (read off
# the stage modules' imports by hand) and the rules downstream of those (the DAG's meaning). Chosen so each
# case also names rules that must NOT rerun (the model rules for all of them).
MODULE_RERUNS = {
    # only `taskprune bench` imports flops; bench, bench_family and bench_gather run it; efficiency.parquet feeds both tables
    "model/flops": {"bench", "bench_family", "bench_gather", "findings", "figures"},
    # the findings stage module is run by the findings rule only; figures reads its findings.json (downstream)
    "findings": {"findings", "figures"},
    # the claims are computed by the findings stage and imported by the figures stage (via the report's render)
    "report/claims": {"findings", "figures"},
    "figures": {"figures"},
    "report/figures": {"figures"},
    # its output is a final target only
    "bench_generation": {"bench_generation"},
    # the import graph is the workflow's own tool: no stage imports it
    "import_graph": set(),
}


@pytest.mark.parametrize("module", sorted(MODULE_RERUNS))
def test_module_change_reruns_exactly_the_rules_whose_stage_imports_it(finished_run, module):
    with edited(finished_run / f"src/taskprune/{module}.py", f"\n# a change to {module}\n"):
        jobs = by_rule(plan(finished_run))
    assert set(jobs) == MODULE_RERUNS[module], f"editing {module}.py reruns {sorted(jobs)}"
    if "bench" in jobs:  # every measured variant's benchmark, nothing per evaluation
        assert len(jobs["bench"]) == 3
