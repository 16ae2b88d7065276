"""A warm fork server, so hundreds of small Snakemake jobs do not each pay for importing torch.

Measured on the smoke models (2 cores, shared): an evaluation job costs 5.8-7.9 CPU-s in a fresh process and
0.34-0.48 CPU-s forked from this server (the difference is importing torch/transformers); a pruning job
0.52-0.74 vs 0.10-0.13 CPU-s. The embedded default has 158 evaluation and 140 pruning jobs: ~18 CPU-minutes,
~9 minutes of its 2-core wall time, which the server saves. For local runs the
Snakefile starts this server once (``onstart``): it imports the heavy libraries, then forks one child per
``taskprune <stage>`` command. A job's ``taskprune`` process is a thin client: it hands the server its
argv, working directory, environment and its stdin/stdout/stderr file descriptors (so ``> {log} 2>&1``
works unchanged), waits, and exits with the child's status.

Guarantees:
- Falls back to running in-process whenever the server is absent or unreachable (clusters, plain CLI use,
  ``TASKPRUNE_WORKER=0``), so results never depend on it.
- The server is :mod:`taskprune.perf.isolation`'s fork server (the benchmarks' too), single-threaded (a
  select loop), so ``fork`` never copies a lock held by another thread. It never runs a torch op itself, so
  no OpenMP pool exists at fork time; each child sets its own thread count from ``OMP_NUM_THREADS``
  (``taskprune.cli.forked_main``).
- If a client dies (Snakemake killed or cancelled the job), the server kills the child's whole process
  group; the server exits when the Snakemake process that started it is gone.
- Jobs of rules with a ``benchmark:`` file never go through the server (``NEVER_FORKED``): Snakemake
  measures a job's own process tree, which a forked child is not part of, so their files would show only
  the small client. ``tests/test_worker.py`` checks that every benchmarked rule's stage is listed. Every
  stage logs its own CPU time and peak memory at the end (``taskprune.cli``), forked or not.
- Never used on a cluster executor or with ``--sdm conda``/apptainer (the Snakefile does not start it, and
  a client refuses a server of another interpreter or inside a cluster/container job: ``same_environment``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from taskprune.perf import isolation

ENV_SOCKET = "TASKPRUNE_WORKER_SOCKET"
# The interpreter the server runs in: a job whose own interpreter differs (a conda env of --sdm conda, a
# container) must run there, never in the server's.
ENV_PYTHON = "TASKPRUNE_WORKER_PYTHON"
ENV_FORKED = "TASKPRUNE_FORKED"  # set in a forked child
# Set in jobs of cluster schedulers and containers: such a job never uses a local server, even if the
# variables above leaked into its environment.
FOREIGN_JOB_ENV = ("SLURM_JOB_ID", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER", "PBS_JOBID", "LSB_JOBID")
# Stages whose numbers describe a process must run in a fresh process: the benchmarks, and every stage whose
# rule has a `benchmark:` file (Snakemake measures the job's own process tree only).
NEVER_FORKED = {"bench", "bench-stats", "bench-generation", "data", "train", "stats", "recover", "harness"}
PRELOAD = (
    "torch",
    "transformers",
    "safetensors.torch",
    "polars",
    "pyarrow.parquet",
    "numpy",
    "tqdm",
    "peft",
    "taskprune.cli",
    "taskprune.config",
    "taskprune.model.loading",
)


# ------------------------------------------------------------------------------------------ client


def try_run_via_worker(argv: list[str]) -> int | None:
    """Run ``taskprune argv`` in a forked child of the warm server; ``None`` if no server is usable."""
    path = os.environ.get(ENV_SOCKET)
    if not path or os.environ.get("TASKPRUNE_WORKER") == "0" or not argv or argv[0] in NEVER_FORKED:
        return None
    if not same_environment():
        return None
    if not Path(path).exists():
        return None
    env = {k: v for k, v in os.environ.items() if k != ENV_SOCKET}
    env[ENV_FORKED] = "1"  # the usage line notes that its peak RSS includes pages shared with the server
    try:
        status = isolation.request(path, "cli", argv, [0, 1, 2], env=env)
    except (ConnectionError, OSError):
        return None
    return 128 - status if status < 0 else status  # killed by a signal -> 128 + signum


def same_environment() -> bool:
    """Whether this process may hand its job to the server: same interpreter, not a cluster/container job."""
    if any(os.environ.get(name) for name in FOREIGN_JOB_ENV):
        return False
    server_python = os.environ.get(ENV_PYTHON)
    if not server_python:
        return False
    return os.path.realpath(server_python) == os.path.realpath(sys.executable)


# ------------------------------------------------------------------------------------------ server


def serve(socket_path: str, parent_pid: int | None, idle_exit_s: float = 6 * 3600) -> None:
    """The warm worker in the foreground: :func:`taskprune.perf.isolation.serve` with :data:`PRELOAD`."""
    isolation.serve(socket_path, parent_pid, list(PRELOAD), idle_exit_s=idle_exit_s)


def start_daemon(socket_path: str, parent_pid: int, log_path: str | None = None, wait_s: float = 60) -> bool:
    """Start the server in the background (detached) and wait until its socket accepts connections."""
    import subprocess

    Path(socket_path).parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        Path(socket_path).unlink()
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    subprocess.Popen(
        [sys.executable, "-m", "taskprune.worker", "serve", "--socket", socket_path, "--parent", str(parent_pid)],
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=out,
        start_new_session=True,
        close_fds=True,
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if Path(socket_path).exists():
            return True
        time.sleep(0.1)
    return False


def stop(socket_path: str) -> None:
    """Remove the socket; the server exits when its parent does (it also never outlives idleness)."""
    with contextlib.suppress(FileNotFoundError):
        Path(socket_path).unlink()


def start_for_snakemake(parent_pid: int, log_path: str | None = None) -> bool:
    """The Snakefile's ``onstart``: start a server for this Snakemake process and export its address."""
    import tempfile

    socket_path = os.path.join(tempfile.gettempdir(), f"taskprune-worker-{parent_pid}.sock")
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    if not start_daemon(socket_path, parent_pid, log_path=log_path):
        return False
    os.environ[ENV_SOCKET] = socket_path
    os.environ[ENV_PYTHON] = sys.executable
    return True


def stop_for_snakemake() -> None:
    """The Snakefile's ``onsuccess``/``onerror``: remove the socket (the server then exits with its parent)."""
    socket_path = os.environ.pop(ENV_SOCKET, None)
    os.environ.pop(ENV_PYTHON, None)
    if socket_path:
        stop(socket_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskprune.worker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the warm fork server in the foreground")
    s.add_argument("--socket", required=True)
    s.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args.socket, args.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "ENV_PYTHON",
    "ENV_SOCKET",
    "same_environment",
    "serve",
    "start_daemon",
    "start_for_snakemake",
    "stop",
    "stop_for_snakemake",
    "try_run_via_worker",
]
