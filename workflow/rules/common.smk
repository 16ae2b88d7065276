# Config model, wildcard constraints and input functions shared by every rule.
import hashlib
import json
import re
import shlex
import sys
from pathlib import Path

from taskprune.config import SPLITS as _SPLITS, parse_method, validate_config
from taskprune.errors import TaskpruneError
from taskprune import grid
from taskprune.grid import bench_plan, family_plans
from taskprune import import_graph
from taskprune.io import write_text


from taskprune.recipes import RECIPES


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
# conda environments for `--sdm conda` (the default run stays on the venv); paths relative to workflow/rules/.
# tests/test_conda_envs.py checks that each holds every third-party package its stages import.
ENV_TORCH = "../../envs/torch.yaml"
ENV_DATA = "../../envs/data.yaml"
ENV_ANALYSIS = "../../envs/analysis.yaml"
# Options files live with Snakemake's own metadata: not results, and shared with cluster jobs like it.
OPTIONS_DIR = Path(".snakemake/taskprune/options")
# Snakemake itself sets OMP_NUM_THREADS/MKL_NUM_THREADS from `threads:` and the CLI sets
# TOKENIZERS_PARALLELISM, so rules need no environment prefix. The old name stays (empty) only so that a
# rule still prefixing its shell command with TORCH_ENV parses; `snakemake --lint` flags such a rule.
TORCH_ENV = ""


def source_hash(*stages):
    """Hash of every package module a `taskprune <stage>` job executes, for params.

    The modules come from the stage module's import graph (transitively, package modules only;
    taskprune.import_graph), read from this workflow's src/, so editing a module reruns exactly the
    jobs whose stage imports it.
    """
    return import_graph.source_hash(*stages, src_dir=SRC)


def options(**sections):
    """The config sections a stage uses (pydantic models dumped), as `@<OPTIONS_DIR>/<sections>-<hash>.json`.

    The file is content-addressed (written once, atomically; not in a dry run, which writes nothing), so
    the printed shell command stays short and the parameter still changes exactly when the options do
    (params rerun trigger).
    """
    out = {}
    for key, value in sections.items():
        out[key] = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
    text = json.dumps(out, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = OPTIONS_DIR / f"{'-'.join(sections)}-{digest}.json"
    if not workflow.dryrun and not path.exists():
        write_text(f"{text}\n", path)
    return f"@{path}"


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
    """Variants whose efficiency is measured: one per distinct set of shapes (``taskprune.grid.bench_plan``:
    a family's base models share one measurement, and with uniform allocation so does every variant at one
    level across the family); the gather step attaches the rows to every variant of those shapes."""
    return [grid.parse_variant(p) for p in BENCH_PLAN]


def family_input(wildcards):
    """The checkpoints a shape family's trials load (nothing for a family built from numbers)."""
    plan = FAMILIES[wildcards.shapes]
    sources = [plan.base, *plan.levels.values()]
    return [s["checkpoint"] for s in sources if "checkpoint" in s and Path(s["checkpoint"]).parts[:1] == ("results",)]


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
    if CFG.bench.pipeline:
        outs += ["results/bench/stats_collection.parquet", "results/bench/generation.parquet"]
    outs += FIGURE_OUTPUTS + ["results/findings.md", "results/findings.html"]
    outs += OVERLAP_OUTPUTS
    return outs


# ---------------------------------------------------------------------------- data (data.smk)
def data_options(wildcards):
    d = CFG.data
    section = d.model_dump(mode="json")
    # Only this task's sizes, so resizing one task does not regenerate the others.
    for key in ("train_size", "eval_size"):
        section[key] = {k: v for k, v in section[key].items() if k == wildcards.task}
    return options(task=CFG.tasks[wildcards.task], data=section)


# ---------------------------------------------------------------------------- train (train.smk)
def trained_cfg(name):
    """(config, target task or None) of a model or generalist trained here."""
    if name in CFG.generalists:
        return CFG.generalists[name], None
    m = model_cfg(name)
    return m, m.task


def train_tasks(name):
    """The tasks a model is trained on: its target task and the other tasks named in training.mix
    (not its distractor list, which only feeds the scores: adding a distractor must not retrain it)."""
    m, target = trained_cfg(name)
    mixed = [t for t, share in m.training.mix.items() if t != "target" and share > 0]
    return list(dict.fromkeys([*([target] if target else []), *mixed]))


def train_inputs(wildcards):
    """Train splits of the mix, validation splits of the checked tasks (never eval), the generalist."""
    m, target = trained_cfg(wildcards.trained)
    checked = [target] if target else train_tasks(wildcards.trained)
    inputs = [f"results/data/{t}/train.parquet" for t in train_tasks(wildcards.trained)]
    inputs += [f"results/data/{t}/validation.parquet" for t in checked]
    if m.training.init:
        inputs.append(f"results/models/{m.training.init}")
    return inputs


def train_options(wildcards):
    m, target = trained_cfg(wildcards.trained)
    tasks = {t: CFG.tasks[t].model_dump(mode="json") for t in train_tasks(wildcards.trained)}
    if target is None:
        return options(generalist=m, tasks=tasks, evaluation=CFG.evaluation, device=CFG.device)
    model = m.model_dump(mode="json", exclude={"distractors", "levels"})
    return options(model=model, tasks=tasks, evaluation=CFG.evaluation, device=CFG.device)


def train_init(wildcards):
    m, _ = trained_cfg(wildcards.trained)
    return f"--init results/models/{m.training.init}" if m.training.init else ""


# ---------------------------------------------------------------------------- scores (scores.smk)
def score_inputs(wildcards):
    """Contrastive scores read the distractor statistics; the others only the target's, so adding a
    distractor set reruns selectivity and taker but not wanda, magnitude or random."""
    from taskprune.score_methods import SCORE_METHODS

    m = model_cfg(wildcards.model)
    contrastive = SCORE_METHODS[wildcards.score].needs_distractors
    return {
        "target": f"results/stats/{wildcards.model}/{m.task}.parquet",
        "distractors": [f"results/stats/{wildcards.model}/{d}.parquet" for d in m.distractors]
        if contrastive
        else [],
    }


def score_options(wildcards):
    keys = {"epsilon": CFG.scores.epsilon}
    if wildcards.score == "random":
        keys["random_seed"] = CFG.scores.random_seed
    return options(scores=keys)


# ---------------------------------------------------------------------------- prune (prune.smk)
def prune_inputs(wildcards):
    direction, score = parse_method(wildcards.method)
    inputs = {"model": model_input(wildcards)}
    if direction != "random":
        inputs["scores"] = f"results/scores/{wildcards.model}/{score}.parquet"
    return inputs


def maybe_temp(path):
    return temp(path) if CFG.pruning.temporary_checkpoints else path


# ---------------------------------------------------------------------------- recover (recover.smk)
def recover_options(wildcards):
    # Only the hyper-parameters (not the selection of variants or the list of recipes): selecting one more
    # variant or recipe must not rerun the others; the distillation keys only concern distillation recipes.
    exclude = {"variants", "enabled", "methods"}
    if not RECIPES[wildcards.recipe].needs_teacher:
        exclude.add("distillation")
    return options(recovery=CFG.recovery.model_dump(mode="json", exclude=exclude), device=CFG.device)


def recover_teacher_input(wildcards):
    """The unpruned base model, for a recipe that distils from it (nothing for a hub model)."""
    return model_input(wildcards) if RECIPES[wildcards.recipe].needs_teacher else []


def recover_teacher_arg(wildcards):
    if not RECIPES[wildcards.recipe].needs_teacher:
        return ""
    return f"--teacher {shlex.quote(str(model_path(wildcards.model)))}"


# ---------------------------------------------------------------------------- evaluate (evaluate.smk)
def eval_inputs(wildcards):
    v = grid.parse_variant(wildcards.variant)
    m = model_cfg(v.model)
    inputs = {"data": [f"results/data/{t}/eval.parquet" for t in grid.tasks_for(CFG, v.model)]}
    if v.stage == "base":
        if m.source == "train":
            inputs["model"] = v.checkpoint
    else:
        inputs["model"] = v.checkpoint
        inputs["reference"] = [f"results/eval/{v.model}/base/{d}.parquet" for d in m.distractors]
    return inputs


def eval_model_path(wildcards):
    v = grid.parse_variant(wildcards.variant)
    return model_path(v.model) if v.stage == "base" else v.checkpoint


def eval_task_args(wildcards):
    v = grid.parse_variant(wildcards.variant)
    return " ".join(
        f"--task {t}={task_kind(t)}:results/data/{t}/eval.parquet" for t in grid.tasks_for(CFG, v.model)
    )


def eval_options(wildcards):
    v = grid.parse_variant(wildcards.variant)
    m = model_cfg(v.model)
    return options(evaluation=CFG.evaluation, device=CFG.device, chat_template=m.chat_template)


# ---------------------------------------------------------------------------- bench (bench.smk)
def bench_checkpoint(wildcards):
    v = grid.parse_variant(wildcards.variant)
    return model_path(v.model) if v.stage == "base" else v.checkpoint


def bench_input(wildcards):
    v = grid.parse_variant(wildcards.variant)
    if v.stage == "base":
        return [f"results/models/{v.model}"] if model_cfg(v.model).source == "train" else []
    return [v.checkpoint]


def base_model_input(model):
    return [f"results/models/{model}"] if model_cfg(model).source == "train" else []


# ---------------------------------------------------------------------------- figures (figures.smk)
def _score_tables():
    return [f"results/scores/{m}/selectivity.parquet" for m in CFG.models if "selectivity" in CFG.scores.methods]


def _manifests():
    return [f"{v.checkpoint}" for v in PRUNED if not CFG.pruning.temporary_checkpoints]  # dirs with manifest.parquet


# ---------------------------------------------------------------------------- harness (harness.smk)
def harness_inputs(wildcards):
    v = grid.parse_variant(wildcards.variant)
    inputs = {"data": list(HARNESS_LOCAL.values()), "task_yaml": [f"resources/harness/{n}.yaml" for n in HARNESS_LOCAL]}
    if v.stage != "base" or model_cfg(v.model).source == "train":
        inputs["model"] = v.checkpoint
    return inputs


def harness_model_path(wildcards):
    v = grid.parse_variant(wildcards.variant)
    return model_path(v.model) if v.stage == "base" else v.checkpoint


def harness_options(wildcards):
    v = grid.parse_variant(wildcards.variant)
    return options(harness=CFG.harness, device=CFG.device, chat_template=model_cfg(v.model).chat_template)


# ---------------------------------------------------------------------------- overlap (overlap.smk)
def overlap_plan():
    """(generalist, [specialist, specialist]) of the first generalist two trained specialists continue from."""
    by_generalist = {}
    for name, m in CFG.models.items():
        if m.source == "train" and m.training.init:
            by_generalist.setdefault(m.training.init, []).append(name)
    if "selectivity" not in CFG.scores.methods:
        return None
    for generalist, specialists in by_generalist.items():
        if len(specialists) >= 2:
            return generalist, specialists[:2]
    return None


def overlap_levels():
    levels = {lv for m in (OVERLAP[1] if OVERLAP else []) for lv in CFG.levels_for(m)}
    return [lv.label for lv in sorted(levels)]
