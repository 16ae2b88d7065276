"""Paired, interleaved throughput of a shape family: the base against each pruning level, with a CI.

Why this module exists: the speedup of a pruned model is a ratio of two timings, and on a shared machine
the load drifts over minutes, so two timings taken by separate jobs see different neighbours. Here one job
measures a whole *shape family* (a base shape and its uniformly pruned widths) in alternating trials, so
drift hits both sides of every ratio alike:

- **Trials.** A round measures the base and every level, in the order ``base, v1, ..., vk`` on even rounds
  and ``vk, ..., v1, base`` on odd rounds (so consecutive rounds read ``base, v, v, base, ...``). Every
  trial is a fresh process (forked from :class:`taskprune.bench.WorkerServer`: no model, compilation cache
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
  rule (:func:`taskprune.prune.plan_pruning`) and tensor slicing (:func:`taskprune.prune._slice_tensor`).
  No download: the paper's Qwen2.5-1.5B is measured from its published shape.
- **Checkpoints** (``bench.shapes`` unset, e.g. the paper setup): the base model and one pruned checkpoint
  per level (:func:`taskprune.bench.bench_plan` picks it), loaded as the pipeline saved them.

**Composed depth.** A 28-layer 1.5B model at batch 32 takes seconds per step on 2 cores. With uniform
allocation every decoder layer of a variant has the same shape, so a family may set ``measured_layers``:
the trial builds a model of that many full-width layers (plus the real embedding, final norm and LM head),
forward hooks on the first and last decoder layer time the layer stack inside the stock forward, and the
full-depth time is ``time(rest) + num_hidden_layers / measured_layers * time(layers)`` (``rest`` = the
forward outside the stack: embedding, masks, rotary tables, final norm, LM head). The method is written
into every row (``timing_method``) and the table's metadata; ``tests/test_bench_paired.py`` checks the
composed estimate against a direct full-depth measurement.

**Engines.** ``stock`` is the stock transformers forward (``model(ids, cache=StaticCache, logits_to_keep=1)``),
what users run: it decides. ``torch.compile`` is not used for it (``compiled`` column): compiling in every
fresh trial process costs tens of seconds on 2 cores, more than the whole trial, and the layer-stack hooks
need the eager forward. ``tight`` (:class:`taskprune.bench.TightEngine`, hand-written, full depth only)
is an *upper bound* on what a leaner decoder could do, labelled so, never a verdict.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskprune.errors import ConfigError, DataError

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


# ------------------------------------------------------------------------------------------ the plan


@dataclass
class FamilyPlan:
    """One bench job: which models a shape family's trials run, with which settings."""

    name: str
    source: str  # "shapes" (built from numbers) or "checkpoints"
    base: dict[str, Any]  # trial source of the base: {"checkpoint": dir} or {"shapes": {...}, "level": None}
    levels: dict[str, dict[str, Any]]  # level as written in the config -> trial source
    num_layers: int  # the depth the times are reported at
    measured_layers: int | None  # decoder layers actually built (None: full depth)
    batch_sizes: list[int]
    phases: list[str]
    prompt_tokens: int
    new_tokens: int
    engines: list[str]
    pairs: int
    warmup: int
    repeats: int
    min_repeat_s: float
    threads: int | None
    device: str = "cpu"  # auto | cpu | cuda (built-from-numbers families: cpu)
    models: list[str] = field(default_factory=list)  # models whose variants these rows describe

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _shape_numbers(shapes: Any) -> dict[str, Any]:
    """The architecture numbers of a ``bench.shapes`` entry (everything but the measurement settings)."""
    from taskprune.config import SHAPE_NUMBER_KEYS

    return {k: getattr(shapes, k) for k in SHAPE_NUMBER_KEYS}


def model_matches_shapes(cfg: Any, model: str, shapes: Any) -> bool:
    """Whether an embedded (trained) model has exactly the architecture of a ``bench.shapes`` entry."""
    m = cfg.models[model]
    if m.source != "train" or shapes.model_type != "llama":
        return False
    arch = m.architecture
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "vocab_size", "tie_word_embeddings")  # fmt: skip
    return all(getattr(arch, k) == getattr(shapes, k) for k in keys)


def family_plans(cfg: Any) -> dict[str, FamilyPlan]:
    """Every shape family a run benchmarks, by name.

    With ``bench.shapes``: one family per entry, built from its numbers, labelling the embedded models of
    exactly that architecture. Without: one family per group of models with identical shapes
    (:func:`taskprune.bench.model_shape_family`), from their checkpoints (base + one per level); needs
    uniform allocation (every variant at a level has the same widths).
    """
    from taskprune.bench import bench_plan, model_shape_family
    from taskprune.config import format_level
    from taskprune.grid import parse_variant

    bench = cfg.bench
    plans: dict[str, FamilyPlan] = {}
    common = {"engines": list(bench.engines), "pairs": bench.pairs, "warmup": bench.warmup,
              "repeats": bench.repeats, "min_repeat_s": bench.min_repeat_s, "threads": bench.threads,
              "device": cfg.device}  # fmt: skip
    if bench.shapes:
        for name, s in bench.shapes.items():
            levels = [format_level(x) for x in (s.levels or bench.levels or cfg.pruning.levels)]
            numbers = {**_shape_numbers(s), "multiple_of": cfg.pruning.multiple_of}
            plans[name] = FamilyPlan(
                name=name, source="shapes",
                base={"shapes": numbers, "level": None, "measured_layers": s.measured_layers},
                levels={lv: {"shapes": numbers, "level": lv, "measured_layers": s.measured_layers} for lv in levels},
                num_layers=s.num_hidden_layers, measured_layers=s.measured_layers,
                batch_sizes=list(s.batch_sizes or bench.batch_sizes), phases=list(s.phases or bench.phases),
                prompt_tokens=s.prompt_tokens or bench.prompt_tokens, new_tokens=s.new_tokens or bench.new_tokens,
                models=[m for m in cfg.models if model_matches_shapes(cfg, m, s)], **{**common, "device": "cpu"},
            )  # fmt: skip
        return plans
    from taskprune.grid import base_variants

    # uniform: one checkpoint per level stands for every variant at it; global: widths depend on the scores,
    # so the level's rows describe only the checkpoint timed (first method/seed; others keep memory rows)
    only_measured = cfg.pruning.allocation != "uniform"

    wanted = {format_level(x) for x in bench.levels} if bench.levels else None
    families: dict[Any, list[str]] = {}
    for v in base_variants(cfg):
        families.setdefault(model_shape_family(cfg, v.model), []).append(v.model)
    plan = bench_plan(cfg)
    for models in families.values():
        first = models[0]
        m = cfg.models[first]
        base = {"checkpoint": f"results/models/{first}" if m.source == "train" else str(m.path)}
        levels: dict[str, dict[str, Any]] = {}
        for measured in plan:
            v = parse_variant(measured)
            if v.model in models and v.stage != "base" and (wanted is None or v.level in wanted):
                source = {"checkpoint": v.checkpoint, "variant": v.path}
                levels.setdefault(v.level, {**source, "only_variant": v.path} if only_measured else source)
        levels = dict(sorted(levels.items(), key=lambda kv: float(kv[0])))
        plans[first] = FamilyPlan(
            name=first, source="checkpoints", base=base, levels=levels, num_layers=0, measured_layers=None,
            batch_sizes=list(bench.batch_sizes), phases=list(bench.phases), prompt_tokens=bench.prompt_tokens,
            new_tokens=bench.new_tokens, models=list(models), **common,
        )  # fmt: skip
    return plans


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
    from taskprune.model.arch import get_adapter, mlp_modules
    from taskprune.model.checkpoint import _sync_shape_attributes, layer_widths
    from taskprune.model.loading import shape_family_config_class
    from taskprune.prune import _slice_tensor, parse_level, plan_pruning

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
        options = PruningConfig(levels=[float(level)], allocation="uniform", multiple_of=numbers.get("multiple_of", 1))
        plan = plan_pruning("random", parse_level(level), widths, options, seed=SYNTHETIC_SEED)
        adapter = get_adapter(model)
        with torch.no_grad():
            for mlp, removed, width in zip(mlp_modules(model), plan.removed, widths, strict=True):
                keep = np.setdiff1d(np.arange(width), removed, assume_unique=True).astype(np.int64)
                for proj in (*adapter.in_projs, adapter.out_proj):
                    module = getattr(mlp, proj)
                    for param in ("weight", "bias"):
                        tensor = getattr(module, param, None)
                        if tensor is not None:
                            sliced = _slice_tensor(tensor.data, adapter, proj, param, keep, width)
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
    """The hand-written decoder (:class:`taskprune.bench.TightEngine`); no stack split (full depth only)."""

    def __init__(self, model: Any, batch_size: int, max_len: int) -> None:
        from taskprune.bench import TightEngine

        self.engine = TightEngine(model, batch_size, max_len)
        self.timer = None
        self.prompt_len = 0

    def prefill(self, tokens: Any) -> Any:
        self.prompt_len = int(tokens.shape[1])
        return self.engine.prefill(tokens)

    def decode(self, first: Any, steps: int) -> None:
        self.engine.decode(first, self.prompt_len, steps)


def trial_main(spec: dict[str, Any]) -> dict[str, Any]:
    """One trial (in a fresh process): build or load the model, then time every (engine, batch, phase).

    Returns ``{"timings": [...], "load_avg_1m": ..., ...}``; each timing has the full-depth seconds per
    timed run (composed when fewer layers were built) and the CPU seconds, minimum over repeats.
    """
    import torch

    from taskprune.bench import _prompt_tokens
    from taskprune.model.loading import load_model, resolve_device

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
                tokens = _prompt_tokens(int(model.config.vocab_size), batch, prompt_len, device)
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
    from taskprune.bench import _synchronize

    first = runner.prefill(tokens) if phase == "decode" else None

    def run_once() -> tuple[float, float, float, float]:
        """(wall, cpu, stack wall, stack cpu) of one timed run."""
        if runner.timer:
            runner.timer.take()
        _synchronize(device)
        w0, c0 = time.perf_counter(), time.process_time()
        if phase == "prefill":
            runner.prefill(tokens)
        else:
            runner.decode(first, new_tokens)
        _synchronize(device)
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

    from taskprune.bench import WorkerServer, _run_worker

    if not plan.levels:
        raise DataError(f"bench family '{plan.name}': no pruning level to compare with the base")
    names = ["base", *plan.levels]
    common = {
        "kind": "trial", "num_layers": plan.num_layers, "engines": plan.engines, "batch_sizes": plan.batch_sizes,
        "phases": plan.phases, "prompt_tokens": plan.prompt_tokens, "new_tokens": plan.new_tokens,
        "device": plan.device, "warmup": plan.warmup, "repeats": plan.repeats, "min_repeat_s": plan.min_repeat_s, "threads": plan.threads,
        "checkpoint": plan.name,
    }  # fmt: skip
    trials = []
    server = WorkerServer(plan.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="taskprune-pairs-") as tmp, contextlib.closing(server):
        for r in range(plan.pairs):
            order = names if r % 2 == 0 else names[::-1]
            for which in order:
                source = plan.base if which == "base" else plan.levels[which]
                res = _run_worker({**common, "source": source}, Path(tmp), f"r{r}-{which}", server)
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


# ------------------------------------------------------------------------------------------ gather


def gather_efficiency(variant_paths: Sequence[str | os.PathLike[str]], family_paths: Sequence[str | os.PathLike[str]]) -> Any:
    """``results/bench/efficiency.parquet``: every family row, once per variant it describes.

    A family's rows label every variant of its models at the same level (``stage == "base"`` for the base),
    with the variant's own parameters, bytes and peak memory from its per-variant file; variants at levels
    the family did not time keep their memory rows with null throughput. A family that describes no model
    of the run (e.g. Qwen2.5-1.5B's shapes in the embedded default) gets rows of its own, named after it
    (``model = shapes``, ``method = "uniform"``, parameters from the closed form, memory null).
    """
    import polars as pl

    from taskprune.bench import CONTRACT_COLUMNS, _per_variant_order
    from taskprune.io import read_parquet

    if not family_paths:
        raise DataError("bench gather: no shape-family benchmark files given (--families)")
    variants = (
        pl.concat([read_parquet(p, required=_per_variant_order(), what="per-variant benchmark file")
                   .select(_per_variant_order()) for p in variant_paths], how="vertical_relaxed")  # fmt: skip
        if variant_paths else None
    )
    if variants is not None:
        dup = variants.group_by("variant").len().filter(pl.col("len") > 1)
        if dup.height:
            raise DataError(f"bench gather: variant '{dup['variant'][0]}' appears in {dup['len'][0]} per-variant files")
    frames = []
    for path in family_paths:
        fam = read_parquet(path, required=["shapes", "level_pct", "family_models"], what="shape-family benchmark file")
        models = fam["family_models"][0].to_list() if fam.height else []
        fam = fam.drop("family_models")
        if "family_only_variant" not in fam.columns:
            fam = fam.with_columns(pl.lit(None, dtype=pl.String).alias("family_only_variant"))
        mine = variants.filter(pl.col("model").is_in(models)) if variants is not None and models else None
        if mine is not None and mine.height:
            timed = fam.select(pl.col("level_pct").round(6).alias("_lv")).unique()
            rows = mine.with_columns(
                pl.when(pl.col("stage") == "base").then(0.0).otherwise(pl.col("level_pct")).round(6).alias("_lv")
            )
            joined = rows.join(fam.rename({"level": "_family_level", "level_pct": "_family_level_pct",
                                           "device": "_family_device"}).with_columns(
                pl.col("_family_level_pct").round(6).alias("_lv")), on="_lv", how="left")  # fmt: skip
            missing = rows.join(timed, on="_lv", how="anti")
            if missing.height and missing.height == rows.height:
                raise DataError(f"{path}: the family times none of the levels of its models' variants")
            # global allocation: a level's timing describes only the checkpoint timed; the others keep memory rows
            other = pl.col("family_only_variant").is_not_null() & (pl.col("family_only_variant") != pl.col("measured_variant"))
            kept = joined.filter(~other.fill_null(False))
            dropped = rows.join(kept.select("variant").unique(), on="variant", how="anti")
            frames.append(pl.concat([kept, dropped], how="diagonal_relaxed")
                          .drop("_lv", "_family_level", "_family_level_pct", "_family_device", "family_only_variant"))  # fmt: skip
        else:
            name = str(fam["shapes"][0])
            frames.append(fam.drop("family_only_variant").with_columns(
                pl.lit(name).alias("model"),
                pl.when(pl.col("level").is_null()).then(pl.lit("base")).otherwise(pl.lit("uniform")).alias("method"),
                pl.lit(0, dtype=pl.Int64).alias("seed"),
                pl.when(pl.col("level").is_null()).then(pl.lit("base")).otherwise(pl.lit("pruned")).alias("stage"),
                pl.col("level").fill_null("0"),
                pl.col("params_total_shapes").alias("params_total"), pl.col("params_mlp_shapes").alias("params_mlp"),
                pl.lit(None, dtype=pl.Int64).alias("bytes_on_disk"),
                pl.lit(None, dtype=pl.Int64).alias("peak_memory_bytes"),
            ).with_columns(
                pl.when(pl.col("stage") == "base").then(pl.format("{}/base", pl.col("model")))
                .otherwise(pl.format("{}/uniform/{}/0", pl.col("model"), pl.col("level"))).alias("variant"),
            ).with_columns(pl.col("variant").alias("measured_variant")))  # fmt: skip
    out = pl.concat(frames, how="diagonal_relaxed")
    order = [c for c in CONTRACT_COLUMNS if c in out.columns]
    rest = [c for c in out.columns if c not in order]
    return out.select(order + rest).sort(["shapes", "model", "stage", "method", "level_pct", "seed", "engine",
                                          "phase", "batch_size"], nulls_last=True)  # fmt: skip
