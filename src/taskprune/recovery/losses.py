"""Recovery losses, one per recipe of :data:`taskprune.recipes.RECIPES` (``Recipe.loss`` names its function
here): cross-entropy on the labels (``lora``) and distillation from the unpruned teacher (``lora-kd``).
Imported by :mod:`taskprune.recovery.lora` and :mod:`taskprune.recover`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from taskprune.config import DistillationConfig
from taskprune.errors import ModelError
from taskprune.recipes import RECIPES, Recipe


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
