# taskprune: find the task-specific MLP neurons of a specialised LM, prune them into a real smaller
# checkpoint, recover with LoRA, and measure what is lost, what recovers and what is gained.
#
#   snakemake --cores 2                                  # embedded default (config/config.yaml)
#   snakemake --cores 2 --configfile config/smoke.yaml   # smallest grid that runs every rule
#   snakemake --profile profiles/slurm --configfile config/paper.yaml   # the paper's Qwen grid on SLURM
#   snakemake --report results/report.html               # the HTML report of a finished run
#
# The DAG: data -> train (embedded models) -> stats -> scores -> prune -> recover -> evaluate (+ harness) -> metrics
#          -> bench -> findings -> figures. All logic is in src/taskprune/; rules only call `taskprune <stage>`.

import os

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/scores.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/recover.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/harness.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/overlap.smk"
include: "workflow/rules/figures.smk"


# Small aggregation rules run by Snakemake itself, also with a cluster executor (seconds each: a queue
# wait would cost more than the job).
localrules:
    metrics,
    bench_gather,
    findings,
    figures,


onstart:
    # Local runs in the venv: one warm process imports torch/transformers once and forks a child per job
    # (src/taskprune/worker.py); TASKPRUNE_WORKER=0 turns it off. Never on a cluster executor, and never
    # with --sdm conda/apptainer (a job must run in its own environment, not in Snakemake's interpreter).
    _deploy = {m.name for m in workflow.deployment_settings.deployment_method}
    if (
        workflow.local_exec
        and not workflow.dryrun
        and not _deploy & {"CONDA", "APPTAINER"}
        and os.environ.get("TASKPRUNE_WORKER", "1") != "0"
    ):
        from taskprune.worker import start_for_snakemake

        start_for_snakemake(os.getpid(), log_path="logs/worker.log")


onsuccess:
    from taskprune.worker import stop_for_snakemake

    stop_for_snakemake()


onerror:
    from taskprune.worker import stop_for_snakemake

    stop_for_snakemake()


rule all:
    input:
        final_outputs(),
    default_target: True
