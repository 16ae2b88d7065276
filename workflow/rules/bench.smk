# Efficiency benchmarks. Benchmark jobs hold the `bench` resource (profiles set bench=1) and every core,
# so they never run beside another job and their numbers are not polluted by a neighbour.

BENCH = bench_variants()
# the BenchConfig keys of the per-variant efficiency measurement (not those of the pipeline benchmarks)
EFFICIENCY_KEYS = {"batch_sizes", "prompt_tokens", "new_tokens", "warmup", "repeats", "static_cache", "compile", "threads"}


rule bench:
    input:
        bench_input,
    output:
        "results/bench/variants/{variant}.parquet",
    params:
        model_path=bench_checkpoint,
        labels=lambda w: " ".join(f"--label-variant {p}" for p in bench_labels(w.variant)),
        opts=lambda w: options(bench=CFG.bench.model_dump(mode="json", include=EFFICIENCY_KEYS), device=CFG.device),
        src=source_hash("bench"),
    wildcard_constraints:
        variant=f"[^/]+/{VARIANT_RE}",
    threads: workflow.cores
    conda:
        ENV_TORCH
    log:
        "logs/bench/{variant}.log",
    resources:
        bench=1,
        mem_mb=8000,
        runtime=30,
    shell:
        "taskprune bench measure --checkpoint {params.model_path:q} --variant {wildcards.variant} "
        "{params.labels} --output {output} --options {params.opts:q} > {log} 2>&1"


rule bench_gather:
    input:
        [f"results/bench/variants/{v.path}.parquet" for v in BENCH],
    output:
        "results/bench/efficiency.parquet",
    params:
        src=source_hash("bench"),
    conda:
        ENV_TORCH
    log:
        "logs/bench/gather.log",
    shell:
        "taskprune bench gather --output {output} {input} > {log} 2>&1"


_BENCH_MODEL = next(iter(CFG.models))


rule bench_stats:
    input:
        model=base_model_input(_BENCH_MODEL),
        data=[f"results/data/{model_cfg(_BENCH_MODEL).task}/calibration.parquet"],
    output:
        "results/bench/stats_collection.parquet",
    params:
        model_path=lambda w, input: input.model[0] if input.model else model_path(_BENCH_MODEL),
        opts=options(stats=CFG.stats, device=CFG.device),
        b=CFG.bench,
        memory=" ".join(map(str, CFG.bench.stats_memory_prompts)),
        src=source_hash("bench_stats"),
    threads: workflow.cores
    conda:
        ENV_TORCH
    log:
        "logs/bench/stats_collection.log",
    resources:
        bench=1,
        mem_mb=8000,
        runtime=30,
    shell:
        "taskprune bench-stats --model-path {params.model_path:q} --data {input.data} "
        "--throughput-prompts {params.b.stats_prompts} --memory-prompts {params.memory} "
        "--rounds {params.b.stats_rounds} --out {output} --options {params.opts:q} > {log} 2>&1"


rule bench_generation:
    input:
        model=base_model_input(_BENCH_MODEL),
        data=[f"results/data/{model_cfg(_BENCH_MODEL).task}/eval.parquet"],
    output:
        "results/bench/generation.parquet",
    params:
        model_path=lambda w, input: input.model[0] if input.model else model_path(_BENCH_MODEL),
        opts=options(evaluation=CFG.evaluation, device=CFG.device),
        b=CFG.bench,
        batches=" ".join(map(str, CFG.bench.generation_batch_sizes)),
        src=source_hash("bench_generation"),
    threads: workflow.cores
    conda:
        ENV_TORCH
    log:
        "logs/bench/generation.log",
    resources:
        bench=1,
        mem_mb=8000,
        runtime=30,
    shell:
        "taskprune bench-generation --model-path {params.model_path:q} --data {input.data} "
        "--n-prompts {params.b.generation_prompts} --batch-sizes {params.batches} "
        "--repeats {params.b.generation_repeats} --out {output} --options {params.opts:q} > {log} 2>&1"
