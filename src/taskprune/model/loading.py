"""Loading models and tokenizers the same way in every stage.

One place decides the device and dtype (``device: auto`` -> CUDA in bfloat16 when available, else CPU in
float32), checks a local checkpoint directory (:mod:`taskprune.model.checkpoint`), gives a tokenizer without a
pad token one (the EOS token, left padding for generation), and loads checkpoints whose MLPs were pruned to
per-layer widths (:func:`~taskprune.model.checkpoint.load_pruned`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from taskprune.errors import ModelError
from taskprune.model.arch import ARCHITECTURES, get_adapter
from taskprune.model.checkpoint import LAYER_WIDTHS_KEY, check_checkpoint_dir, load_pruned


def resolve_device(device: str = "auto") -> tuple[Any, Any]:
    """(torch.device, dtype) for ``auto|cpu|cuda``: bf16 on CUDA, fp32 on CPU."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device: 'cuda' was requested but no CUDA device is available (use auto or cpu)")
    if device not in ("cpu", "cuda"):
        raise ModelError(f"device: expected auto, cpu or cuda, got {device!r}")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return torch.device(device), dtype


def load_tokenizer(path: str | os.PathLike[str], padding_side: str = "left") -> Any:
    """A tokenizer with a pad token (the EOS token when the checkpoint has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"{path}: tokenizer has neither a pad token nor an EOS token")
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_model(path: str | os.PathLike[str], device: str = "auto", dtype: Any = None) -> Any:
    """Load a causal LM (stock, or pruned to per-layer widths) in eval mode on the resolved device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    check_checkpoint_dir(path)
    torch_device, default_dtype = resolve_device(device)
    dtype = dtype or default_dtype
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: cannot read the model config ({_first_line(exc)})") from exc
    get_adapter(config)  # an unsupported architecture fails here, in one line, before loading weights
    try:
        if getattr(config, LAYER_WIDTHS_KEY, None):  # per-layer widths need our loader
            model = load_pruned(path, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except ModelError:
        raise
    except Exception as exc:  # safetensors' SafetensorError, OSError, shape mismatches: all one line
        files = ", ".join(sorted(f.name for f in Path(path).glob("*.safetensors"))) or "the checkpoint"
        raise ModelError(
            f"{path}: cannot load the weights from {files} ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    return model.to(torch_device).eval()


def shape_family_config_class(model_type: str) -> Any:
    """The transformers config class a bench shape family of ``model_type`` is built with (``KeyError`` for a
    type not in :data:`~taskprune.model.arch.SHAPE_FAMILY_TYPES`)."""
    import transformers

    name = ARCHITECTURES[model_type].numbers_config
    if name is None:
        raise KeyError(model_type)
    return getattr(transformers, name)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def model_context_length(config: Any) -> int | None:
    """The longest sequence the model's positions support (None when unbounded or unknown)."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
