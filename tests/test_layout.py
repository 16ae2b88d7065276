"""The package layout (issue #20): no import cycles, a docstring per subpackage, no oversized module, and
subpackages that do not reach back into the stage modules.

Read off the source text with :mod:`taskprune.import_graph` (nothing is imported). Each check is
parametrised per module, so a failure names the module that breaks the rule.
"""

from __future__ import annotations

import ast
from functools import cache

import pytest

from taskprune import import_graph as ig
from taskprune.cli import STAGES

MAX_LINES = 750  # "no module over ~700 lines"
SUBPACKAGES = ("model", "tasks", "perf", "report")  # the layout's subpackages (those that exist are checked)


def _module_name(path) -> str:
    parts = list(path.relative_to(ig.PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = sorted(_module_name(p) for p in ig.PACKAGE_DIR.rglob("*.py"))
PACKAGE_INITS = sorted(p for p in ig.PACKAGE_DIR.rglob("__init__.py") if p.parent != ig.PACKAGE_DIR)
# the stage modules `taskprune <stage>` runs (config_cli is the spine's)
STAGE_MODULES = frozenset(module for module, _ in STAGES.values()) - {"taskprune.config_cli"}


def _graph(toplevel_only: bool) -> dict[str, set[str]]:
    graph = {}
    for name in MODULES:
        imports = ig.module_imports(name)
        targets = imports.package_toplevel if toplevel_only else imports.package
        graph[name] = {t for t in targets if t in MODULES and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@cache
def _all_import_cycles() -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(c) for c in _cycles(_graph(toplevel_only=False)))


def test_modules_found():
    assert "taskprune.model.arch" in MODULES and "taskprune.cli" in MODULES
    assert set(MODULES) >= STAGE_MODULES


def test_no_import_cycle_at_module_level():
    assert _cycles(_graph(toplevel_only=True)) == []


@pytest.mark.parametrize("module", MODULES)
def test_module_is_in_no_import_cycle(module):
    """Function-level (lazy) imports count too: they are how the stages import each other when they run."""
    cycles = [c for c in _all_import_cycles() if module in c]
    assert not cycles, f"{module} is in the import cycle {' <-> '.join(cycles[0])}"


@pytest.mark.parametrize("init", PACKAGE_INITS, ids=lambda p: _module_name(p))
def test_subpackage_has_a_docstring_saying_what_lives_there_and_who_imports_it(init):
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert doc, f"{init}: no docstring"
    assert "import" in doc.lower(), f"{init}: the docstring does not say what may import the package"


def test_every_source_folder_is_a_package():
    folders = {p.parent for p in ig.PACKAGE_DIR.rglob("*.py")}
    assert all((f / "__init__.py").is_file() for f in folders), sorted(
        str(f) for f in folders if not (f / "__init__.py").is_file()
    )


@pytest.mark.parametrize("module", MODULES)
def test_module_is_at_most_max_lines(module):
    path = ig.module_file(module, ig.PACKAGE_DIR)
    n_lines = len(path.read_text(encoding="utf-8").splitlines())
    assert n_lines <= MAX_LINES, f"{path.relative_to(ig.PACKAGE_DIR.parent)} has {n_lines} lines (> {MAX_LINES})"


@pytest.mark.parametrize("module", [m for m in MODULES if m.split(".")[1:2] and m.split(".")[1] in SUBPACKAGES])
def test_subpackages_do_not_import_stage_modules(module):
    imported = ig.module_imports(module).package & STAGE_MODULES
    assert not imported, f"{module} imports the stage module(s) {sorted(imported)}"


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("taskprune.model.")])
def test_model_imports_nothing_from_the_other_subpackages(module):
    others = {f"taskprune.{p}" for p in SUBPACKAGES if p != "model"}
    imported = {m for m in ig.module_imports(module).package if ".".join(m.split(".")[:2]) in others}
    assert not imported, f"{module} imports {sorted(imported)}"
