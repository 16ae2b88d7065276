"""The ``code`` task kind: HumanEval-format tasks, their post-processing and the programs that score them.

Generator: 17 families of one-expression functions with parameter variation; ``test`` is a
``check(candidate)`` whose asserts come from executing the canonical solution; an item's skeleton is the
body expression with argument names abstracted, one spelling per function (``code_skeleton``). Scoring:
base-style completions are cut at the first new top-level statement, instruct-style answers contribute
their fenced block; the program ``prompt + completion + test + check(entry_point)`` runs in
:mod:`taskprune.tasks.sandbox` (the stage that scores runs it: ``TaskKind.programs``); pass@k is Chen et
al.'s unbiased estimator.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from taskprune.tasks.metric_names import CODE_HEADLINE_COLUMN, CODE_HEADLINE_METRIC, HEADLINE_METRIC

#: Base-style code completions end where a new top-level statement starts (HumanEval's stop sequences).
CODE_STOP_STRINGS: list[str] = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#"]

# ========================================================================================= generator


@dataclass(frozen=True)
class _CodeSpec:
    """A code task before rendering: the body is one expression over the arguments."""

    family: str
    entry_point: str
    args: tuple[tuple[str, str], ...]  # (name, type annotation)
    returns: str
    description: str
    expression: str  # body is ``return {expression}``
    inputs: tuple[tuple[Any, ...], ...]  # argument tuples: the first two become docstring examples
    fixed: bool = False  # no parameters: the family's only skeleton for this operation, never held out


_INT_NAMES = ("x", "n", "value", "num")
_LIST_NAMES = ("xs", "nums", "values", "items")
_STR_NAMES = ("s", "text", "word")
_WORDS = (
    "apple", "river", "stone", "planet", "garden", "yellow", "window", "banana", "rocket", "silver",
    "tiger", "pencil", "summer", "cloud", "orange", "mirror", "forest", "candle", "puzzle", "bridge",
)  # fmt: skip
_LETTERS = "aeinorst"
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _ints(rng: random.Random, k: int, lo: int = 0, hi: int = 20) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(k)]


def _int_inputs(rng: random.Random, extra: tuple[int, ...] = ()) -> tuple[tuple[Any, ...], ...]:
    xs = rng.sample(range(0, 41), 4)
    return tuple((v,) for v in [*xs[:2], *extra, *xs[2:]])


def _list_inputs(rng: random.Random, lo: int = 0, hi: int = 40, n: int = 4) -> tuple[tuple[Any, ...], ...]:
    out = []
    for _ in range(n):
        out.append((_ints(rng, rng.randint(3, 5), lo, hi),))
    out.append(([],)) if rng.random() < 0.3 else None
    return tuple(out)


def _str_inputs(rng: random.Random, n: int = 4) -> tuple[tuple[Any, ...], ...]:
    return tuple((w,) for w in rng.sample(_WORDS, n))


def _code_add(rng: random.Random) -> _CodeSpec:
    k, x = rng.randint(1, 49), rng.choice(_INT_NAMES)
    name = rng.choice(("add_constant", "increase", "shift_up", "plus_k"))
    return _CodeSpec("add", name, ((x, "int"),), "int", f"Return {x} plus {k}.", f"{x} + {k}", _int_inputs(rng))


def _code_multiply(rng: random.Random) -> _CodeSpec:
    k, x = rng.randint(2, 19), rng.choice(_INT_NAMES)
    name = rng.choice(("scale", "multiply", "times_k", "grow"))
    desc = rng.choice((f"Return {x} multiplied by {k}.", f"Return {x} times {k}."))
    return _CodeSpec("multiply", name, ((x, "int"),), "int", desc, f"{x} * {k}", _int_inputs(rng))


def _code_affine(rng: random.Random) -> _CodeSpec:
    a, b, x = rng.randint(2, 12), rng.randint(1, 29), rng.choice(_INT_NAMES)
    name = rng.choice(("affine", "linear", "transform"))
    return _CodeSpec(
        "affine", name, ((x, "int"),), "int", f"Return {a} times {x} plus {b}.", f"{a} * {x} + {b}", _int_inputs(rng)
    )


_COMPARE = (("greater than", ">"), ("less than", "<"), ("at least", ">="), ("at most", "<="))


def _code_threshold(rng: random.Random) -> _CodeSpec:
    k, x = rng.randint(1, 39), rng.choice(_INT_NAMES)
    words, op = rng.choice(_COMPARE)
    name = rng.choice(("check_limit", "is_large", "passes", "compare"))
    desc = f"Return True if {x} is {words} {k}, otherwise False."
    return _CodeSpec("threshold", name, ((x, "int"),), "bool", desc, f"{x} {op} {k}", _int_inputs(rng, (k,)))


def _code_sum_filtered(rng: random.Random) -> _CodeSpec:
    k, xs = rng.randint(2, 29), rng.choice(_LIST_NAMES)
    words, op = rng.choice(_COMPARE[:2])
    name = rng.choice(("sum_selected", "partial_sum", "filtered_total"))
    desc = f"Return the sum of the numbers in {xs} that are {words} {k}."
    return _CodeSpec(
        "sum_filtered", name, ((xs, "list[int]"),), "int", desc, f"sum(v for v in {xs} if v {op} {k})",
        _list_inputs(rng),
    )


_PARITY = (("even", "v % 2 == 0"), ("odd", "v % 2 == 1"))


def _code_count(rng: random.Random) -> _CodeSpec:
    xs = rng.choice(_LIST_NAMES)
    if rng.random() < 0.5:
        words, cond = rng.choice(_PARITY)
    else:
        k = rng.randint(2, 29)
        words, op = rng.choice(_COMPARE[:2])
        words, cond = f"{words} {k}", f"v {op} {k}"
    name = rng.choice(("count_matching", "how_many", "tally"))
    desc = f"Return how many numbers in {xs} are {words}."
    return _CodeSpec(
        "count", name, ((xs, "list[int]"),), "int", desc, f"sum(1 for v in {xs} if {cond})", _list_inputs(rng)
    )


def _code_filter(rng: random.Random) -> _CodeSpec:
    xs = rng.choice(_LIST_NAMES)
    if rng.random() < 0.5:
        words, cond = rng.choice(_PARITY)
        desc = f"Return a list of the {words} numbers in {xs}, in order."
    else:
        k = rng.randint(2, 29)
        words, op = rng.choice(_COMPARE[:2])
        cond = f"v {op} {k}"
        desc = f"Return a list of the numbers in {xs} that are {words} {k}, in order."
    name = rng.choice(("select", "keep_some", "filter_numbers"))
    return _CodeSpec(
        "filter", name, ((xs, "list[int]"),), "list[int]", desc, f"[v for v in {xs} if {cond}]", _list_inputs(rng)
    )


def _code_map(rng: random.Random) -> _CodeSpec:
    xs, k = rng.choice(_LIST_NAMES), rng.randint(2, 19)
    desc, expr = rng.choice(
        (
            (f"Return a list with every number in {xs} multiplied by {k}.", f"[v * {k} for v in {xs}]"),
            (f"Return a list with {k} added to every number in {xs}.", f"[v + {k} for v in {xs}]"),
            (f"Return a list with every number in {xs} squared.", f"[v * v for v in {xs}]"),
        )
    )
    name = rng.choice(("map_numbers", "transform_all", "apply_each"))
    fixed = expr == f"[v * v for v in {xs}]"
    return _CodeSpec("map", name, ((xs, "list[int]"),), "list[int]", desc, expr, _list_inputs(rng, 0, 9), fixed=fixed)


def _code_repeat(rng: random.Random) -> _CodeSpec:
    s, k = rng.choice(_STR_NAMES), rng.randint(2, 6)
    name = rng.choice(("repeat", "echo", "duplicate"))
    return _CodeSpec(
        "repeat", name, ((s, "str"),), "str", f"Return the string {s} repeated {k} times.", f"{s} * {k}",
        _str_inputs(rng),
    )


def _code_count_char(rng: random.Random) -> _CodeSpec:
    s, c = rng.choice(_STR_NAMES), rng.choice(_LETTERS)
    name = rng.choice(("count_letter", "letter_count", "occurrences"))
    desc = f"Return the number of times the letter '{c}' appears in {s}."
    return _CodeSpec("count_char", name, ((s, "str"),), "int", desc, f"{s}.count('{c}')", _str_inputs(rng))


def _code_string_op(rng: random.Random) -> _CodeSpec:
    s = rng.choice(_STR_NAMES)
    desc, expr, name = rng.choice(
        (
            (f"Return {s} in upper case.", f"{s}.upper()", "shout"),
            (f"Return {s} reversed.", f"{s}[::-1]", "backwards"),
            (f"Return the length of {s}.", f"len({s})", "measure"),
            (f"Return the first letter of {s}.", f"{s}[0]", "initial"),
            (f"Return the last letter of {s}.", f"{s}[-1]", "final_letter"),
        )
    )
    returns = "str" if "len" not in expr else "int"
    return _CodeSpec("string_op", name, ((s, "str"),), returns, desc, expr, _str_inputs(rng), fixed=True)


def _code_extreme(rng: random.Random) -> _CodeSpec:
    xs = rng.choice(_LIST_NAMES)
    desc, expr, name = rng.choice(
        (
            (f"Return the largest number in {xs}.", f"max({xs})", "largest"),
            (f"Return the smallest number in {xs}.", f"min({xs})", "smallest"),
            (f"Return the difference between the largest and the smallest number in {xs}.",
             f"max({xs}) - min({xs})", "spread"),
        )
    )  # fmt: skip
    inputs = tuple(x for x in _list_inputs(rng) if x[0])
    return _CodeSpec("extreme", name, ((xs, "list[int]"),), "int", desc, expr, inputs, fixed=True)


def _code_classify(rng: random.Random) -> _CodeSpec:
    x = rng.choice(_INT_NAMES)
    yes, no = rng.sample(("yes", "no", "big", "small", "hot", "cold", "high", "low", "on", "off"), 2)
    if rng.random() < 0.5:
        words, cond = rng.choice(_PARITY)
        cond = cond.replace("v", x)
        desc = f"Return '{yes}' if {x} is {words}, otherwise '{no}'."
        extra: tuple[int, ...] = ()
    else:
        k = rng.randint(1, 19)
        words, op = rng.choice(_COMPARE)
        cond = f"{x} {op} {k}"
        desc = f"Return '{yes}' if {x} is {words} {k}, otherwise '{no}'."
        extra = (k,)
    name = rng.choice(("label", "classify", "describe"))
    return _CodeSpec(
        "classify", name, ((x, "int"),), "str", desc, f"'{yes}' if {cond} else '{no}'", _int_inputs(rng, extra)
    )


def _code_slice(rng: random.Random) -> _CodeSpec:
    xs, k = rng.choice(_LIST_NAMES), rng.randint(1, 3)
    desc, expr, name = rng.choice(
        (
            (f"Return the first {k} elements of {xs}.", f"{xs}[:{k}]", "head"),
            (f"Return {xs} without its first {k} elements.", f"{xs}[{k}:]", "drop_front"),
            (f"Return the last {k} elements of {xs}.", f"{xs}[-{k}:]", "tail"),
        )
    )
    inputs = tuple(x for x in _list_inputs(rng) if len(x[0]) > k)
    return _CodeSpec("slice", name, ((xs, "list[int]"),), "list[int]", desc, expr, inputs)


def _code_affix(rng: random.Random) -> _CodeSpec:
    s = rng.choice(_STR_NAMES)
    piece = rng.choice(("ing", "ed", "er", "s", "un", "re", "pre", "ly", "-", "!"))
    desc, expr, name = rng.choice(
        (
            (f"Return {s} with '{piece}' added at the end.", f"{s} + '{piece}'", "add_suffix"),
            (f"Return {s} with '{piece}' added at the start.", f"'{piece}' + {s}", "add_prefix"),
        )
    )
    return _CodeSpec("affix", name, ((s, "str"),), "str", desc, expr, _str_inputs(rng))


def _code_two_args(rng: random.Random) -> _CodeSpec:
    a, b = rng.sample(("a", "b", "x", "y", "m", "n"), 2)
    desc, expr, name = rng.choice(
        (
            (f"Return the sum of {a} and {b}.", f"{a} + {b}", "add"),
            (f"Return the product of {a} and {b}.", f"{a} * {b}", "product"),
            (f"Return the absolute difference between {a} and {b}.", f"abs({a} - {b})", "distance"),
            (f"Return the larger of {a} and {b}.", f"max({a}, {b})", "bigger"),
            (f"Return the smaller of {a} and {b}.", f"min({a}, {b})", "smaller"),
        )
    )
    inputs = tuple((rng.randint(0, 12), rng.randint(0, 12)) for _ in range(4))
    return _CodeSpec("two_args", name, ((a, "int"), (b, "int")), "int", desc, expr, inputs, fixed=True)


def _code_clamp(rng: random.Random) -> _CodeSpec:
    x, lo = rng.choice(_INT_NAMES), rng.randint(0, 14)
    hi = rng.randint(lo + 2, 29)
    desc = f"Return {x} limited to the range from {lo} to {hi}."
    return _CodeSpec(
        "clamp", rng.choice(("clamp", "limit", "bound")), ((x, "int"),), "int", desc, f"min(max({x}, {lo}), {hi})",
        _int_inputs(rng, (lo, hi)) + ((lo - 1 if lo else 40,), (hi + 1,)),
    )


CODE_FAMILIES: dict[str, Callable[[random.Random], _CodeSpec]] = {
    "add": _code_add,
    "multiply": _code_multiply,
    "affine": _code_affine,
    "threshold": _code_threshold,
    "sum_filtered": _code_sum_filtered,
    "count": _code_count,
    "filter": _code_filter,
    "map": _code_map,
    "repeat": _code_repeat,
    "count_char": _code_count_char,
    "string_op": _code_string_op,
    "extreme": _code_extreme,
    "classify": _code_classify,
    "slice": _code_slice,
    "affix": _code_affix,
    "two_args": _code_two_args,
    "clamp": _code_clamp,
}


def _call(entry_point: str, args: tuple[Any, ...]) -> str:
    return f"{entry_point}({', '.join(repr(a) for a in args)})"


def render_code(spec: _CodeSpec) -> dict[str, str]:
    """HumanEval fields of a spec; expected outputs come from executing the canonical solution."""
    signature = ", ".join(f"{n}: {t}" for n, t in spec.args)
    header = f"def {spec.entry_point}({signature}) -> {spec.returns}:\n"
    solution = f"    return {spec.expression}\n"
    namespace: dict[str, Any] = {}
    exec(header + solution, namespace)  # our own generated code: computes the gold outputs
    func = namespace[spec.entry_point]
    inputs = list({repr(args): args for args in spec.inputs}.values())  # distinct, in order
    outputs = [func(*args) for args in inputs]
    examples = "".join(
        f"    >>> {_call(spec.entry_point, args)}\n    {out!r}\n" for args, out in zip(inputs[:2], outputs[:2], strict=True)
    )
    prompt = f'{header}    """{spec.description}\n{examples}    """\n'
    asserts = "".join(f"    assert candidate({', '.join(map(repr, a))}) == {o!r}\n" for a, o in zip(inputs, outputs, strict=True))
    test = f"def check(candidate):\n{asserts}"
    return {"prompt": prompt, "canonical_solution": solution, "test": test, "entry_point": spec.entry_point}


def make_code(rng: random.Random, words: dict[str, Any] | None = None) -> dict[str, Any]:
    """One HumanEval-format task (``prompt, canonical_solution, test, entry_point``)."""
    family = rng.choice(sorted(CODE_FAMILIES))
    spec = CODE_FAMILIES[family](rng)
    item = render_code(spec)
    item["family"] = family
    item["skeleton"] = code_skeleton(spec)
    item["holdable"] = not spec.fixed
    return item


_CODE_TOKEN = re.compile(r"'[^']*'|[A-Za-z_]\w*")


_AT_LEAST = re.compile(r"(\$\d) >= (\d+)")
_AT_MOST = re.compile(r"(\$\d) <= (\d+)")
_CHOICE_BELOW = re.compile(r"^('[^']*') if (\$\d) < (\d+) else ('[^']*')$")
_CHOICE_ODD = re.compile(r"^('[^']*') if (\$\d) % 2 == 1 else ('[^']*')$")


def canonical_condition(expression: str) -> str:
    """One spelling per function for the integer comparisons and two-way choices of an abstracted body.

    Over integers ``$0 >= k`` is ``$0 > k-1`` and ``$0 <= k`` is ``$0 < k+1``; a choice
    ``'a' if $0 < k else 'b'`` is ``'b' if $0 > k-1 else 'a'`` and ``'a' if $0 % 2 == 1 else 'b'`` is
    ``'b' if $0 % 2 == 0 else 'a'``. Without this, ``x >= 26`` could be held out while ``x > 25``, the same
    function, is trained on. Only argument comparisons (``$i``) are rewritten: the generator compares
    list elements (``v``) with ``<`` and ``>`` only.
    """
    expression = _AT_LEAST.sub(lambda m: f"{m[1]} > {int(m[2]) - 1}", expression)
    expression = _AT_MOST.sub(lambda m: f"{m[1]} < {int(m[2]) + 1}", expression)
    expression = _CHOICE_BELOW.sub(lambda m: f"{m[4]} if {m[2]} > {int(m[3]) - 1} else {m[1]}", expression)
    return _CHOICE_ODD.sub(lambda m: f"{m[3]} if {m[2]} % 2 == 0 else {m[1]}", expression)


def code_skeleton(spec: _CodeSpec) -> str:
    """``code|expression`` with the argument names replaced by ``$0, $1`` (string literals untouched), in
    :func:`canonical_condition`'s spelling.

    The expression is what decides the answer (operation and constants); the function name, argument
    names, docstring wording and example inputs do not, so items differing only in those share a skeleton,
    and so do two spellings of one function (``x >= 26``, ``x > 25``).
    The family is left out on purpose: two families writing the same body (``s * 5`` repeating a string,
    ``x * 5`` scaling an int) share the skeleton, so no held-out solution is a renamed training solution.
    """
    names = {n: f"${i}" for i, (n, _) in enumerate(spec.args)}
    expression = _CODE_TOKEN.sub(lambda m: names.get(m.group(), m.group()), spec.expression)
    return f"code|{canonical_condition(expression)}"



def format_row(row: dict[str, Any], synthetic: bool) -> None:
    """The completion and reference are the canonical solution (the prompt is HumanEval's own)."""
    del synthetic  # one format for both
    row["completion"] = row["canonical_solution"]
    row["reference"] = row["canonical_solution"]


def adapt_source(out: dict[str, Any], label: str, index: int) -> dict[str, Any]:
    """A real record's mapped fields: ``completion`` is the canonical solution; no test or entry point
    unless the source has them."""
    out["canonical_solution"] = out.pop("completion")
    out.setdefault("test", "")
    out.setdefault("entry_point", "")
    out.setdefault("task_id", f"{label}/{index}")
    return out


# =========================================================================================== scoring

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



def programs_for(df: Any, style: str) -> list[str]:
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


def metric_values(df: Any, n_samples: int) -> list[tuple[str, str, list[Any]]]:
    """(metric, ``proportion`` | ``mean``, per-item values): pass@1, or pass@k per task for ``n > 1``."""
    rows: list[tuple[str, str, list[Any]]] = []
    if n_samples == 1:
        rows.append((HEADLINE_METRIC, "proportion", df["correct"].to_list()))
        rows.append(("pass@1", "proportion", df["correct"].to_list()))
        return rows
    import polars as pl

    per_task = df.group_by("id", maintain_order=True).agg(n=pl.len(), c=pl.col("correct").sum())
    ns, cs = per_task["n"].to_list(), per_task["c"].to_list()
    for k in sorted({1, 10, 100} | {n_samples}):
        if k > n_samples:
            continue
        values = [pass_at_k(int(n), int(c), k) for n, c in zip(ns, cs, strict=True)]
        if k == 1:
            rows.append((HEADLINE_METRIC, "mean", values))
        rows.append((f"pass@{k}", "mean", values))
    return rows


def item_metric(columns: Sequence[str]) -> tuple[str, str]:
    del columns
    return CODE_HEADLINE_METRIC, CODE_HEADLINE_COLUMN
