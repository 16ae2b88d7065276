"""Text similarity shared by the distractor kinds (conversation, qna): SQuAD normalisation, exact match,
token F1, and the retention metrics every distractor kind reports.

Retention compares a variant's answer with the base model's answer to the same prompt; the evaluation
stage computes the per-item columns (``token_f1, chrf`` and, when available, ``embedding_cosine``: chrF and
sentence embeddings need their own heavy packages, so they live in :mod:`taskprune.evaluate`) for every kind
whose ``TaskKind.retention`` is set.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence
from typing import Any

from taskprune.tasks.metric_names import RETENTION_HEADLINE_COLUMN, RETENTION_HEADLINE_METRIC

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



def reference_match(generations: Sequence[str], references: Sequence[Any]) -> list[bool]:
    """Per item: the stripped generation equals the stripped reference (the validation check)."""
    return [g.strip() == str(ref).strip() for g, ref in zip(generations, references, strict=True)]


def retention_metric_values(df: Any) -> list[tuple[str, str, list[Any]]]:
    """(metric, ``mean``, per-item values) of the retention columns of a scored distractor table."""
    rows: list[tuple[str, str, list[Any]]] = [
        ("retention_token_f1", "mean", df["token_f1"].to_list()),
        ("retention_chrf", "mean", df["chrf"].to_list()),
    ]
    if "embedding_cosine" in df.columns:
        rows.append(("retention_embedding", "mean", df["embedding_cosine"].to_list()))
    return rows


def retention_item_metric(columns: Sequence[str]) -> tuple[str, str]:
    del columns
    return RETENTION_HEADLINE_METRIC, RETENTION_HEADLINE_COLUMN
