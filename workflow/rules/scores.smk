# Neuron score tables from the statistics: selectivity (the paper), taker, wanda, magnitude, random.


def score_inputs(wildcards):
    """Contrastive scores read the distractor statistics; the others only the target's, so adding a
    distractor set reruns selectivity and taker but not wanda, magnitude or random."""
    from taskprune.scores import NEEDS_DISTRACTORS

    m = model_cfg(wildcards.model)
    contrastive = NEEDS_DISTRACTORS[wildcards.score]
    return {
        "target": f"results/stats/{wildcards.model}/{m.task}.parquet",
        "distractors": [f"results/stats/{wildcards.model}/{d}.parquet" for d in m.distractors]
        if contrastive
        else [],
    }


def score_options(wildcards):
    keys = {"epsilon": CFG.scores.epsilon}
    if wildcards.score == "random":
        keys["random_seed"] = CFG.scores.random_seed
    return options(scores=keys)


rule scores:
    input:
        unpack(score_inputs),
    output:
        "results/scores/{model}/{score}.parquet",
    params:
        opts=score_options,
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
        "--distractors {input.distractors} "
        "--out {output} --options {params.opts:q} > {log} 2>&1"
