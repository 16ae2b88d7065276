"""Atomic, validated reading and writing of the pipeline's files.

Every output is written to a temporary name in the destination's directory and renamed into place, so an
interrupted job never leaves a complete-looking partial file behind (``os.replace`` is atomic on POSIX
within one file system). Readers check that a file exists, parses, and has the columns the data contract
requires, and raise a one-line :class:`~taskprune.errors.DataError` otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from taskprune.errors import DataError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what a plain open() would
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; on success rename it to ``path``, else delete it."""
    final = Path(path)
    tmp = _tmp_sibling(final, final.suffix)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success it replaces ``path`` as a whole."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmpdir", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give what a plain mkdir() would
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_parquet(df: Any, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> None:
    """Write a polars or pandas DataFrame (or a pyarrow Table) atomically, with optional JSON metadata.

    Metadata (e.g. seeds, source hashes) is stored in the Parquet schema under the key ``taskprune``.
    Files are written deterministically (no timestamps), so identical data gives identical bytes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(df, pa.Table):
        table = df
    elif hasattr(df, "to_arrow"):
        table = df.to_arrow()
    else:
        table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata is not None:
        existing = dict(table.schema.metadata or {})
        existing[b"taskprune"] = json.dumps(metadata, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(existing)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_parquet(path: str | os.PathLike[str], required: Iterable[str] = (), *, what: str = "file") -> Any:
    """Read a Parquet file into a polars DataFrame, checking existence, integrity and required columns."""
    import polars as pl

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {what} not found (expected a Parquet file)")
    try:
        df = pl.read_parquet(p)
    except Exception as exc:  # pyarrow/polars raise many types for corrupt files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{p}: not a readable Parquet file ({first}); delete it and rerun its job") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{p}: {what} is missing column(s) {', '.join(missing)} (has: {', '.join(df.columns)})"
        )
    return df


def read_parquet_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the ``taskprune`` JSON metadata stored by :func:`write_parquet` (empty if none)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"taskprune")
    return json.loads(raw) if raw else {}


def write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write JSON atomically, pretty-printed with sorted keys."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(text: str, path: str | os.PathLike[str]) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | os.PathLike[str], *, what: str = "file") -> Any:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {what} not found (expected a JSON file)")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(path: str | os.PathLike[str]) -> str:
    """Hash of a directory's files (relative names and contents), independent of file-system order."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()
