"""The ``qna`` task kind (a distractor): SQuAD-format extractive questions whose answer is a context span.

An item's skeleton is the question and its answer (the fact asked). Scored by retention against the base
model's answers (:mod:`taskprune.tasks.text`) and by exact match and token F1 against the reference answer.
"""

from __future__ import annotations

import random
from typing import Any

from taskprune.tasks.text import exact_match, retention_metric_values, token_f1
from taskprune.tasks.words import people as _people


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def make_qna(rng: random.Random, w: dict[str, Any]) -> dict[str, Any]:
    """A SQuAD-format item: a short context, a question, and the answer span (with its start offset)."""
    if rng.random() < 0.6:
        (person,) = _people(rng, w, 1)
        full = f"{person.name} {rng.choice(w['surnames'])}"
        city, city2 = rng.sample(w["cities"], 2)
        year = rng.randint(1900, 1990)
        year2 = year + rng.randint(20, 30)
        subject, job = rng.choice(w["subjects"]), rng.choice(w["professions"])
        org, instrument = rng.choice(w["organisations"]), rng.choice(w["instruments"])
        context = (
            f"{full} was born in {city} in {year}. {person.P} studied {subject} and later worked as {_article(job)} {job} "
            f"at the {org}. In {year2}, {person.p} moved to {city2}, where {person.p} learned to play the "
            f"{instrument}."
        )
        qa = [
            (f"Where was {full} born?", city),
            (f"In which year was {full} born?", str(year)),
            (f"What did {full} study?", subject),
            (f"What was the job of {full}?", job),
            (f"Where did {full} work?", f"the {org}"),
            (f"Where did {full} move in {year2}?", city2),
            (f"Which instrument did {full} learn to play?", f"the {instrument}"),
            (f"When did {full} move to {city2}?", str(year2)),
        ]
    else:
        town = rng.choice(w["surnames"]) + rng.choice(("ville", "ton", "burg", "field", "haven", "dale"))
        river, product = rng.choice(w["rivers"]), rng.choice(w["products"])
        (founder,) = _people(rng, w, 1)
        founder_name = f"{founder.name} {rng.choice(w['surnames'])}"
        year, people = rng.randint(1500, 1900), rng.randint(2, 90) * 100
        place, day = rng.choice(w["places"]), rng.choice(w["weekdays"])
        context = (
            f"{town} is a small town on the {river}. It was founded in {year} by {founder_name}. "
            f"The town is known for its {product}, and about {people} people live there today. "
            f"Its oldest building is the {place}, which is open every {day}."
        )
        qa = [
            (f"Which river is {town} on?", f"the {river}"),
            (f"When was {town} founded?", str(year)),
            (f"Who founded {town}?", founder_name),
            (f"What is {town} known for?", f"its {product}"),
            (f"How many people live in {town}?", f"about {people}"),
            (f"What is the oldest building in {town}?", f"the {place}"),
            (f"On which day is the {place} of {town} open?", day),
        ]
    question, answer = rng.choice(qa)
    start = context.find(answer)
    if start < 0:  # pragma: no cover - guarded by the templates
        raise RuntimeError(f"answer {answer!r} is not a span of the context")
    return {"context": context, "question": question, "answer": answer, "answer_start": start,
            "skeleton": f"fact|{question}|{answer}"}  # fmt: skip


def format_row(row: dict[str, Any], synthetic: bool) -> None:
    """``Context: .. Question: .. Answer:`` (synthetic) or the raw text with an instruction; the reference
    is the answer span (its start offset found in the context when the source has none)."""
    c, q, a = str(row["context"]), str(row["question"]).strip(), str(row["answer"])
    if "answer_start" not in row or row["answer_start"] is None:
        row["answer_start"] = c.find(a)
    row["answer_start"] = int(row["answer_start"])
    row["reference"] = a
    if synthetic:
        row["prompt"] = f"Context: {c}\nQuestion: {q}\nAnswer:"
    else:
        row["prompt"] = f"{c}\n\nQuestion: {q}\nAnswer with the exact words from the text above."
    row["completion"] = f" {a}" if synthetic else a


def adapt_source(out: dict[str, Any], label: str, index: int) -> dict[str, Any]:
    """A real record's mapped fields: ``answer_start`` as an int when the source has it."""
    del label, index
    if "answer_start" in out:
        out["answer_start"] = int(out["answer_start"])
    return out


def score_table(df: Any, options: Any) -> Any:
    """Add ``em_ref, f1_ref``: exact match and token F1 of each generation against the reference answer."""
    import polars as pl

    del options
    texts = df["generation"].to_list()
    refs = [str(r) for r in df["reference"].to_list()]
    return df.with_columns(
        pl.Series("em_ref", [exact_match(g, r) for g, r in zip(texts, refs, strict=True)], dtype=pl.Boolean),
        pl.Series("f1_ref", [token_f1(g, r) for g, r in zip(texts, refs, strict=True)], dtype=pl.Float64),
    )


def metric_values(df: Any, n_samples: int) -> list[tuple[str, str, list[Any]]]:
    del n_samples
    return [
        *retention_metric_values(df),
        ("qna_exact_match", "proportion", df["em_ref"].to_list()),
        ("qna_f1", "mean", df["f1_ref"].to_list()),
    ]
