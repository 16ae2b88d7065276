"""The registry of neuron score methods (``scores.methods`` in the config), importable without torch or polars.

Why a module of its own: the config schema checks score method names against this registry (and so does
the pruning method parser, ``selective-<score>``), and every stage imports the config, so the registry must
not pull in the scoring code. Each entry names the function that computes it as ``module:function``
(:mod:`taskprune.scores` for the built-in ones); :func:`taskprune.scores.compute_scores` resolves it and
calls it as ``function(target, distractors, epsilon, seed)`` -> ``layer, neuron, score`` table. Adding a
method is one entry here plus its function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ScoreMethod:
    """A named score of (layer, neuron): higher means more important for the target task."""

    name: str
    description: str
    needs_distractors: bool  # contrastive: needs at least one distractor statistics file
    function: str  # "module:function", called as function(target, distractors, epsilon, seed)


#: The one registry of score methods, in the order ``scores.methods`` lists them by default.
SCORE_METHODS: dict[str, ScoreMethod] = {
    m.name: m
    for m in (
        ScoreMethod(
            "selectivity",
            "(mu_T - mu_D) / (sigma_A + eps), the paper's",
            True,
            "taskprune.scores:selectivity",
        ),
        ScoreMethod(
            "taker", "(mu_T + eps) / (mu_D + eps), TAKER-style ratio", True, "taskprune.scores:taker"
        ),
        ScoreMethod(
            "wanda", "||W_out[:, j]|| x RMS activation on the target task", False, "taskprune.scores:wanda"
        ),
        ScoreMethod("magnitude", "mu_T, the mean target activation", False, "taskprune.scores:magnitude"),
        ScoreMethod("random", "seeded uniform [0, 1) draws", False, "taskprune.scores:random_scores"),
    )
}


def check_score_method(value: Any) -> Any:
    """A config value of ``scores.methods``: a registered name (the error lists the allowed ones)."""
    if isinstance(value, str) and value in SCORE_METHODS:
        return value
    names = [repr(n) for n in SCORE_METHODS]
    allowed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    raise ValueError(f"Input should be {allowed}")
