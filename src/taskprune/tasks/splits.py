"""Synthetic suites and their skeleton-disjoint splits (the data stage's generator side).

A kind's generator (``TaskKind.make``) feeds one endless stream of unique prompts (``synthetic_stream``);
``synthetic_splits`` routes it by each item's skeleton bucket (``skeleton_bucket``: a seeded hash) so no
eval or validation skeleton is ever trained on or calibrated on. ``stats_mask`` is calibration's seeded
statistics / rest split; ``read_split`` reads a prepared split back, checking the contract's columns.
Imported by the data, train and evaluation-side stages; imports ``config`` (so never from ``tasks/__init__``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from taskprune.config import DataConfig
from taskprune.errors import ConfigError, DataError
from taskprune.tasks import COMMON_COLUMNS, SKELETON_COLUMN, TASK_KINDS, format_row


def synthetic_stream(kind: str, seed: str, words: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """An endless deterministic stream of formatted rows with pairwise distinct prompts."""
    make = TASK_KINDS[kind].make
    rng = random.Random(seed)  # str seeds are hashed with SHA-512: stable across processes and platforms
    seen: set[str] = set()
    misses = 0
    while True:
        fields = make(rng, words)
        row = format_row(kind, fields, synthetic=True)
        if row["prompt"] in seen:
            misses += 1
            if misses > 100_000:
                raise DataError(f"synthetic {kind} suite cannot produce more distinct prompts ({len(seen)} made)")
            continue
        seen.add(row["prompt"])
        yield row


def size_for(sizes: dict[str, int], task: str, kind: str, key: str) -> int:
    if task in sizes:
        return sizes[task]
    if kind in sizes:
        return sizes[kind]
    raise ConfigError(f"data.{key}: no size for task '{task}' (or its kind '{kind}'); has {', '.join(sizes)}")


def split_sizes(task: str, kind: str, data: DataConfig) -> dict[str, int]:
    return {
        "eval": size_for(data.eval_size, task, kind, "eval_size"),
        "validation": size_for(data.validation_size, task, kind, "validation_size"),
        "calibration": data.calibration_size,
        "train": size_for(data.train_size, task, kind, "train_size"),
    }


def skeleton_bucket(skeleton: str, task: str, data: DataConfig) -> str:
    """Which split family a skeleton belongs to: ``eval``, ``validation`` or ``train`` (train + calibration).

    A seeded hash of the skeleton, uniform in [0, 1): below ``eval_skeleton_share`` -> eval, below that plus
    ``validation_skeleton_share`` -> validation, otherwise train. The assignment depends only on the
    skeleton, so every item with that skeleton lands in the same bucket whatever the split sizes are.
    """
    import hashlib

    digest = hashlib.sha256(f"{data.seed}:{task}:{skeleton}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < data.eval_skeleton_share:
        return "eval"
    if u < data.eval_skeleton_share + data.validation_skeleton_share:
        return "validation"
    return "train"


def synthetic_splits(task: str, kind: str, data: DataConfig, words: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The four splits, skeleton-disjoint: no eval or validation skeleton is in train or calibration.

    One stream of unique prompts is routed by each item's skeleton bucket (``skeleton_bucket``): eval and
    validation take the first items of their buckets; the train bucket fills calibration first, then train.
    Skeletons that are an operation without parameters (``holdable`` false: a held-out one would be
    unseen vocabulary rather than an unseen combination) always go to the train bucket. So changing the
    train size never changes eval, validation or calibration.
    """
    sizes = split_sizes(task, kind, data)
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in ("eval", "validation", "calibration", "train")}
    n_groups = TASK_KINDS[kind].n_groups
    # held-out splits take at most twice a template's / family's fair share, so a family whose few
    # held-out skeletons are frequent cannot dominate them
    quota = {s: -(-2 * sizes[s] // n_groups) if n_groups else sizes[s] for s in ("eval", "validation")}
    per_group: dict[tuple[str, str], int] = {}
    stream = synthetic_stream(kind, f"{data.seed}:{task}", words)
    misses = 0
    while any(len(out[s]) < sizes[s] for s in out):
        row = next(stream)
        holdable = bool(row.pop("holdable", True))
        bucket = skeleton_bucket(row[SKELETON_COLUMN], task, data) if holdable else "train"
        if bucket == "train":
            bucket = "calibration" if len(out["calibration"]) < sizes["calibration"] else "train"
        group = (bucket, str(row.get("template") or row.get("family") or ""))
        if len(out[bucket]) < sizes[bucket] and per_group.get(group, 0) < quota.get(bucket, sizes[bucket]):
            out[bucket].append(row)
            per_group[group] = per_group.get(group, 0) + 1
            misses = 0
        else:
            misses += 1
            if misses > 200_000:
                short = {s: f"{len(out[s])}/{sizes[s]}" for s in out if len(out[s]) < sizes[s]}
                raise DataError(f"synthetic {kind} suite of task '{task}' cannot fill {short} with distinct prompts")
    return out



def stats_mask(n: int, fraction: float, seed: int) -> list[bool]:
    """The seeded ``fraction`` / rest split of ``n`` calibration prompts: True = feeds the statistics."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    chosen = set(order[: max(1, round(fraction * n))])
    return [i in chosen for i in range(n)]



def read_split(path: str | Path, kind: str | None = None) -> Any:
    """Read a prepared split, checking the contract's columns (and the kind's fields when given)."""
    from taskprune.io import read_parquet

    required = list(COMMON_COLUMNS) + (list(TASK_KINDS[kind].fields) if kind else [])
    df = read_parquet(path, required, what="task split")
    if df.height == 0:
        raise DataError(f"{path}: task split is empty (0 rows)")
    return df
