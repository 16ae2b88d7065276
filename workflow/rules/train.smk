# Embedded tiny models: generalists (config `generalists`, trained on a mix of all tasks, not pruned) and
# specialists (continued from a generalist via training.init, or from scratch). Models with
# `source: pretrained` skip this rule.


def trained_cfg(name):
    """(config, target task or None) of a model or generalist trained here."""
    if name in CFG.generalists:
        return CFG.generalists[name], None
    m = model_cfg(name)
    return m, m.task


def train_tasks(name):
    """The tasks a model is trained on: its target task and the other tasks named in training.mix
    (not its distractor list, which only feeds the scores: adding a distractor must not retrain it)."""
    m, target = trained_cfg(name)
    mixed = [t for t, share in m.training.mix.items() if t != "target" and share > 0]
    return list(dict.fromkeys([*([target] if target else []), *mixed]))


def train_inputs(wildcards):
    """Train splits of the mix, validation splits of the checked tasks (never eval), the generalist."""
    m, target = trained_cfg(wildcards.trained)
    checked = [target] if target else train_tasks(wildcards.trained)
    inputs = [f"results/data/{t}/train.parquet" for t in train_tasks(wildcards.trained)]
    inputs += [f"results/data/{t}/validation.parquet" for t in checked]
    if m.training.init:
        inputs.append(f"results/models/{m.training.init}")
    return inputs


def train_options(wildcards):
    m, target = trained_cfg(wildcards.trained)
    tasks = {t: CFG.tasks[t].model_dump(mode="json") for t in train_tasks(wildcards.trained)}
    if target is None:
        return options(generalist=m, tasks=tasks, evaluation=CFG.evaluation, device=CFG.device)
    model = m.model_dump(mode="json", exclude={"distractors", "levels"})
    return options(model=model, tasks=tasks, evaluation=CFG.evaluation, device=CFG.device)


def train_init(wildcards):
    m, _ = trained_cfg(wildcards.trained)
    return f"--init results/models/{m.training.init}" if m.training.init else ""


rule train:
    input:
        train_inputs,
    output:
        directory("results/models/{trained}"),
    params:
        opts=train_options,
        init=train_init,
        src=source_hash("train", "tokenizer", "data", "generate", "evaluate", "sandbox", "modeling"),
    threads: lambda wildcards: trained_cfg(wildcards.trained)[0].training.threads or workflow.cores
    log:
        "logs/train/{trained}.log",
    benchmark:
        "benchmarks/train/{trained}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        TORCH_ENV + " taskprune train --model {wildcards.trained} --data-dir results/data {params.init} "
        "--out {output} --options {params.opts:q} > {log} 2>&1"
