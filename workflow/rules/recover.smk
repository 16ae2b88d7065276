# LoRA recovery of pruned checkpoints on the target task's train split, merged into normal checkpoints.


def recover_options(wildcards):
    m = model_cfg(wildcards.model)
    return options(recovery=CFG.recovery, task=m.task, device=CFG.device, chat_template=m.chat_template)


rule recover:
    input:
        model="results/pruned/{model}/{method}/{level}/{seed}",
        train=lambda w: f"results/data/{model_cfg(w.model).task}/train.parquet",
        eval=lambda w: f"results/data/{model_cfg(w.model).task}/eval.parquet",
    output:
        directory("results/recovered/{model}/{method}/{level}/{seed}"),
    params:
        opts=recover_options,
        src=source_hash("recover", "modeling", "prune"),
    threads: 1
    log:
        "logs/recover/{model}/{method}/{level}/{seed}.log",
    benchmark:
        "benchmarks/recover/{model}/{method}/{level}/{seed}.tsv"
    resources:
        mem_mb=6000,
        runtime=60,
    shell:
        TORCH_ENV + " taskprune recover --model-path {input.model} --train-data {input.train} "
        "--eval-data {input.eval} --out {output} --options {params.opts:q} > {log} 2>&1"
