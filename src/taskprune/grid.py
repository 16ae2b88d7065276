"""The experiment grid: which model variants a config produces, and where each one's files live.

The Snakefile's input functions, the metrics collector and the figures all enumerate variants through
this module, so the paths in ``results/`` follow one definition (DESIGN.md's data contracts). It also plans
the benchmark jobs (:func:`bench_plan`: which checkpoint is measured for which variants; :func:`family_plans`:
the shape families whose throughput is timed), so the Snakefile plans jobs without importing the benchmarks.
Torch-free.

A variant is ``{model}/base``, ``{model}/{method}/{level}/{seed}`` (pruned) or
``{model}/{method}/{level}/{seed}/recovered-{recipe}`` (a pruned variant recovered with one recipe of
``recovery.methods``, e.g. ``recovered-lora``); ``{seed}`` is 0 for the deterministic methods and ``{level}``
is the percentage as written in the config (a :class:`~taskprune.levels.Level`'s label; a variant carries
the :class:`~taskprune.levels.Level` itself).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from taskprune.config import Config, RecoverySelection, parse_method
from taskprune.levels import ZERO, Level
from taskprune.recipes import PAPER_RECIPE

BASE = "base"
#: last path component of a recovered variant: ``recovered-{recipe}``
RECOVERED_PREFIX = "recovered-"


@dataclass(frozen=True, order=True)
class Variant:
    model: str
    method: str = BASE  # "base" for the unpruned model
    level: Level = ZERO
    seed: int = 0
    stage: str = "base"  # base | pruned | recovered
    recovery: str | None = None  # the recovery recipe of a recovered variant (lora, lora-kd), else None

    def __post_init__(self) -> None:
        if (self.stage == "recovered") != (self.recovery is not None):
            raise ValueError(f"a {self.stage} variant {'needs' if self.stage == 'recovered' else 'has no'} "
                             f"recovery recipe (got {self.recovery!r})")

    @property
    def path(self) -> str:
        """The ``{variant}`` path fragment used under results/eval/ and results/bench/."""
        if self.stage == "base":
            return f"{self.model}/base"
        core = f"{self.model}/{self.method}/{self.level}/{self.seed}"
        return f"{core}/{RECOVERED_PREFIX}{self.recovery}" if self.stage == "recovered" else core

    @property
    def checkpoint(self) -> str:
        """Directory of this variant's weights (a hub id or path for a pretrained base model is resolved
        by the caller; this returns the results/ path)."""
        if self.stage == "base":
            return f"results/models/{self.model}"
        if self.stage == "pruned":
            return f"results/pruned/{self.model}/{self.method}/{self.level}/{self.seed}"
        return f"results/recovered/{self.model}/{self.method}/{self.level}/{self.seed}/{self.recovery}"

    @property
    def pruned(self) -> Variant:
        return Variant(self.model, self.method, self.level, self.seed, "pruned")

    def recovered(self, recipe: str) -> Variant:
        """This variant's pruned checkpoint recovered with ``recipe``."""
        return Variant(self.model, self.method, self.level, self.seed, "recovered", recipe)


def seeds_for(cfg: Config, method: str) -> list[int]:
    direction, _ = parse_method(method)
    return list(cfg.pruning.seeds) if direction == "random" else [0]


def pruned_variants(cfg: Config, model: str | None = None) -> list[Variant]:
    out = []
    for m in [model] if model else list(cfg.models):
        for method in cfg.pruning.methods:
            for level in cfg.levels_for(m, method):
                for seed in seeds_for(cfg, method):
                    out.append(Variant(m, method, level, seed, "pruned"))
    return out


def _selected(sel: RecoverySelection, cfg: Config, v: Variant) -> bool:
    if v.method != sel.method:
        return False
    if sel.levels == "max":
        ok_level = v.level == max(cfg.levels_for(v.model, v.method))
    elif sel.levels == "all":
        ok_level = True
    else:
        ok_level = v.level in {Level.from_config(x) for x in sel.levels}
    seeds = seeds_for(cfg, v.method)
    if sel.seeds == "all":
        ok_seed = True
    elif sel.seeds == "first":
        ok_seed = v.seed == seeds[0]
    else:
        ok_seed = v.seed in sel.seeds
    return ok_level and ok_seed


def recovered_variants(cfg: Config, model: str | None = None) -> list[Variant]:
    if not cfg.recovery.enabled:
        return []
    out = []
    for v in pruned_variants(cfg, model):
        recipes = {r for sel in cfg.recovery.variants if _selected(sel, cfg, v) for r in cfg.recovery.recipes_for(sel)}
        out.extend(Variant(v.model, v.method, v.level, v.seed, "recovered", r)
                   for r in cfg.recovery.methods if r in recipes)
    return out


def harness_variants(cfg: Config) -> list[Variant]:
    """The variants ``harness.variants`` selects (only those the grid makes; none when disabled)."""
    h = cfg.harness
    if not h.enabled:
        return []
    models = set(h.models) if h.models is not None else set(cfg.models)
    out: list[Variant] = []
    for v in base_variants(cfg) + pruned_variants(cfg) + recovered_variants(cfg):
        if v.model not in models or v.stage == "recovered" and v.recovery != PAPER_RECIPE:
            continue  # recovered: the paper's recipe only (the harness budget does not grow with recipes)
        for sel in h.variants:
            if v.stage == "base" and sel.method == "base" or (
                v.stage == sel.stage and _selected(sel, cfg, v)  # type: ignore[arg-type]
            ):
                out.append(v)
                break
    return out


def base_variants(cfg: Config) -> list[Variant]:
    return [Variant(m) for m in cfg.models]


def all_variants(cfg: Config) -> list[Variant]:
    return base_variants(cfg) + pruned_variants(cfg) + recovered_variants(cfg)


def tasks_for(cfg: Config, model: str) -> list[str]:
    """The tasks a variant of ``model`` is evaluated on: its target task, then its distractors."""
    m = cfg.models[model]
    return [m.task, *m.distractors]


def parse_variant(path: str) -> Variant:
    """Inverse of :attr:`Variant.path` (the ``{level}`` part read with :meth:`Level.from_label`)."""
    parts = path.strip("/").split("/")
    if len(parts) == 2 and parts[1] == BASE:
        return Variant(parts[0])
    if len(parts) == 4:
        return Variant(parts[0], parts[1], Level.from_label(parts[2]), int(parts[3]), "pruned")
    if len(parts) == 5 and parts[4].startswith(RECOVERED_PREFIX) and len(parts[4]) > len(RECOVERED_PREFIX):
        return Variant(parts[0], parts[1], Level.from_label(parts[2]), int(parts[3]), "recovered",
                       parts[4][len(RECOVERED_PREFIX):])
    raise ValueError(f"not a variant path: {path}")


# ------------------------------------------------------------------------------ benchmark planning


def bench_plan(cfg: Any) -> dict[str, list[str]]:
    """Which checkpoint to measure for which variants: ``{measured variant: [variants it labels]}``.

    Variants are grouped by :func:`shape_key`; the first base (else pruned) variant of a group is measured
    and labels the others (the ``measured_variant`` column says which).
    """
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
    (:func:`model_shape_family`), from their checkpoints (base + one per level); needs
    uniform allocation (every variant at a level has the same widths).
    """

    bench = cfg.bench
    plans: dict[str, FamilyPlan] = {}
    common = {"engines": list(bench.engines), "pairs": bench.pairs, "warmup": bench.warmup,
              "repeats": bench.repeats, "min_repeat_s": bench.min_repeat_s, "threads": bench.threads,
              "device": cfg.device}  # fmt: skip
    if bench.shapes:
        for name, s in bench.shapes.items():
            levels = [Level.from_config(x).label for x in (s.levels or bench.levels or cfg.pruning.levels)]
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
    # uniform: one checkpoint per level stands for every variant at it; global: widths depend on the scores,
    # so the level's rows describe only the checkpoint timed (first method/seed; others keep memory rows)
    only_measured = cfg.pruning.allocation != "uniform"

    wanted = {Level.from_config(x) for x in bench.levels} if bench.levels else None
    families: dict[Any, list[str]] = {}
    for v in base_variants(cfg):
        families.setdefault(model_shape_family(cfg, v.model), []).append(v.model)
    plan = bench_plan(cfg)
    for models in families.values():
        first = models[0]
        m = cfg.models[first]
        base = {"checkpoint": f"results/models/{first}" if m.source == "train" else str(m.path)}
        found: dict[Level, dict[str, Any]] = {}
        for measured in plan:
            v = parse_variant(measured)
            if v.model in models and v.stage != "base" and (wanted is None or v.level in wanted):
                source = {"checkpoint": v.checkpoint, "variant": v.path}
                found.setdefault(v.level, {**source, "only_variant": v.path} if only_measured else source)
        levels = {lv.label: found[lv] for lv in sorted(found)}
        plans[first] = FamilyPlan(
            name=first, source="checkpoints", base=base, levels=levels, num_layers=0, measured_layers=None,
            batch_sizes=list(bench.batch_sizes), phases=list(bench.phases), prompt_tokens=bench.prompt_tokens,
            new_tokens=bench.new_tokens, models=list(models), **common,
        )  # fmt: skip
    return plans
