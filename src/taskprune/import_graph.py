"""The package's import graph: which source files a stage executes and which third-party packages it imports.

Two consumers need the same answer, so it is computed once, here, from the source text (``ast``; nothing is
imported or executed):

- the Snakemake rules put ``source_hash(stage)`` in ``params:`` so that editing a module reruns exactly the
  jobs whose stage imports it (``workflow/rules/common.smk``). A hand-kept list of modules per rule drifts
  (it once named a module that did not exist and missed ones the stage imports); the graph cannot.
- the conda environment files must hold every third-party package a rule's stage imports
  (``tests/test_conda_envs.py`` checks them against this graph).

What counts as an import of a module: every ``import``/``from ... import`` statement anywhere in its file,
including the ones inside functions (the stages import their heavy libraries lazily, and those imports run
when the stage does). Two kinds are left out because they do not run in a normal job: imports under
``if TYPE_CHECKING:`` and optional imports guarded by ``try: ... except ImportError`` (for the third-party
list only: a guarded package module still counts for the hash, since its code may run). ``taskprune.cli``
dispatches to a stage with ``importlib`` and otherwise imports only its module-level imports, so a stage
closure is: the stage module's transitive closure, plus ``cli`` and the closure of its module-level imports.
"""

from __future__ import annotations

import ast
import hashlib
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

PACKAGE = "taskprune"
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ModuleImports:
    """The imports of one module's source file."""

    package: frozenset[str] = field(default_factory=frozenset)  # dotted names of taskprune modules
    package_toplevel: frozenset[str] = field(default_factory=frozenset)  # those at module level only
    third_party: frozenset[str] = field(default_factory=frozenset)  # top-level names, optional ones excluded


def module_file(name: str, src_dir: Path) -> Path | None:
    """The source file of the package module ``name`` (``taskprune.x.y``) under ``src_dir``, if any."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = src_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = []
    if handler.type is None:
        return True
    for node in ast.walk(handler.type):
        if isinstance(node, ast.Name):
            names.append(node.id)
    return bool({"ImportError", "ModuleNotFoundError", "Exception"} & set(names))


def _resolve_relative(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute dotted name a relative ``from . import`` in ``module`` refers to."""
    base = module.split(".")
    keep = len(base) - node.level + (1 if is_package else 0)  # a package's `.` is the package itself
    prefix = ".".join(base[: max(keep, 0)])
    return f"{prefix}.{node.module}" if node.module else prefix


@cache
def _parse(path: Path, mtime_ns: int, module: str) -> ModuleImports:
    del mtime_ns  # part of the cache key only: an edited file is parsed again
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package: set[str] = set()
    toplevel: set[str] = set()
    third: set[str] = set()

    def add(name: str, *, at_top: bool, optional: bool, from_names: list[str] | None = None) -> None:
        root = name.split(".")[0]
        if root == PACKAGE:
            targets = [name]
            # `from taskprune import grid` imports the submodule taskprune.grid
            targets += [f"{name}.{n}" for n in from_names or []]
            package.update(targets)
            if at_top:
                toplevel.update(targets)
        elif root and root not in sys.stdlib_module_names and not optional:
            third.add(root)

    def visit(nodes: list[ast.stmt], *, at_top: bool, optional: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, at_top=at_top, optional=optional)
            elif isinstance(node, ast.ImportFrom):
                name = _resolve_relative(module, path.name == "__init__.py", node) if node.level else (node.module or "")
                add(name, at_top=at_top, optional=optional, from_names=[a.name for a in node.names])
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse, at_top=at_top, optional=optional)
            elif isinstance(node, ast.Try):
                guarded = any(_catches_import_error(h) for h in node.handlers)
                visit(node.body, at_top=at_top, optional=optional or guarded)
                for h in node.handlers:
                    visit(h.body, at_top=at_top, optional=optional)
                visit(node.orelse, at_top=at_top, optional=optional)
                visit(node.finalbody, at_top=at_top, optional=optional)
            else:
                # function bodies run when called, not at import time (class and if/with/for bodies do)
                inner_top = at_top and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                for child_field in ("body", "orelse", "finalbody"):
                    block = getattr(node, child_field, None)
                    if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                        visit(block, at_top=inner_top, optional=optional)
                if isinstance(node, ast.Match):
                    for case in node.cases:
                        visit(case.body, at_top=inner_top, optional=optional)

    visit(tree.body, at_top=True, optional=False)
    return ModuleImports(frozenset(package), frozenset(toplevel), frozenset(third))


def module_imports(name: str, src_dir: Path = PACKAGE_DIR) -> ModuleImports:
    """The imports of package module ``name``; empty for a name that is not a module of the package."""
    path = module_file(name, src_dir)
    if path is None:
        return ModuleImports()
    return _parse(path, path.stat().st_mtime_ns, name)


def closure(roots: list[str], src_dir: Path = PACKAGE_DIR, *, toplevel_only: bool = False) -> list[str]:
    """Every package module reachable from ``roots`` (the roots included), sorted; only existing modules."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or module_file(name, src_dir) is None:
            continue
        seen.add(name)
        imports = module_imports(name, src_dir)
        # A package's __init__ runs on import, its functions (lazy attributes) only when called.
        is_package = module_file(name, src_dir).name == "__init__.py"
        todo += sorted(imports.package_toplevel if toplevel_only or is_package else imports.package)
        parts = name.split(".")  # a submodule runs its parent packages' __init__ first
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
    return sorted(seen)


def stage_module(stage: str) -> str:
    """The module of a ``taskprune <stage>`` subcommand, or ``taskprune.<stage>`` for a plain module name."""
    from taskprune.cli import STAGES

    if stage in STAGES:
        return STAGES[stage][0]
    return stage if stage.startswith(f"{PACKAGE}.") else f"{PACKAGE}.{stage}"


def stage_modules(*stages: str, src_dir: Path = PACKAGE_DIR) -> list[str]:
    """The package modules a ``taskprune <stage>`` job executes: the stage's closure plus the CLI's."""
    cli = closure([f"{PACKAGE}.cli"], src_dir, toplevel_only=True)
    return sorted(set(cli) | set(closure([stage_module(s) for s in stages], src_dir)))


def stage_third_party(*stages: str, src_dir: Path = PACKAGE_DIR) -> set[str]:
    """Top-level names of the third-party packages a stage's modules import (optional imports left out)."""
    out: set[str] = set()
    for name in stage_modules(*stages, src_dir=src_dir):
        out |= module_imports(name, src_dir).third_party
    return out


def source_hash(*stages: str, src_dir: Path = PACKAGE_DIR) -> str:
    """16 hex digits over the names and bytes of every module the stages execute."""
    digest = hashlib.sha256()
    for name in stage_modules(*stages, src_dir=src_dir):
        path = module_file(name, src_dir)
        assert path is not None  # closure() keeps existing modules only
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


__all__ = ["closure", "module_imports", "source_hash", "stage_modules", "stage_third_party", "stage_module"]
