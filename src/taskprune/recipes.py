"""The registry of recovery recipes (``recovery.methods`` in the config), importable without torch.

Why a module of its own: the config schema checks recipe names against this registry, and every stage
imports the config, so the registry must not pull in the training code (``taskprune.recovery``, which
imports torch and peft) — a data or analysis job, and its conda environment, would otherwise depend on
them. Each recipe names the loss function that implements it in :mod:`taskprune.recovery.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


def with_recovery(df: Any) -> Any:  # a polars DataFrame
    """Add the ``recovery`` column: the file's own value, else the paper's recipe for recovered rows (an
    evaluation written before recipes were configurable names none)."""
    import polars as pl

    if "recovery" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.String).alias("recovery"))
    return df.with_columns(
        pl.when(pl.col("stage") == "recovered")
        .then(pl.col("recovery").cast(pl.String).fill_null(PAPER_RECIPE))
        .otherwise(None)
        .alias("recovery")
    )
