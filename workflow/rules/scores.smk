# Neuron score tables from the statistics: selectivity (the paper), taker, wanda, magnitude, random.


rule scores:
    input:
        unpack(score_inputs),
    output:
        "results/scores/{model}/{score}.parquet",
    params:
        opts=score_options,
        src=source_hash("scores"),
    wildcard_constraints:
        score="|".join(SCORE_METHODS_USED),
    conda:
        ENV_TORCH
    log:
        "logs/scores/{model}/{score}.log",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "taskprune scores --method {wildcards.score} --target {input.target} "
        "--distractors {input.distractors} "
        "--out {output} --options {params.opts:q} > {log} 2>&1"
