"""Measurement of one checkpoint: parameters, bytes on disk, peak memory at batch 1, tokens/s; diagnosis.

For one variant checkpoint, ``taskprune bench measure`` (:func:`measure_variant`) records its parameters
(total and MLP, counted tensors), the bytes of its weight files and its peak memory at batch 1, into a
per-variant file (columns: :func:`per_variant_schema`). Throughput is measured per *shape family*, paired
(:mod:`taskprune.perf.paired`); :func:`compare_paired` and :func:`profile_phase` are diagnosis commands.

- **Every measurement runs in a fresh process**, forked from a :class:`taskprune.perf.isolation.ForkServer`
  (so each measurement does not pay ~4 s of interpreter start and imports); :func:`worker_main` is what such
  a process runs (``python -m taskprune.perf.isolation run measure SPEC OUT`` runs it in a brand-new
  interpreter instead).
- **Peak memory at batch 1**: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``) over
  loading and one generation; on CPU the peak resident set size (``ru_maxrss``) of a fresh process that
  loads the model and generates, minus that of a fresh process that imports the same libraries and runs
  the same warm-up without a model (median over up to 3 pairs); both reset their peak counter when they
  are forked, so the difference is what the model adds. It is a peak, so it includes loading transients
  such as the memory-mapped pages of the weight file, not just the tensors.

Variants of the same shape cost the same to run, so one measured checkpoint can label several variants
(``label_variants``); the ``measured_variant`` column says which checkpoint was timed
(:func:`taskprune.grid.bench_plan` gives that grouping).

Torch is imported inside the functions only. Imported by the ``bench`` stage and :mod:`taskprune.perf`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taskprune.errors import DataError, ModelError
from taskprune.model.checkpoint import bytes_on_disk, resolve_checkpoint
from taskprune.model.flops import checkpoint_shape
from taskprune.perf.engines import (
    engine_dtype_bytes,
    fixed_prompts,
    generate_tokens,
    make_engine,
    resolve_engine,
    synchronize,
)
from taskprune.perf.isolation import ForkServer, run_isolated, run_spec

log = logging.getLogger(__name__)

MIN_REPEAT_SECONDS = 0.2  # one timed repeat loops the measured run until it lasts at least this long
MEMORY_PAIRS_MAX = 3  # model/baseline process pairs for the CPU peak-RSS measurement


# --------------------------------------------------------------------------- in the fresh process


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
        tokens = fixed_prompts(config.vocab_size, 1, spec["prompt_tokens"], device)
        with torch.inference_mode():
            generate_tokens(engine, tokens, spec["new_tokens"])
        synchronize(device)
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
    tokens = fixed_prompts(vocab, batch, prompt_len, device)
    phase = spec["phase"]

    def run_once() -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of the timed part of one generation."""
        engine.reset()
        if phase == "prefill":
            synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            engine.prefill(tokens)
        else:
            first = engine.prefill(tokens)
            synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            engine.decode(first, prompt_len, new_tokens)
        synchronize(device)
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


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["kind"] in ("memory", "baseline"):
        return _worker_memory(spec)
    if spec["kind"] == "throughput":
        return _worker_throughput(spec)
    raise ValueError(f"unknown worker kind {spec['kind']!r}")


def worker_main(argv: Sequence[str]) -> int:
    """``SPEC.json OUT.json``: one measurement in this fresh process (the fork server's ``measure`` entry)."""
    return run_spec(list(argv), _measure, "python -m taskprune.perf.isolation run measure")


# ------------------------------------------------------------------------------------- parent


def variant_fields(variant: str) -> dict[str, Any]:
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
        "level": v.level.label,
        "level_pct": v.level.pct,
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
    label (throughput is measured per shape family, paired: :mod:`taskprune.perf.paired`).

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
    measured = variant_fields(variant)
    labels = [measured] + [variant_fields(v) for v in label_variants]
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
    server = ForkServer(bench.threads)
    with tempfile.TemporaryDirectory(prefix="taskprune-bench-") as tmp, contextlib.closing(server):
        workdir = Path(tmp)
        # Peak memory at batch 1 (CUDA: allocator peak; CPU: RSS net of a model-less twin process).
        pairs = min(bench.repeats, MEMORY_PAIRS_MAX)
        nets, model_info = [], {}
        for i in range(pairs):
            model_info = run_isolated({**common, "kind": "memory"}, workdir, f"memory{i}", server)
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
                baseline = run_isolated({**common, "kind": "baseline"}, workdir, f"baseline{i}", server)[
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
    return pl.DataFrame(out, schema_overrides=per_variant_schema()).select(per_variant_columns())


def per_variant_schema() -> dict[str, Any]:
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


def per_variant_columns() -> list[str]:
    return list(per_variant_schema())


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
                res = run_isolated({**common, "checkpoint": str(local[which])}, Path(tmp), f"{which}{r}")
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
    tokens = fixed_prompts(model.config.vocab_size, batch_size, bench.prompt_tokens, model.device)
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


