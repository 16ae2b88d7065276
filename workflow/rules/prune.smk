# Physical removal of MLP neurons into a real, smaller checkpoint.


rule prune:
    input:
        unpack(prune_inputs),
    output:
        checkpoint=maybe_temp(directory("results/pruned/{model}/{method}/{level}/{seed}")),
        # pruning.json outside the checkpoint, so it survives temp() checkpoints of big grids
        summary="results/pruning/{model}/{method}/{level}/{seed}.json",
    params:
        model_path=lambda w: model_path(w.model),
        scores=lambda w, input: f"--scores {input.scores}" if "scores" in input.keys() else "",
        # Only the keys that change which neurons go: adding a level must not rerun the other levels.
        opts=lambda w: options(pruning=CFG.pruning.model_dump(
            mode="json", include={"allocation", "min_width_fraction", "multiple_of"})),
        src=source_hash("prune"),
    threads: 1
    conda:
        ENV_TORCH
    log:
        "logs/prune/{model}/{method}/{level}/{seed}.log",
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "taskprune prune --checkpoint {params.model_path:q} {params.scores} "
        "--method {wildcards.method} --level {wildcards.level} --seed {wildcards.seed} "
        "--output {output.checkpoint} --summary {output.summary} --options {params.opts:q} > {log} 2>&1"
