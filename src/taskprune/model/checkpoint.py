"""The one checkpoint reader: where a checkpoint is, what its safetensors headers say, and loading pruned ones.

- :func:`check_checkpoint_dir` / :func:`resolve_checkpoint`: a local directory (its weight shards checked) or
  a hub id resolved to its local snapshot;
- :func:`read_layout`: config.json and the safetensors headers (no tensor is read): where every MLP tensor
  is and each layer's MLP width, checked for consistency; :func:`checkpoint_widths` and
  :func:`bytes_on_disk` for the benchmark; :func:`layer_widths` reads the same widths off a loaded model;
- :func:`load_pruned`: loading checkpoints pruned to per-layer widths.

Why this module exists apart from :mod:`taskprune.prune`: every stage that loads a model may meet a pruned
checkpoint (statistics, evaluation, recovery, benchmarks go through :func:`taskprune.model.loading.load_model`),
but only the pruning stage needs the logic that decides and removes neurons. Keeping the reader and the
loader here means editing the pruning logic reruns pruning and what follows, not the statistics (the rules'
source hashes follow the import graph).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from taskprune.errors import DataError, ModelError, TaskpruneError
from taskprune.model.arch import MLPAdapter, get_adapter, mlp_modules, mlp_width, num_layers

LAYER_WIDTHS_KEY = "taskprune_layer_widths"  # config.json key for per-layer MLP widths (global allocation)


# -------------------------------------------------------------------------------- where it is

# How a hub id becomes a snapshot, per reader: (file patterns fetched, use a cached snapshot without asking
# the hub). Pruning rewrites the safetensors weights and copies the tokenizer and chat-template side files;
# the benchmark also reads *.bin weights and takes a cached snapshot as it is.
HUB_FETCH: dict[str, tuple[tuple[str, ...], bool]] = {
    "prune": (("*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"), False),
    "bench": (("*.json", "*.safetensors", "*.bin", "*.model", "*.txt"), True),
}


def check_checkpoint_dir(path: str | os.PathLike[str]) -> Path | None:
    """Return the directory if ``path`` is a local checkpoint, ``None`` if it looks like a hub id.

    A local directory must hold ``config.json`` and every weight shard its index names.
    """
    p = Path(path)
    if not p.exists():
        if str(path).startswith((".", "/", "results")) or os.sep in str(path).strip("/").split("/", 1)[-1]:
            raise ModelError(f"{p}: model directory not found")
        return None  # a hub id such as Qwen/Qwen2.5-Math-1.5B-Instruct
    if not (p / "config.json").is_file():
        raise ModelError(f"{p}: not a model checkpoint (no config.json)")
    index = p / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing = [s for s in shards if not (p / s).is_file()]
        if missing:
            raise ModelError(f"{p}: checkpoint is missing weight shard(s) {', '.join(missing)}")
    elif not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise ModelError(f"{p}: checkpoint has no weight files (*.safetensors)")
    return p


def resolve_checkpoint(path: str | os.PathLike[str], reader: str = "prune") -> Path:
    """A local checkpoint directory for ``path``: the directory itself (shards checked), or for a hub id (the
    paper's base models) its snapshot in the Hugging Face cache, fetched as ``HUB_FETCH[reader]`` says."""
    local = check_checkpoint_dir(path)
    if local is not None:
        return local
    from huggingface_hub import snapshot_download

    patterns, cache_first = HUB_FETCH[reader]
    if cache_first:
        try:
            return Path(snapshot_download(str(path), allow_patterns=list(patterns), local_files_only=True))
        except Exception:  # not cached: try the hub once
            pass
    try:
        snapshot = snapshot_download(str(path), allow_patterns=list(patterns))
    except Exception as exc:  # huggingface_hub raises many types (offline, not found, auth)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{path}: not a local checkpoint and not downloadable from the hub ({first})") from exc
    resolved = check_checkpoint_dir(snapshot)
    assert resolved is not None
    return resolved


def weight_files(path: str | os.PathLike[str]) -> list[Path]:
    """The weight files of a checkpoint directory (``*.safetensors``, else ``*.bin``)."""
    p = Path(path)
    files = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.bin"))
    if not files:
        raise DataError(f"{p}: checkpoint has no weight files (*.safetensors or *.bin)")
    return files


def bytes_on_disk(path: str | os.PathLike[str]) -> int:
    """Total size of a checkpoint's weight files (tokenizer, config and manifests excluded)."""
    return sum(f.stat().st_size for f in weight_files(path))


# ------------------------------------------------------------------------------ checkpoint layout


@dataclass
class CheckpointLayout:
    """Where the MLP tensors of a safetensors checkpoint are, read from the file headers only."""

    root: Path
    config: dict[str, Any]
    adapter: MLPAdapter
    shards: list[str]  # safetensors file names, relative to root
    index: dict[str, Any] | None  # parsed model.safetensors.index.json, if sharded
    shapes: dict[str, tuple[int, ...]]  # every stored tensor
    mlp_keys: dict[str, tuple[int, str, str]]  # stored key -> (layer, projection attribute, "weight"|"bias")
    widths: list[int]  # d_ff of every layer, read from the weights
    dtypes: dict[str, str] = field(default_factory=dict)  # dtype name -> number of tensors

    @property
    def n_layers(self) -> int:
        return len(self.widths)

    def parameters(self) -> int:
        """Elements of all stored tensors: the parameter count (tied weights are stored once)."""
        return sum(math.prod(s) for s in self.shapes.values())

    def mlp_parameters(self) -> int:
        return sum(math.prod(self.shapes[k]) for k in self.mlp_keys)


def _mlp_key_pattern(adapter: MLPAdapter) -> re.Pattern[str]:
    """Stored names of MLP tensors, with any prefix: ``[...]{layers}.{l}.{mlp}.{proj}.{weight|bias}``.

    The prefix is free because hub checkpoints are not always saved from the *ForCausalLM class (GPT-2's
    original files say ``h.0.mlp.c_fc.weight``, without ``transformer.``).
    """
    layers = re.escape(adapter.layers_path.split(".")[-1])
    projs = "|".join(re.escape(p) for p in (*adapter.in_projs, adapter.out_proj))
    return re.compile(
        rf"(?:^|\.){layers}\.(?P<layer>\d+)\.{re.escape(adapter.mlp_attr)}\.(?P<proj>{projs})\.(?P<param>weight|bias)$"
    )


def neuron_axis(adapter: MLPAdapter, proj: str, param: str) -> int | None:
    """Axis of a stored tensor that indexes neurons (``None``: not indexed by neuron, e.g. down_proj's bias).

    Linear weights are ``[out, in]``, GPT-2 Conv1D weights ``[in, out]``; neurons are the outputs of the input
    projections and the inputs of the output projection.
    """
    return adapter.mlp_kind.neuron_axis(proj == adapter.out_proj, param)


def read_layout(root: Path) -> CheckpointLayout:
    """Read config.json and the safetensors headers; check that every layer's MLP is complete and consistent."""
    from safetensors import safe_open

    config = json.loads((root / "config.json").read_text())
    adapter = get_adapter(SimpleNamespace(**config))
    n_layers = num_layers(SimpleNamespace(**config))

    index_path = root / "model.safetensors.index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else None
    if index is not None:
        shards = sorted(set(index.get("weight_map", {}).values()))
    else:
        shards = sorted(p.name for p in root.glob("*.safetensors"))
    if not shards:
        raise ModelError(f"{root}: no safetensors weights (pruning reads *.safetensors; re-save the model with save_pretrained)")

    pattern = _mlp_key_pattern(adapter)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    mlp_keys: dict[str, tuple[int, str, str]] = {}
    for shard in shards:
        try:
            with safe_open(root / shard, framework="numpy") as fh:  # headers only: no torch needed
                for key in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                    sl = fh.get_slice(key)
                    shapes[key] = tuple(sl.get_shape())
                    dtypes[sl.get_dtype()] = dtypes.get(sl.get_dtype(), 0) + 1
                    m = pattern.search(key)
                    if m:
                        mlp_keys[key] = (int(m["layer"]), m["proj"], m["param"])
        except Exception as exc:  # safetensors' SafetensorError derives from Exception only
            if isinstance(exc, TaskpruneError):
                raise
            raise ModelError(f"{root / shard}: not a readable safetensors file ({exc})") from exc

    by_layer: dict[int, dict[tuple[str, str], str]] = {}
    for key, (layer, proj, param) in mlp_keys.items():
        by_layer.setdefault(layer, {})[(proj, param)] = key
    if sorted(by_layer) != list(range(n_layers)):
        raise ModelError(
            f"{root}: config says {n_layers} layers but the weights hold MLPs for layers {sorted(by_layer)}"
        )
    widths = []
    for layer in range(n_layers):
        found = by_layer[layer]
        for proj in (*adapter.in_projs, adapter.out_proj):
            if (proj, "weight") not in found:
                raise ModelError(f"{root}: no weight for layer {layer}'s {adapter.mlp_attr}.{proj}")
        out_shape = shapes[found[(adapter.out_proj, "weight")]]
        width = out_shape[neuron_axis(adapter, adapter.out_proj, "weight")]  # type: ignore[index]
        fused = adapter.mlp_kind.fused_rows
        for (proj, param), key in found.items():
            axis = neuron_axis(adapter, proj, param)
            expected = width if proj == adapter.out_proj else fused * width
            if axis is not None and shapes[key][axis] != expected:
                raise ModelError(
                    f"{root}: {key} has shape {list(shapes[key])}, inconsistent with MLP width {width} of layer {layer}"
                )
        widths.append(int(width))
    return CheckpointLayout(root, config, adapter, shards, index, shapes, mlp_keys, widths, dtypes)


def checkpoint_widths(path: str | os.PathLike[str], config: Any) -> list[int]:
    """Per-layer MLP widths of a checkpoint directory, read from the safetensors headers (no weights loaded,
    see :func:`read_layout`); for ``*.bin`` weights, from ``config`` (``taskprune_layer_widths`` or the
    uniform width)."""
    if any(f.suffix == ".safetensors" for f in weight_files(path)):
        return read_layout(Path(path)).widths
    stored = getattr(config, LAYER_WIDTHS_KEY, None)
    return list(stored) if stored else [mlp_width(config)] * num_layers(config)


def layer_widths(model: Any) -> list[int]:
    """Actual d_ff of every layer of a loaded model, read from the weights (differs per layer after global
    pruning)."""
    adapter = get_adapter(model)
    widths = []
    for mlp in mlp_modules(model):
        out = getattr(mlp, adapter.out_proj)
        weight = out.weight
        # Conv1D stores [in, out]; Linear stores [out, in]; the neurons are the out-proj *inputs*.
        widths.append(int(weight.shape[0] if adapter.mlp_kind.transposed else weight.shape[1]))
    return widths


# --------------------------------------------------------------------------------------- loading


def load_pruned(path: str | Path, dtype: Any = None) -> Any:
    """Load a pruned checkpoint (uniform or per-layer widths) as a *ForCausalLM model in eval mode.

    Uniform checkpoints are loaded by stock ``AutoModelForCausalLM.from_pretrained``. For per-layer widths
    (``config.taskprune_layer_widths``), the model is first built by ``from_pretrained`` with a placeholder
    MLP width of 1 (so every non-MLP weight goes through transformers' own loading, key renames and weight
    tying, and no full-width MLP is ever allocated), then each layer's MLP projections receive their stored
    tensors at their true shapes. ``dtype=None`` keeps the stored dtype.
    """
    import copy

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(str(path))
    widths = getattr(config, LAYER_WIDTHS_KEY, None)
    if not widths:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or "auto").eval()

    root = check_checkpoint_dir(path)
    if root is None:
        raise ModelError(f"{path}: per-layer-width checkpoints must be local directories")
    layout = read_layout(root)
    adapter = layout.adapter
    if list(widths) != layout.widths:
        raise ModelError(f"{root}: config {LAYER_WIDTHS_KEY} {list(widths)} disagrees with the weights {layout.widths}")

    placeholder = copy.deepcopy(config)
    setattr(placeholder, adapter.width_key, 1)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the placeholder MLPs are "mismatched" by design; we replace them below
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(root), config=placeholder, dtype=dtype or "auto", ignore_mismatched_sizes=True,
            output_loading_info=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    if info["missing_keys"] or info["unexpected_keys"]:
        raise ModelError(
            f"{root}: weights do not fit the model (missing {sorted(info['missing_keys'])[:3]}, "
            f"unexpected {sorted(info['unexpected_keys'])[:3]})"
        )
    setattr(model.config, adapter.width_key, getattr(config, adapter.width_key))

    from safetensors import safe_open

    by_module: dict[tuple[int, str, str], torch.Tensor] = {}
    for shard in layout.shards:
        with safe_open(root / shard, framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118
                if key in layout.mlp_keys:
                    by_module[layout.mlp_keys[key]] = fh.get_tensor(key)
    for layer, mlp in enumerate(mlp_modules(model)):
        for proj in (*adapter.in_projs, adapter.out_proj):
            module = getattr(mlp, proj)
            for param in ("weight", "bias"):
                current = getattr(module, param, None)
                if current is None:
                    continue
                stored = by_module.get((layer, proj, param))
                if stored is None:
                    raise ModelError(f"{root}: no {param} stored for layer {layer}'s {adapter.mlp_attr}.{proj}")
                setattr(module, param, torch.nn.Parameter(stored.to(current.dtype), requires_grad=current.requires_grad))
            _sync_shape_attributes(module)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = widths[layer]
    if layer_widths(model) != list(widths):
        raise ModelError(f"{root}: loaded MLP widths {layer_widths(model)} differ from {list(widths)}")
    return model.eval()


def _sync_shape_attributes(module: Any) -> None:
    """Keep a projection's size attributes in step with its new weight (used by forward and by peft)."""
    weight = module.weight
    if hasattr(module, "nf") and hasattr(module, "nx"):  # GPT-2 Conv1D, weight [in, out]
        module.nx, module.nf = int(weight.shape[0]), int(weight.shape[1])
    if hasattr(module, "in_features") and hasattr(module, "out_features"):  # nn.Linear, weight [out, in]
        module.out_features, module.in_features = int(weight.shape[0]), int(weight.shape[1])
