"""Math final-answer extraction and exact match on hand-written tricky cases."""

from __future__ import annotations

from fractions import Fraction

import pytest

from taskprune.evaluate import math_verify_match, task_metric_rows
from taskprune.tasks.math import formatted_answer, math_answer, normalize_answer, parse_number, score_math
from taskprune.tasks.math import score_table as score_math_table
from taskprune.tasks.metric_names import (
    FINAL_ANSWER_MATH_VERIFY,
    FINAL_ANSWER_NUMERIC_MATCH,
    FORMATTED_ANSWER_MATCH,
    HEADLINE_METRIC,
)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        # \boxed{} first (the last one), nested braces balanced
        (r"so $\boxed{\frac{1}{2}}$.", "0.5"),
        (r"first \boxed{3} then corrected: \boxed{4}", "4"),
        (r"\boxed{x^{2}+\frac{1}{2}}", "x^{2}+1/2"),
        (r"\boxed{\text{\$}1{,}234.50}", "1234.5"),
        (r"\boxed{42} #### 7", "42"),  # boxed beats ####
        # then #### (the first one: later text is a rambling continuation)
        ("3 + 4 = 7\n#### 7\nQuestion: another one\n#### 9", "7"),
        ("#### $1,234", "1234"),
        ("#### -3.00", "-3"),
        ("####   12 apples", "12apples"),
        # then the last number
        ("He has 3 apples, buys 4 more, so 7.", "7"),
        ("The price is $1,000,000 in total", "1000000"),
        ("It rose by 12.50%", "12.5"),
        ("3/4 of 8 is 6", "6"),
        ("a ratio of 3/4", "0.75"),
        ("-5 degrees", "-5"),
        ("ages 5-3", "3"),  # a dash between numbers is not a sign
        ("no digits here", None),
        (r"\boxed{}", ""),
    ],
)
def test_math_answer(text, answer):
    assert math_answer(text) == answer


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("18.00", "18"), ("18.50", "18.5"), ("0.500", "0.5"), ("1,234", "1234"), ("$5", "5"), ("50%", "50"),
        ("1/2", "0.5"), ("4/2", "2"), ("1/3", "1/3"), ("2/6", "1/3"), (r"\dfrac{3}{4}", "0.75"),
        (r"\frac{-6}{4}", "-1.5"), ("-0", "0"), (" 7. ", "7"), ("1,23", "1,23"),  # not a thousands group
    ],
)
def test_normalize_answer(raw, canonical):
    assert normalize_answer(raw) == canonical


def test_parse_number_exact():
    assert parse_number("1,234.5") == Fraction(24690, 20)
    assert parse_number("3/4") == Fraction(3, 4)
    assert parse_number("1/0") is None
    assert parse_number("abc") is None
    assert parse_number("") is None


@pytest.mark.parametrize(
    ("generation", "reference", "formatted_match", "numeric_match"),
    [
        ("3 + 4 = 7\n#### 7", "7", True, True),
        ("#### 7.0", "7", True, True),  # trailing zeros
        ("#### 1,000", "1000", True, True),  # commas
        (r"\boxed{\$18}", "18", True, True),  # dollar sign
        (r"\boxed{0.5}", "1/2", True, True),  # simple fractions
        ("The answer is 7", "7", False, True),  # numeric only: no #### / boxed
        (r"\boxed{18 \text{ dollars}}", "18", False, True),  # units inside the box
        ("#### 8", "7", False, False),
        ("#### 7\nbut actually the answer is 8", "7", True, True),  # #### takes precedence over last number
        ("I think 7, no 8", "7", False, False),  # last number
        ("", "7", False, False),
        ("#### 0.3333", "1/3", False, False),  # rounding is not equality
        ("#### -12", "-12", True, True),
        ("#### 12", "-12", False, False),
    ],
)
def test_score_math(generation, reference, formatted_match, numeric_match):
    assert score_math(generation, reference) == (formatted_match, numeric_match)


def test_formatted_answer_requires_format():
    assert formatted_answer("7") is None
    assert formatted_answer("####") is None
    assert formatted_answer(r"\boxed{12") is None  # unclosed box
    assert formatted_answer(r"\boxed{a{b}c}") == "a{b}c"


def test_formatted_match_implies_numeric_match_on_random_strings():
    import random

    rng = random.Random(0)
    pieces = ["####", " ", "7", "1,000", "$", "\\boxed{", "}", "x", "\n", "0.5", "-", "/", "2", "%"]
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        for ref in ("7", "1000", "0.5", "-2"):
            formatted_match, numeric_match = score_math(text, ref)
            assert not formatted_match or numeric_match, (text, ref)


# ------------------------------------------------------------------- math-verify (LaTeX equivalence)
@pytest.mark.parametrize(
    ("generation", "reference", "equivalent"),
    [
        # fractions: LaTeX vs decimal, unreduced vs reduced, \dfrac
        (r"so the share is $\boxed{\frac{3}{4}}$", "0.75", True),
        (r"$\boxed{\dfrac{6}{8}}$", r"\frac{3}{4}", True),
        (r"$\boxed{\frac{3}{4}}$", "0.7", False),
        (r"$\boxed{\frac{1}{3}}$", "0.3333", False),  # rounding is not equality
        # \boxed{} nesting: the inner value counts, and the last box is the answer
        (r"The answer is $\boxed{\boxed{12}}$", "12", True),
        (r"first $\boxed{3}$, corrected: $\boxed{4}$", "4", True),
        (r"first $\boxed{3}$, corrected: $\boxed{4}$", "3", False),
        # units
        (r"$\boxed{18 \text{ dollars}}$", "18", True),
        (r"$\boxed{5\,\mathrm{cm}}$", "5", True),
        # thousands separators (in and out of the box) and GSM8K's #### line
        (r"$\boxed{1,234}$", "1234", True),
        ("#### 1,234", "1234", True),
        ("#### 1,235", "1234", False),
        # symbolic equality that number parsing cannot see
        (r"$\boxed{\sqrt{2}/2}$", r"\frac{\sqrt{2}}{2}", True),
        ("no answer here", "7", False),
    ],
)
def test_math_verify_match(generation, reference, equivalent):
    assert math_verify_match(generation, reference) is equivalent


def test_number_parsing_misses_what_math_verify_sees():
    """The reason for the switch: a LaTeX answer our number normalisation cannot read."""
    generation, reference = r"$\boxed{\frac{\sqrt{2}}{2}}$", r"\frac{1}{\sqrt{2}}"
    assert score_math(generation, reference) == (False, False)
    assert math_verify_match(generation, reference)


def test_math_verify_becomes_the_headline():
    import polars as pl

    df = pl.DataFrame({"generation": [r"$\boxed{\frac{\sqrt{2}}{2}}$", "#### 7", "8"],
                       "reference": [r"\frac{1}{\sqrt{2}}", "7", "7"],
                       "hit_limit": [False, False, False], "n_tokens": [9, 3, 1]})
    plain = {m: v for m, v, *_ in task_metric_rows("math", score_math_table(df))}
    assert plain[HEADLINE_METRIC] == plain[FINAL_ANSWER_NUMERIC_MATCH] == pytest.approx(1 / 3)
    assert plain[FORMATTED_ANSWER_MATCH] == pytest.approx(1 / 3) and FINAL_ANSWER_MATH_VERIFY not in plain
    verified = {m: v for m, v, *_ in task_metric_rows("math", score_math_table(df, math_verify=math_verify_match))}
    assert verified[HEADLINE_METRIC] == verified[FINAL_ANSWER_MATH_VERIFY] == pytest.approx(2 / 3)
    assert verified[FINAL_ANSWER_NUMERIC_MATCH] == pytest.approx(1 / 3)
