"""The experiment grid: which model variants a config produces, and where each one's files live.

The Snakefile's input functions, the metrics collector and the figures all enumerate variants through
this module, so the paths in ``results/`` follow one definition (DESIGN.md's data contracts).

A variant is ``{model}/base``, ``{model}/{method}/{level}/{seed}`` (pruned) or
``{model}/{method}/{level}/{seed}/recovered-{recipe}`` (a pruned variant recovered with one recipe of
``recovery.methods``, e.g. ``recovered-lora``); ``{seed}`` is 0 for the deterministic methods and ``{level}``
is the percentage as written in the config (a :class:`~taskprune.levels.Level`'s label; a variant carries
the :class:`~taskprune.levels.Level` itself).
"""

from __future__ import annotations

from dataclasses import dataclass

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
            for level in cfg.levels_for(m):
                for seed in seeds_for(cfg, method):
                    out.append(Variant(m, method, level, seed, "pruned"))
    return out


def _selected(sel: RecoverySelection, cfg: Config, v: Variant) -> bool:
    if v.method != sel.method:
        return False
    if sel.levels == "max":
        ok_level = v.level == max(cfg.levels_for(v.model))
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
