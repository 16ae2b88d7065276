"""The ``math`` task kind: GSM8K-format word problems, their prompt format and their scoring.

Generator: 12 templates of 2-4 steps ``a op b = c`` of ``+ - * /`` with integer results in [0, 99]
(``MATH_RULES``); an item's skeleton is the template plus the multiset of its question's numbers
(``math_skeleton``). Scoring: the final answer is the last ``\\boxed{...}`` (nested braces allowed), else
the first ``#### N``, else the last number (see :mod:`taskprune.evaluate` for the rules and
:mod:`taskprune.tasks.metric_names` for the names). HF math-verify's check is heavy (its own dependency),
so the evaluation stage passes it in (``ScoreOptions.math_verify``) rather than this module importing it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from taskprune.errors import DataError
from taskprune.tasks.metric_names import (
    FINAL_ANSWER_MATH_VERIFY,
    FINAL_ANSWER_NUMERIC_MATCH,
    FORMATTED_ANSWER_MATCH,
    HEADLINE_METRIC,
    MATH_HEADLINE_COLUMN,
    MATH_HEADLINE_METRIC,
    MATH_VERIFY_HEADLINE_COLUMN,
    MATH_VERIFY_HEADLINE_METRIC,
)
from taskprune.tasks.words import people as _people

# ========================================================================================= generator

MATH_MAX_VALUE = 99  # every intermediate and final result lies in [0, MATH_MAX_VALUE]
MATH_MAX_OPERAND = 9  # second operands, factors and quotients are single digits
MATH_RULES = (
    "b in 1..9 for every step 'a op b'; '*': a in 0..9; '/': exact with quotient 0..9; results in 0..99"
)


class _Reject(Exception):
    """A sampled item violates a constraint; the generator draws again."""



def _apply(a: int, op: str, b: int) -> int:
    """``a op b`` under the suite's difficulty rules (see ``MATH_RULES``); raises ``_Reject`` otherwise.

    Every step takes a single-digit second operand ``b`` (1-9); ``*`` multiplies two single digits and
    ``/`` divides exactly with a single-digit quotient (both are the multiplication table); ``+`` and
    ``-`` may start from a two-digit number. All results lie in [0, MATH_MAX_VALUE].
    """
    if not 1 <= b <= MATH_MAX_OPERAND:
        raise _Reject
    if op == "+":
        r = a + b
    elif op == "-":
        r = a - b
    elif op == "*":
        if a > MATH_MAX_OPERAND:
            raise _Reject
        r = a * b
    elif op == "/":
        if a % b or a // b > MATH_MAX_OPERAND:
            raise _Reject
        r = a // b
    else:  # pragma: no cover - programming error
        raise ValueError(op)
    if not 0 <= r <= MATH_MAX_VALUE:
        raise _Reject
    return r


def _eq(a: int, op: str, b: int) -> tuple[int, str]:
    """(result, ``"a op b = result"``)."""
    r = _apply(a, op, b)
    return r, f"{a} {op} {b} = {r}"


def _d(rng: random.Random, lo: int = 2, hi: int = 9) -> int:
    return rng.randint(lo, hi)


MathItem = tuple[str, list[str], int]  # question, reasoning lines (without '####'), answer


def _math_packs(rng: random.Random, w: dict[str, Any]) -> MathItem:
    a, b, c = _people(rng, w, 3)
    thing, box = rng.choice(w["things"]), rng.choice(w["containers"])
    n_box, per, give = _d(rng), _d(rng), _d(rng, 1)
    total, e1 = _eq(n_box, "*", per)
    left, e2 = _eq(total, "-", give)
    q = f"{a.name} buys {n_box} {box} of {thing}. Each of the {box} holds {per} {thing}. {a.P} gives {give} {thing} to {b.name}."
    lines = [f"{a.name} buys {e1} {thing}.", f"After giving {give} to {b.name}, {a.p} has {e2} {thing}."]
    if rng.random() < 0.5:
        more = _d(rng, 1)
        left, e3 = _eq(left, "-", more)
        q += f" Then {a.p} gives {more} more {thing} to {c.name}."
        lines.append(f"After giving {more} to {c.name}, {a.p} has {e3} {thing}.")
        if rng.random() < 0.5:
            found = _d(rng, 1)
            left, e4 = _eq(left, "+", found)
            q += f" Later {a.p} finds {found} {thing}."
            lines.append(f"After finding {found}, {a.p} has {e4} {thing}.")
    q += f" How many {thing} does {a.name} have left?"
    return q, lines, left


def _math_daily(rng: random.Random, w: dict[str, Any]) -> MathItem:
    (a,) = _people(rng, w, 1)
    thing = rng.choice(w["things"])
    start, per_day, days = _d(rng, 1), _d(rng), _d(rng)
    got, e1 = _eq(per_day, "*", days)
    have, e2 = _eq(got, "+", start)
    q = f"{a.name} has {start} {thing}. Every day {a.p} collects {per_day} more {thing} for {days} days."
    lines = [f"In {days} days {a.name} collects {e1} {thing}.", f"{a.P} then has {e2} {thing}."]
    if rng.random() < 0.5:
        lost = _d(rng, 1)
        have, e3 = _eq(have, "-", lost)
        q += f" Then {a.p} loses {lost} of them."
        lines.append(f"After losing {lost}, {a.p} has {e3} {thing}.")
    q += f" How many {thing} does {a.name} have now?"
    return q, lines, have


def _math_share(rng: random.Random, w: dict[str, Any]) -> MathItem:
    a, b = _people(rng, w, 2)
    thing = rng.choice(w["things"])
    own, extra, friends = _d(rng, 1), _d(rng, 1), _d(rng)
    total, e1 = _eq(own, "+", extra)
    each, e2 = _eq(total, "/", friends)
    q = f"{a.name} has {own} {thing} and {b.name} gives {a.obj} {extra} more. {a.P} shares all the {thing} equally among {friends} friends."
    lines = [f"{a.name} has {e1} {thing}.", f"Each friend gets {e2} {thing}."]
    if rng.random() < 0.5:
        eaten = _d(rng, 1)
        each, e3 = _eq(each, "-", eaten)
        q += f" Each friend then uses {eaten} of them. How many {thing} does each friend have left?"
        lines.append(f"After using {eaten}, each friend has {e3} {thing}.")
    else:
        q += f" How many {thing} does each friend get?"
    return q, lines, each


def _math_wages(rng: random.Random, w: dict[str, Any]) -> MathItem:
    (a,) = _people(rng, w, 1)
    job, item = rng.choice(w["jobs"]), rng.choice(w["purchases"])
    rate, hours = _d(rng), _d(rng)
    earned, e1 = _eq(rate, "*", hours)
    q = f"{a.name} earns ${rate} per hour {job}. {a.P} works {hours} hours."
    lines = [f"{a.name} earns {e1} dollars."]
    if rng.random() < 0.5:
        tip = _d(rng, 1)
        earned, e2 = _eq(earned, "+", tip)
        q += f" {a.P} also gets a tip of ${tip}."
        lines.append(f"With the tip, {a.p} has {e2} dollars.")
    cost = _d(rng, 1)
    left, e3 = _eq(earned, "-", cost)
    q += f" Then {a.p} spends ${cost} on {item}. How many dollars does {a.name} have left?"
    lines.append(f"After buying {item}, {a.p} has {e3} dollars left.")
    return q, lines, left


def _math_travel(rng: random.Random, w: dict[str, Any]) -> MathItem:
    (a,) = _people(rng, w, 1)
    unit, verb = rng.choice(w["distances"])
    base = verb[:-1]
    per_day, days, extra = _d(rng), _d(rng), _d(rng, 1)
    dist, e1 = _eq(per_day, "*", days)
    total, e2 = _eq(dist, "+", extra)
    q = f"{a.name} {verb} {per_day} {unit} every day for {days} days. On the last day {a.p} also {verb} {extra} extra {unit}."
    lines = [f"In {days} days {a.name} {verb} {e1} {unit}.", f"With the extra {unit}, {a.p} {verb} {e2} {unit}."]
    if rng.random() < 0.4:
        parts = _d(rng)
        total, e3 = _eq(total, "/", parts)
        q += f" {a.P} splits the whole distance into {parts} equal parts. How many {unit} long is each part?"
        lines.append(f"Each part is {e3} {unit} long.")
    else:
        q += f" How many {unit} does {a.name} {base} in total?"
    return q, lines, total


def _math_bakery(rng: random.Random, w: dict[str, Any]) -> MathItem:
    (a,) = _people(rng, w, 1)
    food = rng.choice(w["baked"])
    trays, per = _d(rng), _d(rng)
    total, e1 = _eq(trays, "*", per)
    lines = [f"{a.name} bakes {e1} {food}."]
    q = f"{a.name} bakes {trays} trays of {food} with {per} {food} on each tray."
    if rng.random() < 0.6:
        sold = _d(rng, 1)
        total, e2 = _eq(total, "-", sold)
        q += f" {a.P} sells {sold} of them and packs the rest"
        lines.append(f"After selling {sold}, {e2} {food} are left.")
    else:
        q += f" {a.P} packs them"
    boxes = _d(rng)
    each, e3 = _eq(total, "/", boxes)
    q += f" equally into {boxes} boxes. How many {food} are in each box?"
    lines.append(f"Each box gets {e3} {food}.")
    return q, lines, each


def _math_seats(rng: random.Random, w: dict[str, Any]) -> MathItem:
    place = rng.choice(w["places"])
    rows, per, broken = _d(rng), _d(rng), _d(rng, 1)
    seats, e1 = _eq(rows, "*", per)
    ok, e2 = _eq(seats, "-", broken)
    q = f"The {place} has {rows} rows of chairs with {per} chairs in each row. {broken} of the chairs are broken."
    lines = [f"The {place} has {e1} chairs.", f"Without the broken ones, {e2} chairs can be used."]
    if rng.random() < 0.5:
        new = _d(rng, 1)
        ok, e3 = _eq(ok, "+", new)
        q += f" Then {new} new chairs are brought in."
        lines.append(f"With the new chairs, {e3} chairs can be used.")
        if rng.random() < 0.6:
            reserved = _d(rng, 1)
            ok, e4 = _eq(ok, "-", reserved)
            q += f" {reserved} chairs are reserved for guests."
            lines.append(f"Without the reserved ones, {e4} chairs can be used.")
    q += " How many chairs can be used?"
    return q, lines, ok


def _math_garden(rng: random.Random, w: dict[str, Any]) -> MathItem:
    a, b = _people(rng, w, 2)
    plant = rng.choice(w["plants"])
    rows, per, dead = _d(rng), _d(rng), _d(rng, 1)
    planted, e1 = _eq(rows, "*", per)
    lines = [f"{a.name} plants {e1} {plant}."]
    q = f"{a.name} plants {rows} rows of {plant} with {per} {plant} in each row."
    if rng.random() < 0.5:
        more = _d(rng, 1)
        planted, e2 = _eq(planted, "+", more)
        q += f" {b.name} plants {more} more {plant}."
        lines.append(f"With the ones {b.name} plants, there are {e2} {plant}.")
    grow, e3 = _eq(planted, "-", dead)
    q += f" {dead} of the {plant} do not grow."
    lines.append(f"{e3} {plant} grow.")
    if rng.random() < 0.5:
        eaten = _d(rng, 1)
        grow, e4 = _eq(grow, "-", eaten)
        q += f" Rabbits eat {eaten} of the {plant} that grow. How many {plant} are left?"
        lines.append(f"After the rabbits, {e4} {plant} are left.")
    else:
        q += f" How many {plant} grow?"
    return q, lines, grow


def _math_compare(rng: random.Random, w: dict[str, Any]) -> MathItem:
    a, b, c = _people(rng, w, 3)
    thing = rng.choice(w["things"])
    x, more = _d(rng, 1), _d(rng, 1)
    y, e1 = _eq(x, "+", more)
    q = f"{a.name} has {x} {thing}. {b.name} has {more} more {thing} than {a.name}."
    lines = [f"{b.name} has {e1} {thing}."]
    if rng.random() < 0.5:
        fewer = _d(rng, 1)
        z, e2 = _eq(y, "-", fewer)
        total, e3 = _eq(z, "+", x)
        q += f" {c.name} has {fewer} fewer {thing} than {b.name}. How many {thing} do {c.name} and {a.name} have together?"
        lines += [f"{c.name} has {e2} {thing}.", f"Together {c.name} and {a.name} have {e3} {thing}."]
    else:
        total, e2 = _eq(y, "+", x)
        q += f" How many {thing} do {a.name} and {b.name} have together?"
        lines.append(f"Together they have {e2} {thing}.")
    return q, lines, total


def _math_liquid(rng: random.Random, w: dict[str, Any]) -> MathItem:
    (a,) = _people(rng, w, 1)
    unit, liquid = rng.choice(w["liquids"])
    per, jugs, poured = _d(rng), _d(rng), _d(rng, 1)
    total, e1 = _eq(per, "*", jugs)
    left, e2 = _eq(total, "-", poured)
    q = f"A jug holds {per} {unit} of {liquid}. {a.name} fills {jugs} jugs and pours {poured} {unit} into a bottle."
    lines = [f"The jugs hold {e1} {unit} of {liquid}.", f"After filling the bottle, {e2} {unit} are left."]
    if rng.random() < 0.5:
        glass = _d(rng, 1)
        left, e3 = _eq(left, "-", glass)
        q += f" Then {a.p} pours {glass} {unit} into a glass."
        lines.append(f"After filling the glass, {e3} {unit} are left.")
    q += f" How many {unit} of {liquid} are left in the jugs?"
    return q, lines, left


def _math_groups(rng: random.Random, w: dict[str, Any]) -> MathItem:
    a, b = _people(rng, w, 2)
    thing, box = rng.choice(w["things"]), rng.choice(w["containers"])
    n1, n2, per = _d(rng, 1), _d(rng, 1), _d(rng)
    boxes, e1 = _eq(n1, "+", n2)
    total, e2 = _eq(boxes, "*", per)
    q = f"{a.name} has {n1} {box} of {thing} and {b.name} gives {a.obj} {n2} more {box}. Each of the {box} holds {per} {thing}."
    lines = [f"{a.name} now has {e1} {box}.", f"The {box} hold {e2} {thing}."]
    if rng.random() < 0.5:
        used = _d(rng, 1)
        total, e3 = _eq(total, "-", used)
        q += f" {a.P} uses {used} of the {thing}."
        lines.append(f"After using {used}, {a.p} has {e3} {thing}.")
    q += f" How many {thing} does {a.name} have?"
    return q, lines, total


def _math_reading(rng: random.Random, w: dict[str, Any]) -> MathItem:
    a, b = _people(rng, w, 2)
    days, per = _d(rng), _d(rng)
    pages = days * per
    per_day, e1 = _eq(pages, "/", days)
    more = _d(rng, 1)
    other, e2 = _eq(per_day, "+", more)
    q = (
        f"A book has {pages} pages. {a.name} reads it in {days} days, reading the same number of pages every day."
        f" {b.name} reads {more} more pages per day than {a.name}."
    )
    lines = [f"{a.name} reads {e1} pages per day.", f"{b.name} reads {e2} pages per day."]
    if rng.random() < 0.5:
        days2 = _d(rng)
        other, e3 = _eq(other, "*", days2)
        q += f" How many pages does {b.name} read in {days2} days?"
        lines.append(f"In {days2} days {b.name} reads {e3} pages.")
    else:
        q += f" How many pages does {b.name} read per day?"
    return q, lines, other


MATH_TEMPLATES: dict[str, Callable[[random.Random, dict[str, Any]], MathItem]] = {
    "packs": _math_packs,
    "daily": _math_daily,
    "share": _math_share,
    "wages": _math_wages,
    "travel": _math_travel,
    "bakery": _math_bakery,
    "seats": _math_seats,
    "garden": _math_garden,
    "compare": _math_compare,
    "liquid": _math_liquid,
    "groups": _math_groups,
    "reading": _math_reading,
}


def math_skeleton(template: str, question: str) -> str:
    """``template|n1,n2,...``: the template and its question's numbers, sorted (a multiset).

    The template and its numbers decide the answer. The numbers are sorted so that a problem whose numbers
    only trade places with another's (9 jugs of 4 liters against 4 jugs of 9 liters, ``9*4`` against
    ``4*9``) has the same skeleton: a held-out problem never shares its template and all its numbers with a
    trained one, in any order. This is coarser than the reasoning's equations (two problems with the same
    equations have the same numbers), so it also holds out every equation sequence of a held-out item.
    """
    numbers = sorted(int(n) for n in re.findall(r"\d+", question))
    return f"{template}|" + ",".join(map(str, numbers))


def make_math(rng: random.Random, words: dict[str, Any]) -> dict[str, str]:
    """One GSM8K-format word problem: ``question``, ``answer`` (lines ending ``#### N``), ``reference``."""
    name = rng.choice(sorted(MATH_TEMPLATES))
    for _ in range(1000):
        try:
            question, lines, value = MATH_TEMPLATES[name](rng, words)
        except _Reject:
            continue
        answer = "\n".join([*lines, f"#### {value}"])
        skeleton = math_skeleton(name, question)
        return {"question": question, "answer": answer, "reference": str(value), "template": name, "skeleton": skeleton}
    raise RuntimeError(f"math template {name} rejected 1000 draws")  # pragma: no cover



def math_reference(answer: str) -> str | None:
    """The final number after ``####`` (commas and a trailing period removed), GSM8K style."""
    m = re.search(r"####\s*(-?[\d,]*\.?\d+)", answer)
    if not m:
        return None
    value = m.group(1).replace(",", "")
    return value[:-2] if value.endswith(".0") else value


def format_row(row: dict[str, Any], synthetic: bool) -> None:
    """Add ``prompt, completion, reference`` to a record with ``question, answer``."""
    q, a = str(row["question"]).strip(), str(row["answer"]).strip()
    ref = row.get("reference") or math_reference(a)
    if ref is None:
        raise DataError(f"math answer has no final number after '####': {a[-60:]!r}")
    row.update(question=q, answer=a, reference=ref)
    row["prompt"] = f"Question: {q}\nAnswer:" if synthetic else q
    row["completion"] = f" {a}" if synthetic else a


# =========================================================================================== scoring

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
    (see :mod:`taskprune.tasks.metric_names`)."""
    ref = normalize_answer(str(reference))
    formatted = formatted_answer(generation)
    formatted_match = formatted is not None and normalize_answer(formatted) == ref
    answer = math_answer(generation)
    if answer is None:
        return formatted_match, False
    ref_value, value = parse_number(ref), _as_number(answer)
    numeric = (value == ref_value) if (ref_value is not None and value is not None) else answer == ref
    return formatted_match, numeric or formatted_match


def correct(generations: Sequence[str], references: Sequence[Any]) -> list[bool]:
    """Per item: the final-answer numeric match (the training stage's validation check)."""
    return [score_math(g, ref)[1] for g, ref in zip(generations, references, strict=True)]


def score_table(df: Any, math_verify: Callable[[str, str], bool] | None = None) -> Any:
    """Add ``extracted, correct_formatted, correct_numeric`` (+ ``correct_math_verify`` when
    ``math_verify`` is given) to a table with ``generation, reference``."""
    import polars as pl

    gens, refs = df["generation"].to_list(), [str(r) for r in df["reference"].to_list()]
    scores = [score_math(g, r) for g, r in zip(gens, refs, strict=True)]
    df = df.with_columns(
        pl.Series("extracted", [math_answer(g) for g in gens], dtype=pl.String),
        pl.Series("correct_formatted", [s[0] for s in scores], dtype=pl.Boolean),
        pl.Series("correct_numeric", [s[1] for s in scores], dtype=pl.Boolean),
    )
    if math_verify is not None:
        verified = [math_verify(g, r) for g, r in zip(gens, refs, strict=True)]
        df = df.with_columns(pl.Series(MATH_VERIFY_HEADLINE_COLUMN, verified, dtype=pl.Boolean))
    return df


def metric_values(df: Any, n_samples: int) -> list[tuple[str, str, list[Any]]]:
    """(metric, ``proportion`` | ``mean``, per-item values) of a scored math table."""
    del n_samples  # greedy: one generation per item
    formatted, numeric = df["correct_formatted"].to_list(), df["correct_numeric"].to_list()
    verified = df[MATH_VERIFY_HEADLINE_COLUMN].to_list() if MATH_VERIFY_HEADLINE_COLUMN in df.columns else None
    rows = [
        (HEADLINE_METRIC, "proportion", verified if verified is not None else numeric),
        (FORMATTED_ANSWER_MATCH, "proportion", formatted),
        (FINAL_ANSWER_NUMERIC_MATCH, "proportion", numeric),
    ]
    if verified is not None:
        rows.append((FINAL_ANSWER_MATH_VERIFY, "proportion", verified))
    return rows


def item_metric(columns: Sequence[str]) -> tuple[str, str]:
    """(metric, column) of the per-item score: math-verify's verdict when evaluation ran it."""
    if MATH_VERIFY_HEADLINE_COLUMN in columns:
        return MATH_VERIFY_HEADLINE_METRIC, MATH_VERIFY_HEADLINE_COLUMN
    return MATH_HEADLINE_METRIC, MATH_HEADLINE_COLUMN


def score(df: Any, options: Any) -> Any:
    """The registry's scoring hook: ``score_table`` with the math-verify check the stage passed in."""
    return score_table(df, options.math_verify)
