"""Structured pruning: physically remove MLP neurons into a real, smaller checkpoint.

Why this module exists: the paper's claim is about *removing* task-irrelevant neurons, so a pruned variant
must be a genuinely smaller model whose parameters, memory and speed can be measured, not a mask.

Which neurons go (per decoder layer ``l`` with width ``d_ff_l``, level ``p`` percent):

- ``uniform`` allocation: ``k = round(p/100 * d_ff_l)`` (exact decimal arithmetic on the level string, half
  up), optionally rounded to the nearest multiple of ``pruning.multiple_of``. ``selective`` removes the k
  lowest scores, ``reverse`` the k highest, ``random`` k neurons drawn uniformly with
  ``numpy.random.default_rng([seed, l])`` (so a layer's draw does not depend on the other layers, and a
  lower level's set is a subset of a higher level's). Neurons are ranked by ``(score, neuron index)``
  ascending; ``selective`` takes that ranking from the front and ``reverse`` from the back, so ties break
  by neuron index and the two sets are disjoint whenever ``k <= d_ff / 2``.
- ``global`` allocation: ``K = round(p/100 * sum_l d_ff_l)`` neurons ranked across all layers by
  ``(score, layer, neuron)`` (``random``: one seeded permutation); each layer keeps at least
  ``max(1, ceil(min_width_fraction * d_ff_l))`` neurons, so every MLP stays alive.

How they go, per architecture (see :mod:`taskprune.model.arch`): rows of ``gate_proj``/``up_proj`` and columns of
``down_proj`` (gated); rows ``j`` and ``d_ff + j`` of the fused ``gate_up_proj`` (Phi-3); columns of
``c_fc.weight`` ``[d_model, d_ff]``, entries of ``c_fc.bias`` and rows of ``c_proj.weight`` ``[d_ff, d_model]``
(GPT-2 Conv1D); rows and bias entries of ``dense_h_to_4h`` and columns of ``dense_4h_to_h`` (GPT-NeoX).

The work is done on the safetensors files directly, shard by shard, without instantiating a model: the
command never imports transformers and imports torch only for dtypes numpy lacks (bfloat16), because
startup matters over ~150 jobs; it never holds more than one shard in memory (7B checkpoints), keeps every
tensor's dtype and every key's name (tied embeddings stay tied because the tied copy is simply not stored),
and rewrites ``config.json``'s MLP width. Uniform results load with stock
``AutoModelForCausalLM.from_pretrained``; per-layer widths (global allocation) are stored in the config as
``taskprune_layer_widths`` and loaded with :func:`taskprune.model.checkpoint.load_pruned`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskprune.errors import ConfigError, DataError
from taskprune.levels import Level
from taskprune.model.checkpoint import (
    LAYER_WIDTHS_KEY,
    CheckpointLayout,
    read_layout,
    resolve_checkpoint,
)
from taskprune.model.pruning import PruningPlan, plan_pruning, slice_tensor
from taskprune.score_methods import SCORE_METHODS

if TYPE_CHECKING:  # heavy imports stay out of `taskprune prune --help`
    import numpy as np

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("layer", "neuron", "score")
# safetensors dtypes that numpy holds natively; anything else (BF16, F8_*) is handled through torch
NUMPY_DTYPES = frozenset({"F64", "F32", "F16", "I64", "U64", "I32", "U32", "I16", "U16", "I8", "U8", "BOOL"})

# Files of the source directory that are *not* copied: weights (rewritten), the config (rewritten), and the
# source's own pipeline records, which would describe the unpruned model.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf")
_NOT_COPIED = {"config.json", "training.json", "manifest.parquet", "pruning.json"}


# ------------------------------------------------------------------------------------ input parsing


# ---------------------------------------------------------------------------------------- scores


def read_scores(path: str | Path, widths: list[int], checkpoint: str) -> list[np.ndarray]:
    """Per-layer score vectors (index = neuron) from a ``layer, neuron, score`` table, checked against the model.

    The table must cover exactly every (layer, neuron) of the checkpoint once, with finite scores.
    """
    import numpy as np
    import polars as pl

    from taskprune.io import read_parquet

    df = read_parquet(path, SCORE_COLUMNS, what="score table")
    for col in ("layer", "neuron"):
        if not df[col].dtype.is_integer():
            raise DataError(f"{path}: column '{col}' must be integers, got {df[col].dtype}")
    if not df["score"].dtype.is_numeric():
        raise DataError(f"{path}: column 'score' must be numeric, got {df['score'].dtype}")
    df = df.select(pl.col("layer").cast(pl.Int64), pl.col("neuron").cast(pl.Int64), pl.col("score").cast(pl.Float64))
    bad = df.filter(pl.col("score").is_null() | ~pl.col("score").is_finite()).height
    if bad:
        raise DataError(f"{path}: {bad} score(s) are NaN, infinite or missing (every neuron needs a finite score)")

    n_layers = len(widths)
    table_shape = df.group_by("layer").agg(pl.len().alias("n"), pl.col("neuron").n_unique().alias("u"),
                                           pl.col("neuron").min().alias("lo"), pl.col("neuron").max().alias("hi"))
    expected = {layer: w for layer, w in enumerate(widths)}
    got = {r["layer"]: r for r in table_shape.iter_rows(named=True)}
    ok = set(got) == set(expected) and all(
        r["n"] == expected[layer] and r["u"] == r["n"] and r["lo"] == 0 and r["hi"] == expected[layer] - 1
        for layer, r in got.items()
    )
    if not ok:
        if set(got) == set(expected) and df.height == sum(widths):
            problem = "duplicated or out-of-range (layer, neuron) pairs"
        else:
            per_layer = sorted({r["n"] for r in got.values()})
            problem = f"{df.height} rows over layers {_span(sorted(got))} with {_span(per_layer)} neurons per layer"
        raise DataError(
            f"{path}: score table has {problem}, but {checkpoint} has {n_layers} layers with MLP widths "
            f"{_span(sorted(set(widths)))} and needs each (layer, neuron) exactly once - a score table from another model?"
        )
    df = df.sort("layer", "neuron")
    scores = df["score"].to_numpy()
    bounds = np.cumsum([0, *widths])
    return [scores[bounds[i]:bounds[i + 1]].copy() for i in range(n_layers)]


def _span(values: list[int]) -> str:
    if not values:
        return "none"
    return str(values[0]) if len(values) == 1 else f"{values[0]}..{values[-1]}"


# ------------------------------------------------------------------------------------- selection


# ------------------------------------------------------------------------------- physical removal


def _framework(layout: CheckpointLayout) -> str:
    """numpy when every stored dtype has a numpy equivalent (no torch import: ~3 s less per job), else torch
    (bfloat16, float8)."""
    return "numpy" if set(layout.dtypes) <= NUMPY_DTYPES else "pt"


def write_pruned_weights(layout: CheckpointLayout, plan: PruningPlan, out_dir: Path,
                         framework: str | None = None) -> dict[str, int]:
    """Write the pruned safetensors shard by shard (same shard names and keys); return element counts.

    ``framework`` (``numpy`` or ``pt``) defaults to :func:`_framework`; both give identical files.
    """
    import numpy as np
    from safetensors import safe_open

    from taskprune.progress import progress_bar

    framework = framework or _framework(layout)
    if framework == "numpy":
        from safetensors.numpy import save_file
    else:
        from safetensors.torch import save_file
    keep = [
        np.setdiff1d(np.arange(w), rem, assume_unique=True).astype(np.int64)
        for w, rem in zip(plan.widths_before, plan.removed, strict=True)
    ]
    counts = {"parameters": 0, "mlp_parameters": 0, "bytes": 0}
    for shard in progress_bar(layout.shards, desc="pruning shards", unit="shard", enabled=len(layout.shards) > 1):
        tensors: dict[str, Any] = {}
        with safe_open(layout.root / shard, framework=framework) as fh:
            metadata = fh.metadata() or {"format": "pt"}
            for key in fh.keys():  # noqa: SIM118
                tensor = fh.get_tensor(key)
                if key in layout.mlp_keys:
                    layer, proj, param = layout.mlp_keys[key]
                    tensor = slice_tensor(tensor, layout.adapter, proj, param, keep[layer], plan.widths_before[layer])
                    counts["mlp_parameters"] += math.prod(tensor.shape)
                tensors[key] = tensor
                counts["parameters"] += math.prod(tensor.shape)
                counts["bytes"] += int(tensor.nbytes)
        save_file(tensors, str(out_dir / shard), metadata=metadata)
        del tensors
    if layout.index is not None:
        index = dict(layout.index)
        index["metadata"] = {**index.get("metadata", {}), "total_size": counts["bytes"]}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return counts


def pruned_config(layout: CheckpointLayout, plan: PruningPlan) -> dict[str, Any]:
    """config.json with the new MLP width (and per-layer widths when they differ or allocation is global)."""
    config = dict(layout.config)
    widths = plan.widths_after
    config[layout.adapter.width_key] = max(widths)
    if plan.allocation == "global" or len(set(widths)) > 1:
        config[LAYER_WIDTHS_KEY] = widths
    else:
        config.pop(LAYER_WIDTHS_KEY, None)
    return config


def copy_side_files(src: Path, dst: Path) -> list[str]:
    """Copy tokenizer files, generation_config.json and other non-weight files (following symlinks)."""
    copied = []
    for path in sorted(src.iterdir()):
        name = path.name
        if (not path.is_file() or name.startswith(".") or name in _NOT_COPIED or name.endswith(_WEIGHT_SUFFIXES)
                or name.endswith(".index.json")):
            continue
        shutil.copyfile(path, dst / name)
        copied.append(name)
    return copied


# ------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from taskprune.options import add_config_arguments

    parser.add_argument("--checkpoint", required=True, help="base model: checkpoint directory (or hub id)")
    parser.add_argument("--scores", help="score table layer, neuron, score (Parquet); not used by 'random'")
    parser.add_argument("--method", required=True,
                        help="random | selective | reverse | selective-<score> | reverse-<score>")
    parser.add_argument("--level", required=True, help="percent of MLP neurons to remove, as in the path (e.g. 15.71)")
    parser.add_argument("--seed", type=int, required=True, help="random: the variant's seed (> 0); otherwise 0")
    parser.add_argument("--output", required=True, help="output directory results/pruned/{model}/{method}/{level}/{seed}")
    parser.add_argument("--summary", help="optional copy of pruning.json outside the (possibly temporary) checkpoint")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from taskprune.config import PruningConfig, parse_method
    from taskprune.options import stage_options

    options = stage_options(args, {"pruning": PruningConfig}).pruning
    try:
        direction, score_method = parse_method(args.method)
    except ValueError as exc:
        raise ConfigError(f"--method: {exc}") from None
    try:
        level = Level.from_label(str(args.level))
    except ValueError as exc:
        raise ConfigError(f"--level: {exc}") from None
    if direction == "random" and args.seed <= 0:
        raise ConfigError(f"--seed: method 'random' needs a positive seed, got {args.seed}")
    if direction != "random" and args.seed != 0:
        raise ConfigError(f"--seed: method '{args.method}' is deterministic; its variants use seed 0, got {args.seed}")

    root = resolve_checkpoint(args.checkpoint)
    output = Path(args.output)
    if output.resolve() == root.resolve():
        raise ConfigError(f"--output {output} is the source checkpoint itself")
    layout = read_layout(root)

    scores = None
    score_sha256 = None
    if direction == "random":
        if args.scores:
            log.info("method 'random' ignores the score table %s", args.scores)
    else:
        if not args.scores:
            raise ConfigError(f"--scores: method '{args.method}' needs a score table ({score_method})")
        stem = Path(args.scores).stem
        if stem in SCORE_METHODS and stem != score_method:
            raise ConfigError(f"--scores: method '{args.method}' needs the '{score_method}' table, got {args.scores}")
        from taskprune.io import sha256_file

        scores = read_scores(args.scores, layout.widths, str(root))
        score_sha256 = sha256_file(args.scores)

    plan = plan_pruning(direction, level, layout.widths, options, scores, args.seed)
    record = write_pruned_checkpoint(
        layout, plan, output,
        record={
            "source_model": str(args.checkpoint),
            "method": args.method,
            "direction": direction,
            "score_method": score_method,
            "score_file": str(args.scores) if scores is not None else None,
            "score_sha256": score_sha256,
            "level": level.label,
            "level_pct": level.pct,
            "seed": int(args.seed),
            "allocation": options.allocation,
            "multiple_of": options.multiple_of,
            "min_width_fraction": options.min_width_fraction if options.allocation == "global" else None,
        },
    )
    if args.summary:
        from taskprune.io import write_json

        write_json(record, args.summary)
    log.info(
        "%s: removed %d of %d MLP neurons (k per layer %s); parameters %d -> %d",
        output, sum(plan.k_per_layer), sum(plan.widths_before), plan.k_per_layer,
        record["parameters_before"], record["parameters_after"],
    )
    return 0


def write_pruned_checkpoint(layout: CheckpointLayout, plan: PruningPlan, output: Path,
                            record: dict[str, Any], framework: str | None = None) -> dict[str, Any]:
    """Write weights, config, side files, manifest.parquet and pruning.json into ``output`` atomically."""
    import polars as pl

    from taskprune import __version__
    from taskprune.io import atomic_dir, write_json, write_parquet

    with atomic_dir(output) as tmp:
        counts = write_pruned_weights(layout, plan, tmp, framework)
        (tmp / "config.json").write_text(json.dumps(pruned_config(layout, plan), indent=2, sort_keys=True) + "\n")
        copied = copy_side_files(layout.root, tmp)
        manifest = pl.DataFrame(
            {
                "layer": [layer for layer, r in enumerate(plan.removed) for _ in range(r.size)],
                "neuron": [int(j) for r in plan.removed for j in r],
            },
            schema={"layer": pl.Int64, "neuron": pl.Int64},
        )
        write_parquet(manifest, tmp / "manifest.parquet")
        record = {
            **record,
            "source_dir": str(layout.root),
            "model_type": layout.config.get("model_type"),
            "width_key": layout.adapter.width_key,
            "d_ff_before": plan.widths_before,
            "d_ff_after": plan.widths_after,
            "k_per_layer": plan.k_per_layer,
            "k_total": sum(plan.k_per_layer),
            "parameters_before": layout.parameters(),
            "parameters_after": counts["parameters"],
            "mlp_parameters_before": layout.mlp_parameters(),
            "mlp_parameters_after": counts["mlp_parameters"],
            "weight_bytes_after": counts["bytes"],
            "dtypes": layout.dtypes,
            "copied_files": copied,
            "taskprune_version": __version__,
        }
        write_json(record, tmp / "pruning.json")
    return record
