"""Train the embedded tiny models: a generalist, and specialists continued from it (or from scratch).

Why: with no model hub reachable, the embedded default needs its own task-specific models. A specialist is
a stock ``LlamaForCausalLM`` (SwiGLU MLP, ``intermediate_size >= 5 x hidden_size`` like the paper's wide
MLPs) trained on CPU in minutes, mostly on its target task and partly on the distractor tasks
(``training.mix``), so that pruning later has general ability to lose. The tokenizer is a byte-level BPE
trained with ``tokenizers`` on the same texts (digits split one per token, so arithmetic stays learnable),
saved as a ``PreTrainedTokenizerFast``; stock ``AutoTokenizer`` / ``AutoModelForCausalLM`` load both.

Training data: each example is ``<s> prompt completion </s>`` with prompt and completion tokenised
separately (exactly as generation will see the prompt). Examples are drawn by the mix shares and packed
whole into rows of ``seq_len`` tokens; ``position_ids`` restart at 0 for each example and no attention mask
is passed, so transformers builds a block-diagonal causal mask (examples never attend to each other). The
loss is the next-token cross-entropy on completion tokens plus ``PROMPT_LOSS_WEIGHT`` times that on prompt
tokens.

Generalist and specialists: like Qwen2.5-Math/Coder from Qwen2.5, the default trains one generalist on a
balanced mix of all tasks (config ``generalists``), and each specialist continues from its weights and
tokenizer (``training.init``) on its specialist mix; ``init: null`` trains a specialist from scratch.

After training, the validation check generates greedily on the validation split (of the target task, or
of every task of a generalist's mix) with the evaluation stage's own code (``taskprune.model.generate``,
``taskprune.evaluate``, ``taskprune.tasks.sandbox``) and writes ``training.json`` (``validation_accuracy,
n_validation, validation_by_task, train_seconds, params`` and more), ``loss.parquet`` and ``loss.png``
beside the checkpoint. The eval split is never read by training: it is evaluation's alone.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskprune.config import ArchitectureConfig, EvaluationConfig, ModelConfig, TaskConfig, TrainingConfig
from taskprune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>"}  # ids 0, 1, 2 in this order
#: weight of the loss on prompt tokens relative to completion tokens (the completion is what is evaluated;
#: prompt tokens still teach the model to read the task, e.g. the outputs of a docstring's examples)
PROMPT_LOSS_WEIGHT = 0.1


# ========================================================================================= tokenizer


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``; adds ``<s>`` to every encoding.

    Pre-tokenisation splits every digit into its own token (so ``123`` is ``1 2 3``: arithmetic is
    digit-wise), then applies GPT-2's byte-level split (a space stays attached to the following word).
    The byte alphabet (256 symbols) is always in the vocabulary, so any text round-trips exactly.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [SPECIAL_TOKENS["pad"], SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"]]
    n_base = len(pre_tokenizers.ByteLevel.alphabet()) + len(specials)
    if vocab_size <= n_base:
        raise ConfigError(f"architecture.vocab_size {vocab_size} must exceed {n_base} (256 bytes + 3 special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos_id = tok.token_to_id(SPECIAL_TOKENS["bos"])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL_TOKENS['bos']} $A", pair=f"{SPECIAL_TOKENS['bos']} $A $B", special_tokens=[(SPECIAL_TOKENS["bos"], bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"],
        padding_side="left",
        model_max_length=None,
    )


# ============================================================================================== data


@dataclass(frozen=True)
class Example:
    """One tokenised training example: ``ids = [<s>] + prompt + completion + [</s>]``."""

    ids: tuple[int, ...]
    n_prompt: int  # tokens of <s> + prompt (their loss weight is PROMPT_LOSS_WEIGHT)


def tokenize_examples(tokenizer: Any, prompts: list[str], completions: list[str]) -> list[Example]:
    prompt_ids = tokenizer(prompts)["input_ids"]  # with <s>, exactly what generation feeds the model
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [
        Example(tuple(p) + tuple(c) + (eos,), len(p)) for p, c in zip(prompt_ids, completion_ids, strict=True)
    ]


PACK_POOL = 64  # examples drawn but not yet placed, at most (first-fit packing)


class PackedBatches:
    """An endless, seeded stream of packed batches drawn from several sources by their mix shares.

    Each row of a batch holds whole examples (longer ones are cut to ``seq_len``), packed first-fit: an
    example that does not fit the rest of a row waits in a pool (at most ``PACK_POOL``, oldest first) for a
    row with room. Measured on the math specialist's mix (90-250-token examples): 92% of 384-token rows are
    tokens, 71% of 192-token rows (67% before the pool). Every drawn example is placed exactly once, in draw
    order among those that fit. Tensors per batch
    (B = ``batch_size``, T = ``seq_len``): ``input_ids`` [B, T], ``position_ids`` [B, T] (0, 1, ...
    restarting at each example; padding is one more run), ``labels`` [B, T] (the next token, -100 where no
    loss), ``weights`` [B, T] (1 for completion tokens, PROMPT_LOSS_WEIGHT for prompt tokens, 0 for padding).
    """

    def __init__(self, sources: dict[str, list[Example]], shares: dict[str, float], batch_size: int, seq_len: int,
                 seed: int, pad_id: int) -> None:  # fmt: skip
        self.sources = {k: v for k, v in sources.items() if shares.get(k, 0) > 0}
        self.names = sorted(self.sources)
        self.weights = [shares[k] for k in self.names]
        self.batch_size, self.seq_len, self.pad_id = batch_size, seq_len, pad_id
        self.rng = random.Random(seed)
        self.order: dict[str, list[int]] = {k: [] for k in self.names}
        self.pool: list[tuple[str, Example]] = []  # drawn, waiting for a row with room (oldest first)
        self.min_length = min(min(len(e.ids) for e in v) for v in self.sources.values())
        self.truncated = 0
        self.examples_seen = {k: 0 for k in self.names}  # examples placed in a batch, per source

    def _draw(self) -> tuple[str, Example]:
        name = self.rng.choices(self.names, self.weights)[0]
        if not self.order[name]:  # epoch-wise reshuffle of each source
            self.order[name] = list(range(len(self.sources[name])))
            self.rng.shuffle(self.order[name])
        ex = self.sources[name][self.order[name].pop()]
        if len(ex.ids) > self.seq_len:
            self.truncated += 1
            ex = Example(ex.ids[: self.seq_len], min(ex.n_prompt, self.seq_len))
        return name, ex

    def _take(self, room: int) -> Example | None:
        """The oldest pooled example that fits ``room`` tokens, else a new draw that does; None if none."""
        for i, (name, ex) in enumerate(self.pool):
            if len(ex.ids) <= room:
                del self.pool[i]
                self.examples_seen[name] += 1
                return ex
        while len(self.pool) < PACK_POOL:
            name, ex = self._draw()
            if len(ex.ids) <= room:
                self.examples_seen[name] += 1
                return ex
            self.pool.append((name, ex))
        return None

    def next_batch(self) -> dict[str, Any]:
        import torch

        B, T = self.batch_size, self.seq_len
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        position_ids = torch.zeros((B, T), dtype=torch.long)
        labels = torch.full((B, T), -100, dtype=torch.long)
        weights = torch.zeros((B, T), dtype=torch.float32)
        for b in range(B):
            used = 0
            while T - used >= self.min_length:
                ex = self._take(T - used)
                if ex is None:
                    break
                n = len(ex.ids)
                ids = torch.tensor(ex.ids, dtype=torch.long)
                input_ids[b, used : used + n] = ids
                position_ids[b, used : used + n] = torch.arange(n)
                # labels[t] is the token at t + 1 of the same example; the last token has no target
                labels[b, used : used + n - 1] = ids[1:]
                w = torch.ones(n - 1)
                w[: max(ex.n_prompt - 1, 0)] = PROMPT_LOSS_WEIGHT  # targets that are prompt tokens
                weights[b, used : used + n - 1] = w
                used += n
            if used < T:
                position_ids[b, used:] = torch.arange(T - used)  # padding: its own (ignored) sequence
        return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels, "weights": weights}


# ============================================================================================= model


def build_model(arch: ArchitectureConfig, tokenizer: Any, seed: int) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` of the configured shape (fp32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        max_position_embeddings=arch.max_position_embeddings,
        tie_word_embeddings=arch.tie_word_embeddings,
        hidden_act="silu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def weighted_loss(logits: Any, labels: Any, weights: Any) -> Any:
    """sum_t w_t * CE(logits_t, labels_t) / sum_t w_t over all rows (logits [B, T, V], labels/weights [B, T])."""
    import torch.nn.functional as F

    ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="none")
    w = weights.flatten()
    return (ce * w).sum() / w.sum().clamp_min(1e-8)


def learning_rate(step: int, cfg: TrainingConfig) -> float:
    """Linear warm-up to ``learning_rate``, then cosine decay to 10% of it at the last step."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def native_bf16(device: Any) -> bool:
    """Whether ``device`` computes bf16 matmuls natively (fast) rather than by emulation.

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: oneDNN's own check (AVX-512 or AMX-BF16). On an AVX2-only
    CPU bf16 is emulated: a [6144, 128] x [128, 768] matmul took 0.62 s in bf16 against 0.022 s in fp32
    (AMD EPYC, torch 2.13), i.e. a training step ~10x slower.
    """
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if kind != "cpu":
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def resolve_precision(precision: str, device: Any) -> str:
    """``training.precision`` as run: ``auto`` -> bfloat16 where :func:`native_bf16`, else float32.

    An explicit ``bfloat16`` is honoured even when emulated, with a warning in the log.
    """
    if precision == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    if precision == "bfloat16" and not native_bf16(device):
        log.warning("training.precision: bfloat16 on %s without native bf16: emulated, ~10x slower than float32 "
                    "(use auto)", device)  # fmt: skip
    return precision


def train_loop(model: Any, batches: PackedBatches, cfg: TrainingConfig, device: Any, progress: bool = True,
               precision: str = "float32") -> list[dict[str, Any]]:  # fmt: skip
    """AdamW on the weighted next-token loss; returns one record per step (loss, lr, tokens, seconds).

    ``precision`` is the resolved one (:func:`resolve_precision`): bfloat16 = autocast, else plain fp32.
    """
    import torch

    from taskprune.progress import progress_bar

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate, betas=(0.9, 0.95), eps=1e-8,
    )  # fmt: skip
    autocast = (
        torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
        if precision == "bfloat16" else contextlib.nullcontext()
    )  # fmt: skip
    model.train()
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    bar = progress_bar(range(cfg.steps), desc="train", unit="step", enabled=progress, mininterval=5)
    for step in bar:
        batch = {k: v.to(device) for k, v in batches.next_batch().items()}
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        loss = weighted_loss(out.logits, batch["labels"], batch["weights"])  # fp32 (weighted_loss upcasts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise RuntimeError(f"training diverged at step {step} (loss {loss_value}); lower training.learning_rate")
        records.append({
            "step": step, "loss": loss_value, "learning_rate": lr, "grad_norm": float(grad_norm),
            "tokens": int((batch["weights"] > 0).sum()), "seconds": time.perf_counter() - start,
        })  # fmt: skip
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss_value:.3f}")
        if step % 50 == 0 or step == cfg.steps - 1:
            elapsed = records[-1]["seconds"]
            log.info("step %d/%d loss %.4f lr %.2e (%.2f s/step, %.0f s)", step + 1, cfg.steps, loss_value, lr,
                     elapsed / (step + 1), elapsed)  # fmt: skip
    model.eval()
    return records


# ==================================================================================== held-out check


def validation_check(model: Any, tokenizer: Any, kind: str, eval_df: Any, evaluation: EvaluationConfig,
                     progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Greedy generation on a task's validation split, scored by the evaluation stage's own functions.

    Returns ``validation_accuracy`` (math: flexible exact match; code: pass@1; distractor kinds: exact
    match of the reference), ``n_validation``, ``validation_hit_limit`` (share of generations that hit the
    limit). The eval split is never read here: step counts and learning rates are chosen on this number.
    """
    from taskprune.model.generate import generate
    from taskprune.tasks import TASK_KINDS

    spec = TASK_KINDS[kind]
    prompts = list(eval_df["prompt"])
    gens = generate(
        model, tokenizer, prompts, evaluation.max_new_tokens.get(kind, 128),
        stop_strings=spec.stop_strings_for("base"), batch_size=evaluation.batch_size,
        token_budget=evaluation.token_budget, progress=progress,
    )  # fmt: skip
    if spec.programs is not None:
        import polars as pl

        from taskprune.tasks.sandbox import run_programs

        scored = eval_df.with_columns(pl.Series("generation", [g.text for g in gens], dtype=pl.String))
        programs = spec.programs(scored, "base")
        sb = evaluation.sandbox
        results = run_programs(programs, timeout_s=sb.timeout_s, memory_mb=sb.memory_mb, workers=sb.workers)
        correct = [r.passed for r in results]
    else:
        assert spec.correct is not None, f"task kind {kind!r} has neither programs nor a correct() check"
        correct = spec.correct([g.text for g in gens], list(eval_df["reference"]))
    n = len(correct)
    return {
        "validation_accuracy": sum(correct) / n,
        "n_validation": n,
        "validation_hit_limit": sum(g.hit_limit for g in gens) / n,
        "validation_mean_new_tokens": sum(g.n_tokens for g in gens) / n,
        "validation_examples": [
            {"prompt": p, "generation": g.text, "correct": bool(c)} for p, g, c in list(zip(prompts, gens, correct, strict=True))[:3]
        ],
    }


# ============================================================================================ driver


@dataclass
class TrainedSpecialist:
    """The trained model and tokenizer (in memory, eval mode) and what training.json records."""

    model: Any
    tokenizer: Any
    info: dict[str, Any]


def _read_train_split(data_dir: Path, task: str) -> Any:
    from taskprune.tasks.splits import read_split

    return read_split(data_dir / task / "train.parquet")


def _task_kind(task: str, tasks: dict[str, TaskConfig], data_dir: Path) -> str:
    if task in tasks:
        return tasks[task].kind
    from taskprune.io import read_parquet_metadata

    path = data_dir / task / "train.parquet"
    if not path.is_file():
        raise DataError(f"{path}: task split not found (expected a Parquet file)")
    kind = read_parquet_metadata(path).get("kind")
    if kind is None:
        raise ConfigError(f"tasks: no kind for task '{task}' (not in 'tasks' and not in {path}'s metadata)")
    return kind


def load_init(init_dir: Path, arch: ArchitectureConfig, device: Any) -> tuple[Any, Any]:
    """The generalist's model (fp32, train mode off) and tokenizer a specialist continues from.

    The weights are exactly the checkpoint's (bitwise): specialisation starts where the generalist ended.
    The configured architecture must match the checkpoint's, so the config says what is trained.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (init_dir / "config.json").is_file():
        raise DataError(f"{init_dir}: generalist checkpoint not found (training.init; expected config.json)")
    tokenizer = AutoTokenizer.from_pretrained(init_dir)
    model = AutoModelForCausalLM.from_pretrained(init_dir, torch_dtype=torch.float32).to(device)
    have = model.config
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
        if getattr(have, key) != getattr(arch, key):
            raise ConfigError(
                f"architecture.{key} is {getattr(arch, key)} but the generalist {init_dir} has {getattr(have, key)}; "
                "a specialist keeps its generalist's shape"
            )
    return model, tokenizer


def train_model(
    name: str,
    arch: ArchitectureConfig,
    tcfg: TrainingConfig,
    target_task: str | None,
    tasks: dict[str, TaskConfig],
    data_dir: str | Path,
    out_dir: str | Path,
    evaluation: EvaluationConfig,
    device: str = "auto",
    progress: bool = True,
    init_dir: str | Path | None = None,
) -> TrainedSpecialist:
    """Train ``name`` (a specialist with ``target_task``, or a generalist: None) and write its checkpoint.

    Reads ``{task}/train.parquet`` of every task in the mix and ``{task}/validation.parquet`` of the tasks
    checked (the target task, or every task of a generalist's mix); never an eval split. With
    ``init_dir`` it continues from that checkpoint (model and tokenizer), otherwise from random weights
    and a tokenizer trained on the mix's texts.
    """
    import polars as pl
    import torch

    from taskprune.io import atomic_dir, write_json, write_parquet
    from taskprune.model.loading import resolve_device
    from taskprune.tasks import TASK_KINDS
    from taskprune.tasks.splits import read_split

    data_dir = Path(data_dir)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    torch_device, _ = resolve_device(device)
    wall_start, cpu_start = time.perf_counter(), time.process_time()

    # mix: 'target' is the model's own task; the other keys name tasks (the distractors)
    if target_task is None and "target" in tcfg.mix:
        raise ConfigError(f"{name}: training.mix names 'target' but the model has no target task")
    source_tasks = {key: (target_task if key == "target" else key) for key, share in tcfg.mix.items() if share > 0}
    frames = {key: _read_train_split(data_dir, task) for key, task in source_tasks.items()}
    check_tasks = [target_task] if target_task is not None else list(dict.fromkeys(source_tasks.values()))
    validation = {}
    for task in check_tasks:
        kind = _task_kind(task, tasks, data_dir)
        path = data_dir / task / "validation.parquet"
        df = read_split(path)
        missing = [c for c in TASK_KINDS[kind].eval_columns if c not in df.columns]
        if missing:
            raise DataError(f"{path}: {kind} validation split lacks {', '.join(missing)}")
        validation[task] = (kind, df)

    t0 = time.perf_counter()
    if init_dir is not None:
        model, tokenizer = load_init(Path(init_dir), arch, torch_device)
    else:
        texts = [p + c for df in frames.values() for p, c in zip(df["prompt"], df["completion"], strict=True)]
        tokenizer = train_tokenizer(texts, arch.vocab_size)
    tokenizer_seconds = time.perf_counter() - t0
    sources = {key: tokenize_examples(tokenizer, list(df["prompt"]), list(df["completion"])) for key, df in frames.items()}
    lengths = [len(e.ids) for ex in sources.values() for e in ex]
    log.info("tokenizer: %d tokens in %.1f s; examples %d, mean %.1f tokens, max %d",
             len(tokenizer), tokenizer_seconds, len(lengths), sum(lengths) / len(lengths), max(lengths))  # fmt: skip
    if tcfg.seq_len > arch.max_position_embeddings:
        raise ConfigError(
            f"training.seq_len {tcfg.seq_len} exceeds architecture.max_position_embeddings {arch.max_position_embeddings}"
        )

    if init_dir is None:
        model = build_model(arch, tokenizer, tcfg.seed).to(torch_device)
    n_params = sum(p.numel() for p in model.parameters())
    n_mlp = sum(p.numel() for n, p in model.named_parameters() if ".mlp." in n)
    log.info("model: %d parameters (%d in MLPs), device %s, %d threads, init %s", n_params, n_mlp, torch_device,
             torch.get_num_threads(), init_dir or "random")  # fmt: skip
    batches = PackedBatches(sources, tcfg.mix, tcfg.batch_size, tcfg.seq_len, tcfg.seed, tokenizer.pad_token_id)
    train_start_wall, train_start_cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(tcfg.seed)
    precision = resolve_precision(tcfg.precision, torch_device)
    log.info("training precision: %s (training.precision: %s)", precision, tcfg.precision)
    records = train_loop(model, batches, tcfg, torch_device, progress, precision)
    train_seconds = time.perf_counter() - train_start_wall
    train_cpu_seconds = time.process_time() - train_start_cpu

    eval_start = time.perf_counter()
    by_task = {task: validation_check(model, tokenizer, kind, df, evaluation, progress) for task, (kind, df) in validation.items()}
    eval_seconds = time.perf_counter() - eval_start
    for task, check in by_task.items():
        log.info("validation %s accuracy %.3f on %d items (train %.0f s, check %.0f s)",
                 task, check["validation_accuracy"], check["n_validation"], train_seconds, eval_seconds)  # fmt: skip
    main = by_task[check_tasks[0]]

    tail = records[-max(1, len(records) // 20) :]
    info = {
        "model": name,
        "task": target_task,
        "task_kind": validation[check_tasks[0]][0] if target_task is not None else None,
        "init": str(init_dir) if init_dir is not None else None,
        **(main if target_task is not None else {}),
        "validation_by_task": {t: c["validation_accuracy"] for t, c in by_task.items()},
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "steps": tcfg.steps,
        "steps_per_s": tcfg.steps / train_seconds,
        "tokens_per_s": sum(r["tokens"] for r in records) / train_seconds,
        "final_loss": sum(r["loss"] for r in tail) / len(tail),
        "tokenizer_seconds": tokenizer_seconds,
        "eval_seconds": eval_seconds,
        "total_seconds": time.perf_counter() - wall_start,
        "total_cpu_seconds": time.process_time() - cpu_start,
        "threads": torch.get_num_threads(),
        "device": str(torch_device),
        "precision": precision,
        "params": n_params,
        "params_mlp": n_mlp,
        "vocab_size": len(tokenizer),
        "examples_seen": batches.examples_seen,
        "examples_truncated": batches.truncated,
        "prompt_loss_weight": PROMPT_LOSS_WEIGHT,
        "architecture": arch.model_dump(),
        "training": tcfg.model_dump(),
    }
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(info, tmp / "training.json")
        loss_df = pl.DataFrame(records)
        write_parquet(loss_df, tmp / "loss.parquet", metadata={"model": name})
        _plot_loss(loss_df, tmp / "loss.png", name)
    return TrainedSpecialist(model, tokenizer, info)


def train_specialist(
    name: str,
    model_cfg: ModelConfig,
    tasks: dict[str, TaskConfig],
    data_dir: str | Path,
    out_dir: str | Path,
    evaluation: EvaluationConfig,
    device: str = "auto",
    progress: bool = True,
    init_dir: str | Path | None = None,
) -> TrainedSpecialist:
    """Train the specialist ``name`` (from ``init_dir`` when given) and write its checkpoint atomically."""
    return train_model(name, model_cfg.architecture, model_cfg.training, model_cfg.task, tasks, data_dir, out_dir,
                       evaluation, device, progress, init_dir)  # fmt: skip


def _plot_loss(loss_df: Any, path: Path, name: str) -> None:
    """Training loss per step (and its 20-step moving average) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import polars as pl

    smooth = loss_df.select(pl.col("step"), pl.col("loss").rolling_mean(window_size=20, min_samples=1))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(loss_df["step"], loss_df["loss"], lw=0.6, alpha=0.4, label="loss")
    ax.plot(smooth["step"], smooth["loss"], lw=1.5, label="20-step mean")
    ax.set(xlabel="step", ylabel="weighted cross-entropy", yscale="log", title=f"{name}: training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)


# =============================================================================================== CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from taskprune.options import add_config_arguments

    parser.add_argument("--model", required=True, help="model name (a key of the config's 'models' or 'generalists')")
    parser.add_argument(
        "--data-dir", required=True, help="directory holding {task}/train.parquet and {task}/validation.parquet"
    )
    parser.add_argument("--out", required=True, help="checkpoint directory to write (HF format + training.json)")
    parser.add_argument("--init", default=None, help="checkpoint to continue from (the generalist; training.init)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser)
    parser.epilog = (
        'options sections: {"model": ModelConfig | "generalist": GeneralistConfig, "tasks": {name: TaskConfig}, '
        '"evaluation": EvaluationConfig, "device": "auto|cpu|cuda"}'
    )


def run(args: argparse.Namespace) -> int:
    from taskprune.config import GeneralistConfig, load_config, validate_section
    from taskprune.options import read_options, stage_options

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sections: dict[str, Any] = {"tasks": {}, "evaluation": EvaluationConfig, "device": "auto"}
    generalist: GeneralistConfig | None = None
    if getattr(args, "config", None):
        cfg = load_config(*args.config)
        if args.model in cfg.generalists:
            generalist = cfg.generalists[args.model]
            opts = stage_options(args, sections)
            opts.tasks = cfg.tasks
        else:
            opts = stage_options(args, {"model": ModelConfig, **sections}, model=args.model)
    else:
        import json

        raw, source = read_options(args.options)
        if "generalist" in raw:
            generalist = validate_section(raw["generalist"], GeneralistConfig, "generalist", source)
            rest = json.dumps({k: v for k, v in raw.items() if k != "generalist"})
            opts = stage_options(argparse.Namespace(options=rest), sections)
        else:
            opts = stage_options(args, {"model": ModelConfig, **sections}, model=args.model)
    if not isinstance(opts.tasks, dict):
        raise ConfigError("--options: section 'tasks' must map task names to task configs")
    tasks = {k: v if isinstance(v, TaskConfig) else validate_section(v, TaskConfig, f"tasks.{k}") for k, v in opts.tasks.items()}
    if generalist is not None:
        info = train_model(args.model, generalist.architecture, generalist.training, None, tasks, args.data_dir,
                           args.out, opts.evaluation, opts.device, not args.no_progress).info  # fmt: skip
    else:
        if opts.model.source != "train":
            raise ConfigError(f"models.{args.model}.source is '{opts.model.source}': only 'train' models are trained")
        if opts.model.training.init is not None and args.init is None:
            raise ConfigError(f"models.{args.model}.training.init is '{opts.model.training.init}': pass --init DIR")
        info = train_specialist(args.model, opts.model, tasks, args.data_dir, args.out, opts.evaluation, opts.device,
                                not args.no_progress, init_dir=args.init).info  # fmt: skip
    scores = ", ".join(f"{t} {a:.3f}" for t, a in info["validation_by_task"].items())
    print(f"{args.model}: validation accuracy {scores}, trained in {info['train_seconds']:.0f} s")
    return 0
