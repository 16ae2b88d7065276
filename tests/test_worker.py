"""The warm fork server gives the same output and exit status as a plain process, and falls back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from taskprune.worker import ENV_PYTHON, ENV_SOCKET, start_daemon

ROOT = Path(__file__).resolve().parents[1]
TASKPRUNE = str(Path(sys.executable).parent / "taskprune")


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    sock = str(tmp_path_factory.mktemp("w") / "w.sock")
    # The server exits when its parent is gone: make this test process its parent.
    assert start_daemon(sock, os.getpid(), wait_s=120)
    yield sock
    from taskprune.worker import stop

    stop(sock)


def _run(args, sock=None):
    env = dict(os.environ)
    env.pop(ENV_SOCKET, None)
    if sock:
        env[ENV_SOCKET] = sock
        env[ENV_PYTHON] = sys.executable  # the console script's interpreter: the venv's, as the server's
    return subprocess.run([TASKPRUNE, *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_same_output_through_worker(worker):
    direct = _run(["config", "config/config.yaml", "config/smoke.yaml"])
    forked = _run(["config", "config/config.yaml", "config/smoke.yaml"], worker)
    assert direct.returncode == forked.returncode == 0
    assert direct.stdout == forked.stdout and "variants:" in forked.stdout


def test_error_status_and_single_line_through_worker(worker, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"pruning": {"seeds": [0]}}))
    forked = _run(["config", "config/config.yaml", str(bad)], worker)
    assert forked.returncode == 2
    assert len(forked.stderr.strip().splitlines()) == 1 and "pruning.seeds" in forked.stderr


def test_fallback_without_server(tmp_path):
    out = _run(["config", "config/config.yaml"], str(tmp_path / "absent.sock"))
    assert out.returncode == 0 and "config OK" in out.stdout


@pytest.mark.parametrize(
    "env, usable",
    [
        ({}, True),
        ({"SLURM_JOB_ID": "17"}, False),  # a cluster job never hands its work to a local server
        ({"APPTAINER_CONTAINER": "/x.sif"}, False),
        ({ENV_PYTHON: "/opt/conda/envs/x/bin/python"}, False),  # --sdm conda: the job's own interpreter
    ],
)
def test_worker_refuses_jobs_from_another_environment(monkeypatch, tmp_path, env, usable):
    from taskprune import worker as w

    sock = tmp_path / "s.sock"
    sock.touch()
    monkeypatch.setenv(ENV_SOCKET, str(sock))
    monkeypatch.setenv(ENV_PYTHON, sys.executable)
    for name in w.FOREIGN_JOB_ENV:
        monkeypatch.delenv(name, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert w.same_environment() is usable
    if not usable:  # falls back to running in-process, before touching the socket
        assert w.try_run_via_worker(["config", "config/config.yaml"]) is None


def test_benchmarked_rules_never_run_forked():
    """Snakemake's benchmark: measures the job's process tree, which a forked child is not in: every rule
    with a benchmark file must run a stage the worker refuses (read off the rule files)."""
    import re

    from taskprune.worker import NEVER_FORKED

    benchmarked = {}
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = path.read_text()
        starts = list(re.finditer(r"(?m)^\s*rule\b[^:]*:", text))
        for i, m in enumerate(starts):
            block = text[m.start() : starts[i + 1].start() if i + 1 < len(starts) else len(text)]
            stage = re.search(r"taskprune ([a-z][a-z-]*)", block)
            if "benchmark:" in block and stage:
                benchmarked[m.group(0).strip()] = stage.group(1)
    assert len(benchmarked) >= 4, benchmarked
    forked = {rule: stage for rule, stage in benchmarked.items() if stage not in NEVER_FORKED}
    assert not forked, f"benchmarked rules whose jobs the warm worker would fork: {forked}"


def test_every_stage_logs_its_real_usage(worker):
    """Forked or not, a stage's log ends with its own CPU time and peak memory."""
    for sock in (None, worker):
        proc = _run(["config", "config/config.yaml", "config/smoke.yaml"], sock)
        assert proc.returncode == 0
        line = [x for x in proc.stderr.splitlines() if "resources:" in x]
        assert line and "cpu_time=" in line[-1] and "max_rss=" in line[-1], proc.stderr[-500:]
