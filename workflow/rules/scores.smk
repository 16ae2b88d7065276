# Neuron score tables from the statistics: selectivity (the paper), taker, wanda, magnitude, random.


def score_inputs(wildcards):
    m = model_cfg(wildcards.model)
    return {
        "target": f"results/stats/{wildcards.model}/{m.task}.parquet",
        "distractors": [f"results/stats/{wildcards.model}/{d}.parquet" for d in m.distractors],
    }


rule scores:
    input:
        unpack(score_inputs),
        model=model_input,
    output:
        "results/scores/{model}/{score}.parquet",
    params:
        model_path=lambda w: model_path(w.model),
        opts=lambda w: options(scores=CFG.scores),
        src=source_hash("scores", "arch"),
    wildcard_constraints:
        score="|".join(SCORE_METHODS_USED),
    log:
        "logs/scores/{model}/{score}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "taskprune scores --method {wildcards.score} --target {input.target} "
        "--distractors {input.distractors} --model-path {params.model_path:q} "
        "--out {output} --options {params.opts:q} > {log} 2>&1"
