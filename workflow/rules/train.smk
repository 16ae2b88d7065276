# Embedded tiny models: generalists (config `generalists`, trained on a mix of all tasks, not pruned) and
# specialists (continued from a generalist via training.init, or from scratch). Models with
# `source: pretrained` skip this rule.


rule train:
    input:
        train_inputs,
    output:
        directory("results/models/{trained}"),
    params:
        opts=train_options,
        init=train_init,
        src=source_hash("train"),
    threads: lambda wildcards: trained_cfg(wildcards.trained)[0].training.threads or workflow.cores
    conda:
        ENV_TORCH
    log:
        "logs/train/{trained}.log",
    benchmark:
        "benchmarks/train/{trained}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "taskprune train --model {wildcards.trained} --data-dir results/data {params.init} "
        "--out {output} --options {params.opts:q} > {log} 2>&1"
