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
import hashlib
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskprune.config import DistillationConfig, RecoveryConfig, RecoveryTaskConfig
from taskprune.errors import DataError, ModelError
from taskprune.recipes import RECIPES, Recipe

log = logging.getLogger(__name__)

#: Share of the optimiser steps spent in linear learning-rate warm-up (then linear decay to 0).
WARMUP_FRACTION = 0.05
#: Gradient-norm clipping of the LoRA parameters.
MAX_GRAD_NORM = 1.0
#: Eval prompts shorter than this (after whitespace normalisation) are only matched exactly, not as
#: substrings of training texts, so a short conversational prompt ("Hi!") cannot cause a false alarm.
MIN_SUBSTRING_CHARS = 32
#: A batch is run as micro-batches of at most this many padded tokens (rows x longest row), with the
#: gradients accumulated, so a long-sequence batch of a large model fits in memory; the loss is still the
#: mean over all completion tokens of the whole batch.
MICROBATCH_TOKENS = 8192
#: At most this many points of the loss curve are stored in recovery.json.
LOSS_CURVE_POINTS = 50
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


# ---------------------------------------------------------------------------------------- the data


def _normalise(text: str) -> str:
    return " ".join(text.split())


def check_no_eval_leak(
    train_texts: Sequence[str],
    train_prompts: Sequence[str],
    eval_prompts: Sequence[str],
    *,
    train_path: str | os.PathLike[str] = "train",
    eval_path: str | os.PathLike[str] = "eval",
) -> None:
    """Raise :class:`DataError` if an evaluation prompt appears in the training data.

    An eval prompt leaks when, after collapsing whitespace, it equals a training prompt, or (when it has at
    least :data:`MIN_SUBSTRING_CHARS` characters) occurs inside a training text (prompt + completion).
    """
    train_prompt_set = {_normalise(p) for p in train_prompts}
    # One joined string: each substring search is a single fast scan instead of a loop over rows.
    joined = "\x00".join(_normalise(t) for t in train_texts)
    leaked = []
    for prompt in eval_prompts:
        norm = _normalise(prompt)
        if not norm:
            continue
        if norm in train_prompt_set or (len(norm) >= MIN_SUBSTRING_CHARS and norm in joined):
            leaked.append(norm)
    if leaked:
        example = leaked[0] if len(leaked[0]) <= 60 else leaked[0][:57] + "..."
        raise DataError(
            f"{train_path}: {len(leaked)} evaluation prompt(s) of {eval_path} appear in the recovery training "
            f"data (e.g. {example!r}); remove them from the train split"
        )


@dataclass(frozen=True)
class TrainingExample:
    """One tokenized training sequence; the loss covers ``input_ids[n_prompt:]``."""

    input_ids: tuple[int, ...]
    n_prompt: int


def build_examples(
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    seq_len: int,
    *,
    chat_template: bool = False,
) -> tuple[list[TrainingExample], dict[str, int]]:
    """Tokenize ``prompt ++ completion ++ eos`` per row, truncated on the right to ``seq_len`` tokens.

    Prompts are encoded by :func:`taskprune.model.generate.encode_prompts`, the very function generation uses
    (special tokens such as BOS, or the chat template with the generation prompt), so the model is trained
    on exactly the prompt tokens it is evaluated on. Rows whose prompt alone fills ``seq_len`` leave no
    completion token to learn from and are dropped. Returns the examples and the counts
    ``{"n_rows", "n_examples", "n_truncated", "n_dropped"}``.
    """
    from taskprune.model.generate import encode_prompts

    eos = tokenizer.eos_token_id
    if eos is None:
        raise ModelError("tokenizer has no EOS token; recovery needs one to end each completion")
    prompt_ids = encode_prompts(tokenizer, list(prompts), chat_template)
    completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"] if completions else []
    examples: list[TrainingExample] = []
    n_truncated = n_dropped = 0
    for p_ids, c_ids in zip(prompt_ids, completion_ids, strict=True):
        if len(p_ids) >= seq_len:
            n_dropped += 1
            continue
        ids = [*p_ids, *c_ids, eos]
        if len(ids) > seq_len:
            n_truncated += 1
            ids = ids[:seq_len]
        examples.append(TrainingExample(tuple(ids), len(p_ids)))
    counts = {"n_rows": len(prompts), "n_examples": len(examples), "n_truncated": n_truncated, "n_dropped": n_dropped}
    return examples, counts


def collate(examples: Sequence[TrainingExample], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch to its longest sequence.

    Returns ``input_ids``, ``attention_mask`` and ``labels``, each ``[B, T]`` (T = longest example);
    ``labels`` is ``-100`` on prompt and padding positions (ignored by the loss).
    """
    import torch

    longest = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    labels = torch.full((len(examples), longest), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids = torch.tensor(e.input_ids, dtype=torch.long)
        input_ids[i, :n] = ids
        attention_mask[i, :n] = 1
        labels[i, e.n_prompt : n] = ids[e.n_prompt :]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def split_microbatches(batch: Sequence[TrainingExample], max_tokens: int | None) -> list[list[TrainingExample]]:
    """Cut a batch, sorted by length (least padding), into consecutive micro-batches whose padded size
    ``rows * longest row`` stays within ``max_tokens`` (a single longer row forms its own micro-batch)."""
    ordered = sorted(batch, key=lambda e: len(e.input_ids))
    if max_tokens is None:
        return [ordered]
    micro: list[list[TrainingExample]] = [[]]
    for example in ordered:  # ascending lengths: this example is the longest of its micro-batch so far
        if micro[-1] and (len(micro[-1]) + 1) * len(example.input_ids) > max_tokens:
            micro.append([])
        micro[-1].append(example)
    return micro


def batch_order(n_examples: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Example indices of each step: seeded permutations of all examples, epoch after epoch, cut into
    consecutive batches of ``batch_size`` (a batch may straddle two epochs)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    needed = steps * batch_size
    order: list[int] = []
    while len(order) < needed:
        order.extend(torch.randperm(n_examples, generator=generator).tolist())
    return [order[s * batch_size : (s + 1) * batch_size] for s in range(steps)]


# ------------------------------------------------------------------------------------------- LoRA


def lora_target_modules(model: Any, wanted: Sequence[str]) -> list[str]:
    """The configured projection names that name linear layers of ``model`` (in config order).

    Raises :class:`ModelError` when none does (e.g. GPT-2's fused ``c_attn``); logs the ones missing.
    """
    import torch

    present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    found = [t for t in wanted if t in present]
    missing = [t for t in wanted if t not in present]
    if not found:
        raise ModelError(
            f"recovery.target_modules {list(wanted)}: none is a linear layer of this "
            f"'{model.config.model_type}' model (its linear layers: {', '.join(sorted(present))})"
        )
    if missing:
        log.warning("recovery.target_modules not in this model (skipped): %s", ", ".join(missing))
    return found


def add_lora(model: Any, recovery: RecoveryConfig, seed: int) -> Any:
    """Wrap ``model`` in a peft LoRA model (A random with ``seed``, B zero: it starts as the identity)."""
    import torch
    from peft import LoraConfig, get_peft_model

    targets = lora_target_modules(model, recovery.target_modules)
    lora_config = LoraConfig(
        r=recovery.r,
        lora_alpha=recovery.alpha,
        lora_dropout=recovery.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    return get_peft_model(model, lora_config)


# ----------------------------------------------------------------------------------------- recipes


def _shifted_targets(labels: Any) -> tuple[Any, Any]:
    """``(mask [B, T-1], targets [N])``: position t predicts token t+1; N = completion tokens (labels != -100)."""
    mask = labels[:, 1:] != -100
    return mask, labels[:, 1:][mask]


def cross_entropy_sum(student_logits: Any, labels: Any) -> Any:
    """Sum of next-token cross-entropies over the completion tokens (``logits [B, T, V]``, ``labels [B, T]``)."""
    import torch

    mask, targets = _shifted_targets(labels)
    return torch.nn.functional.cross_entropy(student_logits[:, :-1][mask].float(), targets, reduction="sum")


def distillation_sum(student_logits: Any, teacher_logits: Any, labels: Any, temperature: float) -> Any:
    """``T^2 * sum over completion tokens of KL(softmax(z_t / T) || softmax(z_s / T))``.

    ``student_logits`` and ``teacher_logits`` are ``[B, T, V]`` over the same tokens; only the positions that
    predict a completion token (``labels[:, 1:] != -100``) count, the same positions as the cross-entropy.
    The ``T^2`` factor keeps the gradient's scale independent of the temperature (Hinton et al., 2015).
    """
    import torch

    if student_logits.shape != teacher_logits.shape:
        raise ModelError(
            f"teacher logits {tuple(teacher_logits.shape)} do not match the student's {tuple(student_logits.shape)} "
            "(the teacher must be the unpruned model with the same vocabulary)"
        )
    mask, _ = _shifted_targets(labels)
    log_p_student = torch.log_softmax(student_logits[:, :-1][mask].float() / temperature, dim=-1)  # [N, V]
    log_p_teacher = torch.log_softmax(teacher_logits[:, :-1][mask].float() / temperature, dim=-1)  # [N, V]
    # kl_div(input=log q, target=log p, log_target=True) = sum p * (log p - log q)
    kl = torch.nn.functional.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="sum")
    return temperature**2 * kl


@dataclass(frozen=True)
class StepContext:
    """What a recipe's loss may use besides the student and the batch."""

    n_targets: int  # completion tokens of the whole optimiser step (the loss is a mean over them)
    teacher: Any | None = None  # the unpruned base model (eval mode, no gradient) for distillation recipes
    distillation: DistillationConfig | None = None


def lora_loss(student: Any, batch: dict[str, Any], ctx: StepContext) -> Any:
    # num_items_in_batch: the model returns sum(CE over this micro-batch's labels) / n_targets
    return student(**batch, num_items_in_batch=ctx.n_targets).loss


def _teacher_logits(teacher: Any, batch: dict[str, Any], device: Any) -> Any:
    """One no-grad teacher forward on the student's micro-batch: logits ``[B, T, V]`` on ``device``."""
    import torch

    teacher_device = next(teacher.parameters()).device
    with torch.no_grad():
        logits = teacher(input_ids=batch["input_ids"].to(teacher_device),
                         attention_mask=batch["attention_mask"].to(teacher_device)).logits
    return logits.to(device)


def lora_kd_loss(student: Any, batch: dict[str, Any], ctx: StepContext) -> Any:
    if ctx.teacher is None or ctx.distillation is None:
        raise ModelError("recipe 'lora-kd' needs the unpruned teacher model (--teacher)")
    kd = ctx.distillation
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [B, T, V]
    teacher_logits = _teacher_logits(ctx.teacher, batch, logits.device)
    loss = (1.0 - kd.ce_weight) * distillation_sum(logits, teacher_logits, batch["labels"], kd.temperature)
    if kd.ce_weight > 0:
        loss = loss + kd.ce_weight * cross_entropy_sum(logits, batch["labels"])
    return loss / ctx.n_targets


def recipe_loss(recipe: Recipe) -> Callable[[Any, dict[str, Any], StepContext], Any]:
    """The loss function of a recipe (the registry in :mod:`taskprune.recipes` names it): (peft student,
    micro-batch tensors, context) -> this micro-batch's share of the step's mean loss."""
    return globals()[recipe.loss]


def get_recipe(name: str) -> Recipe:
    from taskprune.errors import ConfigError

    if name not in RECIPES:
        raise ConfigError(f"--recipe: unknown recovery recipe '{name}'; known: {', '.join(RECIPES)}")
    return RECIPES[name]


def peak_memory_bytes(device: Any) -> dict[str, int]:
    """Peak resident memory of this process so far (Linux ``ru_maxrss``) and, on CUDA, the peak allocated
    by torch on ``device``."""
    import resource

    out = {"process_rss": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        out["cuda_allocated"] = int(torch.cuda.max_memory_allocated(device))
    return out


@dataclass
class TrainingLog:
    """What happened during one LoRA run."""

    losses: list[float] = field(default_factory=list)  # per optimiser step, mean over completion tokens
    learning_rates: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    total_tokens: int = 0
    seconds: float = 0.0  # wall clock
    cpu_seconds: float = 0.0  # CPU time of this process (all threads): comparable across loaded machines
    batches: list[list[int]] = field(default_factory=list)  # example indices of each step, in order
    sequence_sha256: str = ""  # hash of every step's token ids in order: equal for a matched budget

    def summary(self) -> dict[str, Any]:
        n = len(self.losses)
        if not n:
            return {"steps": 0}
        tenth = max(1, n // 10)
        stride = max(1, math.ceil(n / LOSS_CURVE_POINTS))
        curve = [[s + 1, round(self.losses[s], 5)] for s in range(0, n, stride)]
        if curve[-1][0] != n:
            curve.append([n, round(self.losses[-1], 5)])
        return {
            "steps": n,
            "first": self.losses[0],
            "last": self.losses[-1],
            "min": min(self.losses),
            "mean_first_10pct": sum(self.losses[:tenth]) / tenth,
            "mean_last_10pct": sum(self.losses[-tenth:]) / tenth,
            "curve": curve,
        }


def train_lora(
    peft_model: Any,
    examples: Sequence[TrainingExample],
    *,
    pad_id: int,
    batch_size: int,
    steps: int,
    learning_rate: float,
    seed: int,
    microbatch_tokens: int | None = MICROBATCH_TOKENS,
    activation_checkpointing: bool = False,
    progress: bool = True,
    recipe: str = "lora",
    teacher: Any | None = None,
    distillation: DistillationConfig | None = None,
) -> TrainingLog:
    """Train the LoRA parameters of ``peft_model`` for ``steps`` AdamW steps (linear warm-up and decay).

    The loss of a step is the ``recipe``'s per-token loss (cross-entropy for ``lora``, the distillation loss
    from ``teacher`` for ``lora-kd``) summed over the completion tokens of the whole batch and divided by
    their number, however the batch is cut into micro-batches (each micro-batch's sum is divided by the
    batch's token count, and the gradients add up). The batches do not depend on the recipe, so every
    recipe sees the same example sequence for the same ``seed`` and ``steps``. ``activation_checkpointing`` recomputes each decoder layer in
    the backward pass instead of storing its activations (for large models on a GPU).

    Deterministic for a given seed, thread count and device: the batch order, LoRA dropout and the adapter
    initialisation (see :func:`add_lora`) draw from seeded generators only.
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    from taskprune.progress import progress_bar

    if not examples:
        raise DataError("recovery: no training example left after tokenization (are prompts longer than seq_len?)")
    chosen = get_recipe(recipe)
    if chosen.needs_teacher and teacher is None:
        raise ModelError(f"recipe '{recipe}' needs the unpruned teacher model")
    loss_fn = recipe_loss(chosen)
    device = next(peft_model.parameters()).device
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    warmup = math.ceil(WARMUP_FRACTION * steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, steps)
    batches = batch_order(len(examples), batch_size, steps, seed)
    torch.manual_seed(seed)  # LoRA dropout masks
    use_cache = getattr(peft_model.config, "use_cache", None)
    peft_model.config.use_cache = False
    if activation_checkpointing:
        base = peft_model.get_base_model()
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x
            base.activation_checkpointing_enable()
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model.train()
    record = TrainingLog(batches=batches)
    sequence_hash = hashlib.sha256()
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = progress_bar(batches, desc="recover", unit="step", enabled=progress, mininterval=2.0)
    for step, indices in enumerate(bar):
        batch_examples = [examples[i] for i in indices]
        # every completion token is a label (n_prompt >= 1, so none is lost to the shift inside the loss)
        n_targets = sum(len(e.input_ids) - e.n_prompt for e in batch_examples)
        for e in batch_examples:
            sequence_hash.update(repr(e.input_ids).encode())
        ctx = StepContext(n_targets, teacher, distillation)
        step_loss = 0.0
        for micro in split_microbatches(batch_examples, microbatch_tokens):
            batch = {k: v.to(device) for k, v in collate(micro, pad_id).items()}
            loss = loss_fn(peft_model, batch, ctx)
            loss.backward()
            step_loss += float(loss.detach())
            record.total_tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        record.learning_rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        record.losses.append(step_loss)
        record.completion_tokens += n_targets
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{record.losses[-1]:.4f}")
            log.debug("step %d/%d loss %.4f", step + 1, steps, record.losses[-1])
    record.seconds = time.perf_counter() - start
    record.cpu_seconds = time.process_time() - cpu_start
    record.sequence_sha256 = sequence_hash.hexdigest()
    if activation_checkpointing:
        base = peft_model.get_base_model()
        if hasattr(base, "activation_checkpointing_disable"):
            base.activation_checkpointing_disable()
        else:
            base.gradient_checkpointing_disable()
    peft_model.eval()
    if use_cache is not None:
        peft_model.config.use_cache = use_cache
    return record


def merge_lora(peft_model: Any) -> Any:
    """Fold every adapter into its base weight (``W += (alpha / r) * B @ A``) and drop the LoRA modules."""
    return peft_model.merge_and_unload().eval()


def count_parameters(model: Any) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def completion_loss(model: Any, examples: Sequence[TrainingExample], pad_id: int, batch_size: int = 32) -> float:
    """Mean cross-entropy per completion token over ``examples`` (no dropout, no gradient)."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size], pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            # position t predicts token t+1: logits [B, T-1, V] vs labels [B, T-1]
            targets = batch["labels"][:, 1:]
            ce = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
            )
            total += float(ce)
            count += int((targets != -100).sum())
    model.train(was_training)
    return total / max(count, 1)


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
    from taskprune.config import add_config_arguments

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
    from taskprune.config import stage_options

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
