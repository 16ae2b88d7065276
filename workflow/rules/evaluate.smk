# Evaluation of every variant (base, pruned, recovered) on its target task and distractors.
# One job per variant evaluates all of that variant's tasks (one process start instead of several).
# No `benchmark:` file: locally these ~160 jobs run forked from the warm worker (src/taskprune/worker.py,
# ~6 CPU-s of imports saved per job), outside the process tree Snakemake would measure. Each job's log
# ends with its own CPU time and peak memory instead (taskprune.cli), forked or not.

VARIANT_RE = r"(base|[a-z]+(-[a-z]+)?/[0-9]+(\.[0-9]+)?/[0-9]+(/recovered-[a-z]+(-[a-z]+)*)?)"


for _model in CFG.models:

    rule:
        name:
            f"evaluate_{re.sub(r'[^A-Za-z0-9_]', '_', _model)}"
        input:
            unpack(eval_inputs),
        output:
            [f"results/eval/{{variant}}/{t}.parquet" for t in grid.tasks_for(CFG, _model)],
            "results/eval/{variant}/metrics.parquet",
        params:
            model_path=eval_model_path,
            tasks=eval_task_args,
            refs=lambda w, input: f"--reference-dir {Path(input.reference[0]).parent}"
            if "reference" in input.keys()
            else "",
            opts=eval_options,
            src=source_hash("evaluate"),
        wildcard_constraints:
            variant=f"{re.escape(_model)}/{VARIANT_RE}",
        threads: 1
        conda:
            ENV_TORCH
        log:
            "logs/evaluate/{variant}.log",
        resources:
            mem_mb=4000,
            runtime=60,
        shell:
            "taskprune evaluate --model-path {params.model_path:q} --variant {wildcards.variant} "
            "{params.tasks} {params.refs} --out-dir results/eval/{wildcards.variant} "
            "--options {params.opts:q} > {log} 2>&1"


rule metrics:
    input:
        eval=[f for v in ALL_VARIANTS for f in eval_outputs(v)],
        harness=[f"results/harness/{v.path}.parquet" for v in grid.harness_variants(CFG)],
    output:
        metrics="results/metrics.parquet",
        per_item="results/items.parquet",
    params:
        inputs=[f"results/eval/{v.path}/metrics.parquet" for v in ALL_VARIANTS],
        targets=" ".join(f"--target {m}={mc.task}" for m, mc in CFG.models.items()),
        harness=lambda w, input: f"--harness-inputs {' '.join(input.harness)}" if input.harness else "",
        src=source_hash("metrics"),
    # the torch env: metrics reads its headline constants from taskprune.evaluate, whose import graph
    # reaches torch (tests/test_conda_envs.py derives what each rule's env must hold)
    conda:
        ENV_TORCH
    log:
        "logs/metrics.log",
    shell:
        "taskprune metrics --inputs {params.inputs} {params.targets} {params.harness} --out {output.metrics} "
        "--items {output.per_item} > {log} 2>&1"
