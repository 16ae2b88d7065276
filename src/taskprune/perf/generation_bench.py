"""Benchmark batched generation against a batch-1 loop: is evaluating hundreds of variants affordable?

Generates the same prompts (the first ``--n-prompts`` of a task's eval split) greedily with

- ``taskprune``: our loop (:func:`taskprune.model.generate.generate`) at each batch size, and
- ``hf_generate``: stock ``model.generate(do_sample=False)`` over the prompts in chunks of the batch size
  (left padded), the usual baseline,

and writes one row per (implementation, batch size) to ``results/bench/generation.parquet``: new tokens,
median wall and CPU seconds over ``--repeats`` (interleaved), tokens/s, the speedup against the same
implementation at batch 1 (wall and CPU time) and against ``hf_generate`` at batch 1, and whether every row's tokens equal the batch-1 tokens of our loop
(greedy decoding must not depend on batching). The issue's goal is >= 4x at batch 32 on 2 cores.

``--random-llama`` benchmarks a random-weight Llama of the embedded default's shape (hidden 128, 4 layers,
MLP 768, vocabulary 512, with a byte-level BPE tokenizer trained on the prompts) for when the trained
specialists do not exist yet; its rows never hit EOS, so every prompt generates ``max_new_tokens``.

The ``bench-generation`` stage (:mod:`taskprune.bench_generation`) parses the arguments, loads the model
and writes the table; the timing and the rows are here. Imported by that stage only.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def random_llama(path: Path, prompts: list[str], vocab_size: int = 512) -> None:
    """Save a random Llama of the embedded default's shape and a BPE tokenizer trained on ``prompts``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(prompts * 4, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    ))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True, pad_token_id=0,
        bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def hf_generate_tokens(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """Stock ``model.generate`` in chunks of ``batch_size`` (left padded); new tokens up to the first EOS."""
    import torch

    from taskprune.model.generate import eos_token_ids

    eos = sorted(eos_token_ids(model, tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    rows: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True).to(model.device)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                 eos_token_id=eos or None)
        for row in out[:, enc["input_ids"].shape[1] :].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            rows.append(row[:cut])
    return rows


def benchmark_generation(model: Any, tokenizer: Any, prompts: list[str], max_new: int, batch_sizes: list[int],
                         implementations: Sequence[str], repeats: int, model_name: str) -> list[dict[str, Any]]:
    """Time every (implementation, batch size) ``repeats`` times, interleaved; one row per cell."""
    import torch
    import transformers

    from taskprune.model.generate import generate

    def ours(batch: int) -> list[list[int]]:
        out = generate(model, tokenizer, prompts, max_new, batch_size=batch, token_budget=1 << 30, progress=False)
        return [list(g.token_ids) for g in out]

    def hf(batch: int) -> list[list[int]]:
        return hf_generate_tokens(model, tokenizer, prompts, max_new, batch)

    impls = {"taskprune": ours, "hf_generate": hf}
    for name in implementations:  # warm-up: first calls pay for lazy initialisation
        impls[name](min(4, len(prompts)))

    # Repeats are interleaved (every cell once, then again) so that load changes on a shared machine
    # spread over all cells; wall and process CPU seconds are both recorded (CPU time is less sensitive to
    # other processes' load).
    cells = [(name, batch) for name in implementations for batch in batch_sizes]
    wall: dict[tuple[str, int], list[float]] = {c: [] for c in cells}
    cpu: dict[tuple[str, int], list[float]] = {c: [] for c in cells}
    outputs: dict[tuple[str, int], list[list[int]]] = {}
    for _ in range(repeats):
        for name, batch in cells:
            wall_0, cpu_0 = time.perf_counter(), time.process_time()
            outputs[name, batch] = impls[name](batch)
            wall[name, batch].append(time.perf_counter() - wall_0)
            cpu[name, batch].append(time.process_time() - cpu_0)
            logger.info("%s batch %d: %d tokens in %.2f s", name, batch, sum(len(t) for t in outputs[name, batch]),
                        wall[name, batch][-1])

    def rate(cell: tuple[str, int], times: dict[tuple[str, int], list[float]]) -> float:
        return sum(len(t) for t in outputs[cell]) / statistics.median(times[cell])

    reference = outputs.get(("taskprune", 1), outputs[cells[0]])
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for name, batch in cells:
        hf_1 = rate(("hf_generate", 1), wall) if ("hf_generate", 1) in wall else float("nan")
        rows.append({
            "implementation": name, "batch_size": batch, "n_prompts": len(prompts), "max_new_tokens": max_new,
            "new_tokens": sum(len(t) for t in outputs[name, batch]), "repeats": repeats,
            "seconds": statistics.median(wall[name, batch]), "cpu_seconds": statistics.median(cpu[name, batch]),
            "tokens_per_s": rate((name, batch), wall), "tokens_per_cpu_s": rate((name, batch), cpu),
            "speedup_vs_batch1": rate((name, batch), wall) / rate((name, 1), wall),
            "speedup_vs_batch1_cpu": rate((name, batch), cpu) / rate((name, 1), cpu),
            "speedup_vs_hf_batch1": rate((name, batch), wall) / hf_1,
            "identical_outputs": outputs[name, batch] == reference, "threads": torch.get_num_threads(),
            "device": str(model.device), "model": model_name,
            "params": params, "torch": torch.__version__, "transformers": transformers.__version__,
        })
    return rows
