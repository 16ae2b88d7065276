# Embedded tiny specialists, trained from scratch (models with `source: pretrained` skip this rule).


def train_tasks(model):
    """The tasks a specialist is trained on: its target task and the other tasks named in training.mix
    (not its distractor list, which only feeds the scores: adding a distractor must not retrain it)."""
    m = model_cfg(model)
    mixed = [t for t, share in m.training.mix.items() if t != "target" and share > 0]
    return list(dict.fromkeys([m.task, *mixed]))


def train_inputs(wildcards):
    m = model_cfg(wildcards.model)
    return [f"results/data/{t}/train.parquet" for t in train_tasks(wildcards.model)] + [
        f"results/data/{m.task}/eval.parquet"
    ]


def train_options(wildcards):
    m = model_cfg(wildcards.model)
    model = m.model_dump(mode="json", exclude={"distractors", "levels"})
    tasks = {t: CFG.tasks[t].model_dump(mode="json") for t in train_tasks(wildcards.model)}
    return options(model=model, tasks=tasks, evaluation=CFG.evaluation, device=CFG.device)


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
