"""The names of the metrics the pipeline writes, each for one computation, defined once.

Why a module of names: evaluation writes these names into ``metrics.parquet``; the findings, figures,
report and tests read them back. Every reader imports the constant, so renaming a metric is a one-line
change and no second spelling can drift. It imports nothing, so the rules that read metrics do not
depend on the scoring code.

Math metrics (one row each per variant and math task; see :mod:`taskprune.evaluate` for the scoring):

================================  ========================================================================
name                              what it computes
================================  ========================================================================
``formatted_answer_match``        an answer in the requested format exists (the last ``\\boxed{...}``,
                                  nested braces allowed, else the first ``#### ...`` line) and, after
                                  normalisation (``$``, ``%``, thousands commas, ``\\text{}``, LaTeX
                                  spacing dropped; ``\\frac{a}{b}`` and ``a/b`` as numbers; numbers written
                                  canonically), equals the normalised reference as a string
``final_answer_numeric_match``    the final answer (``\\boxed{}``, else ``####``, else the last number in
                                  the text) equals the reference as an exact rational number (a number
                                  inside text, ``18 dollars``, counts); a formatted match also counts
``final_answer_math_verify``      only with ``evaluation.math_verify: true``: HF ``math-verify``
                                  (``parse`` + ``verify``) finds the generation's answer mathematically
                                  equivalent to the reference (LaTeX fractions, ``\\boxed{}`` nesting,
                                  units, percentages, thousands separators, symbolic equality)
================================  ========================================================================

How they relate to lm-evaluation-harness's GSM8K filters (``lm_eval/tasks/gsm8k/gsm8k.yaml``, 0.4.13),
which score ``exact_match`` (ignore case; ignore ``,``, ``$``, everything up to ``#### `` and a final
``.``) of the filtered answer against the reference:

- ``strict-match`` takes the first match of the regex ``#### (\\-?[0-9\\.\\,]+)``. Ours
  (``formatted_answer_match``) differs: it also accepts ``\\boxed{}`` (which it prefers), compares after
  numeric normalisation (``18.50`` equals ``18.5``, ``\\frac{1}{2}`` equals ``0.5``) and takes the
  whole ``####`` line, not only the digits.
- ``flexible-extract`` takes the last match of ``(-?[$0-9.,]{2,})|(-?[0-9]+)`` (the last number-like
  string) and compares it as a string. Ours (``final_answer_numeric_match``) prefers ``\\boxed{}`` and
  ``####`` over the last number and compares values, not strings (``0.50`` equals ``1/2``).
- lm-eval's own filters are computed for real by the ``harness`` stage (:mod:`taskprune.harness`) on the
  same items; those rows are named as lm-eval names them (``exact_match,strict-match``) under a task
  ``harness:<lm-eval task>``, so the two families never share a name.

``HEADLINE_METRIC`` (``accuracy``) is the one number per target task that findings and figures compare:
math -> ``final_answer_math_verify`` when math-verify is on, else ``final_answer_numeric_match``;
code -> ``pass@1``. It is a copy of that row under a kind-independent name.
"""

from __future__ import annotations

#: Math: the answer in the requested format (``\boxed{}``/``####``) equals the reference as a normalised string.
FORMATTED_ANSWER_MATCH = "formatted_answer_match"
#: Math: the final answer (``\boxed{}``, ``####``, else the last number) equals the reference as a number.
FINAL_ANSWER_NUMERIC_MATCH = "final_answer_numeric_match"
#: Math: math-verify finds the final answer equivalent to the reference (``evaluation.math_verify``).
FINAL_ANSWER_MATH_VERIFY = "final_answer_math_verify"

#: The headline metric of every target task (math and code), the one findings and figures compare.
HEADLINE_METRIC = "accuracy"

#: Prefix of the task names of lm-evaluation-harness rows in metrics.parquet (``harness:gsm8k``).
HARNESS_TASK_PREFIX = "harness:"

#: Per-item headline of each task kind, (metric name, per-item column of results/eval/{variant}/{task}.parquet):
#: the per-item table and the findings name them only through these constants.
#: Math: the final-answer numeric match.
MATH_HEADLINE_METRIC = FINAL_ANSWER_NUMERIC_MATCH
MATH_HEADLINE_COLUMN = "correct_numeric"
#: With ``evaluation.math_verify`` on, math-verify's verdict is the headline instead (metric, per-item column).
MATH_VERIFY_HEADLINE_METRIC = FINAL_ANSWER_MATH_VERIFY
MATH_VERIFY_HEADLINE_COLUMN = "correct_math_verify"
#: The code headline metric: an item's pass@1 estimate (the share of its samples that passed).
CODE_HEADLINE_METRIC = "pass@1"
CODE_HEADLINE_COLUMN = "correct"
#: The retention similarity of distractor answers to the base model's answers used as the headline.
RETENTION_HEADLINE_METRIC = "retention_token_f1"
RETENTION_HEADLINE_COLUMN = "token_f1"
