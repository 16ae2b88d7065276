"""Evaluate a checkpoint with EleutherAI's lm-evaluation-harness, so our numbers sit beside the literature's.

Why a stage of its own: pruning papers report lm-eval scores (GSM8K, ARC, HellaSwag, MMLU). Our own
evaluation (:mod:`taskprune.evaluate`) scores generations its way; this stage hands the same checkpoints
to ``lm_eval.simple_evaluate`` with lm-eval's HF model class (``lm_eval.models.huggingface.HFLM``) and
keeps lm-eval's prompts, filters and metrics unchanged.

- Uniform checkpoints (stock shapes) go to ``HFLM`` by path (``pretrained=<dir>``). Global-allocation
  checkpoints (per-layer MLP widths, which ``from_pretrained`` cannot build) are loaded with
  :func:`taskprune.model.checkpoint.load_pruned` and handed to ``HFLM`` as a model object.
- Local tasks: a task YAML shipped in ``resources/harness/`` (e.g. ``taskprune_math``, a copy of lm-eval's
  ``gsm8k.yaml`` over a local JSON Lines file) is bound to one of our tasks' eval split: the split is
  exported to JSONL (``id, question, answer``) and a generated wrapper YAML (``include:`` the shipped
  one, ``data_files`` filled in) is registered with ``lm_eval.tasks.TaskManager(include_path=...)``.
  This is how the embedded default runs the harness offline. Hub tasks (``gsm8k``, ``mmlu``...) need
  their datasets in the HF cache.
- Output: ``results/harness/{variant}.parquet`` in the row schema of ``results/metrics.parquet``
  (:mod:`taskprune.metrics`), ``task = "harness:<lm-eval task or group>"``, ``task_kind = "harness"``,
  ``metric`` = lm-eval's own key (``exact_match,strict-match``, ``acc,none``, ``acc_norm,none``), with
  95% intervals from the per-item scores (Wilson for 0/1 scores, percentile bootstrap otherwise; groups:
  lm-eval's stderr x 1.96). The lm-eval version, task versions and settings are in the Parquet metadata.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taskprune.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: Where the shipped local task YAMLs live (relative to the workflow root).
LOCAL_TASK_DIR = Path("resources/harness")
#: The task kind written into the metrics rows of harness results.
HARNESS_KIND = "harness"


def lm_eval_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("lm_eval")


# ----------------------------------------------------------------------------------------- local tasks


def export_gsm8k_jsonl(eval_parquet: str | Path, out_path: Path) -> int:
    """Write a math eval split as GSM8K-format JSON Lines (``id, question, answer``); returns the row count."""
    from taskprune.io import read_parquet

    df = read_parquet(eval_parquet, ("id", "question", "answer"), what="math eval split for the harness")
    if df.height == 0:
        raise DataError(f"{eval_parquet}: math eval split has no rows")
    with out_path.open("w", encoding="utf-8") as fh:
        for row in df.select("id", "question", "answer").iter_rows(named=True):
            fh.write(json.dumps({"id": str(row["id"]), "question": row["question"], "answer": row["answer"]}) + "\n")
    return df.height


def write_local_tasks(local: dict[str, Path], task_dir: Path, work_dir: Path) -> Path:
    """Bind each shipped local task YAML to its data: export the data to JSONL and write a wrapper YAML
    (``include:`` the shipped file, ``data_files`` filled in) into ``work_dir``; returns ``work_dir``."""
    import yaml

    for name, eval_parquet in local.items():
        shipped = (task_dir / f"{name}.yaml").resolve()
        if not shipped.is_file():
            known = ", ".join(sorted(p.stem for p in task_dir.glob("*.yaml"))) or "none"
            raise ConfigError(f"harness: local task '{name}' has no YAML {shipped} (shipped: {known})")
        data = (work_dir / f"{name}.jsonl").resolve()
        n = export_gsm8k_jsonl(eval_parquet, data)
        # the datasets cache of the JSON file stays in work_dir: nothing is left in ~/.cache by a local task
        wrapper = {"task": name, "include": str(shipped),
                   "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(work_dir / "hf-cache")}}
        (work_dir / f"{name}.yaml").write_text(yaml.safe_dump(wrapper, sort_keys=False))
        logger.info("local task %s: %d items from %s", name, n, eval_parquet)
    return work_dir


# ----------------------------------------------------------------------------------------------- model


def build_lm(model_path: str, device: str, batch_size: int, max_length: int | None = None) -> tuple[Any, str]:
    """An ``HFLM`` for a checkpoint: by path for stock shapes, as a model object (loaded with
    :func:`taskprune.model.checkpoint.load_pruned`) for per-layer MLP widths. Returns (lm, how it was loaded)."""
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoConfig

    from taskprune.model.checkpoint import LAYER_WIDTHS_KEY, check_checkpoint_dir, load_pruned
    from taskprune.model.loading import load_tokenizer, resolve_device

    local = check_checkpoint_dir(model_path)
    torch_device, dtype = resolve_device(device)
    per_layer = local is not None and bool(getattr(AutoConfig.from_pretrained(str(local)), LAYER_WIDTHS_KEY, None))
    if per_layer:
        model = load_pruned(model_path, dtype=dtype).to(torch_device).eval()
        tokenizer = load_tokenizer(model_path)
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length), "load_pruned"
    lm = HFLM(pretrained=str(model_path), device=str(torch_device), dtype=dtype, batch_size=batch_size,
              max_length=max_length)
    return lm, "path"


# --------------------------------------------------------------------------------------------- results


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def _n_items(results: dict[str, Any], task: str) -> int:
    """Items behind a result entry: a task's effective sample count, a group's summed over its subtasks."""
    counts = (results.get("n-samples") or {}).get(task)
    if counts:
        return int(counts.get("effective", 0))
    return sum(_n_items(results, t) for t in (results.get("group_subtasks") or {}).get(task, []))


def harness_metric_rows(results: dict[str, Any], tasks: Sequence[str] | None = None) -> list[tuple[str, str, float, int, float, float]]:
    """(task, metric, value, n, ci_low, ci_high) per lm-eval result entry (tasks and groups; only those
    named in ``tasks`` when given, so a group such as ``mmlu`` gives its aggregate, not 57 subtasks).

    ``metric`` is lm-eval's key (``exact_match,strict-match``); the interval comes from the per-item
    scores in ``results["samples"]`` (Wilson when every score is 0/1, else percentile bootstrap), and for
    groups (no samples of their own) from lm-eval's stderr.
    """
    from taskprune.evaluate import mean_row, proportion_row
    from taskprune.report.estimates import Z95

    samples = results.get("samples") or {}
    rows = []
    for task, entry in results["results"].items():
        if tasks is not None and task not in tasks:
            continue
        for key, value in entry.items():
            if "," not in key or "_stderr," in key or not _is_number(value):
                continue
            metric, filter_name = key.split(",", 1)
            per_item = [float(s[metric]) for s in samples.get(task, [])
                        if s.get("filter") == filter_name and _is_number(s.get(metric))]
            if per_item:
                binary = all(v in (0.0, 1.0) for v in per_item)
                _, _, n, low, high = (proportion_row(key, [v == 1.0 for v in per_item]) if binary
                                      else mean_row(key, per_item))
            else:
                stderr = entry.get(f"{metric}_stderr,{filter_name}")
                n = _n_items(results, task)
                low, high = ((float(value) - Z95 * float(stderr), float(value) + Z95 * float(stderr))
                             if _is_number(stderr) else (math.nan, math.nan))
            rows.append((task, key, float(value), int(n), low, high))
    return rows


def evaluate_lm(lm: Any, harness: Any, local: dict[str, Path], task_dir: Path, chat_template: bool = False) -> Any:
    """``lm_eval.simple_evaluate`` of an lm-eval ``LM`` on ``harness.tasks``, local tasks bound to their data
    (see :func:`write_local_tasks`); returns lm-eval's results dict (with per-item ``samples``)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="taskprune-harness-") as tmp:
        include = write_local_tasks(local, task_dir, Path(tmp)) if local else None
        hub_tasks = [t for t in harness.tasks if t not in local]
        manager = TaskManager(include_path=str(include) if include else None, include_defaults=bool(hub_tasks))
        unknown = [t for t in harness.tasks if t not in manager.all_tasks]
        if unknown:
            raise ConfigError(f"harness.tasks: '{unknown[0]}' is not an lm-eval task or a local task "
                              f"(local: {', '.join(local) or 'none'})")
        return lm_eval.simple_evaluate(
            model=lm, tasks=list(harness.tasks), task_manager=manager, limit=harness.limit,
            num_fewshot=harness.num_fewshot, batch_size=harness.batch_size, log_samples=True,
            bootstrap_iters=0, apply_chat_template=chat_template,
            gen_kwargs={"max_gen_toks": harness.max_gen_toks} if harness.max_gen_toks else None,
            random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
        )


# ------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from taskprune.options import add_config_arguments

    parser.add_argument("--variant", required=True, help="variant path: {model}/base or {model}/{method}/{level}/{seed}[/recovered-{recipe}]")
    parser.add_argument("--model-path", "--checkpoint", dest="model_path", required=True,
                        help="model directory (or hub id for a pretrained base model)")
    parser.add_argument("--local-task", dest="local_tasks", action="append", default=[], metavar="NAME=PATH",
                        help="bind the shipped local task NAME (resources/harness/NAME.yaml) to a math eval "
                        "split, e.g. taskprune_math=results/data/math/eval.parquet (repeatable)")
    parser.add_argument("--task-dir", default=str(LOCAL_TASK_DIR), help="directory of the shipped local task YAMLs")
    parser.add_argument("--out", help="output file (default results/harness/{variant}.parquet)")
    add_config_arguments(parser)


def parse_local_tasks(values: Sequence[str]) -> dict[str, Path]:
    from taskprune.options import parse_assignments

    local: dict[str, Path] = {}
    for name, path in parse_assignments(values, "--local-task", "NAME=PATH (e.g. taskprune_math=results/data/math/eval.parquet)").items():
        if not Path(path).is_file():
            raise DataError(f"{path}: eval split for local harness task '{name}' not found")
        local[name] = Path(path)
    return local


def run(args: argparse.Namespace) -> int:
    from taskprune.config import HarnessConfig
    from taskprune.evaluate import variant_columns, variant_from_arg
    from taskprune.io import write_parquet
    from taskprune.metrics import metrics_frame
    from taskprune.options import stage_options
    from taskprune.tasks.metric_names import HARNESS_TASK_PREFIX

    variant = variant_from_arg(args.variant)
    opts = stage_options(args, {"harness": HarnessConfig, "device": "auto", "chat_template": False})
    harness = opts.harness
    local = parse_local_tasks(args.local_tasks)
    missing = [t for t in harness.local_tasks if t in harness.tasks and t not in local]
    if missing:
        raise ConfigError(f"harness.tasks: local task '{missing[0]}' needs --local-task {missing[0]}=PATH")
    out = Path(args.out or f"results/harness/{variant.path}.parquet")

    started = time.monotonic()
    lm, loaded = build_lm(args.model_path, opts.device, harness.batch_size, harness.max_length)
    logger.info("lm-eval %s on %s (%s, loaded by %s): %s, limit %s", lm_eval_version(), variant.path,
                args.model_path, loaded, ", ".join(harness.tasks), harness.limit)
    results = evaluate_lm(lm, harness, local, Path(args.task_dir), chat_template=bool(opts.chat_template))
    if results is None:  # only non-zero ranks of a distributed run get None
        raise DataError("lm_eval.simple_evaluate returned no results")
    ident = variant_columns(variant)
    rows = [{**ident, "task": HARNESS_TASK_PREFIX + task, "task_kind": HARNESS_KIND, "metric": metric,
             "value": value, "n": n, "ci_low": low, "ci_high": high}
            for task, metric, value, n, low, high in harness_metric_rows(results, harness.tasks)]
    if not rows:
        raise DataError(f"lm-eval returned no numeric metrics for {', '.join(harness.tasks)}")
    table = metrics_frame(rows)
    meta = {"variant": variant.path, "model_path": str(args.model_path), "loaded_by": loaded,
            "lm_eval_version": lm_eval_version(), "harness": harness.model_dump(),
            "task_versions": results.get("versions", {}), "n_shot": results.get("n-shot", {}),
            "local_tasks": {k: str(v) for k, v in local.items()}, "chat_template": bool(opts.chat_template)}
    write_parquet(table, out, metadata=meta)
    for r in rows:
        logger.info("%s %s %s = %.3f (n = %d)", variant.path, r["task"], r["metric"], r["value"], r["n"])
    logger.info("%s: %d harness rows in %.1f s", out, len(rows), time.monotonic() - started)
    return 0
