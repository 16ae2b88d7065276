"""Interruptions lose nothing: SIGKILL in the middle of a job, rerun, and the results are the same.

The workflow (config/smoke.yaml, a temp copy of the workflow) is killed with SIGKILL, as an out-of-memory
killer or a cluster's time limit would, first in the middle of a statistics job and then in the middle of
a pruning job; a third run finishes it. After each kill:

* every result that exists under a final name is complete: identical to the uninterrupted reference run
  (temp files are hidden, ``.<name>.*.tmp*`` / ``.<name>.*.tmpdir``, and are the only other entries);
* no process of the killed run survives it (the warm worker kills its forked job when the job's client
  dies, and exits itself when Snakemake is gone; its socket is removed);

before the next run, Snakemake's stale lock is removed with ``snakemake --unlock`` (a plain rerun refuses,
checked once: Snakemake cannot tell a killed run from a live one); and after the final run the statistics, score table, pruned checkpoint and pruning summary equal the
reference's. Statistics files are compared as tables plus their metadata without the two timing keys
(``seconds``, ``tokens_per_s``), which differ between any two runs; everything else is compared by sha256.

"The middle of a job" is found by polling: the statistics job is killed once its log shows that the model
is loaded and the prompts are tokenized (the collection and the write are still to come), or once its
temp file exists; the pruning job once its temporary checkpoint directory exists (it is being written).
Both are run with the warm fork-server (the default for local runs) and with ``TASKPRUNE_WORKER=0``.

To stay cheap, the data and the trained model come from one reference run shared by both scenarios
(copied with Snakemake's metadata, so they are not rebuilt), and only the targets needed are requested.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from conftest import copy_workflow, run_snakemake

from taskprune.io import read_parquet_metadata, sha256_file, sha256_tree

MODEL = "tiny-math"
STATS = [f"results/stats/{MODEL}/{d}.parquet" for d in ("math", "conversation", "qna")]
SCORES = f"results/scores/{MODEL}/selectivity.parquet"
PRUNED = f"results/pruned/{MODEL}/selective/10/0"
SUMMARY = f"results/pruning/{MODEL}/selective/10/0.json"
TARGETS = [PRUNED, SUMMARY]
OUTPUT_DIRS = {PRUNED, f"results/models/{MODEL}"}  # directory() outputs of the jobs involved
#: Outputs the interrupted runs rebuild (their logs and benchmarks too); everything upstream is shared.
REBUILT = ["results/stats", "results/scores", "results/pruned", "results/pruning", "logs/stats", "logs/scores",
           "logs/prune", "benchmarks/stats"]
SNAKEMAKE_MARKERS = {".snakemake_timestamp"}  # Snakemake's own mark inside finished directory() outputs
TIMING_KEYS = {"seconds", "tokens_per_s"}  # statistics metadata that describes the run, not the result
POLL_S = 0.002


# ------------------------------------------------------------------------------------------ helpers


def snakemake_env(worker: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + ":" + env.get("PATH", "")
    env["TASKPRUNE_WORKER"] = "1" if worker else "0"
    return env


def start_snakemake(workdir: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Snakemake in its own session (process group), so that one killpg reaches it and its jobs."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/smoke.yaml", "--", *TARGETS]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def kill_when(proc: subprocess.Popen, trigger: Callable[[], str | None], timeout_s: float = 600) -> str:
    """Poll ``trigger`` until it names a reason, then SIGKILL the whole process group and reap Snakemake."""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            reason = trigger()
            if reason:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return reason
            if proc.poll() is not None:
                pytest.fail(f"snakemake ended (status {proc.returncode}) before the job to interrupt was caught")
            time.sleep(POLL_S)
        pytest.fail("timed out waiting for the job to interrupt")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    raise AssertionError("unreachable")


def hidden_entries(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith(".")) if directory.is_dir() else []


def stats_job_in_progress(workdir: Path) -> Callable[[], str | None]:
    """A statistics job whose model is loaded (its log says how many prompts) but whose output is not written."""

    def trigger() -> str | None:
        stats_dir = workdir / "results/stats" / MODEL
        for tmp in hidden_entries(stats_dir):
            if ".tmp" in tmp.name:
                return f"temp file {tmp.name} exists"
        for out in STATS:
            log = workdir / "logs/stats" / MODEL / Path(out).with_suffix(".log").name
            if log.is_file() and " prompts, " in log.read_text(errors="replace") and not (workdir / out).exists():
                return f"{log.name}: model loaded, statistics not yet written"
        return None

    return trigger


def prune_job_writing(workdir: Path) -> Callable[[], str | None]:
    """The pruning job's temporary checkpoint directory exists: it is writing the checkpoint."""
    parent = (workdir / PRUNED).parent

    def trigger() -> str | None:
        for tmp in hidden_entries(parent):
            if tmp.name.startswith(f".{Path(PRUNED).name}.") and tmp.name.endswith(".tmpdir"):
                return f"temp dir {tmp.name} exists ({len(list(tmp.iterdir()))} files written)"
        return None

    return trigger


def same_stats(a: Path, b: Path) -> bool:
    """Same table and same metadata apart from the timing keys."""
    meta_a = {k: v for k, v in read_parquet_metadata(a).items() if k not in TIMING_KEYS}
    meta_b = {k: v for k, v in read_parquet_metadata(b).items() if k not in TIMING_KEYS}
    return pl.read_parquet(a).equals(pl.read_parquet(b)) and meta_a == meta_b


def same_file(rel: str, workdir: Path, reference: Path) -> bool:
    got, want = workdir / rel, reference / rel
    if rel.startswith("results/stats/"):
        return same_stats(got, want)
    return sha256_file(got) == sha256_file(want)


def assert_results_complete(workdir: Path, reference: Path) -> list[str]:
    """Every entry under results/ with a final name is complete and equal to the reference; the others are
    hidden temp entries. Returns the temp entries found (relative paths)."""
    temps = []
    results = workdir / "results"
    for path in sorted(results.rglob("*")):
        rel = path.relative_to(workdir)
        if any(part.startswith(".") for part in rel.parts):
            top = next(p for p in rel.parts if p.startswith("."))
            if top in SNAKEMAKE_MARKERS:
                continue
            assert ".tmp" in top, f"unexpected hidden entry {rel}"
            if top == path.name:
                temps.append(str(rel))
            continue
        want = reference / rel
        assert want.exists(), f"{rel} exists but the uninterrupted run has no such output"
        if path.is_dir():
            if str(rel) in OUTPUT_DIRS:  # a directory() output is complete or absent
                names = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
                want_names = sorted(p.name for p in want.iterdir() if not p.name.startswith("."))
                assert names == want_names, f"{rel}: an incomplete checkpoint ({names} of {want_names})"
        else:
            assert same_file(str(rel), workdir, reference), f"{rel} differs from the uninterrupted run"
    return temps


def assert_nothing_survives(workdir: Path, snakemake_pid: int, timeout_s: float = 20) -> None:
    """No process runs in the workdir any more, and the warm worker's socket is gone."""
    import psutil

    socket = Path(tempfile.gettempdir()) / f"taskprune-worker-{snakemake_pid}.sock"
    deadline = time.monotonic() + timeout_s
    alive: list[str] = []
    while time.monotonic() < deadline:
        alive = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if proc.pid != os.getpid() and Path(proc.cwd()).is_relative_to(workdir):
                    alive.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])[:120]}")
            except (psutil.Error, OSError):
                continue
        if not alive and not socket.exists():
            return
        time.sleep(0.2)
    raise AssertionError(f"left after the kill: processes {alive}, worker socket exists: {socket.exists()}")


def assert_final_results_equal(workdir: Path, reference: Path) -> None:
    for rel in STATS:
        assert same_stats(workdir / rel, reference / rel), rel
        raw_differs = sha256_file(workdir / rel) != sha256_file(reference / rel)
        if raw_differs:  # only the timing metadata may differ
            print(f"{rel}: bytes differ from the reference only by timing metadata {sorted(TIMING_KEYS)}")
    assert sha256_file(workdir / SCORES) == sha256_file(reference / SCORES)
    assert sha256_tree(workdir / PRUNED) == sha256_tree(reference / PRUNED)
    assert sha256_file(workdir / SUMMARY) == sha256_file(reference / SUMMARY)


# ----------------------------------------------------------------------------------------- the runs


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run up to the pruned checkpoint (with the default warm worker)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("interrupt-reference") / "wf")
    run_snakemake(workdir, "--", *TARGETS)
    return workdir


def fresh_copy(reference: Path, dest: Path) -> Path:
    """The reference's workdir without the outputs this test rebuilds (data and model kept, with metadata)."""
    shutil.copytree(reference, dest, symlinks=True,
                    ignore=shutil.ignore_patterns("locks", "incomplete", "log", "auxiliary"))
    for rel in REBUILT:
        shutil.rmtree(dest / rel, ignore_errors=True)
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("worker", [True, False], ids=["warm-worker", "TASKPRUNE_WORKER=0"])
def test_sigkill_in_stats_and_prune_jobs_then_rerun_gives_identical_results(reference, tmp_path, worker):
    workdir = fresh_copy(reference, tmp_path / "wf")
    model_dir = workdir / "results/models" / MODEL
    model_mtime = model_dir.stat().st_mtime_ns
    env = snakemake_env(worker)
    worker_env = {"TASKPRUNE_WORKER": env["TASKPRUNE_WORKER"]}
    log = tmp_path / "snakemake.log"
    timings = {}

    # 1. SIGKILL while a statistics job runs.
    started = time.monotonic()
    proc = start_snakemake(workdir, env, log)
    reason = kill_when(proc, stats_job_in_progress(workdir))
    timings["until stats kill"] = time.monotonic() - started
    assert_nothing_survives(workdir, proc.pid)
    temps_after_stats_kill = assert_results_complete(workdir, reference)
    assert not (workdir / PRUNED).exists()
    # Snakemake's lock outlives a SIGKILL: a plain rerun refuses (it cannot tell a dead run from a live
    # one) and says to unlock; that is the documented way back.
    refused = run_snakemake(workdir, "--", *TARGETS, check=False, env=worker_env)
    assert refused.returncode != 0 and "--unlock" in refused.stdout + refused.stderr
    run_snakemake(workdir, "--unlock", env=worker_env)

    # 2. Rerun; SIGKILL while the pruning job writes its checkpoint.
    started = time.monotonic()
    proc = start_snakemake(workdir, env, log)
    prune_reason = kill_when(proc, prune_job_writing(workdir))
    timings["until prune kill"] = time.monotonic() - started
    assert_nothing_survives(workdir, proc.pid)
    temps_after_prune_kill = assert_results_complete(workdir, reference)
    for rel in STATS + [SCORES]:
        assert same_file(rel, workdir, reference), rel  # finished before the pruning job started
    run_snakemake(workdir, "--unlock", env=worker_env)

    # 3. Rerun to the end: the same results as the uninterrupted run.
    started = time.monotonic()
    run_snakemake(workdir, "--", *TARGETS, env=worker_env)
    timings["final run"] = time.monotonic() - started
    assert_final_results_equal(workdir, reference)
    leftovers = assert_results_complete(workdir, reference)
    assert model_dir.stat().st_mtime_ns == model_mtime, "the shared model was rebuilt"
    print(f"stats kill: {reason}; temp entries then: {temps_after_stats_kill}")
    print(f"prune kill: {prune_reason}; temp entries then: {temps_after_prune_kill}")
    print(f"stale temp entries after the final run: {leftovers}")
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


# ------------------------------------------------------------- what a killed job leaves, read by others


def test_stale_temp_checkpoint_of_a_killed_prune_job_is_not_read_as_a_result(tmp_path):
    from taskprune.report.results import _load_manifests, _manifest_files

    level_dir = tmp_path / "pruned" / MODEL / "selective" / "10"
    done = level_dir / "0"
    stale = level_dir / ".0.k3x9q1.tmpdir"  # what atomic_dir leaves when its process is SIGKILLed
    for d in (done, stale):
        d.mkdir(parents=True)
        pl.DataFrame({"layer": [0, 1], "neuron": [3, 5]}).write_parquet(d / "manifest.parquet")
    files = _manifest_files(str(tmp_path / "pruned"), [])
    assert files == [done / "manifest.parquet"], files
    manifests, _ = _load_manifests(files)
    assert manifests is not None and manifests["seed"].unique().to_list() == [0]


def test_stale_temp_files_are_not_read_as_variant_metrics(tmp_path, capsys):
    """``taskprune metrics --eval-dir`` collects exactly the files named metrics.parquet, never a temp file."""
    from taskprune.cli import main
    from taskprune.metrics import METRICS_COLUMNS, metrics_frame

    row = {c: 0.0 for c, t in METRICS_COLUMNS.items() if t == "Float64"}
    row |= {c: 1 for c, t in METRICS_COLUMNS.items() if t == "Int64"}
    row |= {c: "x" for c, t in METRICS_COLUMNS.items() if t == "String"}
    variant = tmp_path / "eval" / MODEL / "base"
    variant.mkdir(parents=True)
    metrics_frame([row]).write_parquet(variant / "metrics.parquet")
    # the variant's per-item table of its one task "x" (a distractor-kind task: retention per item)
    pl.DataFrame({"id": ["a"], "token_f1": [1.0]}).write_parquet(variant / "x.parquet")
    (variant / ".metrics.parquet.a1b2c3.tmp.parquet").write_bytes(b"PAR1 half-written")
    out = tmp_path / "metrics.parquet"
    rc = main(["metrics", "--eval-dir", str(tmp_path / "eval"), "--out", str(out),
               "--items", str(tmp_path / "items.parquet")])
    assert rc == 0, capsys.readouterr().err
    assert read_parquet_metadata(out)["inputs"] == [str(variant / "metrics.parquet")]


def test_atomic_outputs_get_the_permissions_of_an_ordinary_write(tmp_path):
    """An atomically written file or directory ends up with the same mode as a plain open()/mkdir()."""
    from taskprune.io import atomic_dir, write_json

    old = os.umask(0o022)
    try:
        (tmp_path / "plain.json").write_text("{}")
        (tmp_path / "plain-dir").mkdir()
        write_json({}, tmp_path / "atomic.json")
        with atomic_dir(tmp_path / "atomic-dir") as tmp:
            (tmp / "config.json").write_text("{}")
    finally:
        os.umask(old)
    mode = lambda p: oct((tmp_path / p).stat().st_mode & 0o777)  # noqa: E731
    assert (mode("atomic.json"), mode("atomic-dir")) == (mode("plain.json"), mode("plain-dir"))
