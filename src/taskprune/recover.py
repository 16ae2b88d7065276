"""Recovery: LoRA fine-tuning of a pruned checkpoint on its target task, merged back into a normal checkpoint.

A *recipe* (:data:`RECIPES`, ``recovery.methods`` in the config) says what the adapters learn from:

- ``lora`` (the paper's): next-token cross-entropy on the completion tokens of the task's train split;
- ``lora-kd``: the same adapters, examples, batch order, steps, sequence length and schedule, but the loss is
  the KL divergence from the *unpruned* base model's token distributions (temperature ``T``) on the same
  completion tokens, optionally mixed with cross-entropy:
  ``(1 - ce_weight) * T^2 * KL(softmax(z_teacher / T) || softmax(z_student / T)) + ce_weight * CE``.
  The teacher's logits are computed on the fly, one no-grad forward per micro-batch on the very tensors the
  student sees (so one teacher forward over each step's batch); nothing is stored.

Every recipe draws its batches from :func:`batch_order` with the same seed, so two recipes see identical
example sequences for the same number of optimiser steps (a matched budget); ``recovery.json`` records the
tokens, steps, wall and CPU time, peak memory and a hash of the example sequence, so the comparison's
fairness and cost can be checked.

The paper asks whether a short parameter-efficient fine-tune on the target task's *train* split recovers
the accuracy lost to pruning. This stage trains LoRA adapters (peft) on every configured projection of the
pruned model, merges them into the weights (``merge_and_unload``) and saves a plain checkpoint with the
pruned widths, so evaluation and benchmarks treat a recovered variant exactly like any other checkpoint:
the merge adds ``(alpha / r) * B @ A`` to each frozen weight and adds no parameter.

Training example (one row of ``results/data/{task}/train.parquet``)::

    input_ids = tok(prompt) ++ tok(completion, no special tokens) ++ [eos]     # truncated to seq_len
    labels    = [-100] * len(tok(prompt)) ++ tok(completion) ++ [eos]          # loss on the completion only

The prompt is tokenized on its own, exactly as generation tokenizes it (with the chat template when the
model uses one), so the model learns to continue the very token sequence it will see at evaluation time.
The loss is the mean next-token cross-entropy over the completion tokens of a batch (AdamW on the LoRA
parameters only, linear warm-up and decay; a batch too large for memory runs as micro-batches with the
gradients accumulated). Uniform and per-layer-width checkpoints load through
:func:`taskprune.model.loading.load_model`; LoRA wraps each projection at its own shape, and the merged model is
saved with the source's width keys in ``config.json``, so it reloads the same way.

Output ``results/recovered/{model}/{method}/{level}/{seed}/{recipe}/``: the merged checkpoint (source dtype), the
tokenizer files copied from the pruned checkpoint, and ``recovery.json`` (hyper-parameters, steps, loss
curve summary, seconds, seed, parameter counts), written as one atomic directory.

A guard refuses to train when any evaluation prompt of the task appears in the training data, so a recovered
model can never have seen its own test items.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from taskprune.config import DistillationConfig, RecoveryConfig, RecoveryTaskConfig
from taskprune.errors import DataError, ModelError
from taskprune.recipes import RECIPES
from taskprune.recovery.data import MICROBATCH_TOKENS, build_examples, check_no_eval_leak
from taskprune.recovery.lora import (
    MAX_GRAD_NORM,
    WARMUP_FRACTION,
    add_lora,
    count_parameters,
    merge_lora,
    peak_memory_bytes,
    train_lora,
)
from taskprune.recovery.losses import get_recipe

log = logging.getLogger(__name__)

#: Tokenizer files copied from the pruned checkpoint (glob patterns).
TOKENIZER_FILES = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "chat_template*",
    "*.model",
    "*.tiktoken",
)


# ------------------------------------------------------------------------------------ configuration


def task_hyperparameters(recovery: RecoveryConfig, task: str) -> RecoveryTaskConfig:
    """``recovery.per_task[task]`` with every key it does not set taken from ``recovery.default``."""
    specific = recovery.per_task.get(task)
    if specific is None:
        return recovery.default
    explicit = {name: getattr(specific, name) for name in specific.model_fields_set}
    return recovery.default.model_copy(update=explicit)


def planned_steps(n_examples: int, batch_size: int, hp: RecoveryTaskConfig) -> int:
    """Optimiser steps: ``ceil(epochs * n_examples / batch_size)``, capped by ``max_steps``."""
    steps = max(1, math.ceil(hp.epochs * n_examples / batch_size))
    return min(steps, hp.max_steps) if hp.max_steps is not None else steps


# ------------------------------------------------------------------------------------- checkpoints


def checkpoint_dtype(path: str | os.PathLike[str]) -> Any:
    """The torch dtype a checkpoint's config.json says its weights are stored in (float32 if unsaid)."""
    import json

    import torch

    config_path = Path(path) / "config.json"
    config = json.loads(config_path.read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ModelError(f"{config_path}: unknown dtype {name!r}")
    return dtype


def _width_keys(source_config: dict[str, Any]) -> dict[str, Any]:
    """The keys of a pruned config.json that describe its MLP widths and provenance (kept verbatim)."""
    from taskprune.model.arch import ARCHITECTURES

    architecture = ARCHITECTURES.get(source_config.get("model_type", ""))
    adapter = architecture.mlp if architecture is not None else None
    keys = {k: v for k, v in source_config.items() if k.startswith("taskprune_")}
    if adapter is not None and adapter.width_key in source_config:
        keys[adapter.width_key] = source_config[adapter.width_key]
    return keys


def save_recovered(
    model: Any,
    source_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    record: dict[str, Any],
    *,
    started: float | None = None,
) -> None:
    """Save the merged model (cast in place to the source checkpoint's dtype), its tokenizer and
    ``recovery.json``, atomically: ``out_dir`` appears complete or not at all. ``record["seconds"]`` gains
    ``save``, ``process`` (since the process started) and, given the ``time.perf_counter()`` at which the
    job ``started``, ``total``.

    ``config.json`` keeps the source's width keys (``intermediate_size`` and every ``taskprune_*`` key such
    as ``taskprune_layer_widths``), so a per-layer-width checkpoint reloads through the same loader.
    """
    import json

    import psutil

    from taskprune.io import atomic_dir, write_json

    source = Path(source_dir)
    source_config = json.loads((source / "config.json").read_text())
    save_dtype = checkpoint_dtype(source)
    t_save = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        model.to(save_dtype).save_pretrained(tmp)
        config_path = tmp / "config.json"
        saved = json.loads(config_path.read_text())
        saved.update(_width_keys(source_config))
        config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        copied = []
        for pattern in TOKENIZER_FILES:
            for f in sorted(source.glob(pattern)):
                if f.is_file() and not (tmp / f.name).exists():
                    shutil.copy2(f, tmp / f.name)
                    copied.append(f.name)
        if not any(name.startswith("tokenizer") for name in copied):
            raise ModelError(f"{source}: no tokenizer files to copy into the recovered checkpoint")
        seconds = dict(record.get("seconds", {}), save=round(time.perf_counter() - t_save, 3))
        if started is not None:
            seconds["total"] = round(time.perf_counter() - started, 3)
        # wall time of the whole process, including importing torch/transformers/peft (what a job costs)
        seconds["process"] = round(time.time() - psutil.Process().create_time(), 3)
        record.update(seconds=seconds, tokenizer_files=copied)
        write_json(record, tmp / "recovery.json")


# ------------------------------------------------------------------------------------------ driver


def recover(
    pruned_dir: str | os.PathLike[str],
    train_path: str | os.PathLike[str],
    eval_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    task: str,
    recovery: RecoveryConfig,
    recipe: str = "lora",
    teacher_path: str | os.PathLike[str] | None = None,
    device: str = "auto",
    chat_template: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Recover one pruned checkpoint with ``recipe`` and write ``out_dir``; returns the ``recovery.json``
    record. ``teacher_path`` (the unpruned base model: a directory or hub id) is needed by distillation
    recipes and ignored by the others."""
    from taskprune.io import read_json, read_parquet
    from taskprune.model.checkpoint import check_checkpoint_dir, layer_widths
    from taskprune.model.loading import load_model, load_tokenizer, resolve_device

    t0 = time.perf_counter()
    chosen = get_recipe(recipe)
    check_checkpoint_dir(pruned_dir)  # one-line error for a missing or incomplete checkpoint
    if chosen.needs_teacher:
        if teacher_path is None:
            raise ModelError(f"recipe '{recipe}' distils from the unpruned base model: give --teacher DIR")
        if Path(teacher_path).exists():
            check_checkpoint_dir(teacher_path)
    hp = task_hyperparameters(recovery, task)
    train = read_parquet(train_path, ["id", "prompt", "completion"], what="recovery train split")
    evaluation = read_parquet(eval_path, ["id", "prompt"], what="evaluation split")
    if train.height == 0:
        raise DataError(f"{train_path}: recovery train split is empty")
    all_train_prompts = train["prompt"].to_list()
    if hp.max_samples is not None and hp.max_samples < train.height:
        train = train.sample(n=hp.max_samples, shuffle=True, seed=recovery.seed)
    prompts, completions = train["prompt"].to_list(), train["completion"].to_list()
    # exact prompt matches over the whole split, substring matches over the rows actually trained on
    check_no_eval_leak(
        [p + c for p, c in zip(prompts, completions, strict=True)],
        all_train_prompts,
        evaluation["prompt"].to_list(),
        train_path=train_path,
        eval_path=eval_path,
    )

    tokenizer = load_tokenizer(pruned_dir, padding_side="right")
    torch_device, default_dtype = resolve_device(device)
    # On a GPU the frozen base keeps its stored dtype (bf16 for the paper's models; peft keeps the adapters
    # in fp32); on a CPU it is fp32 as everywhere else. The merged weights are saved in the stored dtype.
    dtype = checkpoint_dtype(pruned_dir) if torch_device.type == "cuda" else default_dtype
    model = load_model(pruned_dir, str(torch_device.type), dtype=dtype)
    teacher, teacher_info = None, None
    if chosen.needs_teacher:
        teacher, teacher_info = load_teacher(teacher_path, recovery.distillation, torch_device, dtype)
    widths_before = layer_widths(model)
    params_pruned = count_parameters(model)
    examples, counts = build_examples(
        tokenizer, prompts, completions, recovery.seq_len, chat_template=chat_template
    )
    log.info(
        "%s: %d training examples (%d truncated to %d tokens, %d dropped)",
        task, counts["n_examples"], counts["n_truncated"], recovery.seq_len, counts["n_dropped"],
    )
    steps = planned_steps(len(examples), recovery.batch_size, hp)
    t_loaded = time.perf_counter()

    peft_model = add_lora(model, recovery, recovery.seed)
    lora_params = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    targets_used = sorted(peft_model.peft_config["default"].target_modules or [])
    on_gpu = torch_device.type == "cuda"
    training = train_lora(
        peft_model,
        examples,
        pad_id=tokenizer.pad_token_id,
        batch_size=recovery.batch_size,
        steps=steps,
        learning_rate=hp.learning_rate,
        seed=recovery.seed,
        activation_checkpointing=on_gpu,
        progress=progress,
        recipe=recipe,
        teacher=teacher,
        distillation=recovery.distillation if chosen.needs_teacher else None,
    )
    peak_memory = peak_memory_bytes(torch_device)
    del teacher
    t_merge = time.perf_counter()
    merged = merge_lora(peft_model)
    params_recovered = count_parameters(merged)
    widths_after = layer_widths(merged)
    if params_recovered != params_pruned or widths_after != widths_before:
        raise ModelError(
            f"{pruned_dir}: merged model has {params_recovered} parameters and widths {widths_after}, "
            f"expected {params_pruned} and {widths_before} (LoRA merge must not change the shapes)"
        )
    summary = training.summary()
    log.info(
        "%s: %d steps in %.1f s, loss %.4f -> %.4f",
        task, summary["steps"], training.seconds, summary["mean_first_10pct"], summary["mean_last_10pct"],
    )
    pruning_json = Path(pruned_dir) / "pruning.json"
    record: dict[str, Any] = {
        "source": str(pruned_dir),
        "source_pruning": read_json(pruning_json) if pruning_json.is_file() else None,
        "task": task,
        "recipe": recipe,
        "recipe_description": chosen.description,
        "teacher": teacher_info,
        "train_path": str(train_path),
        "eval_path": str(eval_path),
        "seed": recovery.seed,
        "chat_template": chat_template,
        "device": str(next(merged.parameters()).device),
        "hyperparameters": {
            "r": recovery.r,
            "alpha": recovery.alpha,
            "dropout": recovery.dropout,
            "target_modules": list(recovery.target_modules),
            "target_modules_used": targets_used,
            "batch_size": recovery.batch_size,
            "seq_len": recovery.seq_len,
            "learning_rate": hp.learning_rate,
            "epochs": hp.epochs,
            "max_samples": hp.max_samples,
            "max_steps": hp.max_steps,
            "optimizer": "AdamW",
            "weight_decay": 0.0,
            "schedule": "linear warm-up then linear decay to 0",
            "warmup_steps": math.ceil(WARMUP_FRACTION * steps),
            "max_grad_norm": MAX_GRAD_NORM,
            "microbatch_tokens": MICROBATCH_TOKENS,
            "activation_checkpointing": on_gpu,
            **({"distillation": recovery.distillation.model_dump(mode="json")} if chosen.needs_teacher else {}),
        },
        "data": {**counts, "completion_tokens": training.completion_tokens, "total_tokens": training.total_tokens,
                 "sequence_sha256": training.sequence_sha256},
        "steps": summary["steps"],
        "peak_memory_bytes": peak_memory,
        "epochs_done": summary["steps"] * recovery.batch_size / len(examples),
        "loss": summary,
        "params": {
            "pruned_total": params_pruned,
            "recovered_total": params_recovered,
            "lora_trainable": lora_params,
        },
        "layer_widths": widths_after,
    }
    record["seconds"] = {
        "load": round(t_loaded - t0, 3),
        "train": round(training.seconds, 3),
        "train_cpu": round(training.cpu_seconds, 3),
        "merge": round(time.perf_counter() - t_merge, 3),
    }
    save_recovered(merged, pruned_dir, out_dir, record, started=t0)
    log.info("wrote %s (%.1f s in all)", out_dir, time.perf_counter() - t0)
    return record


# --------------------------------------------------------------------------------------------- CLI


def load_teacher(
    path: str | os.PathLike[str] | None, distillation: DistillationConfig, student_device: Any, student_dtype: Any
) -> tuple[Any, dict[str, Any]]:
    """The frozen unpruned teacher on its configured device and dtype (``auto``: the student's), and a
    description of it for ``recovery.json``."""
    import torch

    from taskprune.model.loading import load_model, resolve_device

    device = student_device if distillation.teacher_device == "auto" else resolve_device(distillation.teacher_device)[0]
    dtype = student_dtype if distillation.teacher_dtype == "auto" else getattr(torch, distillation.teacher_dtype)
    teacher = load_model(path, str(device.type), dtype=dtype).eval()
    teacher.requires_grad_(False)
    info = {"path": str(path), "device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "params": count_parameters(teacher)}
    return teacher, info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from taskprune.options import add_config_arguments

    parser.add_argument("--pruned", required=True, metavar="DIR", help="pruned checkpoint directory")
    parser.add_argument("--train", required=True, metavar="PARQUET", help="the target task's train split")
    parser.add_argument(
        "--eval", required=True, metavar="PARQUET",
        help="the target task's eval split (only its prompts are read, to refuse leaked items)",
    )
    parser.add_argument("--task", required=True, help="target task name (selects recovery.per_task)")
    parser.add_argument("--out", required=True, metavar="DIR", help="recovered checkpoint directory to write")
    parser.add_argument("--recipe", default="lora", choices=list(RECIPES),
                        help="recovery recipe (recovery.methods): " + "; ".join(
                            f"{r.name} = {r.description}" for r in RECIPES.values()))
    parser.add_argument("--teacher", metavar="DIR", default=None,
                        help="the unpruned base model (directory or hub id) a distillation recipe learns from")
    parser.add_argument(
        "--chat-template", action=argparse.BooleanOptionalAction, default=False,
        help="wrap prompts in the tokenizer's chat template (models with chat_template: true)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from taskprune.options import stage_options

    opts = stage_options(args, {"recovery": RecoveryConfig, "device": "auto"})
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    recover(
        args.pruned,
        args.train,
        args.eval,
        args.out,
        task=args.task,
        recovery=opts.recovery,
        recipe=args.recipe,
        teacher_path=args.teacher,
        device=opts.device,
        chat_template=args.chat_template,
        progress=not args.no_progress,
    )
    return 0
