# Streaming per-neuron activation statistics of one model on one dataset's calibration prompts.


rule stats:
    input:
        model=model_input,
        data="results/data/{dataset}/calibration.parquet",
    output:
        "results/stats/{model}/{dataset}.parquet",
    params:
        model_path=lambda w: model_path(w.model),
        opts=lambda w: options(stats=CFG.stats, device=CFG.device,
                               chat_template=model_cfg(w.model).chat_template),
        src=source_hash("stats"),
    threads: 1
    conda:
        ENV_TORCH
    log:
        "logs/stats/{model}/{dataset}.log",
    benchmark:
        "benchmarks/stats/{model}/{dataset}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "taskprune stats --model-path {params.model_path:q} --data {input.data} "
        "--out {output} --options {params.opts:q} > {log} 2>&1"
