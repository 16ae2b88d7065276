"""The perf/ layout: the Snakefile's planner is torch-free, and the one fork server imports no stage."""

from __future__ import annotations

import subprocess
import sys

from taskprune import import_graph as ig


def test_planner_imports_no_torch():
    code = "import sys, taskprune.grid; from taskprune.grid import bench_plan, family_plans; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fork_server_and_cli_do_not_import_each_other():
    isolation = ig.module_imports("taskprune.perf.isolation")
    assert {m for m in isolation.package if not m.startswith(("taskprune.errors", "taskprune.perf"))} == set()
    closure = ig.closure(["taskprune.worker"])
    assert "taskprune.cli" not in closure
    assert "taskprune.perf.paired" not in ig.closure(["taskprune.perf.measure"])
