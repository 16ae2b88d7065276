# Recovery of pruned checkpoints with each recipe of recovery.methods (lora, lora-kd) on the target task's
# train split, merged into normal checkpoints: results/recovered/{model}/{method}/{level}/{seed}/{recipe}/.
from taskprune.recover import RECIPES


def recover_options(wildcards):
    # Only the hyper-parameters (not the selection of variants or the list of recipes): selecting one more
    # variant or recipe must not rerun the others; the distillation keys only concern distillation recipes.
    exclude = {"variants", "enabled", "methods"}
    if not RECIPES[wildcards.recipe].needs_teacher:
        exclude.add("distillation")
    return options(recovery=CFG.recovery.model_dump(mode="json", exclude=exclude), device=CFG.device)


def recover_teacher_input(wildcards):
    """The unpruned base model, for a recipe that distils from it (nothing for a hub model)."""
    return model_input(wildcards) if RECIPES[wildcards.recipe].needs_teacher else []


def recover_teacher_arg(wildcards):
    if not RECIPES[wildcards.recipe].needs_teacher:
        return ""
    return "--teacher " + shlex.quote(str(model_path(wildcards.model)))


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
        src=source_hash("recover", "modeling", "prune"),
    threads: 1
    log:
        "logs/recover/{model}/{method}/{level}/{seed}/{recipe}.log",
    benchmark:
        "benchmarks/recover/{model}/{method}/{level}/{seed}/{recipe}.tsv"
    resources:
        mem_mb=6000,
        runtime=60,
    shell:
        TORCH_ENV + " taskprune recover --pruned {input.model} --train {input.train} --eval {input.eval} "
        "--task {params.task} --recipe {wildcards.recipe} {params.teacher} {params.chat} --threads {threads} "
        "--no-progress --out {output} --options {params.opts:q} > {log} 2>&1"
