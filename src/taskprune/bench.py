"""Efficiency benchmarks: parameters, bytes and peak memory of a variant; the engines; the worker processes.

Pruning MLP neurons only pays off if the smaller checkpoint is actually cheaper to run. For one variant
checkpoint, ``taskprune bench measure`` records its parameters (total and MLP, counted tensors), the bytes of
its weight files and its peak memory at batch 1. Throughput is measured per *shape family*, paired and
interleaved against the base with a CI (``taskprune bench family``, :mod:`taskprune.bench_paired`), and
``taskprune bench gather`` attaches those rows to every variant they describe in
``results/bench/efficiency.parquet`` (columns: :data:`CONTRACT_COLUMNS`).

How the numbers are measured:

- **Every measurement runs in a fresh process**, forked from a :class:`WorkerServer`, a clean interpreter
  that has only imported the libraries (so each measurement does not pay ~4 s of interpreter start and
  imports); ``python -m taskprune.bench _worker SPEC OUT`` runs one measurement in a brand-new interpreter
  instead.
- **Peak memory at batch 1**: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``) over
  loading and one generation; on CPU the peak resident set size (``ru_maxrss``) of a fresh process that
  loads the model and generates, minus that of a fresh process that imports the same libraries and runs
  the same warm-up without a model (median over up to 3 pairs); both reset their peak counter when they
  are forked, so the difference is what the model adds. It is a peak, so it includes loading transients
  such as the memory-mapped pages of the weight file, not just the tensors.
- **Engines.** The stock transformers forward (:class:`HFEngine`, and :class:`taskprune.bench_paired.StockRunner`
  for the paired trials) is what users run and decides. :class:`TightEngine` (Llama, Qwen2, Mistral) runs the
  decoder from the model's own weights with fused q/k/v and gate/up projections, residual adds fused into
  ``addmm``, a static KV cache and PyTorch's fused attention (~15 kernel calls per layer); the tests check it
  token for token against greedy decoding with the stock model. It is reported only as an *upper bound* on
  what a leaner decoder could reach, never as the verdict. ``taskprune bench compare`` and ``profile`` are
  diagnosis commands over these engines.

Variants of the same shape (uniform allocation: every method, seed and the recovered model at one level)
cost the same to run, so one measured checkpoint can label several variants (``--label-variant``); the
``measured_variant`` column says which checkpoint was timed. :func:`bench_plan` gives that grouping.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskprune.errors import DataError, ModelError, TaskpruneError
from taskprune.model.checkpoint import bytes_on_disk, resolve_checkpoint
from taskprune.model.flops import checkpoint_shape

log = logging.getLogger(__name__)

PHASES: tuple[str, ...] = ("prefill", "decode")
MIN_REPEAT_SECONDS = 0.2  # one timed repeat loops the measured run until it lasts at least this long
MEMORY_PAIRS_MAX = 3  # model/baseline process pairs for the CPU peak-RSS measurement
WORKER_TIMEOUT_S = 3600  # generous: torch.compile on a loaded CPU takes minutes
TIGHT_MODEL_TYPES = ("llama", "qwen2", "mistral")
TIGHT_ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # position-independent cos/sin tables

# Columns of results/bench/efficiency.parquet fixed by the contract (written by bench_paired.gather_efficiency).
CONTRACT_COLUMNS: tuple[str, ...] = (
    "shapes", "variant", "measured_variant", "model", "method", "level", "level_pct", "seed", "stage",
    "batch_size", "phase", "engine", "measured_speedup", "measured_speedup_ci_low", "measured_speedup_ci_high",
    "ideal_speedup", "ideal_speedup_bytes", "realised_fraction", "realised_fraction_ci_low",
    "realised_fraction_ci_high", "n_pairs", "noisy", "params_total", "params_mlp", "bytes_on_disk",
    "peak_memory_bytes", "tokens_per_s", "tokens_per_s_q1", "tokens_per_s_q3", "device",
)  # fmt: skip


# ------------------------------------------------------------------------------------ engines


def tight_unsupported_reason(config: Any) -> str | None:
    """Why the tight engine cannot run this model (``None`` if it can)."""
    if config.model_type not in TIGHT_MODEL_TYPES:
        return f"model type '{config.model_type}' (tight engine: {', '.join(TIGHT_MODEL_TYPES)})"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation '{config.hidden_act}' (tight engine: silu)"
    rope = getattr(config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default") if isinstance(rope, dict) else "default"
    if rope_type not in TIGHT_ROPE_TYPES:
        return f"rope type '{rope_type}'"
    if float(rope.get("partial_rotary_factor", 1.0) if isinstance(rope, dict) else 1.0) != 1.0:
        return "partial rotary embeddings"
    layer_types = getattr(config, "layer_types", None) or []
    window = getattr(config, "sliding_window", None)
    if window and (config.model_type == "mistral" or "sliding_attention" in layer_types):
        return f"sliding-window attention (window {window})"
    return None


@dataclass
class _TightLayer:
    norm_in: Any  # [d] RMSNorm weight before attention
    qkv: Any  # [(H + 2K) h, d]: q, k, v projections stacked
    qkv_bias: Any  # [(H + 2K) h] or None
    o: Any  # [d, H h]
    o_bias: Any  # [d] or None
    norm_post: Any  # [d] RMSNorm weight before the MLP
    gate_up: Any  # [2 f, d]: gate then up projection
    gate_up_bias: Any  # [2 f] or None
    down: Any  # [d, f]
    down_bias: Any  # [d] or None

    @property
    def width(self) -> int:
        return int(self.down.shape[1])


class TightEngine:
    """Greedy decoding of a Llama-family decoder straight from its weights, with a static KV cache.

    Computes exactly the model's function (RMSNorm, rotary q/k, causal grouped-query attention, SwiGLU
    MLP, LM head on the last position) with few large kernels per layer:
    ``rms_norm, linear(qkv), rotary (mul + addcmul), 2 cache writes, sdpa, addmm(o + residual), rms_norm,
    linear(gate_up), silu, mul, addmm(down + residual)``. The model's modules are consumed (their weights
    are moved into the engine layer by layer), so memory is not doubled.
    """

    name = "tight"

    def __init__(self, model: Any, batch_size: int, max_len: int) -> None:
        import torch

        reason = tight_unsupported_reason(model.config)
        if reason:
            raise ModelError(f"tight engine does not support {reason}; use --engine hf")
        config = model.config
        core = model.model
        self.hidden = int(config.hidden_size)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or self.hidden // self.heads)
        self.eps = float(config.rms_norm_eps)
        self.batch_size, self.max_len = batch_size, max_len
        weight = core.embed_tokens.weight
        device, dtype = weight.device, weight.dtype

        # cos/sin tables for positions 0..max_len-1 from the model's own rotary module (rope scaling
        # included): [max_len, h]. rotate_half(x) = cat(-x2, x1) = x[..., rotate] * sign.
        with torch.no_grad():
            positions = torch.arange(max_len, device=device)[None]
            cos, sin = core.rotary_emb(weight[:1], position_ids=positions)
        if cos.shape[-1] != self.head_dim:
            raise ModelError("tight engine: rotary table width differs from the head size")
        half = self.head_dim // 2
        sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(device=device, dtype=cos.dtype)
        self.cos = cos[0].contiguous()  # [max_len, h]
        self.sin_signed = (sin[0] * sign).contiguous()  # [max_len, h]
        self.rotate = torch.cat([torch.arange(half, 2 * half), torch.arange(half)]).to(device)

        self.layers: list[_TightLayer] = []
        with torch.no_grad():
            for layer in core.layers:
                attn, mlp = layer.self_attn, layer.mlp
                projs = (attn.q_proj, attn.k_proj, attn.v_proj)
                biases = [p.bias for p in projs]
                self.layers.append(
                    _TightLayer(
                        norm_in=layer.input_layernorm.weight.detach(),
                        qkv=torch.cat([p.weight for p in projs]).detach(),
                        qkv_bias=None if biases[0] is None else torch.cat(biases).detach(),
                        o=attn.o_proj.weight.detach(),
                        o_bias=None if attn.o_proj.bias is None else attn.o_proj.bias.detach(),
                        norm_post=layer.post_attention_layernorm.weight.detach(),
                        gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach(),
                        gate_up_bias=None
                        if mlp.gate_proj.bias is None
                        else torch.cat([mlp.gate_proj.bias, mlp.up_proj.bias]).detach(),
                        down=mlp.down_proj.weight.detach(),
                        down_bias=None if mlp.down_proj.bias is None else mlp.down_proj.bias.detach(),
                    )
                )
                del layer.self_attn, layer.mlp  # free the originals of the concatenated weights now
        self.embed = weight.detach()
        self.norm = core.norm.weight.detach()
        self.head = model.lm_head.weight.detach()  # the same storage as `embed` when tied

        # Static KV cache, [B, K, max_len, h] per layer.
        shape = (batch_size, self.kv_heads, max_len, self.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in self.layers]

    def reset(self) -> None:
        """Nothing to do: a prefill from position 0 overwrites every cache entry later steps read."""

    def forward(self, tokens: Any, start: int) -> Any:
        """Feed ``tokens`` ``[B, S]`` at positions ``start..start+S-1``; return the next tokens ``[B]``.

        ``S > 1`` is a prefill from position 0 (causal attention within the prompt); ``S == 1`` a decode
        step attending to every cached position ``0..start``.
        """
        import torch
        import torch.nn.functional as F

        batch, seq = tokens.shape
        if seq > 1 and start != 0:
            raise ValueError("a multi-token forward must start at position 0")
        end = start + seq
        d, n_q, n_kv, hd = self.hidden, self.heads, self.kv_heads, self.head_dim
        n_qk = (n_q + n_kv) * hd
        cos = self.cos[start:end].unsqueeze(1)  # [S, 1, h], broadcast over batch and heads
        sin = self.sin_signed[start:end].unsqueeze(1)
        x = F.embedding(tokens.reshape(-1), self.embed)  # [B*S, d]
        for i, w in enumerate(self.layers):
            h = F.rms_norm(x, (d,), w.norm_in, self.eps)
            qkv = F.linear(h, w.qkv, w.qkv_bias)  # [B*S, (H + 2K) h]
            qk = qkv[:, :n_qk].view(batch, seq, n_q + n_kv, hd)
            qk = torch.addcmul(qk * cos, qk[..., self.rotate], sin)  # q cos + rotate_half(q) sin
            self.keys[i][:, :, start:end] = qk[:, :, n_q:].transpose(1, 2)  # [B, K, S, h]
            self.values[i][:, :, start:end] = qkv[:, n_qk:].view(batch, seq, n_kv, hd).transpose(1, 2)
            attn = F.scaled_dot_product_attention(
                qk[:, :, :n_q].transpose(1, 2),  # [B, H, S, h]
                self.keys[i][:, :, :end],
                self.values[i][:, :, :end],
                is_causal=seq > 1,
                enable_gqa=n_q != n_kv,
            )  # [B, H, S, h]
            attn = attn.transpose(1, 2).reshape(batch * seq, n_q * hd)
            x = torch.addmm(x if w.o_bias is None else x + w.o_bias, attn, w.o.t())  # x + attn o^T
            h = F.rms_norm(x, (d,), w.norm_post, self.eps)
            gate_up = F.linear(h, w.gate_up, w.gate_up_bias)  # [B*S, 2 f]
            act = F.silu(gate_up[:, : w.width]) * gate_up[:, w.width :]  # [B*S, f]
            x = torch.addmm(x if w.down_bias is None else x + w.down_bias, act, w.down.t())
        last = x.view(batch, seq, d)[:, -1]  # [B, d]: logits only where the next token is chosen
        logits = F.linear(F.rms_norm(last, (d,), self.norm, self.eps), self.head)  # [B, V]
        return logits.argmax(-1)

    def prefill(self, tokens: Any) -> Any:
        return self.forward(tokens, 0)

    def decode(self, first: Any, prompt_len: int, steps: int) -> Any:
        """``steps`` greedy decode steps starting from token ``first`` ``[B]``; returns ``[B, steps]``."""
        import torch

        out = []
        token = first
        for s in range(steps):
            token = self.forward(token[:, None], prompt_len + s)
            out.append(token)
        return torch.stack(out, 1)


class HFEngine:
    """Greedy decoding through the stock transformers forward (any supported architecture).

    A ``StaticCache`` (else a ``DynamicCache``) sized for the whole generation; with ``compile`` the decode
    step is ``torch.compile``d (prefill stays eager, as transformers recommends for static caches).
    """

    name = "hf"

    def __init__(self, model: Any, batch_size: int, max_len: int, static_cache: bool, compile: bool) -> None:
        import torch
        from transformers import DynamicCache, StaticCache

        self.model = model
        self.cache = (
            StaticCache(config=model.config, max_cache_len=max_len)
            if static_cache
            else DynamicCache(config=model.config)
        )
        self.step = torch.compile(model.forward, dynamic=False) if compile else model.forward

    def reset(self) -> None:
        self.cache.reset()

    def prefill(self, tokens: Any) -> Any:
        out = self.model(tokens, cache=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].argmax(-1)

    def decode(self, first: Any, prompt_len: int, steps: int) -> Any:
        import torch

        out = []
        token = first
        for _ in range(steps):
            logits = self.step(token[:, None], cache=self.cache, use_cache=True, logits_to_keep=1).logits
            token = logits[:, -1].argmax(-1)
            out.append(token)
        return torch.stack(out, 1)


def resolve_engine(requested: str, config: Any) -> str:
    """``auto`` -> ``tight`` where supported, else ``hf``."""
    if requested == "auto":
        return "hf" if tight_unsupported_reason(config) else "tight"
    if requested == "tight":
        reason = tight_unsupported_reason(config)
        if reason:
            raise ModelError(f"--engine tight does not support {reason}; use --engine hf or auto")
    return requested


def make_engine(
    model: Any, engine: str, batch_size: int, max_len: int, static_cache: bool, compile: bool
) -> Any:
    if engine == "tight":
        return TightEngine(model, batch_size, max_len)
    return HFEngine(model, batch_size, max_len, static_cache=static_cache, compile=compile)


def generate_tokens(engine: Any, tokens: Any, new_tokens: int) -> Any:
    """Greedy continuation ``[B, new_tokens]`` of prompts ``tokens`` ``[B, T]`` (the benchmarked path)."""
    import torch

    engine.reset()
    first = engine.prefill(tokens)
    if new_tokens == 1:
        return first[:, None]
    rest = engine.decode(first, tokens.shape[1], new_tokens - 1)
    return torch.cat([first[:, None], rest], 1)


# ------------------------------------------------------------------------------------- worker


def _synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: Any) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _prompt_tokens(vocab_size: int, batch_size: int, prompt_tokens: int, device: Any) -> Any:
    """Fixed random prompts ``[B, T]`` (seed 0): every variant sees the same input ids."""
    import torch

    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (batch_size, prompt_tokens), generator=gen).to(device)


def _load(spec: dict[str, Any]) -> tuple[Any, Any]:
    from taskprune.model.loading import load_model

    model = load_model(spec["checkpoint"], spec["device"])
    return model, model.device


def _worker_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of loading the model and generating at batch 1 (or of the same process without it)."""
    import resource

    import torch
    import torch.nn.functional as F
    from transformers import AutoConfig, AutoModelForCausalLM

    from taskprune.model.arch import mlp_modules
    from taskprune.model.checkpoint import layer_widths
    from taskprune.model.loading import resolve_device

    device, _ = resolve_device(spec["device"])
    config = AutoConfig.from_pretrained(spec["checkpoint"])
    # Import the architecture's modeling code and touch the same kernels in both processes, so the
    # baseline holds every library page the model process holds except the model's own memory.
    AutoModelForCausalLM._model_mapping[type(config)]  # noqa: B018 - imports the modeling module
    probe = torch.ones(2, 4, 8, 8, device=device)
    F.scaled_dot_product_attention(probe, probe, probe, is_causal=True)
    F.rms_norm(probe, (8,))
    result: dict[str, Any] = {"threads": torch.get_num_threads(), "device": device.type}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if spec["kind"] == "memory":
        model, _ = _load(spec)
        result["params_counted"] = sum(p.numel() for p in model.parameters())
        result["params_mlp_counted"] = sum(p.numel() for m in mlp_modules(model) for p in m.parameters())
        result["widths"] = layer_widths(model)
        engine_name = resolve_engine(spec["engine"], model.config)
        engine = make_engine(
            model,
            engine_name,
            1,
            spec["prompt_tokens"] + spec["new_tokens"],
            spec["static_cache"],
            compile=False,
        )
        del model
        tokens = _prompt_tokens(config.vocab_size, 1, spec["prompt_tokens"], device)
        with torch.inference_mode():
            generate_tokens(engine, tokens, spec["new_tokens"])
        _synchronize(device)
        result["engine"] = engine_name
    if device.type == "cuda":
        result["peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
    else:
        result["peak_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB
    return result


def _worker_throughput(spec: dict[str, Any]) -> dict[str, Any]:
    """Tokens/s of one phase at one batch size: warm-up, then ``repeats`` timed repeats."""
    import numpy as np
    import torch

    load_avg = os.getloadavg()[0]
    model, device = _load(spec)
    batch, prompt_len, new_tokens = spec["batch_size"], spec["prompt_tokens"], spec["new_tokens"]
    vocab = model.config.vocab_size
    engine_name = resolve_engine(spec["engine"], model.config)
    compiled = bool(spec["compile"]) and engine_name == "hf"
    engine = make_engine(model, engine_name, batch, prompt_len + new_tokens, spec["static_cache"], compiled)
    tokens = _prompt_tokens(vocab, batch, prompt_len, device)
    phase = spec["phase"]

    def run_once() -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of the timed part of one generation."""
        engine.reset()
        if phase == "prefill":
            _synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            engine.prefill(tokens)
        else:
            first = engine.prefill(tokens)
            _synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            engine.decode(first, prompt_len, new_tokens)
        _synchronize(device)
        return time.perf_counter() - t0, time.process_time() - c0

    tokens_per_run = batch * (prompt_len if phase == "prefill" else new_tokens)
    with torch.inference_mode():
        warmup = max(spec["warmup"], 1 if compiled else 0)  # never time the compilation
        t_start = time.perf_counter()
        for _ in range(warmup):
            run_once()
        warmup_s = time.perf_counter() - t_start
        probe_wall, _ = run_once()
        inner = max(1, math.ceil(MIN_REPEAT_SECONDS / max(probe_wall, 1e-9)))
        wall_tps, cpu_tps = [], []
        for _ in range(spec["repeats"]):
            wall = cpu = 0.0
            for _ in range(inner):
                w, c = run_once()
                wall, cpu = wall + w, cpu + c
            wall_tps.append(inner * tokens_per_run / wall)
            cpu_tps.append(inner * tokens_per_run / cpu if cpu > 0 else float("nan"))
    q1, median, q3 = (float(x) for x in np.percentile(wall_tps, [25, 50, 75]))
    return {
        "tokens_per_s": median,
        "tokens_per_s_q1": q1,
        "tokens_per_s_q3": q3,
        "tokens_per_s_repeats": wall_tps,
        "tokens_per_cpu_s": float(np.median(cpu_tps)) if device.type == "cpu" else None,
        "runs_per_repeat": inner,
        "warmup_seconds": warmup_s,
        "engine": engine_name,
        "compiled": compiled,
        "threads": torch.get_num_threads(),
        "load_avg_1m": load_avg,
        "device": device.type,
        "device_name": _device_name(device),
        "torch_version": torch.__version__,
        "dtype_bytes": int(engine_dtype_bytes(engine)),
    }


def engine_dtype_bytes(engine: Any) -> int:
    """Bytes per element of the weights the engine multiplies by."""
    weight = engine.embed if isinstance(engine, TightEngine) else engine.model.get_input_embeddings().weight
    return int(weight.element_size())


def _worker_main(argv: Sequence[str]) -> int:
    """``python -m taskprune.bench _worker SPEC.json OUT.json``: one measurement in this fresh process."""
    if len(argv) != 3 or argv[0] != "_worker":
        print("usage: python -m taskprune.bench _worker SPEC.json OUT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    if spec["kind"] in ("memory", "baseline"):
        result = _worker_memory(spec)
    elif spec["kind"] == "throughput":
        result = _worker_throughput(spec)
    elif spec["kind"] == "trial":
        from taskprune.bench_paired import trial_main

        result = trial_main(spec)
    else:
        raise ValueError(f"unknown worker kind {spec['kind']!r}")
    result["pid"] = os.getpid()
    Path(argv[2]).write_text(json.dumps(result))
    return 0


# ------------------------------------------------------------------------------------- parent


def _worker_env(threads: int | None) -> dict[str, str]:
    """The environment of a measurement process: ours, with the thread count pinned when one is set."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


class WorkerServer:
    """A clean interpreter that has imported torch and transformers and nothing else, and forks one fresh
    child per measurement (``python -m taskprune.bench _server``).

    Every measurement still runs in a process of its own, which no earlier measurement has touched (no
    model, compilation cache or allocator state is inherited: the server never loads a model or runs a
    tensor op), but without paying the interpreter start and library imports (~4 s on 2 cores) twelve
    times per variant. Children reset their peak-RSS counter right after the fork (``clear_refs``), so the
    memory measurement counts only what the child itself adds, in the model process and the baseline alike.
    """

    def __init__(self, threads: int | None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskprune.bench", "_server"], env=_worker_env(threads), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        )  # fmt: skip

    def run(self, spec_path: Path, out_path: Path, err_path: Path) -> int:
        """Run one measurement in a forked child; its exit code (124 when it ran over the timeout)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{spec_path}\t{out_path}\t{err_path}\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise ModelError(f"bench worker server died (exit {self.proc.poll()})")
        return int(reply)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _server_main() -> int:
    """The loop of :class:`WorkerServer`: one line ``SPEC\tOUT\tERR`` in, one exit code out."""
    import torch  # noqa: F401 - the imports the children inherit
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM  # noqa: F401

    import taskprune.model.loading  # noqa: F401

    for line in sys.stdin:
        spec_path, out_path, err_path = line.rstrip("\n").split("\t")
        pid = os.fork()
        if pid == 0:  # the child: one measurement, then exit without running the server's cleanup
            code = 1
            try:
                fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                signal.alarm(WORKER_TIMEOUT_S)
                with contextlib.suppress(OSError):  # Linux >= 4.0: reset the peak RSS to the current RSS
                    Path("/proc/self/clear_refs").write_text("5")
                code = _worker_main(["_worker", spec_path, out_path])
            except BaseException:  # noqa: BLE001 - report anything, the parent turns it into one line
                import traceback

                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        print(124 if code == -signal.SIGALRM else code, flush=True)
    return 0


def _run_worker(spec: dict[str, Any], workdir: Path, label: str, server: WorkerServer | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh process (a child of ``server``, else a new interpreter); its result."""
    spec_path = workdir / f"{label}.spec.json"
    out_path = workdir / f"{label}.out.json"
    err_path = workdir / f"{label}.err"
    spec_path.write_text(json.dumps(spec))
    if server is not None:
        returncode = server.run(spec_path, out_path, err_path)
        stderr = err_path.read_text(errors="replace") if err_path.is_file() else ""
    else:
        cmd = [sys.executable, "-m", "taskprune.bench", "_worker", str(spec_path), str(out_path)]
        log.debug("bench worker %s: %s", label, " ".join(cmd))
        try:
            proc = subprocess.run(
                cmd, env=_worker_env(spec.get("threads")), capture_output=True, text=True, timeout=WORKER_TIMEOUT_S
            )
            returncode, stderr = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired:
            returncode, stderr = 124, ""
    if returncode == 124:
        raise ModelError(f"bench worker '{label}' for {spec['checkpoint']} ran over {WORKER_TIMEOUT_S} s")
    if returncode != 0 or not out_path.is_file():
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        raise ModelError(
            f"bench worker '{label}' for {spec['checkpoint']} failed (exit {returncode}): "
            f"{lines[-1] if lines else 'no error output'}"
        )
    return json.loads(out_path.read_text())


def _variant_fields(variant: str) -> dict[str, Any]:
    from taskprune.grid import parse_variant

    try:
        v = parse_variant(variant)
    except ValueError:
        raise DataError(
            f"--variant '{variant}': expected {{model}}/base or {{model}}/{{method}}/{{level}}/{{seed}}[/recovered-{{recipe}}]"
        ) from None
    return {
        "variant": v.path,
        "model": v.model,
        "method": v.method,
        "level": v.level,
        "level_pct": float(v.level),
        "seed": int(v.seed),
        "stage": v.stage,
    }


def measure_variant(
    checkpoint: str | os.PathLike[str],
    variant: str,
    bench: Any,
    *,
    device: str = "auto",
    engine: str = "auto",
    label_variants: Sequence[str] = (),
    label_checkpoints: Sequence[str] = (),
) -> Any:
    """Measure one checkpoint's parameters, bytes on disk and peak memory at batch 1; one row per variant
    label (throughput is measured per shape family, paired: :mod:`taskprune.bench_paired`).

    ``bench`` is a :class:`taskprune.config.BenchConfig`. ``label_variants`` are further variants whose
    rows reuse these measurements (same shapes); with ``label_checkpoints`` (same length) their shapes are
    checked against the measured checkpoint and their own bytes on disk are recorded.
    """
    import polars as pl

    from taskprune.model.flops import param_counts

    if label_checkpoints and len(label_checkpoints) != len(label_variants):
        raise DataError(
            f"--label-checkpoint given {len(label_checkpoints)} times for {len(label_variants)} --label-variant(s); "
            "give one checkpoint per labelled variant or none"
        )
    measured = _variant_fields(variant)
    labels = [measured] + [_variant_fields(v) for v in label_variants]
    checkpoint = resolve_checkpoint(checkpoint, "bench")
    shape = checkpoint_shape(checkpoint)
    counts = param_counts(shape)
    disk = {measured["variant"]: bytes_on_disk(checkpoint)}
    for fields, path in zip(labels[1:], label_checkpoints, strict=False):
        other = checkpoint_shape(path)
        if other != shape:
            raise ModelError(
                f"{path}: --label-checkpoint has different shapes from the measured {checkpoint} "
                f"(MLP widths {list(other.mlp_widths)} vs {list(shape.mlp_widths)}); benchmark it separately"
            )
        disk[fields["variant"]] = bytes_on_disk(resolve_checkpoint(path, "bench"))

    common = {
        "checkpoint": str(checkpoint),
        "device": device,
        "engine": engine,
        "threads": bench.threads,
        "prompt_tokens": bench.prompt_tokens,
        "new_tokens": bench.new_tokens,
        "static_cache": bench.static_cache,
        "compile": bench.compile,
        "warmup": bench.warmup,
        "repeats": bench.repeats,
    }
    server = WorkerServer(bench.threads)
    with tempfile.TemporaryDirectory(prefix="taskprune-bench-") as tmp, contextlib.closing(server):
        workdir = Path(tmp)
        # Peak memory at batch 1 (CUDA: allocator peak; CPU: RSS net of a model-less twin process).
        pairs = min(bench.repeats, MEMORY_PAIRS_MAX)
        nets, model_info = [], {}
        for i in range(pairs):
            model_info = _run_worker({**common, "kind": "memory"}, workdir, f"memory{i}", server)
            if model_info.get("params_counted") != counts.total or model_info.get("widths") != list(
                shape.mlp_widths
            ):
                raise ModelError(
                    f"{checkpoint}: closed-form shapes disagree with the loaded model "
                    f"(params {counts.total} vs {model_info.get('params_counted')}, widths "
                    f"{list(shape.mlp_widths)} vs {model_info.get('widths')})"
                )
            baseline = 0  # CUDA: the allocator's peak needs no baseline
            if model_info["device"] == "cpu":
                baseline = _run_worker({**common, "kind": "baseline"}, workdir, f"baseline{i}", server)[
                    "peak_bytes"
                ]
            nets.append(model_info["peak_bytes"] - baseline)
            log.info("%s: peak memory (batch 1) %.2f MiB net of baseline", variant, nets[-1] / 2**20)
        peak = int(sorted(nets)[len(nets) // 2])

    device_name = model_info.get("device", device)
    out = []
    for fields in labels:
        out.append({
            **fields, "params_total": counts.total, "params_mlp": counts.mlp,
            "bytes_on_disk": disk.get(fields["variant"], disk[measured["variant"]]), "peak_memory_bytes": peak,
            "mlp_widths": list(shape.mlp_widths), "device": device_name, "measured_variant": measured["variant"],
        })  # fmt: skip
    return pl.DataFrame(out, schema_overrides=_schema()).select(_per_variant_order())


def _schema() -> dict[str, Any]:
    """Columns of a per-variant file (``bench measure``): identity, parameters, bytes and peak memory."""
    import polars as pl

    return {
        "variant": pl.String,
        "model": pl.String,
        "method": pl.String,
        "level": pl.String,
        "level_pct": pl.Float64,
        "seed": pl.Int64,
        "stage": pl.String,
        "params_total": pl.Int64,
        "params_mlp": pl.Int64,
        "bytes_on_disk": pl.Int64,
        "peak_memory_bytes": pl.Int64,
        "mlp_widths": pl.List(pl.Int64),
        "device": pl.String,
        "measured_variant": pl.String,
    }


def _per_variant_order() -> list[str]:
    return list(_schema())


# ------------------------------------------------------------------------------- paired compare


def compare_paired(
    base_checkpoint: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    bench: Any,
    batch_size: int,
    phase: str,
    rounds: int,
    *,
    device: str = "auto",
    engine: str = "auto",
) -> tuple[Any, dict[str, float]]:
    """Speedup of ``checkpoint`` over ``base_checkpoint`` from interleaved fresh-process measurements.

    On a shared machine the load drifts over minutes, so two variants measured by separate jobs see
    different neighbours. Here each round measures both (order alternating: ABBA...), and the speedup is
    the median over rounds of the within-round ratio. Returns (per-round table, summary). For diagnosis
    and reports; the efficiency table itself comes from ``measure`` + ``gather``.
    """
    import polars as pl

    from taskprune.model.flops import decode_flops_per_token, prefill_flops_per_token

    def phase_flops(path: str | os.PathLike[str]) -> float:
        shape = checkpoint_shape(path)
        if phase == "prefill":
            return prefill_flops_per_token(shape, bench.prompt_tokens, logits_positions=1)
        return decode_flops_per_token(shape, bench.prompt_tokens, bench.new_tokens)

    ideal = phase_flops(base_checkpoint) / phase_flops(checkpoint)
    local = {"base": resolve_checkpoint(base_checkpoint, "bench"), "variant": resolve_checkpoint(checkpoint, "bench")}
    common = {
        "kind": "throughput", "device": device, "engine": engine, "threads": bench.threads,
        "prompt_tokens": bench.prompt_tokens, "new_tokens": bench.new_tokens, "static_cache": bench.static_cache,
        "compile": bench.compile, "warmup": bench.warmup, "repeats": bench.repeats, "batch_size": batch_size,
        "phase": phase,
    }  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="taskprune-compare-") as tmp:
        for r in range(rounds):
            for which in ("base", "variant") if r % 2 == 0 else ("variant", "base"):
                res = _run_worker({**common, "checkpoint": str(local[which])}, Path(tmp), f"{which}{r}")
                rows.append(
                    {
                        "round": r,
                        "which": which,
                        "tokens_per_s": res["tokens_per_s"],
                        "tokens_per_s_best": max(res["tokens_per_s_repeats"]),
                        "tokens_per_cpu_s": res["tokens_per_cpu_s"],
                        "load_avg_1m": res["load_avg_1m"],
                    }
                )
                log.info(
                    "round %d %s: %.0f tokens/s (load %.1f)",
                    r,
                    which,
                    res["tokens_per_s"],
                    res["load_avg_1m"],
                )
    table = pl.DataFrame(rows)
    wide = table.pivot(
        on="which", index="round", values=["tokens_per_s", "tokens_per_s_best", "tokens_per_cpu_s"]
    )
    summary: dict[str, float] = {"ideal_speedup": ideal}
    for metric in ("tokens_per_s", "tokens_per_s_best", "tokens_per_cpu_s"):
        ratios = wide[f"{metric}_variant"] / wide[f"{metric}_base"]
        speedup = float(ratios.median()) if ratios.null_count() < len(ratios) else float("nan")
        summary[f"speedup_{metric}"] = speedup
        summary[f"realised_{metric}"] = (
            (speedup - 1) / (ideal - 1) if abs(ideal - 1) > 1e-12 else float("nan")
        )
    return table, summary


# ------------------------------------------------------------------------------------ profiling


def profile_phase(
    checkpoint: str | os.PathLike[str],
    batch_size: int,
    phase: str,
    bench: Any,
    *,
    device: str = "auto",
    engine: str = "auto",
    row_limit: int = 25,
) -> str:
    """Where the time of one benchmarked phase goes: torch.profiler's table of operators (grouped by input
    shapes, sorted by their own CPU time) over one prefill or one ``new_tokens``-step decode, after a
    warm-up. For diagnosis only; nothing here feeds the efficiency table."""
    import torch

    from taskprune.model.loading import load_model

    if bench.threads:
        torch.set_num_threads(bench.threads)
    model = load_model(checkpoint, device)
    engine_name = resolve_engine(engine, model.config)
    compiled = bool(bench.compile) and engine_name == "hf"
    max_len = bench.prompt_tokens + bench.new_tokens
    runner = make_engine(model, engine_name, batch_size, max_len, bench.static_cache, compiled)
    tokens = _prompt_tokens(model.config.vocab_size, batch_size, bench.prompt_tokens, model.device)
    with torch.inference_mode():
        generate_tokens(runner, tokens, bench.new_tokens)  # warm-up (and compilation)
        runner.reset()
        first = runner.prefill(tokens) if phase == "decode" else None
        with torch.profiler.profile(record_shapes=True) as prof:
            if phase == "prefill":
                runner.prefill(tokens)
            else:
                runner.decode(first, bench.prompt_tokens, bench.new_tokens)
    header = (
        f"{checkpoint}: {phase}, batch {batch_size}, {engine_name} engine, {torch.get_num_threads()} thread(s), "
        f"{'one prefill' if phase == 'prefill' else f'{bench.new_tokens} decode steps'}; "
        f"1-minute load average {os.getloadavg()[0]:.1f}"
    )
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=row_limit
    )
    return header + "\n" + table


# ------------------------------------------------------------------------------------- planning


def bench_plan(cfg: Any) -> dict[str, list[str]]:
    """Which checkpoint to measure for which variants: ``{measured variant: [variants it labels]}``.

    Variants are grouped by :func:`shape_key`; the first base (else pruned) variant of a group is measured
    and labels the others (the ``measured_variant`` column says which).
    """
    from taskprune.grid import all_variants

    plan: dict[str, list[str]] = {}
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for v in all_variants(cfg):
        groups.setdefault(shape_key(cfg, v), []).append(v)
    for members in groups.values():
        rep = next((v for v in members if v.stage == "base"), None)
        rep = rep or next((v for v in members if v.stage == "pruned"), members[0])
        plan[rep.path] = [v.path for v in members]
    return plan


def model_shape_family(cfg: Any, model: str) -> tuple[str, str]:
    """Models with equal families have identical shapes before pruning: trained-from-scratch models with
    the same ``architecture`` (the embedded tiny-math and tiny-code), or the same pretrained checkpoint."""
    m = cfg.models[model]
    if m.source == "train":
        return ("train", json.dumps(m.architecture.model_dump(mode="json"), sort_keys=True))
    return ("pretrained", str(m.path))


def shape_key(cfg: Any, v: Any) -> tuple[Any, ...]:
    """Variants with equal keys have identical shapes, hence the same cost to run, so one measurement
    serves them all: the base models of one family; with uniform allocation every method, seed and
    recovered model at one level across a family (k per layer depends only on the level and the width);
    with global allocation each pruned variant and its recovered twin (widths depend on the scores)."""
    if v.stage == "base":
        return (model_shape_family(cfg, v.model), "base")
    if cfg.pruning.allocation == "uniform":
        return (model_shape_family(cfg, v.model), v.level)
    return (v.model, v.method, v.level, v.seed)


# ------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: Any) -> None:
    import argparse

    from taskprune.config import add_config_arguments

    sub = parser.add_subparsers(dest="action", required=True, metavar="{measure,family,gather,profile,compare}")
    measure = sub.add_parser(
        "measure",
        help="parameters, bytes on disk and peak memory of one variant checkpoint (per-variant Parquet)",
        description="Measure one variant checkpoint's parameters, bytes on disk and peak memory at batch 1 (fresh "
        "processes) into a per-variant Parquet: one row per variant it labels. Throughput: 'bench family'.",
    )
    measure.add_argument("--checkpoint", required=True, help="the checkpoint directory to measure")
    measure.add_argument(
        "--variant", required=True, help="its variant path, e.g. tiny-math/selective/35.71/0"
    )
    measure.add_argument("--output", required=True, help="per-variant Parquet to write")
    measure.add_argument(
        "--label-variant",
        action="append",
        default=[],
        metavar="VARIANT",
        help="also emit rows for this variant from the same measurement (it must have the same shapes; "
        "repeatable). The measured_variant column names the timed checkpoint.",
    )
    measure.add_argument(
        "--label-checkpoint",
        action="append",
        default=[],
        metavar="DIR",
        help="checkpoint of each --label-variant, in order (optional): shapes are verified and its own "
        "bytes on disk recorded",
    )
    measure.add_argument(
        "--engine",
        choices=["auto", "tight", "hf"],
        default="auto",
        help="generation path: tight (own decode loop, Llama/Qwen2/Mistral), hf (stock forward + static "
        "cache + torch.compile), auto (tight where supported; default)",
    )
    add_config_arguments(measure)
    gather_p = sub.add_parser(
        "gather",
        help="join shape-family and per-variant files into efficiency.parquet",
        description="Attach every shape family's paired speedups to the variants it describes, with their "
        "parameters, bytes and peak memory.",
    )
    gather_p.add_argument("inputs", nargs="*", help="per-variant Parquet files from 'bench measure'")
    gather_p.add_argument("--families", nargs="+", required=True, help="shape-family files from 'bench family'")
    gather_p.add_argument("--output", required=True, help="e.g. results/bench/efficiency.parquet")
    fam = sub.add_parser(
        "family",
        help="paired, interleaved throughput of one shape family (base vs every level, fresh process per trial)",
        description="Measure a shape family's base and pruned levels in alternating fresh-process trials and "
        "write one row per (level, engine, batch size, phase) with the median paired speedup and its CI.",
    )
    fam.add_argument("--plan", required=True, help="the family plan as JSON (taskprune.bench_paired.FamilyPlan)")
    fam.add_argument("--output", required=True, help="e.g. results/bench/families/tiny.parquet")
    fam.add_argument("--trials", help="optional Parquet of every trial's timings")
    prof = sub.add_parser(
        "profile",
        help="print where the time of one benchmarked phase goes (torch.profiler, diagnosis only)",
        description="Profile one phase of the benchmarked generation path in this process and print the "
        "operators sorted by their own CPU time (nothing is written).",
    )
    prof.add_argument("--checkpoint", required=True)
    prof.add_argument("--batch-size", type=int, default=32)
    prof.add_argument("--phase", choices=PHASES, default="decode")
    prof.add_argument("--engine", choices=["auto", "tight", "hf"], default="auto")
    prof.add_argument("--rows", type=int, default=25, help="operators to show")
    add_config_arguments(prof)
    comp = sub.add_parser(
        "compare",
        help="speedup of one checkpoint over the base from interleaved fresh-process runs (diagnosis)",
        description="Measure a base and a variant checkpoint alternately in fresh processes (ABBA...) and "
        "print the median within-round speedup next to the ideal one. Robust to load drifting on a shared "
        "machine; nothing is written unless --output is given.",
    )
    comp.add_argument("--base", required=True, help="base checkpoint directory")
    comp.add_argument("--checkpoint", required=True, help="variant checkpoint directory")
    comp.add_argument("--batch-size", type=int, default=32)
    comp.add_argument("--phase", choices=PHASES, default="decode")
    comp.add_argument("--rounds", type=int, default=6)
    comp.add_argument("--engine", choices=["auto", "tight", "hf"], default="auto")
    comp.add_argument("--output", help="optional Parquet of the per-round measurements")
    add_config_arguments(comp)
    for p in (measure, fam, gather_p, prof, comp):  # accept the global flags after the action too
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        p.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
        )


def run(args: Any) -> int:
    from taskprune.config import BenchConfig, stage_options
    from taskprune.io import write_parquet

    if args.action == "gather":
        from taskprune.bench_paired import gather_efficiency

        table = gather_efficiency(args.inputs, args.families)
        from taskprune.io import read_parquet_metadata

        # each family file's own record of how it was measured
        methods = {str(p): read_parquet_metadata(p).get("measurement") for p in args.families}
        write_parquet(table, args.output, metadata={"inputs": [str(p) for p in args.inputs],
                                                    "families": [str(p) for p in args.families],
                                                    "measurement": methods})  # fmt: skip
        log.info("wrote %d rows to %s", table.height, args.output)
        return 0
    if args.action == "family":
        from taskprune.bench_paired import FamilyPlan, method_metadata, run_family

        try:
            plan = FamilyPlan(**json.loads(args.plan))
        except (TypeError, ValueError) as exc:
            raise DataError(f"--plan: not a family plan ({exc})") from None
        trials, table = run_family(plan)
        meta = {"measurement": method_metadata(plan)}
        if args.trials:
            write_parquet(trials, args.trials, metadata=meta)
        write_parquet(table, args.output, metadata=meta)
        log.info("wrote %d rows to %s", table.height, args.output)
        return 0
    options = stage_options(args, {"bench": BenchConfig, "device": "auto"})
    bench = options.bench
    if args.action == "compare":
        table, summary = compare_paired(
            args.base,
            args.checkpoint,
            bench,
            args.batch_size,
            args.phase,
            args.rounds,
            device=options.device,
            engine=args.engine,
        )
        print(table)
        print(json.dumps(summary, indent=2))
        if args.output:
            write_parquet(table, args.output, metadata={**summary, "bench": bench.model_dump()})
        return 0
    if args.action == "profile":
        print(
            profile_phase(
                args.checkpoint,
                args.batch_size,
                args.phase,
                bench,
                device=options.device,
                engine=args.engine,
                row_limit=args.rows,
            )
        )
        return 0
    if not bench.batch_sizes or any(b < 1 for b in bench.batch_sizes):
        raise TaskpruneError(f"bench.batch_sizes must be positive integers, got {bench.batch_sizes}")
    rows = measure_variant(
        args.checkpoint,
        args.variant,
        bench,
        device=options.device,
        engine=args.engine,
        label_variants=args.label_variant,
        label_checkpoints=args.label_checkpoint,
    )
    write_parquet(
        rows,
        args.output,
        metadata={
            "checkpoint": args.checkpoint,
            "variant": args.variant,
            "bench": bench.model_dump(),
            "device": options.device,
            "engine": args.engine,
        },
    )
    log.info("wrote %d rows to %s", rows.height, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(_server_main() if sys.argv[1:] == ["_server"] else _worker_main(sys.argv[1:]))
