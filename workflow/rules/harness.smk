# lm-evaluation-harness (lm_eval.simple_evaluate with its HF model) on the checkpoints harness.variants
# selects; one job per variant writes results/harness/{variant}.parquet in the metrics schema, which the
# metrics rule appends to results/metrics.parquet (tasks named harness:<lm-eval task>).

HARNESS = grid.harness_variants(CFG)
HARNESS_LOCAL = {name: f"results/data/{task}/eval.parquet" for name, task in CFG.harness.local_tasks.items()
                 if name in CFG.harness.tasks}


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


rule harness:
    input:
        unpack(harness_inputs),
    output:
        "results/harness/{variant}.parquet",
    params:
        model_path=harness_model_path,
        local=" ".join(f"--local-task {n}={p}" for n, p in HARNESS_LOCAL.items()),
        opts=harness_options,
        src=source_hash("harness", "evaluate", "metric_names", "metrics", "modeling", "prune", "arch", "grid"),
    wildcard_constraints:
        variant="(" + "|".join(re.escape(m) for m in CFG.models) + ")/" + VARIANT_RE,
    threads: 1
    log:
        "logs/harness/{variant}.log",
    benchmark:
        "benchmarks/harness/{variant}.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        TORCH_ENV + " HF_DATASETS_OFFLINE=1 taskprune harness --model-path {params.model_path:q} "
        "--variant {wildcards.variant} {params.local} --out {output} --options {params.opts:q} > {log} 2>&1"
