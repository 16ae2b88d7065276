"""The registry of recovery recipes (``recovery.methods`` in the config), importable without torch.

Why a module of its own: the config schema checks recipe names against this registry, and every stage
imports the config, so the registry must not pull in the training code (``taskprune.recovery``, which
imports torch and peft) — a data or analysis job, and its conda environment, would otherwise depend on
them. Each recipe names the loss function that implements it in :mod:`taskprune.recovery.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """A named recovery recipe: what the LoRA adapters learn from."""

    name: str
    description: str
    needs_teacher: bool  # distils from the unpruned base model (its logits are computed on the fly)
    loss: str  # name of the loss function in taskprune.recovery.losses: (peft student, micro-batch, context) -> loss


#: The one registry of recovery recipes (``recovery.methods``).
RECIPES: dict[str, Recipe] = {
    "lora": Recipe("lora", "LoRA, cross-entropy on the task's completions (the paper's)", False, "lora_loss"),
    "lora-kd": Recipe(
        "lora-kd",
        "LoRA, KL from the unpruned base model's token distributions (+ optional cross-entropy)",
        True,
        "lora_kd_loss",
    ),
}

#: The paper's recipe: what its recovery claim (and every figure that does not split by recipe) reads.
PAPER_RECIPE = "lora"
