"""Architecture adapters: where the MLP neurons of a causal LM live.

Statistics, scores, pruning and benchmarks all need the same three facts about a model: its decoder
layers, the MLP's input projection(s) whose output rows are the neurons, and the output projection whose
input columns are the neurons. A small registry maps ``config.model_type`` to those facts so every
stage supports the same architectures, and an unsupported model fails with one line listing them.

Two registries, so that supporting a new model is one entry:

- ``MLP_KINDS``: per kind of MLP, how its stored tensors hold the neurons (input projections per neuron,
  transposed Conv1D weights, fused input rows) and the parameter and FLOP formula that follows from it;
- ``ARCHITECTURES``: per ``config.model_type``, its MLP kind and module names (:class:`MLPAdapter`), the
  counting facts the FLOP formulas need beyond the shapes (biases, norms, learned positions), and whether a
  bench shape family can build it from its numbers (the config's allowed ``model_type`` values).

Neuron ``j`` of layer ``l`` is, per kind:

- ``gated`` (Llama, Qwen2, Mistral, Gemma): row ``j`` of ``gate_proj.weight`` and ``up_proj.weight``
  (each ``[d_ff, d_model]``), column ``j`` of ``down_proj.weight`` (``[d_model, d_ff]``).
- ``gated_fused`` (Phi-3): rows ``j`` and ``d_ff + j`` of ``gate_up_proj.weight`` (``[2 d_ff, d_model]``).
- ``conv1d`` (GPT-2): column ``j`` of ``c_fc.weight`` (``[d_model, d_ff]``, transposed layout) and entry
  ``j`` of ``c_fc.bias``; row ``j`` of ``c_proj.weight`` (``[d_ff, d_model]``).
- ``linear`` (GPT-NeoX): row ``j`` of ``dense_h_to_4h.weight`` and entry ``j`` of its bias; column ``j``
  of ``dense_4h_to_h.weight``.

In every case the activation of neuron ``j`` is entry ``j`` of the input of the output projection, so a
single forward pre-hook on that module captures ``a = act_fn(gate(x)) * up(x)`` (or ``act(fc(x))``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from taskprune.errors import ModelError


@dataclass(frozen=True)
class MLPKind:
    """How one kind of MLP stores its neurons, and the parameter and FLOP formula that follows from it.

    An MLP of width ``f`` in a model of hidden size ``d`` has ``weights_per_neuron * d * f`` weights, each
    multiplied once per token (``2 * weights_per_neuron * d * f`` FLOPs per token), and, with biases,
    ``in_matrices * f + d`` bias entries (input projections' ``f`` each, the output projection's ``d``).
    """

    name: str
    in_matrices: int  # input projections per neuron: 2 gated (gate, up), 1 plain
    transposed: bool = False  # GPT-2's Conv1D stores weights [in, out]; nn.Linear stores [out, in]
    fused_rows: int = 1  # rows per neuron in one stored input tensor (Phi-3's gate_up_proj: 2)

    @property
    def gated(self) -> bool:
        return self.in_matrices == 2

    @property
    def weights_per_neuron(self) -> int:
        """Weight entries per neuron and hidden unit: the input projections' and the output projection's."""
        return self.in_matrices + 1

    def weight_params(self, hidden: int, width: int) -> int:
        return self.weights_per_neuron * hidden * width

    def bias_params(self, hidden: int, width: int) -> int:
        return self.in_matrices * width + hidden

    def neuron_axis(self, out_proj: bool, param: str) -> int | None:
        """Axis of a stored tensor that indexes neurons (``None``: not indexed by neuron, e.g. down_proj's
        bias). Neurons are the outputs of the input projections and the inputs of the output projection."""
        if out_proj:
            return None if param == "bias" else (0 if self.transposed else 1)
        return 0 if param == "bias" else (1 if self.transposed else 0)


MLP_KINDS: dict[str, MLPKind] = {
    kind.name: kind
    for kind in (
        MLPKind("gated", in_matrices=2),
        MLPKind("gated_fused", in_matrices=2, fused_rows=2),
        MLPKind("conv1d", in_matrices=1, transposed=True),
        MLPKind("linear", in_matrices=1),
    )
}


@dataclass(frozen=True)
class MLPAdapter:
    """How to find and reshape the MLP of one family of architectures."""

    kind: str  # a key of MLP_KINDS
    layers_path: str  # dotted attribute path from the *ForCausalLM model to the list of decoder layers
    mlp_attr: str  # attribute of a decoder layer holding the MLP
    in_projs: tuple[str, ...]  # MLP attributes whose output rows (Conv1D: columns) are the neurons
    out_proj: str  # MLP attribute whose input columns (Conv1D: rows) are the neurons
    width_key: str  # config attribute holding d_ff

    def __post_init__(self) -> None:
        if self.kind not in MLP_KINDS:
            raise ValueError(f"unknown MLP kind {self.kind!r} (known: {', '.join(MLP_KINDS)})")

    @property
    def mlp_kind(self) -> MLPKind:
        return MLP_KINDS[self.kind]

    @property
    def gated(self) -> bool:
        return self.mlp_kind.gated


@dataclass(frozen=True)
class Counting:
    """What parameter and FLOP counts need beyond the shapes (see :mod:`taskprune.model.flops`)."""

    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool  # biases on the MLP's in and out projections
    norm_params_per_vector: int  # 1 for RMSNorm (weight), 2 for LayerNorm (weight + bias)
    learned_positions: int = 0  # rows of a learned position embedding (GPT-2's wpe), 0 for rotary
    full_heads: bool = False  # multi-head attention: K = H heads of size d / H, whatever else the config says
    window_all_layers: bool = False  # config.sliding_window (if set) applies to every layer without layer_types


@dataclass(frozen=True)
class Architecture:
    """One supported ``config.model_type``."""

    model_type: str
    mlp: MLPAdapter
    counting: Callable[[Any], Counting]  # its counting facts, from its (text) config
    numbers_config: str | None = None  # transformers config class a bench shape family builds it with


def _configurable_bias(config: Any) -> Counting:  # Llama, Gemma
    bias = bool(getattr(config, "attention_bias", False))
    return Counting(bias, bias, bool(getattr(config, "mlp_bias", False)), 1)


def _no_bias(config: Any) -> Counting:  # Phi-3
    return Counting(False, False, False, 1)


def _mistral(config: Any) -> Counting:
    return Counting(False, False, False, 1, window_all_layers=True)


def _qwen2(config: Any) -> Counting:
    return Counting(True, False, False, 1)


def _gpt2(config: Any) -> Counting:
    learned_positions = int(config.n_positions)
    if getattr(config, "add_cross_attention", False):
        raise ModelError("gpt2 with add_cross_attention is an encoder-decoder model, not a causal LM")
    return Counting(True, True, True, 2, learned_positions=learned_positions, full_heads=True)


def _gpt_neox(config: Any) -> Counting:
    bias = bool(getattr(config, "attention_bias", True))
    return Counting(bias, bias, True, 2, full_heads=True)


_GATED = MLPAdapter("gated", "model.layers", "mlp", ("gate_proj", "up_proj"), "down_proj", "intermediate_size")

ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a
    for a in (
        Architecture("llama", _GATED, _configurable_bias, numbers_config="LlamaConfig"),
        Architecture("qwen2", _GATED, _qwen2, numbers_config="Qwen2Config"),
        Architecture("mistral", _GATED, _mistral),
        Architecture("gemma", _GATED, _configurable_bias),
        Architecture(
            "phi3", MLPAdapter("gated_fused", "model.layers", "mlp", ("gate_up_proj",), "down_proj", "intermediate_size"),
            _no_bias,
        ),
        Architecture("gpt2", MLPAdapter("conv1d", "transformer.h", "mlp", ("c_fc",), "c_proj", "n_inner"), _gpt2),
        Architecture(
            "gpt_neox",
            MLPAdapter("linear", "gpt_neox.layers", "mlp", ("dense_h_to_4h",), "dense_4h_to_h", "intermediate_size"),
            _gpt_neox,
        ),
    )
}

# model types a bench shape family (config ``bench.shapes``) can be built as from its numbers
SHAPE_FAMILY_TYPES: tuple[str, ...] = tuple(t for t, a in ARCHITECTURES.items() if a.numbers_config)


def supported_types() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def get_architecture(model_or_config: Any) -> Architecture:
    """The architecture of a model or config, or a one-line :class:`ModelError` listing supported types."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ModelError(
            f"model type '{model_type}' has no supported MLP (supported model types: {supported_types()})"
        )
    return ARCHITECTURES[model_type]


def get_adapter(model_or_config: Any) -> MLPAdapter:
    """The MLP adapter of a model or config (a one-line :class:`ModelError` for an unsupported one)."""
    return get_architecture(model_or_config).mlp


def _getattr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def decoder_layers(model: Any) -> list[Any]:
    """The decoder layers of a *ForCausalLM model, in order."""
    adapter = get_adapter(model)
    try:
        return list(_getattr_path(model, adapter.layers_path))
    except AttributeError as exc:
        raise ModelError(f"model of type '{model.config.model_type}' has no '{adapter.layers_path}'") from exc


def mlp_modules(model: Any) -> list[Any]:
    adapter = get_adapter(model)
    return [getattr(layer, adapter.mlp_attr) for layer in decoder_layers(model)]


def out_proj_modules(model: Any) -> list[Any]:
    """The MLP output projection of every layer; its input is the neuron activation vector."""
    adapter = get_adapter(model)
    return [getattr(mlp, adapter.out_proj) for mlp in mlp_modules(model)]


def mlp_width(config: Any) -> int:
    """d_ff of a uniform model (``n_inner`` of GPT-2 defaults to 4 x hidden)."""
    adapter = get_adapter(config)
    width = getattr(config, adapter.width_key, None)
    if width is None and adapter.kind == "conv1d":
        width = 4 * config.n_embd
    if width is None:
        raise ModelError(f"config of type '{config.model_type}' has no '{adapter.width_key}'")
    return int(width)


def num_layers(config: Any) -> int:
    for key in ("num_hidden_layers", "n_layer"):
        if getattr(config, key, None) is not None:
            return int(getattr(config, key))
    raise ModelError(f"config of type '{config.model_type}' does not say how many layers it has")


def backbone(model: Any) -> Any:
    """The decoder stack without the LM head (``model.model``, ``model.transformer``, ``model.gpt_neox``).

    Activation statistics need only the MLP inputs, so they run this instead of the full causal LM and
    skip the vocabulary projection (about 15% of Qwen2.5-1.5B's forward FLOPs).
    """
    get_adapter(model)  # fail early, with the supported list, on an unsupported model
    return getattr(model, "base_model", model)


def out_proj_neuron_weights(model: Any) -> list[Any]:
    """Per layer, the output-projection weights of every neuron as rows: a ``[d_ff_l, d_model]`` view.

    Row ``j`` is what neuron ``j`` writes into the residual stream (column ``j`` of ``down_proj.weight``,
    row ``j`` of GPT-2's Conv1D ``c_proj.weight``).
    """
    adapter = get_adapter(model)
    weights = [module.weight for module in out_proj_modules(model)]
    return weights if adapter.mlp_kind.transposed else [w.T for w in weights]
