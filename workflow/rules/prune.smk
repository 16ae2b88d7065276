# Physical removal of MLP neurons into a real, smaller checkpoint.


def prune_inputs(wildcards):
    direction, score = parse_method(wildcards.method)
    inputs = {"model": model_input(wildcards)}
    if direction != "random":
        inputs["scores"] = f"results/scores/{wildcards.model}/{score}.parquet"
    return inputs


def maybe_temp(path):
    return temp(path) if CFG.pruning.temporary_checkpoints else path


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
        src=source_hash("prune", "arch", "modeling"),
    threads: 1
    log:
        "logs/prune/{model}/{method}/{level}/{seed}.log",
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        TORCH_ENV + " taskprune prune --checkpoint {params.model_path:q} {params.scores} "
        "--method {wildcards.method} --level {wildcards.level} --seed {wildcards.seed} "
        "--output {output.checkpoint} --summary {output.summary} --options {params.opts:q} > {log} 2>&1"
