# Findings (did each claim of the paper reproduce?), figures, tables and the HTML report's assets.

FIGURE_NAMES = []  # filled in below from the figures module's list
try:
    from taskprune.report.figures import FIGURES as _FIGURES  # name -> spec (its caption file)

    FIGURE_NAMES = list(_FIGURES)
except ImportError:  # the figures module is optional while developing
    _FIGURES = {}

FIGURE_OUTPUTS = [f"results/figures/{n}.png" for n in FIGURE_NAMES] + [
    "results/tables/summary.csv",
    "results/tables/summary.md",
    "results/tables/summary.html",
]


rule findings:
    input:
        per_item="results/items.parquet",
        efficiency="results/bench/efficiency.parquet",
    output:
        json="results/findings.json",
        md="results/findings.md",
        html=report("results/findings.html", caption="../report/findings.rst", category="1. Findings"),
    params:
        src=source_hash("findings"),
    conda:
        ENV_ANALYSIS
    log:
        "logs/findings.log",
    shell:
        "taskprune findings --items {input.per_item} --efficiency {input.efficiency} "
        "--out {output.json} --markdown {output.md} --html {output.html} > {log} 2>&1"


rule figures:
    input:
        metrics="results/metrics.parquet",
        efficiency="results/bench/efficiency.parquet",
        findings="results/findings.json",
        scores=_score_tables(),
        pruned=_manifests(),
        overlap=OVERLAP_OUTPUTS,
    output:
        [
            report(
                f"results/figures/{n}.png",
                caption=f"../report/{_FIGURES[n].caption}",
                category="2. Figures",
            )
            for n in FIGURE_NAMES
        ],
        [f"results/figures/{n}.svg" for n in FIGURE_NAMES],
        csv="results/tables/summary.csv",
        md="results/tables/summary.md",
        html=report("results/tables/summary.html", caption="../report/summary_table.rst", category="3. Tables"),
    params:
        src=source_hash("figures"),
    conda:
        ENV_ANALYSIS
    log:
        "logs/figures.log",
    shell:
        "taskprune figures --metrics {input.metrics} --efficiency {input.efficiency} "
        "--findings {input.findings} --scores {input.scores} --manifests {input.pruned} --overlap {input.overlap} "
        "--out-dir results/figures --tables-dir results/tables > {log} 2>&1"
