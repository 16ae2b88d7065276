"""Architecture adapters: where the MLP neurons of a causal LM live.

Statistics, scores, pruning and benchmarks all need the same three facts about a model: its decoder
layers, the MLP's input projection(s) whose output rows are the neurons, and the output projection whose
input columns are the neurons. A small registry maps ``config.model_type`` to those facts so every
stage supports the same architectures, and an unsupported model fails with one line listing them.

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

from dataclasses import dataclass
from typing import Any, Literal

from taskprune.errors import ModelError

MLPKind = Literal["gated", "gated_fused", "conv1d", "linear"]


@dataclass(frozen=True)
class MLPAdapter:
    """How to find and reshape the MLP of one family of architectures."""

    kind: MLPKind
    layers_path: str  # dotted attribute path from the *ForCausalLM model to the list of decoder layers
    mlp_attr: str  # attribute of a decoder layer holding the MLP
    in_projs: tuple[str, ...]  # MLP attributes whose output rows (Conv1D: columns) are the neurons
    out_proj: str  # MLP attribute whose input columns (Conv1D: rows) are the neurons
    width_key: str  # config attribute holding d_ff

    @property
    def gated(self) -> bool:
        return self.kind in ("gated", "gated_fused")


_GATED = MLPAdapter("gated", "model.layers", "mlp", ("gate_proj", "up_proj"), "down_proj", "intermediate_size")

ADAPTERS: dict[str, MLPAdapter] = {
    "llama": _GATED,
    "qwen2": _GATED,
    "mistral": _GATED,
    "gemma": _GATED,
    "phi3": MLPAdapter("gated_fused", "model.layers", "mlp", ("gate_up_proj",), "down_proj", "intermediate_size"),
    "gpt2": MLPAdapter("conv1d", "transformer.h", "mlp", ("c_fc",), "c_proj", "n_inner"),
    "gpt_neox": MLPAdapter("linear", "gpt_neox.layers", "mlp", ("dense_h_to_4h",), "dense_4h_to_h", "intermediate_size"),
}


def supported_types() -> str:
    return ", ".join(sorted(ADAPTERS))


def get_adapter(model_or_config: Any) -> MLPAdapter:
    """The adapter for a model or config, or a one-line :class:`ModelError` listing supported types."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise ModelError(
            f"model type '{model_type}' has no supported MLP (supported model types: {supported_types()})"
        )
    return ADAPTERS[model_type]


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
    return weights if adapter.kind == "conv1d" else [w.T for w in weights]
