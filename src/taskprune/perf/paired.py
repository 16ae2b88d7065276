"""Paired, interleaved throughput of a shape family: the base against each pruning level, with a CI.

Why this module exists: the speedup of a pruned model is a ratio of two timings, and on a shared machine
the load drifts over minutes, so two timings taken by separate jobs see different neighbours. Here one job
measures a whole *shape family* (a base shape and its uniformly pruned widths) in alternating trials, so
drift hits both sides of every ratio alike:

- **Trials.** A round measures the base and every level, in the order ``base, v1, ..., vk`` on even rounds
  and ``vk, ..., v1, base`` on odd rounds (so consecutive rounds read ``base, v, v, base, ...``). Every
  trial is a fresh process (forked from :class:`taskprune.perf.isolation.ForkServer`: no model, compilation cache
  or allocator state is shared) that builds or loads its model and times every (batch size, phase) of the
  family. A trial's time for one setting is the **minimum** over its ``repeats`` (the run least disturbed
  by neighbours; each repeat loops until it lasts ``min_repeat_s``).
- **Pairs.** Round ``r`` gives the pair ``(base_r, level_r)`` and its ratio ``time(base_r) /
  time(level_r)``. The speedup is the **median** of the per-pair ratios with a bootstrap 95% percentile CI
  over pairs (:func:`median_ci`). Every pair records the largest 1-minute load average seen by its two
  trials and its CPU-time speedup (process CPU seconds, base / variant; less sensitive to being
  descheduled than wall time) next to each trial's CPU/wall ratio.
- **Noise is named.** A row is ``noisy`` when its CI half-width exceeds :data:`NOISY_HALF_WIDTH` of the
  speedup, when a pair ran under a load average above the thread count, or when it has fewer than
  :data:`MIN_PAIRS` pairs. Findings never give a verdict from a noisy row.

Where the models come from:

- **Shapes from numbers** (``bench.shapes``): a stock transformers model (``LlamaForCausalLM`` /
  ``Qwen2ForCausalLM``) with random weights, pruned at each level in memory by the pipeline's own uniform
  rule (:func:`taskprune.model.pruning.plan_pruning`) and tensor slicing (:func:`taskprune.model.pruning.slice_tensor`).
  No download: the paper's Qwen2.5-1.5B is measured from its published shape.
- **Checkpoints** (``bench.shapes`` unset, e.g. the paper setup): the base model and one pruned checkpoint
  per level (:func:`taskprune.grid.bench_plan` picks it), loaded as the pipeline saved them.

**Composed depth.** A 28-layer 1.5B model at batch 32 takes seconds per step on 2 cores. With uniform
allocation every decoder layer of a variant has the same shape, so a family may set ``measured_layers``:
the trial builds a model of that many full-width layers (plus the real embedding, final norm and LM head),
forward hooks on the first and last decoder layer time the layer stack inside the stock forward, and the
full-depth time is ``time(rest) + num_hidden_layers / measured_layers * time(layers)`` (``rest`` = the
forward outside the stack: embedding, masks, rotary tables, final norm, LM head). The method is written
into every row (``timing_method``) and the table's metadata; ``tests/test_bench_paired.py`` checks the
composition against a hand count: on a fake clock where a decoder layer costs one tick, 2 layers composed to 6
equal the 6-layer model timed directly. That real layers cost the same in a shallow and a deep model (no cache
advantage) is a machine property, measured by ``taskprune bench composition``: at Qwen2.5-1.5B shapes the
composed times were 0.95-1.05 of the direct ones, at a small shape (hidden 512) 0.55 on a CPU with a 480 MB L3.

**Engines.** ``stock`` is the stock transformers forward (``model(ids, cache=StaticCache, logits_to_keep=1)``),
what users run: it decides. ``torch.compile`` is not used for it (``compiled`` column): compiling in every
fresh trial process costs tens of seconds on 2 cores, more than the whole trial, and the layer-stack hooks
need the eager forward. ``tight`` (:class:`taskprune.perf.engines.TightEngine`, hand-written, full depth only)
is an *upper bound* on what a leaner decoder could do, labelled so, never a verdict.

The plans (:class:`taskprune.grid.FamilyPlan`, :func:`taskprune.grid.family_plans`) live in the grid, which
the Snakefile imports; the gathering of the rows into the efficiency table in :mod:`taskprune.perf.gather`.
Torch is imported inside the functions only. Imported by the ``bench`` stage and :mod:`taskprune.perf.measure`
(a trial's entry).
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

from taskprune.errors import ConfigError, DataError
from taskprune.grid import FamilyPlan

log = logging.getLogger(__name__)

MIN_PAIRS = 7  # fewer pairs than this: the row is noisy (never a verdict)
NOISY_HALF_WIDTH = 0.10  # CI half-width above this fraction of the speedup: noisy
BOOTSTRAP_RESAMPLES = 4000
CI_LEVEL = 0.95
ENGINES: tuple[str, ...] = ("stock", "tight")
ENGINE_ROLE = {"stock": "verdict", "tight": "upper bound"}
SYNTHETIC_SEED = 0  # weights and the (random-direction) uniform pruning of shape-family models
COMPOSED = "composed"
DIRECT = "direct"


# ------------------------------------------------------------------------------------------ statistics


def median_ci(ratios: Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """(median, CI low, CI high) of per-pair ratios: bootstrap percentile 95% CI over pairs
    (:func:`scipy.stats.bootstrap`). One pair gives a degenerate interval at its value."""
    import numpy as np
    from scipy import stats

    values = np.asarray([r for r in ratios if r is not None and math.isfinite(r)], dtype=float)
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    median = float(np.median(values))
    if values.size == 1 or np.ptp(values) == 0:
        return median, median, median
    res = stats.bootstrap(
        (values,), np.median, confidence_level=CI_LEVEL, n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile", rng=np.random.default_rng(seed),
    )  # fmt: skip
    return median, float(res.confidence_interval.low), float(res.confidence_interval.high)


def is_noisy(speedup: float, ci_low: float, ci_high: float, max_load: float, threads: int, n_pairs: int) -> bool:
    """The rule of the module docstring: wide CI, overloaded machine, or too few pairs."""
    if n_pairs < MIN_PAIRS or not all(math.isfinite(x) for x in (speedup, ci_low, ci_high)):
        return True
    return (ci_high - ci_low) / 2 > NOISY_HALF_WIDTH * abs(speedup) or max_load > threads


# ------------------------------------------------------------------------------------- building models


def _fill_random(model: Any, seed: int) -> None:
    """Random weights, fast: one seeded normal block (std 0.02) tiled into every matrix; norm weights 1.

    Initialising 1.5B parameters one by one costs ~10 s per trial on 2 cores; timing does not depend on the
    values (fp32, no sparsity, denormals flushed), only on the shapes.
    """
    import torch

    block = torch.randn(1 << 20, generator=torch.Generator().manual_seed(seed)) * 0.02
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.view(-1)
            if p.dim() == 1:
                flat.fill_(1.0 if "norm" in name else 0.0)
                continue
            for start in range(0, flat.numel(), block.numel()):
                n = min(block.numel(), flat.numel() - start)
                flat[start : start + n].copy_(block[:n])


def build_shapes_model(numbers: dict[str, Any], level: str | None, layers: int | None) -> Any:
    """A stock transformers model of the given shapes with ``layers`` decoder layers (default: all), random
    weights, pruned at ``level`` by the pipeline's uniform rule and slicing code (random neurons, seed 0)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from taskprune.config import PruningConfig
    from taskprune.levels import Level
    from taskprune.model.arch import get_adapter, mlp_modules
    from taskprune.model.checkpoint import _sync_shape_attributes, layer_widths
    from taskprune.model.loading import shape_family_config_class
    from taskprune.model.pruning import plan_pruning, slice_tensor

    config_class = shape_family_config_class(numbers["model_type"])
    depth = int(layers or numbers["num_hidden_layers"])
    config = config_class(
        hidden_size=numbers["hidden_size"], intermediate_size=numbers["intermediate_size"],
        num_hidden_layers=depth, num_attention_heads=numbers["num_attention_heads"],
        num_key_value_heads=numbers["num_key_value_heads"], vocab_size=numbers["vocab_size"],
        tie_word_embeddings=numbers["tie_word_embeddings"],
        max_position_embeddings=numbers["max_position_embeddings"], hidden_act="silu",
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model = model.to_empty(device="cpu")
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=config)  # real cos/sin tables (buffers were left empty)
    model.tie_weights()
    _fill_random(model, SYNTHETIC_SEED)
    if level is not None:
        widths = layer_widths(model)
        lv = Level.from_label(level)
        options = PruningConfig(levels=[lv.pct], allocation="uniform", multiple_of=numbers.get("multiple_of", 1))
        plan = plan_pruning("random", lv, widths, options, seed=SYNTHETIC_SEED)
        adapter = get_adapter(model)
        with torch.no_grad():
            for mlp, removed, width in zip(mlp_modules(model), plan.removed, widths, strict=True):
                keep = np.setdiff1d(np.arange(width), removed, assume_unique=True).astype(np.int64)
                for proj in (*adapter.in_projs, adapter.out_proj):
                    module = getattr(mlp, proj)
                    for param in ("weight", "bias"):
                        tensor = getattr(module, param, None)
                        if tensor is not None:
                            sliced = slice_tensor(tensor.data, adapter, proj, param, keep, width)
                            setattr(module, param, torch.nn.Parameter(sliced, requires_grad=False))
                    _sync_shape_attributes(module)
                if hasattr(mlp, "intermediate_size"):
                    mlp.intermediate_size = width - int(removed.size)
        setattr(model.config, adapter.width_key, plan.widths_after[0])
    return model.eval()


# ------------------------------------------------------------------------------------------ one trial


class StackTimer:
    """Wall and CPU seconds spent inside the decoder-layer stack of a stock forward (hooks on its first and
    last layer), accumulated until :meth:`take`."""

    def __init__(self, layers: Sequence[Any]) -> None:
        self.wall = self.cpu = 0.0
        self._start = (0.0, 0.0)
        self.handles = [
            layers[0].register_forward_pre_hook(self._enter),
            layers[-1].register_forward_hook(self._leave),
        ]

    def _enter(self, *_: Any) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def _leave(self, *_: Any) -> None:
        self.wall += time.perf_counter() - self._start[0]
        self.cpu += time.process_time() - self._start[1]

    def take(self) -> tuple[float, float]:
        out = (self.wall, self.cpu)
        self.wall = self.cpu = 0.0
        return out


class StockRunner:
    """Greedy prefill and decode through the stock forward with a ``StaticCache``; decode repeats rewind the
    cache to the end of the prompt, so every repeat runs the same positions."""

    def __init__(self, model: Any, batch_size: int, max_len: int) -> None:
        from transformers import StaticCache

        from taskprune.model.arch import decoder_layers

        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.timer = StackTimer(decoder_layers(model))

    def forward(self, tokens: Any) -> Any:
        out = self.model(tokens, cache=self.cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].argmax(-1)  # [B]

    def prefill(self, tokens: Any) -> Any:
        self.cache.reset()
        return self.forward(tokens)

    def decode(self, first: Any, steps: int) -> None:
        token = first
        for _ in range(steps):
            token = self.forward(token[:, None])
        for layer in self.cache.layers:  # rewind: the next repeat overwrites the same positions
            layer.crop(-steps)


class TightRunner:
    """The hand-written decoder (:class:`taskprune.perf.engines.TightEngine`); no stack split (full depth only)."""

    def __init__(self, model: Any, batch_size: int, max_len: int) -> None:
        from taskprune.perf.engines import TightEngine

        self.engine = TightEngine(model, batch_size, max_len)
        self.timer = None
        self.prompt_len = 0

    def prefill(self, tokens: Any) -> Any:
        self.prompt_len = int(tokens.shape[1])
        return self.engine.prefill(tokens)

    def decode(self, first: Any, steps: int) -> None:
        self.engine.decode(first, self.prompt_len, steps)


def trial_entry(argv: list[str]) -> int:
    """``SPEC.json OUT.json``: one trial in this fresh process (the fork server's ``trial`` entry)."""
    from taskprune.perf.isolation import run_spec

    return run_spec(argv, trial_main, "python -m taskprune.perf.isolation run trial")


def trial_main(spec: dict[str, Any]) -> dict[str, Any]:
    """One trial (in a fresh process): build or load the model, then time every (engine, batch, phase).

    Returns ``{"timings": [...], "load_avg_1m": ..., ...}``; each timing has the full-depth seconds per
    timed run (composed when fewer layers were built) and the CPU seconds, minimum over repeats.
    """
    import torch

    from taskprune.model.loading import load_model, resolve_device
    from taskprune.perf.engines import fixed_prompts

    torch.set_flush_denormal(True)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    source = spec["source"]
    device, _ = resolve_device(spec.get("device", "cpu"))
    if "checkpoint" in source:
        model = load_model(source["checkpoint"], str(device))
    else:
        model = build_shapes_model(source["shapes"], source["level"], source["measured_layers"])
    build_s = time.perf_counter() - t0
    from taskprune.model.checkpoint import layer_widths

    widths = layer_widths(model)
    built_layers = len(widths)
    full_layers = int(spec["num_layers"]) or built_layers
    scale = full_layers / built_layers
    if scale != 1 and device.type != "cpu":
        raise ConfigError("bench: composed depth (measured_layers) needs a CPU; asynchronous GPU kernels defeat the hooks")
    prompt_len, new_tokens = int(spec["prompt_tokens"]), int(spec["new_tokens"])
    timings = []
    loads = [load_before]
    with torch.inference_mode():
        for engine in spec["engines"]:
            for batch in spec["batch_sizes"]:
                if engine == "tight":
                    if scale != 1:
                        raise ConfigError("bench: the tight engine measures full depth only (measured_layers unset)")
                    runner: Any = TightRunner(load_model(source["checkpoint"], str(device)) if "checkpoint" in source else
                                              build_shapes_model(source["shapes"], source["level"], None),
                                              batch, prompt_len + new_tokens)  # fmt: skip
                else:
                    runner = StockRunner(model, batch, prompt_len + new_tokens)
                tokens = fixed_prompts(int(model.config.vocab_size), batch, prompt_len, device)
                for phase in spec["phases"]:
                    timings.append(_time_phase(runner, tokens, phase, new_tokens, spec, scale, device) | {
                        "engine": engine, "batch_size": batch, "phase": phase})  # fmt: skip
                    loads.append(os.getloadavg()[0])
                if runner.timer is not None:
                    for h in runner.timer.handles:
                        h.remove()
                del runner
    return {
        "timings": timings, "load_avg_1m": max(loads), "build_seconds": build_s, "widths": widths,
        "built_layers": built_layers, "num_layers": full_layers, "threads": torch.get_num_threads(),
        "torch_version": torch.__version__, "dtype_bytes": int(model.get_input_embeddings().weight.element_size()),
        "device": device.type,
    }  # fmt: skip


def _time_phase(runner: Any, tokens: Any, phase: str, new_tokens: int, spec: dict[str, Any], scale: float,
                device: Any) -> dict[str, Any]:
    """Seconds of one timed run (prefill: one forward; decode: ``new_tokens`` steps after an untimed
    prefill), full depth (composed with ``scale`` = full / built layers), minimum over repeats."""
    from taskprune.perf.engines import synchronize

    first = runner.prefill(tokens) if phase == "decode" else None

    def run_once() -> tuple[float, float, float, float]:
        """(wall, cpu, stack wall, stack cpu) of one timed run."""
        if runner.timer:
            runner.timer.take()
        synchronize(device)
        w0, c0 = time.perf_counter(), time.process_time()
        if phase == "prefill":
            runner.prefill(tokens)
        else:
            runner.decode(first, new_tokens)
        synchronize(device)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        stack_wall, stack_cpu = runner.timer.take() if runner.timer else (0.0, 0.0)
        return wall, cpu, stack_wall, stack_cpu

    for _ in range(spec["warmup"]):
        run_once()
    probe = run_once()
    inner = max(1, math.ceil(spec["min_repeat_s"] / max(probe[0], 1e-9)))
    best: tuple[float, float, float, float] | None = None
    for _ in range(spec["repeats"]):
        total = [0.0, 0.0, 0.0, 0.0]
        for _ in range(inner):
            for i, x in enumerate(run_once()):
                total[i] += x
        wall, cpu, stack_wall, stack_cpu = (x / inner for x in total)
        composed = wall - stack_wall + scale * stack_wall
        if best is None or composed < best[0]:
            best = (composed, cpu - stack_cpu + scale * stack_cpu, wall, stack_wall)
    assert best is not None
    return {
        "seconds": best[0], "cpu_seconds": best[1], "built_seconds": best[2], "stack_seconds": best[3],
        "runs_per_repeat": inner,
    }  # fmt: skip


# -------------------------------------------------------------------------------------- the job


def run_family(plan: FamilyPlan, *, progress: bool = True) -> tuple[Any, Any]:
    """All rounds of one family: (trials table, one row per level x engine x batch x phase)."""
    import polars as pl

    from taskprune.perf.isolation import ForkServer, run_isolated

    if not plan.levels:
        raise DataError(f"bench family '{plan.name}': no pruning level to compare with the base")
    names = ["base", *plan.levels]
    common = _trial_common(plan)
    trials = []
    server = ForkServer(plan.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="taskprune-pairs-") as tmp, contextlib.closing(server):
        for r in range(plan.pairs):
            order = names if r % 2 == 0 else names[::-1]
            for which in order:
                source = plan.base if which == "base" else plan.levels[which]
                res = run_isolated({**common, "source": source}, Path(tmp), f"r{r}-{which}", server, entry="trial")
                for t in res["timings"]:
                    trials.append({"round": r, "which": which, **t, "load_avg_1m": res["load_avg_1m"],
                                   "build_seconds": res["build_seconds"], "threads": res["threads"],
                                   "built_layers": res["built_layers"], "num_layers": res["num_layers"],
                                   "mlp_width": res["widths"][0], "dtype_bytes": res["dtype_bytes"],
                                   "torch_version": res["torch_version"], "device": res["device"]})  # fmt: skip
            if progress:
                log.info("%s: round %d/%d done (%.0f s, load %.1f)", plan.name, r + 1, plan.pairs,
                         time.perf_counter() - started, os.getloadavg()[0])  # fmt: skip
    table = pl.DataFrame(trials)
    return table, summarise(table, plan)


def _trial_common(plan: FamilyPlan) -> dict[str, Any]:
    """The part of a trial spec every trial of the family shares (the source varies)."""
    return {
        "kind": "trial", "num_layers": plan.num_layers, "engines": plan.engines, "batch_sizes": plan.batch_sizes,
        "phases": plan.phases, "prompt_tokens": plan.prompt_tokens, "new_tokens": plan.new_tokens,
        "device": plan.device, "warmup": plan.warmup, "repeats": plan.repeats, "min_repeat_s": plan.min_repeat_s, "threads": plan.threads,
        "checkpoint": plan.name,
    }  # fmt: skip


def check_composition(plan: FamilyPlan, rounds: int = 3, *, progress: bool = True) -> Any:
    """Composed depth against direct full depth, for a family built from numbers with ``measured_layers``
    (``taskprune bench composition``, diagnosis beside the pipeline).

    Each round runs, in alternating order, a fresh trial of the base and of every level twice: with
    ``measured_layers`` decoder layers (composed to ``num_layers``) and with all of them (timed directly).
    Returns one row per (level, engine, batch size, phase): the minimum seconds over rounds each way,
    ``composed_over_direct`` and, for a level, each way's speedup over the base. Whether shallow and deep
    stacks cost the same per layer depends on the machine's caches; this measures it where it matters.
    """
    import polars as pl

    from taskprune.perf.isolation import ForkServer, run_isolated

    if plan.source != "shapes" or not plan.measured_layers or plan.measured_layers == plan.num_layers:
        raise DataError(f"bench family '{plan.name}': composition needs a shapes family with measured_layers "
                        f"below num_layers ({plan.num_layers}), got {plan.measured_layers}")  # fmt: skip
    if rounds < 1:
        raise ConfigError(f"--rounds: expected a positive integer, got {rounds}")
    common = _trial_common(plan)
    order = [(which, layers) for layers in (plan.measured_layers, None) for which in ["base", *plan.levels]]
    timings = []
    server = ForkServer(plan.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="taskprune-compose-") as tmp, contextlib.closing(server):
        for r in range(rounds):
            for which, layers in order if r % 2 == 0 else order[::-1]:
                source = {**(plan.base if which == "base" else plan.levels[which]), "measured_layers": layers}
                res = run_isolated({**common, "source": source}, Path(tmp), f"r{r}-{which}-{layers}", server,
                                   entry="trial")  # fmt: skip
                for t in res["timings"]:
                    timings.append({"level": None if which == "base" else which, "engine": t["engine"],
                                    "batch_size": t["batch_size"], "phase": t["phase"],
                                    "way": "direct" if layers is None else "composed", "seconds": t["seconds"]})  # fmt: skip
            if progress:
                log.info("%s composition: round %d/%d done (%.0f s, load %.1f)", plan.name, r + 1, rounds,
                         time.perf_counter() - started, os.getloadavg()[0])  # fmt: skip
    keys = ["level", "engine", "batch_size", "phase"]
    best = (
        pl.DataFrame(timings)
        .group_by([*keys, "way"], maintain_order=True)
        .agg(pl.col("seconds").min())
        .pivot(on="way", index=keys, values="seconds")
        .rename({"composed": "composed_seconds", "direct": "direct_seconds"})
    )
    base = best.filter(pl.col("level").is_null()).select(
        *keys[1:], pl.col("composed_seconds").alias("_bc"), pl.col("direct_seconds").alias("_bd")
    )
    is_level = pl.col("level").is_not_null()
    return (
        best.join(base, on=keys[1:])
        .with_columns(
            composed_over_direct=pl.col("composed_seconds") / pl.col("direct_seconds"),
            composed_speedup=pl.when(is_level).then(pl.col("_bc") / pl.col("composed_seconds")),
            direct_speedup=pl.when(is_level).then(pl.col("_bd") / pl.col("direct_seconds")),
            measured_layers=pl.lit(plan.measured_layers, dtype=pl.Int64),
            num_layers=pl.lit(plan.num_layers, dtype=pl.Int64),
            rounds=pl.lit(rounds, dtype=pl.Int64),
        )
        .drop("_bc", "_bd")
    )


def summarise(trials: Any, plan: FamilyPlan) -> Any:
    """Per (level, engine, batch, phase): paired speedup, CI, ideal ratios and the noise record."""
    import polars as pl

    from taskprune.model.flops import (
        decode_bytes_per_token,
        decode_flops_per_token,
        param_counts,
        prefill_bytes_per_token,
        prefill_flops_per_token,
    )

    keys = ["engine", "batch_size", "phase"]
    base = trials.filter(pl.col("which") == "base").select(
        "round", *keys, pl.col("seconds").alias("_b"), pl.col("cpu_seconds").alias("_bc"),
        pl.col("load_avg_1m").alias("_bl"), pl.col("built_seconds").alias("_bw"), pl.col("mlp_width").alias("_bwidth"),
    )  # fmt: skip
    shape_of: dict[str, Any] = {}

    def shape(which: str, width: int, layers: int) -> Any:
        if which not in shape_of:
            shape_of[which] = _family_shape(plan, which, width, layers)
        return shape_of[which]

    rows = []
    for (which, engine, batch, phase), g in trials.join(base, on=["round", *keys]).group_by(
        ["which", *keys], maintain_order=True
    ):
        g = g.sort("round")
        ratios = (g["_b"] / g["seconds"]).to_list()
        cpu_ratios = (g["_bc"] / g["cpu_seconds"]).to_list()
        loads = [max(a, b) for a, b in zip(g["load_avg_1m"], g["_bl"], strict=True)]
        speedup, lo, hi = median_ci(ratios) if which != "base" else (1.0, 1.0, 1.0)
        threads = int(g["threads"][0])
        layers = int(g["num_layers"][0])
        s_var = shape(which, int(g["mlp_width"][0]), layers)
        s_base = shape("base", int(g["_bwidth"][0]), layers)
        dtype_bytes = int(g["dtype_bytes"][0])
        if phase == "prefill":
            f_b, f_v = (prefill_flops_per_token(s, plan.prompt_tokens, 1) for s in (s_base, s_var))
            by_b, by_v = (prefill_bytes_per_token(s, batch, plan.prompt_tokens, dtype_bytes) for s in (s_base, s_var))
            tokens = batch * plan.prompt_tokens
        else:
            f_b, f_v = (decode_flops_per_token(s, plan.prompt_tokens, plan.new_tokens) for s in (s_base, s_var))
            by_b, by_v = (decode_bytes_per_token(s, batch, plan.prompt_tokens, plan.new_tokens, dtype_bytes)
                          for s in (s_base, s_var))  # fmt: skip
            tokens = batch * plan.new_tokens
        ideal, ideal_bytes = f_b / f_v, by_b / by_v
        n_pairs = len([r for r in ratios if math.isfinite(r)])
        noisy = which != "base" and is_noisy(speedup, lo, hi, max(loads), threads, n_pairs)

        def realised(x: float, ideal: float = ideal, is_base: bool = which == "base") -> float | None:
            return None if is_base or abs(ideal - 1) <= 1e-12 else (x - 1) / (ideal - 1)

        median_seconds = float(g["seconds"].median())
        counts = param_counts(s_var)
        rows.append({
            "shapes": plan.name, "level": None if which == "base" else which,
            "level_pct": 0.0 if which == "base" else float(which), "engine": engine,
            "engine_role": ENGINE_ROLE[engine], "batch_size": int(batch), "phase": phase,
            "measured_speedup": speedup, "measured_speedup_ci_low": lo, "measured_speedup_ci_high": hi,
            "ideal_speedup": ideal, "ideal_speedup_bytes": ideal_bytes,
            "realised_fraction": realised(speedup), "realised_fraction_ci_low": realised(lo),
            "realised_fraction_ci_high": realised(hi), "n_pairs": n_pairs, "noisy": bool(noisy),
            "tokens_per_s": tokens / median_seconds, "tokens_per_s_best": tokens / float(g["seconds"].min()),
            "tokens_per_s_q1": tokens / float(g["seconds"].quantile(0.75)),
            "tokens_per_s_q3": tokens / float(g["seconds"].quantile(0.25)),
            **dict(zip(("measured_speedup_cpu_time", "measured_speedup_cpu_time_ci_low",
                        "measured_speedup_cpu_time_ci_high"),
                       median_ci(cpu_ratios) if which != "base" else (1.0, 1.0, 1.0), strict=True)),
            "pair_speedups": ratios, "pair_cpu_time_speedups": cpu_ratios, "pair_load_avg_1m": loads,
            "pair_cpu_wall_ratio": (g["cpu_seconds"] / g["seconds"]).to_list(),
            "load_avg_1m_max": max(loads), "threads": threads,
            "flops_per_token": float(f_v), "bytes_per_token": float(by_v),
            "params_total_shapes": counts.total, "params_mlp_shapes": counts.mlp,
            "mlp_width": int(g["mlp_width"][0]), "num_layers": layers, "built_layers": int(g["built_layers"][0]),
            "timing_method": COMPOSED if int(g["built_layers"][0]) != layers else DIRECT,
            "compiled": False, "static_cache": engine == "stock" or engine == "tight",
            "prompt_tokens": plan.prompt_tokens, "new_tokens": plan.new_tokens, "repeats": plan.repeats,
            "shapes_source": plan.source, "device": str(g["device"][0]), "torch_version": str(g["torch_version"][0]),
            "family_models": list(plan.models),
            "family_only_variant": None if which == "base" else plan.levels[which].get("only_variant"),
        })  # fmt: skip
    return pl.DataFrame(rows).sort(["engine", "phase", "batch_size", "level_pct"])


def _family_shape(plan: FamilyPlan, which: str, width: int, layers: int) -> Any:
    """The full-depth :class:`~taskprune.model.flops.ModelShape` of a family member (``width`` per layer)."""
    from transformers import AutoConfig

    from taskprune.model.flops import shape_from_config
    from taskprune.model.loading import shape_family_config_class

    source = plan.base if which == "base" else plan.levels[which]
    if "checkpoint" in source:
        from taskprune.model.flops import checkpoint_shape

        return checkpoint_shape(source["checkpoint"])
    n = source["shapes"]
    config_class = shape_family_config_class(n["model_type"])
    config = config_class(
        hidden_size=n["hidden_size"], intermediate_size=width, num_hidden_layers=layers,
        num_attention_heads=n["num_attention_heads"], num_key_value_heads=n["num_key_value_heads"],
        vocab_size=n["vocab_size"], tie_word_embeddings=n["tie_word_embeddings"],
    )  # fmt: skip
    del AutoConfig
    return shape_from_config(config)


def method_metadata(plan: FamilyPlan) -> dict[str, Any]:
    """How the numbers were measured, for the Parquet metadata."""
    return {
        "design": "paired, interleaved: round r measures base, v1..vk (reversed on odd rounds), each trial a "
        "fresh process; a trial's time per setting = min over repeats; speedup = median over rounds of "
        f"time(base_r)/time(level_r), bootstrap {CI_LEVEL:.0%} percentile CI over pairs "
        f"({BOOTSTRAP_RESAMPLES} resamples)",
        "noisy_rule": f"CI half-width > {NOISY_HALF_WIDTH:.0%} of the speedup, or a pair's 1-minute load average > "
        f"threads, or fewer than {MIN_PAIRS} pairs",
        "timing": (
            f"composed: {plan.measured_layers} full-width decoder layers built; full-depth time = time outside the "
            f"layer stack (embedding, masks, rotary, final norm, LM head) + {plan.num_layers}/{plan.measured_layers}"
            " x time inside the stack (forward hooks on its first and last layer)"
            if plan.measured_layers and plan.measured_layers != plan.num_layers
            else "direct: the full-depth model is timed"
        ),
        "models": "random weights, stock transformers model, pruned in memory by taskprune.prune's uniform rule"
        if plan.source == "shapes" else "the pipeline's checkpoints (base + one per level)",
        "engines": {e: ENGINE_ROLE[e] for e in plan.engines},
        "compile": "not used: compiling in every fresh trial process costs more than the trial on 2 cores",
        "plan": plan.to_json(),
    }


