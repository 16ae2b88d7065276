"""``taskprune figures``: render the figures and summary tables of a run from its Parquet results alone.

Reads finished tables only (never a model), so ``snakemake --forcerun figures`` re-renders in seconds. The
figures and their registry are in :mod:`taskprune.report.figures`, the inputs in
:mod:`taskprune.report.results`, the tables in :mod:`taskprune.report.tables`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from taskprune.report import figures as report_figures
from taskprune.report.results import load_results
from taskprune.report.tables import write_tables

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", required=True, help="results/metrics.parquet")
    parser.add_argument("--efficiency", help="results/bench/efficiency.parquet (efficiency figure and columns)")
    parser.add_argument("--findings", help="results/findings.json: each figure's subtitle states the verdict")
    parser.add_argument("--scores", nargs="*", default=[], metavar="PARQUET",
                        help="score tables results/scores/{model}/{score}.parquet (score distributions)")  # fmt: skip
    parser.add_argument("--pruned-root", help="directory holding {model}/{method}/{level}/{seed}/manifest.parquet")
    parser.add_argument("--manifests", nargs="*", default=[], metavar="PATH",
                        help="pruning manifests (files or checkpoint directories), in addition to --pruned-root")  # fmt: skip
    parser.add_argument("--overlap", nargs="?", default=None, help="results/tables/neuron_overlap.parquet (neuron_overlap)")
    parser.add_argument("--out-dir", required=True, help="figure directory (results/figures)")
    parser.add_argument("--tables-dir", required=True, help="table directory (results/tables)")
    parser.add_argument("--only", nargs="*", choices=list(report_figures.FIGURES), help="render only these figures")


def run(args: argparse.Namespace) -> int:
    res = load_results(args.metrics, args.efficiency, args.scores, args.pruned_root, args.manifests, args.findings,
                       args.overlap)  # fmt: skip
    paths = report_figures.render_all(res, Path(args.out_dir), args.only)
    paths += write_tables(res, Path(args.tables_dir))
    log.info("wrote %d files: %s", len(paths), ", ".join(str(p) for p in paths))
    return 0
