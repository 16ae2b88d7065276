"""How many and which MLP neurons a pruning level removes: the per-layer count of a level, uniform and global
selection from a score table, and the slicing of one projection's tensor. Pure numpy plus tensors handed in;
imported by the ``prune`` stage and by :mod:`taskprune.perf` (shape families are pruned by the same rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from taskprune.errors import ConfigError
from taskprune.levels import Level
from taskprune.model.arch import MLPAdapter
from taskprune.model.checkpoint import neuron_axis

if TYPE_CHECKING:
    import numpy as np


def removal_count(level: Level, width: int, multiple_of: int = 1) -> int:
    """``k = round(level/100 * width)`` (half up, exact), rounded to the nearest multiple of ``multiple_of``."""
    exact = level.fraction * width / 100
    return math.floor(exact / multiple_of + Fraction(1, 2)) * multiple_of


def removal_order(scores: np.ndarray, direction: str) -> np.ndarray:
    """Neuron indices in the order they are removed: ``selective`` from the lowest ``(score, index)``,
    ``reverse`` the exact reverse of that ranking (so the two never overlap below 50%)."""
    import numpy as np

    order = np.argsort(scores, kind="stable")  # ascending score, ties by ascending neuron index
    return order if direction == "selective" else order[::-1]


def select_uniform(
    direction: str,
    widths: list[int],
    k_per_layer: list[int],
    scores: list[np.ndarray] | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Sorted neuron indices to remove from each layer (``k_per_layer[l]`` of them)."""
    import numpy as np

    removed = []
    for layer, (width, k) in enumerate(zip(widths, k_per_layer, strict=True)):
        if direction == "random":
            order = np.random.default_rng([seed, layer]).permutation(width)
        else:
            assert scores is not None
            order = removal_order(scores[layer], direction)
        removed.append(np.sort(order[:k]).astype(np.int64))
    return removed


def width_floors(widths: list[int], min_width_fraction: float) -> list[int]:
    """Neurons every layer keeps under global allocation: ``max(1, ceil(fraction * d_ff))``."""
    return [max(1, math.ceil(min_width_fraction * w - 1e-9)) for w in widths]


def select_global(
    direction: str,
    widths: list[int],
    k_total: int,
    floors: list[int],
    scores: list[np.ndarray] | None = None,
    seed: int = 0,
    multiple_of: int = 1,
) -> list[np.ndarray]:
    """Remove ``k_total`` neurons ranked across all layers, never taking a layer below its floor.

    Ranking: ``(score, layer, neuron)`` ascending for ``selective``, its reverse for ``reverse``, a
    ``default_rng(seed)`` permutation for ``random``. Walking the ranking, a neuron is taken while its layer
    has removed fewer than ``d_ff_l - floor_l``; with ``multiple_of > 1`` each layer's count is then rounded
    to the nearest multiple (within its cap) and the layer loses its first neurons in the ranking.
    """
    import numpy as np

    widths_arr = np.asarray(widths, dtype=np.int64)
    caps = widths_arr - np.asarray(floors, dtype=np.int64)
    if k_total > int(caps.sum()):
        raise ConfigError(
            f"global allocation cannot remove {k_total} neurons while every layer keeps its floor "
            f"(at most {int(caps.sum())}; lower the level or pruning.min_width_fraction)"
        )
    n_layers = len(widths)
    layer_of = np.repeat(np.arange(n_layers), widths_arr)
    neuron_of = np.concatenate([np.arange(w) for w in widths])
    if direction == "random":
        order = np.random.default_rng(seed).permutation(layer_of.size)
    else:
        assert scores is not None
        order = np.lexsort((neuron_of, layer_of, np.concatenate(scores)))
        if direction == "reverse":
            order = order[::-1]
    layer_seq = layer_of[order]
    # rank_in_layer[i] = how many earlier entries of `order` belong to the same layer as entry i
    by_layer = np.argsort(layer_seq, kind="stable")
    sorted_layers = layer_seq[by_layer]
    rank_in_layer = np.empty(order.size, dtype=np.int64)
    rank_in_layer[by_layer] = np.arange(order.size) - np.searchsorted(sorted_layers, sorted_layers, side="left")
    eligible = rank_in_layer < caps[layer_seq]
    taken_layers = layer_seq[eligible][:k_total]
    k_per_layer = np.bincount(taken_layers, minlength=n_layers)
    if multiple_of > 1:
        rounded = np.floor(k_per_layer / multiple_of + 0.5).astype(np.int64) * multiple_of
        k_per_layer = np.minimum(rounded, (caps // multiple_of) * multiple_of)
    removed = []
    for layer in range(n_layers):
        layer_order = neuron_of[order][layer_seq == layer]
        removed.append(np.sort(layer_order[: k_per_layer[layer]]).astype(np.int64))
    return removed


@dataclass
class PruningPlan:
    """Which neurons leave each layer, and why."""

    direction: str
    allocation: str
    widths_before: list[int]
    removed: list[np.ndarray]  # sorted neuron indices per layer

    @property
    def k_per_layer(self) -> list[int]:
        return [int(r.size) for r in self.removed]

    @property
    def widths_after(self) -> list[int]:
        return [w - k for w, k in zip(self.widths_before, self.k_per_layer, strict=True)]


def plan_pruning(
    direction: str,
    level: Level,
    widths: list[int],
    options: Any,
    scores: list[np.ndarray] | None = None,
    seed: int = 0,
) -> PruningPlan:
    """Decide the neurons to remove for one variant (``options``: a :class:`~taskprune.config.PruningConfig`)."""
    if options.allocation == "uniform":
        ks = [removal_count(level, w, options.multiple_of) for w in widths]
        for layer, (w, k) in enumerate(zip(widths, ks, strict=True)):
            if k >= w:
                raise ConfigError(
                    f"--level {level.pct:g} removes {k} of layer {layer}'s {w} neurons "
                    f"(pruning.multiple_of {options.multiple_of}); at least one must stay"
                )
        removed = select_uniform(direction, widths, ks, scores, seed)
    else:
        k_total = removal_count(level, sum(widths))
        floors = width_floors(widths, options.min_width_fraction)
        removed = select_global(direction, widths, k_total, floors, scores, seed, options.multiple_of)
    return PruningPlan(direction, options.allocation, list(widths), removed)


def slice_tensor(tensor: Any, adapter: MLPAdapter, proj: str, param: str, keep: np.ndarray, width: int) -> Any:
    """Keep neurons ``keep`` (sorted indices) of one stored MLP tensor (numpy array or torch tensor)."""
    import numpy as np

    axis = neuron_axis(adapter, proj, param)
    if axis is None:
        return tensor
    fused = adapter.mlp_kind.fused_rows
    if fused > 1 and proj != adapter.out_proj:  # Phi-3's gate_up_proj: gate rows [0, d_ff), up rows [d_ff, 2 d_ff)
        keep = np.concatenate([keep + r * width for r in range(fused)])
    if isinstance(tensor, np.ndarray):
        return np.ascontiguousarray(np.take(tensor, keep, axis=axis))
    import torch

    return tensor.index_select(axis, torch.from_numpy(keep)).contiguous()
