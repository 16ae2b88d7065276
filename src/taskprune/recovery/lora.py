"""LoRA adapters (peft) on a pruned model: wrapping, the training loop with its log, merging back, parameter
counts and the completion loss. Imported by :mod:`taskprune.recover`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from taskprune.config import DistillationConfig, RecoveryConfig
from taskprune.errors import DataError, ModelError
from taskprune.recovery.data import (
    MICROBATCH_TOKENS,
    TrainingExample,
    batch_order,
    collate,
    split_microbatches,
)
from taskprune.recovery.losses import StepContext, get_recipe, recipe_loss

log = logging.getLogger(__name__)


#: Share of the optimiser steps spent in linear learning-rate warm-up (then linear decay to 0).
WARMUP_FRACTION = 0.05


#: Gradient-norm clipping of the LoRA parameters.
MAX_GRAD_NORM = 1.0


#: At most this many points of the loss curve are stored in recovery.json.
LOSS_CURVE_POINTS = 50


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
