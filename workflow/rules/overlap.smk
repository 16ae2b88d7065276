# Beyond the paper: do the two specialists select the same neurons, and does specialisation create or
# amplify selective neurons? Needs two specialists continued from one generalist (training.init); the
# generalist gets statistics and selectivity on each specialist's datasets, but is never pruned.


OVERLAP = overlap_plan()
OVERLAP_OUTPUTS = ["results/tables/neuron_overlap.parquet"] if OVERLAP else []


rule generalist_stats:
    input:
        model="results/models/{generalist}",
        data="results/data/{dataset}/calibration.parquet",
    output:
        "results/stats/{generalist}/{dataset}.parquet",
    params:
        opts=lambda w: options(stats=CFG.stats, device=CFG.device, chat_template=False),
        src=source_hash("stats"),
    threads: 1
    conda:
        ENV_TORCH
    log:
        "logs/stats/{generalist}/{dataset}.log",
    benchmark:
        "benchmarks/stats/{generalist}/{dataset}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "taskprune stats --model-path {input.model} --data {input.data} "
        "--out {output} --options {params.opts:q} > {log} 2>&1"


rule generalist_selectivity:
    input:
        target=lambda w: f"results/stats/{w.generalist}/{model_cfg(w.model).task}.parquet",
        distractors=lambda w: [f"results/stats/{w.generalist}/{d}.parquet" for d in model_cfg(w.model).distractors],
    output:
        "results/scores/{generalist}/{model}/selectivity.parquet",
    params:
        opts=lambda w: options(scores={"epsilon": CFG.scores.epsilon}),
        src=source_hash("scores"),
    conda:
        ENV_TORCH
    log:
        "logs/scores/{generalist}/{model}/selectivity.log",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "taskprune scores --method selectivity --target {input.target} --distractors {input.distractors} "
        "--out {output} --options {params.opts:q} > {log} 2>&1"


rule neuron_overlap:
    input:
        specialists=[f"results/scores/{m}/selectivity.parquet" for m in (OVERLAP[1] if OVERLAP else [])],
        generalist=[f"results/scores/{OVERLAP[0]}/{m}/selectivity.parquet" for m in (OVERLAP[1] if OVERLAP else [])],
    output:
        "results/tables/neuron_overlap.parquet",
    params:
        args=lambda w, input: " ".join(
            [f"--specialist {m}={p}" for m, p in zip(OVERLAP[1], input.specialists)]
            + [f"--generalist-scores {m}={p}" for m, p in zip(OVERLAP[1], input.generalist)]
        ),
        generalist=OVERLAP[0] if OVERLAP else "",
        levels=" ".join(overlap_levels()),
        src=source_hash("overlap"),
    conda:
        ENV_TORCH
    log:
        "logs/overlap.log",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "taskprune overlap {params.args} --generalist {params.generalist} --levels {params.levels} "
        f"--multiple-of {CFG.pruning.multiple_of} --out {{output}} > {{log}} 2>&1"
