"""Process isolation: the project's one fork server and its protocol.

A fork server is a clean interpreter that has imported the heavy libraries (torch, transformers, ...) and
nothing else, and forks one fresh child per request, so a child neither pays the interpreter start and
imports (~4-8 CPU-s on 2 cores) nor inherits any state of an earlier request (the server never loads a model
or runs a tensor op, so no model, compilation cache, allocator state or OpenMP pool exists at fork time). It
has two users:

- the benchmarks (:class:`ForkServer`, started per measurement job): every measurement of
  :mod:`taskprune.perf.measure` and every trial of :mod:`taskprune.perf.paired` runs in a child of its own;
- the Snakemake warm worker (:mod:`taskprune.worker`): every ``taskprune <stage>`` job that may be forked.

**Protocol** (one request per connection, over a Unix socket): the client sends a 4-byte big-endian length
and a JSON object ``{"entry", "argv", "cwd", "env", "timeout_s", "reset_peak_rss"}`` with its stdin,
stdout and stderr file descriptors attached (``SCM_RIGHTS``); the child becomes that process (its own
process group, the descriptors, working directory and environment), optionally resets its peak-RSS counter
(``/proc/self/clear_refs``) and arms an alarm, and calls ``ENTRIES[entry](argv)``. When the child is done,
the server answers with a 4-byte signed status, :func:`os.waitstatus_to_exitcode` (negative: killed by that
signal); each client maps it to its own exit code. A client whose connection closes early (it was killed)
gets its child's whole process group killed.

The server is single-threaded (a select loop woken by ``SIGCHLD``), so ``fork`` never copies a lock held by
another thread; it exits when the process given as its parent is gone, or after an idle limit.

Imports nothing from ``taskprune`` at module level; entries are named in :data:`ENTRIES` and imported in
the child, so the CLI and this module do not import each other. May be imported by anything.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# What a child may run: name -> "module:function" taking argv (a list of strings) and returning an exit code.
ENTRIES: dict[str, str] = {
    "cli": "taskprune.cli:forked_main",  # one ``taskprune <stage>`` command (the Snakemake warm worker)
    "measure": "taskprune.perf.measure:worker_main",  # one benchmark measurement: SPEC.json OUT.json
    "trial": "taskprune.perf.paired:trial_entry",  # one trial of a shape family: SPEC.json OUT.json
}
WORKER_TIMEOUT_S = 3600  # a measurement's limit; generous: torch.compile on a loaded CPU takes minutes
TIMEOUT_EXIT = 124  # a measurement's exit code when it ran over its timeout


# ------------------------------------------------------------------------------------------ protocol


def send_msg(sock: socket.socket, payload: bytes, fds: list[int] | None = None) -> None:
    """A length-prefixed message, with file descriptors attached if given."""
    data = struct.pack("!I", len(payload)) + payload
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("worker closed the connection")
        buf += chunk
    return buf


def request(
    socket_path: str,
    entry: str,
    argv: list[str],
    fds: list[int],
    *,
    env: dict[str, str],
    cwd: str | None = None,
    timeout_s: int | None = None,
    reset_peak_rss: bool = False,
) -> int:
    """Run ``ENTRIES[entry](argv)`` in a forked child of the server at ``socket_path``, with ``fds`` as its
    stdin, stdout and stderr; the child's :func:`os.waitstatus_to_exitcode`. Raises ``OSError`` or
    ``ConnectionError`` when the server cannot be reached or goes away before answering."""
    payload = {"entry": entry, "argv": argv, "cwd": cwd or os.getcwd(), "env": env, "timeout_s": timeout_s,
               "reset_peak_rss": reset_peak_rss}  # fmt: skip
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
        send_msg(sock, json.dumps(payload).encode(), fds)
        (status,) = struct.unpack("!i", recv_exact(sock, 4))
    finally:
        sock.close()
    return status


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    conn.settimeout(10)
    header, fds, _, _ = socket.recv_fds(conn, 4, 3)
    if len(header) < 4:
        header += recv_exact(conn, 4 - len(header))
    (length,) = struct.unpack("!I", header)
    body = recv_exact(conn, length)
    conn.settimeout(None)
    if len(fds) != 3:
        raise ValueError("expected stdin, stdout and stderr descriptors")
    req = json.loads(body)
    if req.get("entry") not in ENTRIES:
        raise ValueError(f"unknown entry {req.get('entry')!r}")
    return req, list(fds)


# ------------------------------------------------------------------------------------------ server


def _child(conn: socket.socket, listener: socket.socket, wakeup: tuple[int, int], req: dict, fds: list[int]) -> None:
    """In the forked child: become the requesting process and run the entry."""
    rc: Any = 1
    try:
        os.setsid()  # own process group: the server can kill the job and its subprocesses together
        signal.set_wakeup_fd(-1)
        for fd in wakeup:
            os.close(fd)
        listener.close()
        conn.close()
        for target, fd in zip((0, 1, 2), fds, strict=False):
            os.dup2(fd, target)
            os.close(fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.stdin = os.fdopen(0, "r", closefd=False)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit():  # the server never ran a torch op: the child sizes its own pool
            import torch

            torch.set_num_threads(int(threads))
        if req.get("timeout_s"):
            signal.alarm(int(req["timeout_s"]))
        if req.get("reset_peak_rss"):
            with contextlib.suppress(OSError):  # Linux >= 4.0: reset the peak RSS to the current RSS
                Path("/proc/self/clear_refs").write_text("5")
        module, function = ENTRIES[req["entry"]].split(":")
        try:
            rc = getattr(importlib.import_module(module), function)(list(req["argv"]))
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - report anything, the client turns it into one line
            import traceback

            traceback.print_exc()
            rc = 1
    except BaseException:  # pragma: no cover - last resort, never return into the server loop
        rc = 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(int(rc) & 0xFF)


def preload(modules: list[str]) -> None:
    """Import ``modules`` (``module`` or ``module:attribute``, e.g. a lazily imported class), ignoring failures."""
    for name in modules:
        module, _, attr = name.partition(":")
        with contextlib.suppress(Exception):
            imported = importlib.import_module(module)
            if attr:
                getattr(imported, attr)


def serve(socket_path: str, parent_pid: int | None, preload_modules: list[str], idle_exit_s: float = 6 * 3600) -> None:
    """Import ``preload_modules``, then accept requests until the parent process is gone (or the idle limit
    passes)."""
    preload(preload_modules)
    path = Path(socket_path)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path.with_name(path.name + f".{os.getpid()}")
    listener.bind(str(tmp))
    listener.listen(64)
    os.replace(tmp, path)  # clients see the socket only once it accepts connections
    wake_r, wake_w = os.pipe()  # a finished child wakes the select loop (SIGCHLD -> a byte here)
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    running: dict[int, socket.socket] = {}  # child pid -> client connection
    by_conn: dict[socket.socket, int] = {}
    last_activity = time.monotonic()
    try:
        while True:
            if parent_pid is not None and not _alive(parent_pid):
                break
            if not running and time.monotonic() - last_activity > idle_exit_s:
                break
            readable, _, _ = select.select([listener, wake_r, *by_conn], [], [], 1.0)
            for r in readable:
                if r == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                elif r is listener:
                    conn, _ = listener.accept()
                    try:
                        req, fds = _read_request(conn)
                    except (OSError, ValueError, ConnectionError):
                        conn.close()
                        continue
                    pid = os.fork()
                    if pid == 0:
                        _child(conn, listener, (wake_r, wake_w), req, fds)
                    for fd in fds:
                        os.close(fd)
                    running[pid] = conn
                    by_conn[conn] = pid
                    last_activity = time.monotonic()
                else:
                    # A client connection is readable only when it closed: the client was killed.
                    pid = by_conn.get(r)
                    if pid is not None and not r.recv(1):
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(pid, signal.SIGKILL)
            for pid in list(running):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    conn = running.pop(pid)
                    by_conn.pop(conn, None)
                    with contextlib.suppress(OSError):
                        conn.sendall(struct.pack("!i", os.waitstatus_to_exitcode(status)))
                    conn.close()
                    last_activity = time.monotonic()
    finally:
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            if path.exists() and path.is_socket():
                path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def server_command(socket_path: str, parent_pid: int, preload_modules: list[str] | tuple[str, ...]) -> list[str]:
    """The command line of a fork server (``python -m taskprune.perf.isolation serve ...``)."""
    return [sys.executable, "-m", "taskprune.perf.isolation", "serve", "--socket", socket_path,
            "--parent", str(parent_pid), "--preload", ",".join(preload_modules)]  # fmt: skip


# ------------------------------------------------------------------------------------ measurements


# The imports a measurement child inherits: the libraries, nothing that would hold state.
MEASURE_PRELOAD = ("torch", "transformers", "transformers:AutoModelForCausalLM", "taskprune.model.loading")


def worker_env(threads: int | None) -> dict[str, str]:
    """The environment of a measurement process: ours, with the thread count pinned when one is set."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


class ForkServer:
    """A fork server for one benchmark job's measurements (started here, gone at :meth:`close`).

    Every measurement still runs in a process of its own, which no earlier measurement has touched, but
    without paying the interpreter start and library imports (~4 s on 2 cores) twelve times per variant.
    Children reset their peak-RSS counter right after the fork (``clear_refs``), so the memory measurement
    counts only what the child itself adds, in the model process and the baseline alike.
    """

    def __init__(self, threads: int | None) -> None:
        self.env = worker_env(threads)
        self._dir = tempfile.mkdtemp(prefix="taskprune-fork-")
        self.socket_path = os.path.join(self._dir, "server.sock")
        self.proc = subprocess.Popen(
            server_command(self.socket_path, os.getpid(), MEASURE_PRELOAD), env=self.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def _wait_ready(self) -> None:
        from taskprune.errors import ModelError

        while not Path(self.socket_path).exists():
            if self.proc.poll() is not None:
                raise ModelError(f"bench worker server died (exit {self.proc.poll()})")
            time.sleep(0.05)

    def run(self, spec_path: Path, out_path: Path, err_path: Path, entry: str = "measure") -> int:
        """Run one measurement in a forked child; its exit code (124 when it ran over the timeout)."""
        from taskprune.errors import ModelError

        self._wait_ready()
        with open(os.devnull, "rb") as stdin, open(err_path, "wb") as err:
            try:
                code = request(self.socket_path, entry, [str(spec_path), str(out_path)],
                               [stdin.fileno(), err.fileno(), err.fileno()], env=self.env,
                               timeout_s=WORKER_TIMEOUT_S, reset_peak_rss=True)  # fmt: skip
            except (OSError, ConnectionError):
                raise ModelError(f"bench worker server died (exit {self.proc.poll()})") from None
        return TIMEOUT_EXIT if code == -signal.SIGALRM else code

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


def run_isolated(
    spec: dict[str, Any], workdir: Path, label: str, server: ForkServer | None = None, entry: str = "measure"
) -> dict[str, Any]:
    """Run ``ENTRIES[entry]`` on ``spec`` in a fresh process (a child of ``server``, else a new interpreter);
    its result."""
    import logging

    from taskprune.errors import ModelError

    spec_path = workdir / f"{label}.spec.json"
    out_path = workdir / f"{label}.out.json"
    err_path = workdir / f"{label}.err"
    spec_path.write_text(json.dumps(spec))
    if server is not None:
        returncode = server.run(spec_path, out_path, err_path, entry)
        stderr = err_path.read_text(errors="replace") if err_path.is_file() else ""
    else:
        cmd = [sys.executable, "-m", "taskprune.perf.isolation", "run", entry, str(spec_path), str(out_path)]
        logging.getLogger(__name__).debug("bench worker %s: %s", label, " ".join(cmd))
        try:
            proc = subprocess.run(
                cmd, env=worker_env(spec.get("threads")), capture_output=True, text=True, timeout=WORKER_TIMEOUT_S
            )
            returncode, stderr = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired:
            returncode, stderr = TIMEOUT_EXIT, ""
    if returncode == TIMEOUT_EXIT:
        raise ModelError(f"bench worker '{label}' for {spec['checkpoint']} ran over {WORKER_TIMEOUT_S} s")
    if returncode != 0 or not out_path.is_file():
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        raise ModelError(
            f"bench worker '{label}' for {spec['checkpoint']} failed (exit {returncode}): "
            f"{lines[-1] if lines else 'no error output'}"
        )
    return json.loads(out_path.read_text())


def run_spec(argv: list[str] | tuple[str, ...], measure: Any, usage: str) -> int:
    """The body of a measurement entry (``argv`` = ``SPEC.json OUT.json``): ``measure(spec)`` in this fresh
    process with the spec's thread count, its result (plus this process's pid) written to ``OUT.json``."""
    if len(argv) != 2:
        print(f"usage: {usage} SPEC.json OUT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    result = measure(spec)
    result["pid"] = os.getpid()
    Path(argv[1]).write_text(json.dumps(result))
    return 0


# ------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskprune.perf.isolation", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run a fork server in the foreground")
    s.add_argument("--socket", required=True)
    s.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
    s.add_argument("--preload", default="", help="comma-separated modules to import before serving")
    r = sub.add_parser("run", help="run one entry in this fresh interpreter (no server)")
    r.add_argument("entry", choices=sorted(ENTRIES))
    r.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args.socket, args.parent, [m for m in args.preload.split(",") if m])
        return 0
    module, function = ENTRIES[args.entry].split(":")
    return int(getattr(importlib.import_module(module), function)(list(args.args)))


if __name__ == "__main__":
    sys.exit(main())
