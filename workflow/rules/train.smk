# Embedded tiny specialists, trained from scratch (models with `source: pretrained` skip this rule).


def train_inputs(wildcards):
    m = model_cfg(wildcards.model)
    tasks = [m.task, *m.distractors]
    return [f"results/data/{t}/{s}.parquet" for t in tasks for s in ("train", "eval")]


def train_options(wildcards):
    m = model_cfg(wildcards.model)
    tasks = {t: CFG.tasks[t] for t in [m.task, *m.distractors]}
    return options(model=m, tasks={k: v.model_dump(mode="json") for k, v in tasks.items()},
                   evaluation=CFG.evaluation, device=CFG.device)


rule train:
    input:
        train_inputs,
    output:
        directory("results/models/{model}"),
    params:
        opts=train_options,
        src=source_hash("train", "tokenizer", "data", "generate", "evaluate", "sandbox", "modeling"),
    threads: lambda wildcards: model_cfg(wildcards.model).training.threads or workflow.cores
    log:
        "logs/train/{model}.log",
    benchmark:
        "benchmarks/train/{model}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        TORCH_ENV + " taskprune train --model {wildcards.model} --data-dir results/data "
        "--out {output} --options {params.opts:q} > {log} 2>&1"
