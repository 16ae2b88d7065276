# Config model, wildcard constraints and input functions shared by every rule.
import hashlib
import json
import re
import shlex
import sys
from pathlib import Path

from taskprune.config import SPLITS as _SPLITS, format_level, parse_method, validate_config
from taskprune.errors import TaskpruneError
from taskprune import grid
from taskprune.bench import bench_plan


# ---------------------------------------------------------------------------- config validation
try:
    _sources = [str(f) for f in (workflow.configfiles or ["config"])]
    CFG = validate_config(config, source=" + ".join(dict.fromkeys(_sources)))
except TaskpruneError as _exc:
    # One line, non-zero exit, nothing scheduled: the contract for bad input.
    print(f"taskprune: error: {_exc}", file=sys.stderr)
    sys.exit(2)

ROOT = Path(workflow.basedir)
SRC = ROOT / "src" / "taskprune"
SPLITS = list(_SPLITS)  # train, calibration, validation, eval
SCORE_METHODS_USED = sorted(
    {parse_method(m)[1] for m in CFG.pruning.methods if parse_method(m)[0] != "random"}
    | set(CFG.scores.methods)
)


wildcard_constraints:
    model="|".join(re.escape(m) for m in CFG.models),
    generalist="|".join(re.escape(g) for g in CFG.generalists) or "(?!)",
    trained="|".join(re.escape(m) for m in [*CFG.models, *CFG.generalists]),
    task="|".join(re.escape(t) for t in CFG.tasks),
    dataset="|".join(re.escape(t) for t in CFG.tasks),
    score="[a-z]+",
    method="[a-z]+(-[a-z]+)?",
    level=r"[0-9]+(\.[0-9]+)?",
    seed=r"[0-9]+",
    recipe="[a-z]+(-[a-z]+)*",


# ---------------------------------------------------------------------------- helpers
def source_hash(*modules):
    """Hash of the package modules a rule runs, in params:, so a code change reruns exactly its jobs."""
    h = hashlib.sha256()
    for name in ("config", "io", "errors", "cli", *modules):
        path = SRC / f"{name}.py"
        if path.exists():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def options(**sections):
    """JSON of the config sections a stage uses (pydantic models are dumped), for --options."""
    out = {}
    for key, value in sections.items():
        out[key] = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


def model_cfg(model):
    return CFG.models[model]


def model_input(wildcards):
    """The base model's directory as a Snakemake input (nothing for a hub model)."""
    m = model_cfg(wildcards.model)
    if m.source == "train":
        return f"results/models/{wildcards.model}"
    if m.path and Path(m.path).exists():
        return m.path
    return []


def model_path(model):
    m = model_cfg(model)
    return f"results/models/{model}" if m.source == "train" else m.path


def task_kind(task):
    return CFG.tasks[task].kind


def threads_env(threads):
    return f"OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} TOKENIZERS_PARALLELISM=false"


TORCH_ENV = "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} TOKENIZERS_PARALLELISM=false"


# ---------------------------------------------------------------------------- the grid
PRUNED = grid.pruned_variants(CFG)
RECOVERED = grid.recovered_variants(CFG)
BASES = grid.base_variants(CFG)
ALL_VARIANTS = BASES + PRUNED + RECOVERED
BENCH_PLAN = bench_plan(CFG)  # {measured variant: [variants its rows label]}


def eval_outputs(variant):
    return [f"results/eval/{variant.path}/{t}.parquet" for t in grid.tasks_for(CFG, variant.model)] + [
        f"results/eval/{variant.path}/metrics.parquet"
    ]


def bench_variants():
    """Variants whose efficiency is measured: one per distinct set of shapes (``taskprune.bench.bench_plan``:
    a family's base models share one measurement, and with uniform allocation so does every variant at one
    level across the family); the gather step attaches the rows to every variant of those shapes."""
    return [grid.parse_variant(p) for p in BENCH_PLAN]


def bench_labels(variant_path):
    """The other variants whose efficiency rows come from measuring ``variant_path``."""
    return [p for p in BENCH_PLAN[variant_path] if p != variant_path]


def final_outputs():
    outs = [f"results/data/{t}/{s}.parquet" for t in CFG.tasks for s in SPLITS]
    outs += [f"results/models/{m}" for m, mc in CFG.models.items() if mc.source == "train"]
    outs += [f"results/models/{g}" for g in CFG.generalists if any(m.training.init == g for m in CFG.models.values())]
    outs += [f"results/scores/{m}/{s}.parquet" for m in CFG.models for s in CFG.scores.methods]
    outs += ["results/metrics.parquet", "results/items.parquet", "results/bench/efficiency.parquet"]
    outs += ["results/findings.json"]
    outs += ["results/bench/stats_collection.parquet", "results/bench/generation.parquet"]
    outs += FIGURE_OUTPUTS + ["results/findings.md", "results/findings.html"]
    outs += OVERLAP_OUTPUTS
    return outs
