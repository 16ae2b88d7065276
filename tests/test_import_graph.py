"""The import graph behind the rules' source hashes and the conda-env check, on a hand-made package whose
true closure is known, and on the real package for the properties the workflow relies on."""

from __future__ import annotations

from pathlib import Path

from taskprune import import_graph as ig


def make_package(root: Path) -> Path:
    pkg = root / "taskprune"
    pkg.mkdir()
    files = {
        # the package __init__: module-level code runs on import; a lazy attribute's import does not
        "__init__.py": "import taskprune.base\n\ndef __getattr__(name):\n    from taskprune import lazy\n    return lazy\n",
        "base.py": "import numpy\n",
        "cli.py": "import argparse\nimport taskprune.errors\n\ndef entry():\n    from taskprune import worker\n",
        "errors.py": "",
        "worker.py": "import torch\n",
        "lazy.py": "import seaborn\n",
        # the stage: a function-level import runs when the stage does; a relative import; TYPE_CHECKING
        # and optional (try/except ImportError) imports
        "stage.py": (
            "from typing import TYPE_CHECKING\nfrom . import helper\n"
            "if TYPE_CHECKING:\n    import pandas\n    from taskprune import typing_only\n"
            "try:\n    import fancy_optional\nexcept ImportError:\n    fancy_optional = None\n"
            "def run():\n    import polars\n    from taskprune.deep import thing\n"
        ),
        "helper.py": "import yaml\n",
        "deep.py": "from taskprune.deeper import x\n",
        "deeper.py": "import pyarrow.parquet\n",
        "typing_only.py": "import matplotlib\n",
        "unrelated.py": "import scipy\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    return pkg


def test_closure_of_a_stage(tmp_path):
    pkg = make_package(tmp_path)
    mods = ig.closure(["taskprune.stage"], pkg)
    assert mods == sorted(
        ["taskprune", "taskprune.base", "taskprune.stage", "taskprune.helper", "taskprune.deep", "taskprune.deeper"]
    )
    # the CLI contributes its module-level imports only (entry()'s worker import is not a stage's)
    assert ig.closure(["taskprune.cli"], pkg, toplevel_only=True) == sorted(
        ["taskprune", "taskprune.base", "taskprune.cli", "taskprune.errors"]
    )


def test_third_party_imports_leave_out_optional_and_type_only(tmp_path):
    pkg = make_package(tmp_path)
    third = set()
    for mod in ig.closure(["taskprune.stage"], pkg):
        third |= ig.module_imports(mod, pkg).third_party
    assert third == {"numpy", "yaml", "polars", "pyarrow"}


def test_hash_follows_the_graph(tmp_path, monkeypatch):
    pkg = make_package(tmp_path)
    monkeypatch.setattr(ig, "stage_module", lambda stage: f"taskprune.{stage}")
    before = ig.source_hash("stage", src_dir=pkg)
    (pkg / "unrelated.py").write_text("import scipy\n# edited\n")
    (pkg / "typing_only.py").write_text("# edited\n")
    (pkg / "worker.py").write_text("# edited\n")
    assert ig.source_hash("stage", src_dir=pkg) == before
    deeper = pkg / "deeper.py"
    deeper.write_text(deeper.read_text() + "# edited\n")
    assert ig.source_hash("stage", src_dir=pkg) != before


def test_real_package_stages():
    stats = ig.stage_modules("stats")
    assert {"taskprune.stats", "taskprune.model.loading", "taskprune.model.checkpoint", "taskprune.cli"} <= set(stats)
    # the pruning logic is not part of loading models: editing it must not rerun the statistics
    assert "taskprune.prune" not in stats
    assert "taskprune.model.flops" in ig.stage_modules("bench") and "taskprune.model.flops" not in ig.stage_modules("evaluate")
    assert "torch" not in ig.stage_third_party("figures")
