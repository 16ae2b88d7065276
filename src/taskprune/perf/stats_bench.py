"""Benchmark statistics collection against its baselines: is streaming through one hook cheap?

Three ways to pass the same prompts through the same model, over the same length-sorted token-budget
batches (the decoder stack without the LM head, ``torch.inference_mode()``, no KV cache):

``plain_forward``
    the forward alone, no hooks: the ceiling.
``taskprune_stats``
    :func:`taskprune.model.activations.collect_stats_over`: one pre-hook per layer on the MLP output projection,
    streamed float64 moments, nothing per prompt kept.
``paper_hooks``
    the paper's approach as described: a hook on each MLP that *recomputes* ``act(gate(x)) * up(x)`` from
    its input and keeps every prompt's per-neuron mean |a| in host arrays, reduced with numpy at the end.

Rows of ``results/bench/stats_collection.parquet`` (one per model, approach and measurement):

- ``kind = throughput``: non-padding tokens/s (median over ``--rounds`` interleaved passes, with
  quartiles); ``ratio`` = median over rounds of this approach / ``plain_forward`` in the same round.
  Goal for ``taskprune_stats``: ratio >= 0.90. ``cpu_time_tokens_per_s`` and ``ratio_cpu_time`` are the
  same from process CPU time, which other jobs on a shared CPU machine do not inflate (ignore on CUDA).
- ``kind = peak_memory``: peak memory of a fresh subprocess that loads the model, tokenizes ``n_prompts``
  prompts and runs the approach (CUDA: ``torch.cuda.max_memory_allocated``; CPU: peak resident set size
  of the whole process), ``ratio`` = this peak / the peak at the smallest prompt count. Goal for
  ``taskprune_stats``: ratio at 4,000 prompts <= 1.05. Each measurement runs in its own process so peaks
  do not mix. ``memory_above_loaded_model`` is the peak of the data + collection phase alone above the
  memory held once the model is loaded (on Linux the peak-RSS counter is reset at that point), which
  shows the growth that the whole-process peak (set by imports and loading) hides.

When the dataset has fewer prompts than asked for, it is cycled (memory depends on the count, not the text).
``save_random_llama`` writes a random-weight Llama of the embedded specialists' size with a small BPE
tokenizer, for measuring before the specialists are trained.

The ``bench-stats`` stage (:mod:`taskprune.bench_stats`) parses the arguments and calls
:func:`benchmark_model`; this module holds the logic and is imported by that stage only.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from taskprune.errors import DataError
from taskprune.model.hooks import HookSet

log = logging.getLogger(__name__)

APPROACHES: tuple[str, ...] = ("plain_forward", "taskprune_stats", "paper_hooks")
THROUGHPUT_GOAL = 0.90
MEMORY_GROWTH_GOAL = 1.05


# ---------------------------------------------------------------------------------- the baseline


def recompute_activation(mlp: Any, x: Any, kind: str) -> Any:
    """The paper's hook body: recompute ``a`` from the MLP input ``x`` [B, T, d_model] -> [B, T, d_ff]."""
    if kind == "gated":
        return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    if kind == "gated_fused":
        gate, up = mlp.gate_up_proj(x).chunk(2, dim=-1)
        return up * mlp.activation_fn(gate)
    if kind == "conv1d":
        return mlp.act(mlp.c_fc(x))
    if kind == "linear":
        return mlp.act(mlp.dense_h_to_4h(x))
    raise ValueError(f"unknown MLP kind {kind!r}")


class PaperHooks(HookSet):
    """Forward hooks on every MLP that recompute the activation and keep per-prompt arrays (the baseline)."""

    def __init__(self, model: Any) -> None:
        from taskprune.model import arch

        self.adapter = arch.get_adapter(model)
        self.mlps = arch.mlp_modules(model)
        self.per_prompt: list[list[np.ndarray]] = [[] for _ in self.mlps]  # per layer: [B, d_ff] arrays
        self.mask: Any = None  # [B, T, 1]
        self.counts: Any = None  # [B, 1]
        self._handles: list[Any] = []

    def _install(self) -> Iterator[Any]:
        for layer, mlp in enumerate(self.mlps):
            yield mlp.register_forward_hook(self._make_hook(layer))

    def set_batch(self, batch: Any, device: Any, dtype: Any) -> None:
        mask = batch.attention_mask.to(device)
        self.mask = mask.unsqueeze(-1).to(dtype)
        self.counts = mask.sum(1, keepdim=True).float()

    def _make_hook(self, layer: int) -> Callable[..., None]:
        def hook(module: Any, inputs: tuple[Any, ...], output: Any) -> None:
            a = recompute_activation(module, inputs[0], self.adapter.kind)  # [B, T, d_ff]
            v = (a.abs() * self.mask).sum(1).float() / self.counts  # [B, d_ff]
            self.per_prompt[layer].append(v.cpu().numpy())

        return hook

    def result(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per layer, the mean and population variance of the per-prompt arrays (numpy, float64)."""
        stacked = [np.concatenate(arrays).astype(np.float64) for arrays in self.per_prompt]
        return [v.mean(0) for v in stacked], [v.var(0) for v in stacked]


# ------------------------------------------------------------------------------------- passes


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def run_plain(model: Any, batches: Iterable[Any]) -> None:
    import torch

    from taskprune.model import arch
    from taskprune.model.activations import forward_backbone

    stack = arch.backbone(model)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in batches:
            forward_backbone(stack, batch, device)
    _sync(device)


def run_taskprune(model: Any, batches: Iterable[Any]) -> Any:
    from taskprune.model.activations import collect_stats_over

    stats = collect_stats_over(model, batches, progress=False)  # ends with a device -> host copy
    return stats


def run_paper(model: Any, batches: Iterable[Any]) -> Any:
    import torch

    from taskprune.model import arch
    from taskprune.model.activations import forward_backbone

    stack = arch.backbone(model)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    hooks = PaperHooks(model)
    with torch.inference_mode(), hooks:
        for batch in batches:
            hooks.set_batch(batch, device, dtype)
            forward_backbone(stack, batch, device)
    _sync(device)
    return hooks.result()


RUNNERS: dict[str, Callable[[Any, Iterable[Any]], Any]] = {
    "plain_forward": run_plain,
    "taskprune_stats": run_taskprune,
    "paper_hooks": run_paper,
}


def prepare_batches(
    tokenizer: Any, prompts: Sequence[str], stats_cfg: Any, chat_template: bool = False, *, lazy: bool = False
) -> Any:
    """Tokenized, length-sorted, token-budget batches: a list padded once for every approach, or (``lazy``)
    a generator that pads each batch when it is needed, as ``taskprune stats`` does."""
    from taskprune.model.activations import iter_padded_batches, plan_batches, tokenize_prompts

    tokenized = tokenize_prompts(tokenizer, prompts, max_length=stats_cfg.max_length, chat_template=chat_template)
    plan = plan_batches(
        tokenized.lengths, token_budget=stats_cfg.token_budget, max_batch_size=stats_cfg.max_batch_size,
        order=stats_cfg.batch_order,
    )
    batches = iter_padded_batches(tokenized.sequences, plan)
    return batches if lazy else list(batches)


def measure_throughput(model: Any, batches: Sequence[Any], rounds: int = 5) -> dict[str, dict[str, list[float]]]:
    """Tokens/s of each approach over the same batches: one warm-up pass each, then ``rounds`` rounds in
    rotating order (so a slow spell of a shared machine does not always hit the same approach).

    Per approach: ``wall`` and ``cpu`` (process CPU time; robust to other jobs on a shared CPU machine,
    meaningless on CUDA) tokens/s of every round.
    """
    tokens = sum(b.n_tokens for b in batches)
    for runner in RUNNERS.values():
        runner(model, batches[: min(2, len(batches))])
    results: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in RUNNERS}
    names = list(RUNNERS)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            RUNNERS[name](model, batches)
            results[name]["wall"].append(tokens / (time.perf_counter() - wall))
            results[name]["cpu"].append(tokens / max(time.process_time() - cpu, 1e-9))
            log.info("round %d %-16s %10.0f tokens/s (%10.0f per CPU second)", r + 1, name,
                     results[name]["wall"][-1], results[name]["cpu"][-1])
    return results


def paired_ratio(values: Sequence[float], reference: Sequence[float]) -> float:
    """Median over rounds of value / reference of the same round (the rounds ran back to back)."""
    return float(np.median(np.asarray(values) / np.asarray(reference)))


def agreement(model: Any, batches: Sequence[Any]) -> float:
    """Largest relative difference between our streamed mean/variance and the paper-style arrays'."""
    ours = run_taskprune(model, batches)
    mean, var = run_paper(model, batches)
    worst = 0.0
    for a, b in zip(ours.mean + ours.variance, mean + var, strict=True):
        worst = max(worst, float(np.max(np.abs(a - b) / (np.abs(b) + 1e-6))))
    return worst


# ------------------------------------------------------------------------------ memory (children)


def _status_bytes(key: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` (peak RSS) of this process from /proc, in bytes (None where unavailable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``), so the peak of a later phase can be read alone."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one approach on ``n_prompts`` prompts in this (fresh) process and report its peak memory."""
    import torch

    from taskprune.config import StatsConfig
    from taskprune.model.activations import load_model_and_tokenizer

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    model, tokenizer = load_model_and_tokenizer(spec["model_path"], spec["device"])
    device = next(model.parameters()).device
    rss_before = _status_bytes("VmRSS") or 0
    phase_peak = _reset_peak_rss()  # from here on VmHWM is the peak of data loading + collection
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    prompts = cycled_prompts(spec["data"], int(spec["n_prompts"]))
    cfg = StatsConfig.model_validate(spec["stats"])
    batches = prepare_batches(tokenizer, prompts, cfg, spec["chat_template"], lazy=True)
    n_tokens = 0

    def counted() -> Any:
        nonlocal n_tokens
        for batch in batches:
            n_tokens += batch.n_tokens
            yield batch

    started = time.perf_counter()
    RUNNERS[spec["approach"]](model, counted())
    seconds = time.perf_counter() - started
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # whole life (Linux: KiB)
    collection_peak = _status_bytes("VmHWM") if phase_peak else None
    out = {
        "peak_rss_bytes": int(process_peak),
        "collection_peak_rss_bytes": collection_peak,
        "rss_before_bytes": int(rss_before),
        "seconds": seconds,
        "n_tokens": n_tokens,
        "peak_cuda_bytes": None,
        "cuda_before_bytes": None,
    }
    if device.type == "cuda":
        out["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
        out["cuda_before_bytes"] = int(cuda_before)
    return out


def measure_peak_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`_child` in a fresh interpreter; its JSON report is the last line of its stdout."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "taskprune.perf.stats_bench", json.dumps(spec)],
        capture_output=True, text=True, env=env, check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise DataError(f"memory measurement of {spec['approach']} at {spec['n_prompts']} prompts failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cycled_prompts(data: str, n: int) -> list[str]:
    """The first ``n`` prompts of ``data`` (for_stats rows of a calibration file), cycled if too few."""
    from taskprune.model.activations import load_prompts

    prompts = load_prompts(data)
    return [prompts[i % len(prompts)] for i in range(n)]


# ------------------------------------------------------------------------------------ benchmark


def benchmark_model(
    name: str,
    model_path: str,
    data: str,
    *,
    stats_cfg: Any,
    device: str,
    throughput_prompts: int,
    memory_prompts: Sequence[int],
    memory_approaches: Sequence[str],
    rounds: int,
    threads: int | None,
    chat_template: bool = False,
) -> list[dict[str, Any]]:
    """All rows for one model."""
    import torch

    from taskprune.model.activations import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_path, device)
    dev = next(model.parameters()).device
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    batches = prepare_batches(tokenizer, cycled_prompts(data, throughput_prompts), stats_cfg, chat_template)
    tokens = sum(b.n_tokens for b in batches)
    padded = sum(b.input_ids.numel() for b in batches)
    log.info("%s: %d prompts, %d tokens (%.1f%% padding), %d batches", name, throughput_prompts, tokens,
             100 * (1 - tokens / padded), len(batches))
    difference = agreement(model, batches)
    common = {"model": name, "device": str(dev), "dtype": dtype, "threads": torch.get_num_threads(),
              "stats_vs_paper_max_rel_diff": difference}
    rows: list[dict[str, Any]] = []
    speeds = measure_throughput(model, batches, rounds)
    plain = speeds["plain_forward"]
    for approach, values in speeds.items():
        ratio = paired_ratio(values["wall"], plain["wall"])
        goal = approach == "taskprune_stats"
        rows.append({
            **common, "approach": approach, "kind": "throughput", "n_prompts": throughput_prompts,
            "n_tokens": tokens, "value": float(np.median(values["wall"])), "unit": "tokens/s",
            "value_q1": float(np.percentile(values["wall"], 25)),
            "value_q3": float(np.percentile(values["wall"], 75)),
            "repeats": len(values["wall"]), "ratio": ratio, "ratio_to": "plain_forward",
            "goal": f"ratio >= {THROUGHPUT_GOAL:.2f}" if goal else None,
            "goal_met": bool(ratio >= THROUGHPUT_GOAL) if goal else None,
            "cpu_time_tokens_per_s": float(np.median(values["cpu"])),
            "ratio_cpu_time": paired_ratio(values["cpu"], plain["cpu"]),
        })
    del model
    for approach in memory_approaches:
        peaks: dict[int, dict[str, Any]] = {}
        for n in memory_prompts:
            spec = {"approach": approach, "model_path": str(model_path), "data": str(data), "n_prompts": n,
                    "device": device, "stats": stats_cfg.model_dump(), "threads": threads,
                    "chat_template": chat_template}
            peaks[n] = measure_peak_memory(spec)
            log.info("%s %s %d prompts: peak RSS %.1f MiB, peak CUDA %s", name, approach, n,
                     peaks[n]["peak_rss_bytes"] / 2**20, peaks[n]["peak_cuda_bytes"])
        smallest = min(memory_prompts)
        for n, peak in peaks.items():
            on_cuda = peak["peak_cuda_bytes"] is not None
            value = peak["peak_cuda_bytes"] if on_cuda else peak["peak_rss_bytes"]
            base = peaks[smallest]["peak_cuda_bytes"] if on_cuda else peaks[smallest]["peak_rss_bytes"]
            if on_cuda:
                above = peak["peak_cuda_bytes"] - peak["cuda_before_bytes"]
            elif peak["collection_peak_rss_bytes"] is not None:
                above = peak["collection_peak_rss_bytes"] - peak["rss_before_bytes"]
            else:
                above = None
            goal = approach == "taskprune_stats" and n != smallest
            rows.append({
                **common, "approach": approach, "kind": "peak_memory", "n_prompts": n,
                "n_tokens": peak["n_tokens"], "value": float(value),
                "unit": "bytes (CUDA allocated)" if on_cuda else "bytes (peak RSS)",
                "value_q1": None, "value_q3": None, "repeats": 1,
                "ratio": value / base, "ratio_to": f"{smallest} prompts",
                "goal": f"ratio <= {MEMORY_GROWTH_GOAL:.2f}" if goal else None,
                "goal_met": bool(value / base <= MEMORY_GROWTH_GOAL) if goal else None,
                "memory_above_loaded_model": None if above is None else float(above),
                "peak_rss_bytes": float(peak["peak_rss_bytes"]), "seconds": peak["seconds"],
            })
    return rows


def save_random_llama(path: str | os.PathLike[str], *, hidden: int = 128, layers: int = 4, d_ff: int = 768,
                      vocab: int = 512, seed: int = 0) -> Path:
    """A random-weight Llama of the embedded specialists' size, with a BPE tokenizer trained on word salad."""
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = Path(path)
    words = synthetic_prompts(400, seed=seed)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(words, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"]))
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(hidden_size=hidden, intermediate_size=d_ff, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=vocab, max_position_embeddings=512, bos_token_id=1,
                         eos_token_id=2, tie_word_embeddings=True)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def synthetic_prompts(n: int, seed: int = 0) -> list[str]:
    """Word-salad prompts of 10-120 words (a GSM8K-like length spread) for benchmarking."""
    rng = np.random.default_rng(seed)
    vocab = ["apples", "train", "costs", "each", "how", "many", "total", "if", "she", "buys", "dollars", "more",
             "than", "twice", "the", "number", "of", "def", "return", "list", "what", "is", "question", "answer"]
    return [" ".join(rng.choice(vocab, size=int(rng.integers(10, 120)))) + "?" for _ in range(n)]


if __name__ == "__main__":  # the fresh process of one peak-memory measurement
    print(json.dumps(_child(json.loads(sys.argv[1]))))
