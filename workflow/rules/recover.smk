# Recovery of pruned checkpoints with each recipe of recovery.methods (lora, lora-kd) on the target task's
# train split, merged into normal checkpoints: results/recovered/{model}/{method}/{level}/{seed}/{recipe}/.

rule recover:
    input:
        model="results/pruned/{model}/{method}/{level}/{seed}",
        train=lambda w: f"results/data/{model_cfg(w.model).task}/train.parquet",
        eval=lambda w: f"results/data/{model_cfg(w.model).task}/eval.parquet",
        teacher=recover_teacher_input,
    output:
        directory("results/recovered/{model}/{method}/{level}/{seed}/{recipe}"),
    params:
        opts=recover_options,
        task=lambda w: model_cfg(w.model).task,
        chat=lambda w: "--chat-template" if model_cfg(w.model).chat_template else "--no-chat-template",
        teacher=recover_teacher_arg,
        src=source_hash("recover"),
    threads: 1
    conda:
        ENV_TORCH
    log:
        "logs/recover/{model}/{method}/{level}/{seed}/{recipe}.log",
    benchmark:
        "benchmarks/recover/{model}/{method}/{level}/{seed}/{recipe}.tsv"
    resources:
        mem_mb=6000,
        runtime=60,
    shell:
        "taskprune recover --pruned {input.model} --train {input.train} --eval {input.eval} "
        "--task {params.task} --recipe {wildcards.recipe} {params.teacher} {params.chat} --threads {threads} "
        "--no-progress --out {output} --options {params.opts:q} > {log} 2>&1"
