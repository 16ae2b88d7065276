"""The whole smoke config through profiles/slurm on a real SLURM cluster: every job goes through sbatch.

Skipped unless a cluster answers ``sinfo`` or ``TASKPRUNE_SLURM=1`` is set; with ``TASKPRUNE_SLURM=1`` and
no cluster answering, the test brings up the single-node cluster of ``.ci/slurm-up.sh`` itself (as root)
and tears it down afterwards with ``.ci/slurm-down.sh``.

The run uses profiles/slurm as it is, with the CI-only settings of profiles/slurm-ci/overrides.yaml (no
accounting on the CI cluster: squeue for job states, no account; jobs submitted one by one; logs kept; a
short first status check) merged into a derived profile, memory requests (sized for 7B models) capped at
half the node's memory, GPU requests dropped when the node has no GPU GRES (the CI node advertises
placeholder GPUs, so they are kept there); and ``--cores 1`` (one CPU per job). The evidence that every job
but the Snakefile's ``localrules`` went through SLURM comes from SLURM itself: each such job of Snakemake's
plan has an sbatch submission in Snakemake's log, a SLURM job in state COMPLETED under the run's job name,
with the rule in its comment and the profile's wall time, and an sbatch log file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, copy_workflow
from test_paper_config import dry_run_jobs

pytestmark = pytest.mark.slow

CI_DIR = ROOT / ".ci"


def _sinfo_ok() -> bool:
    if shutil.which("sinfo") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
    return proc.returncode == 0 and bool(proc.stdout.strip())


@pytest.fixture(scope="module")
def slurm_cluster():
    """A SLURM cluster to submit to (skip when there is none and none was asked for)."""
    brought_up = False
    if not _sinfo_ok():
        if os.environ.get("TASKPRUNE_SLURM") != "1":
            pytest.skip("no SLURM cluster answers sinfo (set TASKPRUNE_SLURM=1 to bring one up as root)")
        if os.geteuid() != 0:
            pytest.fail("TASKPRUNE_SLURM=1: bringing up the CI cluster (.ci/slurm-up.sh) needs root")
        subprocess.run(["bash", str(CI_DIR / "slurm-up.sh")], check=True, timeout=900)
        brought_up = True
        assert _sinfo_ok(), "the cluster of .ci/slurm-up.sh does not answer sinfo"
    yield
    if brought_up:
        subprocess.run(["bash", str(CI_DIR / "slurm-down.sh")], check=False, timeout=300)


def _node_capacity() -> tuple[int, int, int]:
    """(CPUs, memory MB, GPUs) of the smallest node of the default partition."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%c %m %G"], capture_output=True, text=True, check=True).stdout
    nodes = []
    for line in out.splitlines():
        cpus, mem, gres = line.split()[:3]
        gpus = sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,()]+)?:(\d+)", gres))
        nodes.append((int(cpus), int(mem.rstrip("+")), gpus))
    return min(nodes)


def ci_profile(workdir: Path, mem_cap_mb: int, has_gpus: bool) -> Path:
    """profiles/slurm with profiles/slurm-ci/overrides.yaml merged in (a null value deletes the key), the
    memory requests capped and GPUs dropped on a GPU-less node."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    overrides = yaml.safe_load((ROOT / "profiles/slurm-ci/overrides.yaml").read_text())
    for key, value in overrides.items():
        if value is None:
            profile.pop(key, None)
        else:
            profile[key] = value
    for section in [profile["default-resources"], *profile["set-resources"].values()]:
        if "mem_mb" in section:
            section["mem_mb"] = min(section["mem_mb"], mem_cap_mb)
        if not has_gpus:
            section.pop("gpu", None)
    out = workdir / "profiles" / "slurm-ci"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return out


def local_rules() -> set[str]:
    """The Snakefile's ``localrules`` (run by Snakemake itself, never submitted) and the target ``all``."""
    block = re.search(r"(?m)^localrules:\n((?:[ \t]+\S+\n)+)", (ROOT / "Snakefile").read_text())
    names = {n.strip().rstrip(",") for n in block.group(1).split()} if block else set()
    return names | {"all"}


def _snakemake(workdir: Path, *args: str, timeout: int = 3600) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.setdefault("HF_HUB_OFFLINE", "1")
    # --cores 1 caps every job at one thread (one CPU per sbatch job), so two jobs run side by side on the
    # CI node's 2 CPUs; on a cluster the profile's set-threads apply up to the login node's cores.
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", "config/smoke.yaml", *args]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def _minutes(limit: str) -> int:
    """SLURM's time limit ``[D-][HH:]MM:SS`` in minutes."""
    days, _, hms = limit.rpartition("-")
    h, m, s = ([0, 0, *(int(x) for x in hms.split(":"))])[-3:]
    return (int(days or 0) * 24 + h) * 60 + m + (s > 0)


def test_smoke_config_runs_through_slurm(slurm_cluster, tmp_path):
    cpus, mem_mb, gpus = _node_capacity()
    workdir = copy_workflow(tmp_path / "wf")
    ci_profile(workdir, mem_cap_mb=mem_mb // 2, has_gpus=gpus > 0)
    profile = yaml.safe_load((workdir / "profiles/slurm-ci/config.yaml").read_text())

    plan = _snakemake(workdir, "-n", "--profile", "profiles/slurm-ci", timeout=600)
    assert plan.returncode == 0, plan.stderr[-4000:]
    local = local_rules()
    assert {"metrics", "bench_gather", "findings", "figures"} <= local
    planned = [j for j in dry_run_jobs(plan.stdout + plan.stderr) if j.rule not in local]
    assert len(planned) > 30
    # the benchmark jobs ask for a whole node
    for rule in ("bench", "bench_stats", "bench_generation"):
        assert "--exclusive" in profile["set-resources"][rule]["slurm_extra"], rule

    t0 = time.perf_counter()
    proc = _snakemake(workdir, "--profile", "profiles/slurm-ci")
    wall_s = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"SLURM run failed after {wall_s:.0f} s:\n{log[-8000:]}"
    print(f"\nsmoke config through SLURM: {len(planned)} jobs in {wall_s:.0f} s ({cpus} CPUs, {gpus} GPUs)")

    # 1. Snakemake submitted every planned job with sbatch, and nothing ran locally but the localrules
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", log)
    assert len(submitted) == len(planned), (len(submitted), len(planned))
    ran_locally = set(re.findall(r"^localrule (\S+):", log, re.M))
    assert ran_locally <= local, f"jobs ran outside SLURM: {sorted(ran_locally - local)}"

    # 2. SLURM ran each of them to completion under this run's job name, with the profile's wall time
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    squeue = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--name", run_id, "--format=%i|%T|%k|%l"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    jobs = {jid: (state, comment, limit) for jid, state, comment, limit in (row.split("|") for row in squeue.split())}
    assert set(jobs) == {jid for jid, _ in submitted}, "SLURM does not know every submitted job"
    assert {state for state, _, _ in jobs.values()} == {"COMPLETED"}
    rules_run = sorted(re.match(r"rule_(.+?)(_wildcards_.*)?$", c).group(1) for _, c, _ in jobs.values())
    assert rules_run == sorted(j.rule for j in planned)
    planned_runtime = {j.rule: int(j.resources["runtime"]) for j in planned}
    for rule, res in profile["set-resources"].items():
        if rule in planned_runtime:
            assert planned_runtime[rule] == res["runtime"], f"the profile's runtime did not reach rule {rule}"
    for _, comment, limit in jobs.values():
        rule = re.match(r"rule_(.+?)(_wildcards_.*)?$", comment).group(1)
        assert _minutes(limit) == planned_runtime[rule], (rule, limit)

    # 3. every job left its sbatch log, naming its rule
    for _, path in submitted:
        text = Path(path).read_text(errors="replace")
        assert re.search(r"^(local)?rule \S+:", text, re.M), path

    # 4. every planned output exists, and a second run has nothing to do
    for job in planned:
        for out in job.output:
            assert (workdir / out).exists(), (job.rule, out)
    again = _snakemake(workdir, "-n", "--profile", "profiles/slurm-ci", timeout=600)
    assert "Nothing to be done" in again.stdout + again.stderr
