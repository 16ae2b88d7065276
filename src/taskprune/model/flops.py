"""Closed-form parameter counts and FLOPs per token, from a config and the per-layer MLP widths.

The efficiency benchmark puts an *ideal* speedup next to every measured one: the ratio of the base model's
FLOPs per token to the pruned variant's. That ideal must come from the shapes alone (no timing, no model
load), and it must be right for every supported architecture and for checkpoints whose layers were pruned
to different widths. This module derives it from :class:`ModelShape`, which is read from a config plus the
actual per-layer MLP widths; the tests check every count against counted tensors and against
``torch.utils.flop_counter.FlopCounterMode`` on tiny models of each architecture.

Conventions (one token, ``d`` = hidden size, ``f_l`` = MLP width of layer ``l``, ``V`` = vocabulary,
``H``/``K`` = query/key-value heads of size ``h``, ``c`` = keys the token attends to):

- A matrix product with a ``[n_in, n_out]`` weight costs ``2 * n_in * n_out`` FLOPs (multiply + add).
- Attention of one query over ``c`` keys costs ``4 * H * h * c`` (``q k^T`` and ``p v``); with a sliding
  window ``w`` only ``min(c, w)`` keys count.
- Per layer: projections ``2 * d * (H + 2 K) * h + 2 * H * h * d``, MLP ``2 * 3 * d * f_l`` (gated: gate,
  up, down) or ``2 * 2 * d * f_l`` (plain: in, out). Head: ``2 * d * V`` for each position whose logits
  are computed (generation computes them for the last prompt position only).
- Embedding look-ups, biases, norms, activations, softmax and rotary embeddings are element-wise work of
  O(d) per token and are not counted (well under 1% at the shapes we benchmark).

Prefill of ``T`` prompt tokens: position ``i`` (1-based) attends to ``i`` keys, so the mean context is
``(T + 1) / 2`` (the useful, causal FLOPs; a dense kernel that masks computes ``T`` per position).
Decode of ``N`` tokens after a ``T``-token prompt: step ``s`` (1-based) attends to ``T + s`` keys.

FLOPs are the right yardstick when a phase is compute-bound (prefill, large batches). Decoding is often
bound by memory traffic instead, so the module also gives a lower bound on the bytes moved per token
(weights once per forward, shared by the batch, plus every sequence's cached keys and values), whose
base/variant ratio is the ideal speedup of a bandwidth-bound phase.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from taskprune.errors import ModelError
from taskprune.model.arch import MLPKind, get_architecture, mlp_width, num_layers
from taskprune.model.checkpoint import LAYER_WIDTHS_KEY, checkpoint_widths, resolve_checkpoint


@dataclass(frozen=True)
class ModelShape:
    """Everything that determines a causal LM's parameter count and FLOPs per token."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_widths: tuple[int, ...]  # d_ff of every decoder layer, in order
    mlp_kind: MLPKind  # how the MLP holds its neurons: gate/up/down (3 matrices) vs in/out (2 matrices)
    tied_embeddings: bool  # lm_head shares the input embedding matrix
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool  # biases on the MLP's in and out projections
    norm_params_per_vector: int  # 1 for RMSNorm (weight), 2 for LayerNorm (weight + bias)
    learned_positions: int  # rows of a learned position embedding (GPT-2's wpe), 0 for rotary
    attention_windows: tuple[int | None, ...]  # sliding window per layer (None: full causal attention)

    @property
    def num_layers(self) -> int:
        return len(self.mlp_widths)

    @property
    def q_width(self) -> int:
        """H * h: width of the query projection and of the attention output."""
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """K * h: width of each of the key and value projections."""
        return self.num_kv_heads * self.head_dim


@dataclass(frozen=True)
class ParamCounts:
    """Unique parameters (tied matrices counted once), split by where they live."""

    total: int
    mlp: int  # the MLP modules' projections (weights and biases)
    attention: int  # q/k/v/o projections (weights and biases)
    embedding: int  # token (+ learned position) embeddings
    lm_head: int  # 0 when tied to the token embedding
    norms: int


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    return get(decoder=True) if callable(get) else config


def _first(config: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        value = getattr(config, key, None)
        if value is not None:
            return value
    return default


def shape_from_config(config: Any, mlp_widths: Sequence[int] | None = None) -> ModelShape:
    """The :class:`ModelShape` of a transformers config.

    ``mlp_widths`` are the per-layer MLP widths; by default the config's ``taskprune_layer_widths`` (set
    by per-layer pruning) or else its uniform ``intermediate_size`` / ``n_inner``.
    """
    config = _text_config(config)
    architecture = get_architecture(config)
    model_type = config.model_type
    layers = num_layers(config)
    if mlp_widths is None:
        stored = getattr(config, LAYER_WIDTHS_KEY, None)
        mlp_widths = list(stored) if stored else [mlp_width(config)] * layers
    widths = tuple(int(w) for w in mlp_widths)
    if len(widths) != layers:
        raise ModelError(f"{model_type}: got {len(widths)} MLP widths for a model with {layers} layers")
    if any(w < 0 for w in widths):
        raise ModelError(f"{model_type}: MLP widths must be non-negative, got {list(widths)}")

    hidden = int(_first(config, "hidden_size", "n_embd"))
    heads = int(_first(config, "num_attention_heads", "n_head"))
    kv_heads = int(_first(config, "num_key_value_heads", default=heads))
    head_dim = int(_first(config, "head_dim", default=hidden // heads))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    counting = architecture.counting(config)
    if counting.full_heads:
        kv_heads, head_dim = heads, hidden // heads

    return ModelShape(
        model_type=model_type,
        vocab_size=int(config.vocab_size),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        mlp_widths=widths,
        mlp_kind=architecture.mlp.mlp_kind,
        tied_embeddings=tied,
        qkv_bias=counting.qkv_bias,
        o_bias=counting.o_bias,
        mlp_bias=counting.mlp_bias,
        norm_params_per_vector=counting.norm_params_per_vector,
        learned_positions=counting.learned_positions,
        attention_windows=_attention_windows(config, layers, counting.window_all_layers),
    )


def _attention_windows(config: Any, layers: int, window_all_layers: bool) -> tuple[int | None, ...]:
    """Sliding-window size per layer (``None`` = full causal attention)."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return tuple(window if t == "sliding_attention" else None for t in layer_types)
    if window_all_layers and window:
        return (int(window),) * layers
    return (None,) * layers


def checkpoint_shape(path: str | os.PathLike[str]) -> ModelShape:
    """The :class:`ModelShape` of a checkpoint directory (or hub id), widths from its weights' headers."""
    from transformers import AutoConfig

    local = resolve_checkpoint(path, "bench")
    config = AutoConfig.from_pretrained(str(local))
    return shape_from_config(config, checkpoint_widths(local, config))


# ------------------------------------------------------------------------------------ parameters


def mlp_params_per_layer(shape: ModelShape) -> list[int]:
    """Parameters of each layer's MLP: ``3 d f`` (gated) or ``2 d f`` (plain), plus biases ``f + d``
    (plain: in-proj bias ``f``, out-proj bias ``d``; gated with bias: ``2 f + d``); see :class:`MLPKind`."""
    d, kind = shape.hidden_size, shape.mlp_kind
    return [kind.weight_params(d, f) + (kind.bias_params(d, f) if shape.mlp_bias else 0) for f in shape.mlp_widths]


def attention_params_per_layer(shape: ModelShape) -> int:
    """q, k, v: ``d x (H + 2K) h`` (+ bias ``(H + 2K) h``); o: ``H h x d`` (+ bias ``d``)."""
    d, qkv = shape.hidden_size, shape.q_width + 2 * shape.kv_width
    return d * qkv + (qkv if shape.qkv_bias else 0) + shape.q_width * d + (d if shape.o_bias else 0)


def param_counts(shape: ModelShape) -> ParamCounts:
    """Closed-form count of the unique parameters of the *ForCausalLM model."""
    d, layers = shape.hidden_size, shape.num_layers
    mlp = sum(mlp_params_per_layer(shape))
    attention = layers * attention_params_per_layer(shape)
    embedding = shape.vocab_size * d + shape.learned_positions * d
    lm_head = 0 if shape.tied_embeddings else shape.vocab_size * d
    norms = (2 * layers + 1) * shape.norm_params_per_vector * d  # two per layer + the final norm
    total = mlp + attention + embedding + lm_head + norms
    return ParamCounts(
        total=total, mlp=mlp, attention=attention, embedding=embedding, lm_head=lm_head, norms=norms
    )


# ----------------------------------------------------------------------------------------- FLOPs


def matmul_flops_per_token(shape: ModelShape, with_logits: bool = True) -> int:
    """``2 x`` the weights every token multiplies: projections, MLPs, and (optionally) the LM head."""
    d = shape.hidden_size
    per_layer_proj = d * (shape.q_width + 2 * shape.kv_width) + shape.q_width * d
    mlp = sum(shape.mlp_kind.weight_params(d, f) for f in shape.mlp_widths)
    head = shape.vocab_size * d if with_logits else 0
    return 2 * (shape.num_layers * per_layer_proj + mlp + head)


def attention_flops(shape: ModelShape, context: int) -> int:
    """Score and value products of one query token over ``context`` keys, summed over layers."""
    if context < 1:
        raise ValueError(f"context must be at least 1 (the token itself), got {context}")
    total = 0
    for window in shape.attention_windows:
        keys = context if window is None else min(context, window)
        total += 4 * shape.q_width * keys
    return total


def flops_per_token(shape: ModelShape, context: int, with_logits: bool = True) -> int:
    """FLOPs to process one token that attends to ``context`` keys (itself included)."""
    return matmul_flops_per_token(shape, with_logits) + attention_flops(shape, context)


def prefill_flops_per_token(shape: ModelShape, prompt_tokens: int, logits_positions: int = 1) -> float:
    """Mean FLOPs per prompt token of a prefill of ``prompt_tokens`` tokens (causal attention: position
    ``i`` attends to ``i`` keys) that computes logits for the last ``logits_positions`` positions."""
    if prompt_tokens < 1 or not 0 <= logits_positions <= prompt_tokens:
        raise ValueError(
            f"need prompt_tokens >= 1 and 0 <= logits_positions <= prompt_tokens, got "
            f"{prompt_tokens}, {logits_positions}"
        )
    body = matmul_flops_per_token(shape, with_logits=False) * prompt_tokens
    head = 2 * shape.vocab_size * shape.hidden_size * logits_positions
    attention = sum(attention_flops(shape, i) for i in range(1, prompt_tokens + 1))
    return (body + head + attention) / prompt_tokens


def decode_flops_per_token(shape: ModelShape, prompt_tokens: int, new_tokens: int) -> float:
    """Mean FLOPs per generated token over ``new_tokens`` decode steps after a ``prompt_tokens`` prompt:
    step ``s`` feeds one token that attends to ``prompt_tokens + s`` keys and computes its logits."""
    if new_tokens < 1 or prompt_tokens < 0:
        raise ValueError(f"need new_tokens >= 1 and prompt_tokens >= 0, got {new_tokens}, {prompt_tokens}")
    steps = range(prompt_tokens + 1, prompt_tokens + new_tokens + 1)
    return sum(flops_per_token(shape, c) for c in steps) / new_tokens


# ------------------------------------------------------------------------------- memory traffic


def weight_bytes(shape: ModelShape, dtype_bytes: int) -> int:
    """Bytes of the matrices a forward pass multiplies by (projections, MLPs, LM head), each read once."""
    return matmul_flops_per_token(shape, with_logits=True) // 2 * dtype_bytes


def kv_bytes(shape: ModelShape, context: int, dtype_bytes: int) -> int:
    """Bytes of cached keys and values one query token reads at ``context`` (sliding windows capped):
    ``2 * K * h * min(c, w)`` elements per layer."""
    total = 0
    for window in shape.attention_windows:
        keys = context if window is None else min(context, window)
        total += 2 * shape.kv_width * keys
    return total * dtype_bytes


def prefill_bytes_per_token(
    shape: ModelShape, batch_size: int, prompt_tokens: int, dtype_bytes: int
) -> float:
    """Lower bound on memory traffic per prompt token of a batched prefill: the weights once per forward
    (shared by ``batch_size * prompt_tokens`` tokens) plus the token's own key/value write."""
    return weight_bytes(shape, dtype_bytes) / (batch_size * prompt_tokens) + kv_bytes(shape, 1, dtype_bytes)


def decode_bytes_per_token(
    shape: ModelShape, batch_size: int, prompt_tokens: int, new_tokens: int, dtype_bytes: int
) -> float:
    """Lower bound on memory traffic per generated token of batched decoding: the weights once per step
    (shared by the ``batch_size`` sequences) plus the sequence's own cached keys and values, read at every
    step (mean over steps ``s = 1..new_tokens`` at context ``prompt_tokens + s``).

    At small hidden sizes and batch 32 the KV-cache term dominates and does not shrink with the MLP, so
    when decoding is bandwidth-bound the achievable speedup follows this ratio, not the FLOP ratio.
    """
    steps = range(prompt_tokens + 1, prompt_tokens + new_tokens + 1)
    kv = sum(kv_bytes(shape, c, dtype_bytes) for c in steps) / new_tokens
    return weight_bytes(shape, dtype_bytes) / batch_size + kv
