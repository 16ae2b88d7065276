# Efficiency benchmarks. Timing jobs (bench_family, bench_stats, bench_generation) hold the `bench`
# resource (profiles set bench=1) and every core, so they never run beside another job and their numbers
# are not polluted by a neighbour. `bench` measures memory only (a fresh process's own peak RSS, or CUDA's
# allocator peak), which a neighbour does not change, so it takes one core and runs beside other jobs.
#   bench         per measured variant checkpoint: parameters, bytes on disk, peak memory at batch 1
#   bench_family  per shape family: paired, interleaved throughput of the base vs every level (perf/paired.py)
#   bench_gather  results/bench/efficiency.parquet: family rows attached to the variants they describe

BENCH = bench_variants()
FAMILIES = family_plans(CFG)
# the BenchConfig keys of the per-variant memory measurement (throughput: FAMILIES' plans)
EFFICIENCY_KEYS = {"prompt_tokens", "new_tokens", "repeats", "static_cache", "threads"}


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
    threads: 1
    conda:
        ENV_TORCH
    log:
        "logs/bench/{variant}.log",
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "taskprune bench measure --checkpoint {params.model_path:q} --variant {wildcards.variant} "
        "{params.labels} --output {output} --options {params.opts:q} > {log} 2>&1"


rule bench_family:
    input:
        family_input,
    output:
        family="results/bench/families/{shapes}.parquet",
        trials="results/bench/families/{shapes}.trials.parquet",
    params:
        plan=lambda w: json.dumps(FAMILIES[w.shapes].to_json(), sort_keys=True, separators=(",", ":")),
        src=source_hash("bench"),
    wildcard_constraints:
        shapes="|".join(re.escape(n) for n in FAMILIES) or "NO_FAMILY",
    threads: workflow.cores
    conda:
        ENV_TORCH
    log:
        "logs/bench/family-{shapes}.log",
    resources:
        bench=1,
        mem_mb=12000,
        runtime=30,
    shell:
        "taskprune bench family --plan {params.plan:q} --output {output.family} "
        "--trials {output.trials} > {log} 2>&1"


rule bench_gather:
    input:
        variants=[f"results/bench/variants/{v.path}.parquet" for v in BENCH],
        families=[f"results/bench/families/{name}.parquet" for name in FAMILIES],
    output:
        "results/bench/efficiency.parquet",
    params:
        src=source_hash("bench"),
    conda:
        ENV_TORCH
    log:
        "logs/bench/gather.log",
    shell:
        "taskprune bench gather --output {output} {input.variants} --families {input.families} > {log} 2>&1"


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
