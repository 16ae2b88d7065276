# lm-evaluation-harness (lm_eval.simple_evaluate with its HF model) on the checkpoints harness.variants
# selects; one job per variant writes results/harness/{variant}.parquet in the metrics schema, which the
# metrics rule appends to results/metrics.parquet (tasks named harness:<lm-eval task>).

HARNESS = grid.harness_variants(CFG)
HARNESS_LOCAL = {name: f"results/data/{task}/eval.parquet" for name, task in CFG.harness.local_tasks.items()
                 if name in CFG.harness.tasks}


rule harness:
    input:
        unpack(harness_inputs),
    output:
        "results/harness/{variant}.parquet",
    params:
        model_path=harness_model_path,
        local=" ".join(f"--local-task {n}={p}" for n, p in HARNESS_LOCAL.items()),
        opts=harness_options,
        src=source_hash("harness"),
    wildcard_constraints:
        variant=f"({'|'.join(re.escape(m) for m in CFG.models)})/{VARIANT_RE}",
    threads: 1
    conda:
        ENV_TORCH
    log:
        "logs/harness/{variant}.log",
    benchmark:
        "benchmarks/harness/{variant}.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "HF_DATASETS_OFFLINE=1 taskprune harness --model-path {params.model_path:q} "
        "--variant {wildcards.variant} {params.local} --out {output} --options {params.opts:q} > {log} 2>&1"
