"""Stream per-neuron activation statistics of one model on one prompt set.

Selectivity (and every other neuron score) is a function of a few per-neuron sufficient statistics of the
per-prompt activation, so this stage reads each prompt once and keeps only O(layers x neurons) numbers.

For decoder layer ``l``, neuron ``j`` and a prompt ``p`` with non-padding tokens ``t = 1..T_p``:

    a[t, j]  = input of the MLP output projection = act_fn(gate(x_t))_j * up(x_t)_j   (act(fc(x_t))_j if not gated)
    v_p[j]   = (1 / T_p) * sum_t |a[t, j]|                                    per-prompt mean |activation|

and over the prompts ``p = 1..n`` of the dataset (float64, merged batch by batch with Chan et al.'s
parallel update, so the result does not depend on batch size, order or padding side):

    n        number of prompts
    mean[j]  = (1 / n) * sum_p v_p[j]
    m2[j]    = sum_p (v_p[j] - mean[j])^2             (population variance = m2 / n)

Extra columns (documented contract extensions, used by the Wanda-style score and by sanity checks):

    sq_mean[j]    = (1 / N) * sum_{p,t} a[t, j]^2     token-level mean squared activation, N = tokens
    tokens        = N, the number of non-padding tokens seen (the same on every row)
    w_out_norm[j] = || W_out[:, j] ||_2               L2 norm of what neuron j writes to the residual stream

``a`` is captured by ONE forward pre-hook per layer on the output projection (``down_proj``, ``c_proj``,
``dense_4h_to_h``): the hook reads the tensor the model already computed, it never recomputes gate/up.
The forward runs the decoder stack only (no LM head), under ``torch.inference_mode()``, on batches built
by a token budget from length-sorted prompts (longest first, so an out-of-memory batch fails at once).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from taskprune.errors import ConfigError
from taskprune.model.activations import (
    collect_stats,
    load_model_and_tokenizer,
    load_prompts,
    tokenize_prompts,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- the statistics


# ------------------------------------------------------------------------------ tokens and batches


# ------------------------------------------------------------------------------------ streaming


# ------------------------------------------------------------------------------------------ files


# -------------------------------------------------------------------------------------------- CLI


def _chat_template_option(model_section: Any, source: str) -> bool:
    """``model.chat_template`` from a full model section or a partial ``{"chat_template": bool}``."""
    from taskprune.config import ModelConfig, validate_section

    if model_section is None:
        return False
    if not isinstance(model_section, dict):
        raise ConfigError(f"{source}: section 'model' must be a mapping, got {type(model_section).__name__}")
    if "task" in model_section:
        return bool(validate_section(model_section, ModelConfig, "model", source).chat_template)
    unknown = [k for k in model_section if k != "chat_template"]
    if unknown:
        raise ConfigError(f"{source}: unknown key 'model.{unknown[0]}' (this stage reads model.chat_template)")
    value = model_section.get("chat_template", False)
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: key 'model.chat_template' has bad value {value!r}: expected true or false")
    return value


def _chat_template_flag(value: Any) -> bool:
    """The top-level ``chat_template`` option (what the stats rule passes), validated."""
    if not isinstance(value, bool):
        raise ConfigError(f"--options: key 'chat_template' has bad value {value!r}: expected true or false")
    return value


def add_arguments(parser: Any) -> None:
    from taskprune.options import add_config_arguments

    parser.add_argument("--model-path", required=True, help="checkpoint directory (or hub id) of the model")
    parser.add_argument("--data", required=True, help="dataset Parquet with a 'prompt' column (e.g. calibration)")
    parser.add_argument("--output", required=True, help="statistics Parquet to write (results/stats/{model}/{dataset}.parquet)")
    parser.add_argument("--model", help="model name (with --config: read models.<name>.chat_template)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(parser)


def run(args: Any) -> int:
    import torch

    from taskprune.config import StatsConfig
    from taskprune.io import write_parquet
    from taskprune.options import stage_options

    sections = {"stats": StatsConfig, "device": "auto", "chat_template": False, "model": None}
    opts = stage_options(args, sections, model=args.model)
    source = ", ".join(args.config) if getattr(args, "config", None) else "--options"
    # Either {"chat_template": true} (the rule) or the model's section {"model": {"chat_template": true, ...}}.
    chat_template = _chat_template_option(opts.model, source) or _chat_template_flag(opts.chat_template)
    cfg: StatsConfig = opts.stats

    prompts = load_prompts(args.data)
    model, tokenizer = load_model_and_tokenizer(args.model_path, opts.device)
    from taskprune.model.loading import model_context_length

    # Never feed positions the model has no embedding for (GPT-2 crashes, RoPE models extrapolate).
    context = model_context_length(model.config)
    max_length = min(cfg.max_length, context) if context else cfg.max_length
    tokenized = tokenize_prompts(tokenizer, prompts, max_length=max_length, chat_template=chat_template)
    log.info(
        "%s on %s: %d prompts, %d tokens, %s %s",
        args.model_path, args.data, len(prompts), int(tokenized.lengths.sum()),
        next(model.parameters()).device, next(model.parameters()).dtype,
    )
    started = time.perf_counter()
    stats = collect_stats(
        model,
        tokenized.sequences,
        token_budget=cfg.token_budget,
        max_batch_size=cfg.max_batch_size,
        batch_order=cfg.batch_order,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - started
    metadata = {
        "model_path": str(args.model_path),
        "model_type": model.config.model_type,
        "dataset": str(args.data),
        "n_prompts": stats.n,
        "tokens": stats.tokens,
        "n_truncated": tokenized.n_truncated,
        "chat_template": chat_template,
        "stats": cfg.model_dump(),
        "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "layer_widths": stats.widths,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(stats.tokens / seconds, 1) if seconds > 0 else math.inf,
        "torch": torch.__version__,
    }
    write_parquet(stats.to_frame(), args.output, metadata=metadata)
    log.info("wrote %s (%d layers, %d neurons) in %.1f s", args.output, len(stats.widths), sum(stats.widths), seconds)
    return 0
