#!/usr/bin/env bash
# Quick start, command 1: set everything up and run the whole pipeline on the embedded default,
# ending with the figures, results/findings.json and the HTML report results/report.html.
# Extra arguments go to snakemake (e.g. --configfile config/smoke.yaml, --forceall, -n).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cores="${CORES:-$(nproc)}"
start=$(date +%s)
snakemake --cores "$cores" "$@"
snakemake --cores "$cores" --report results/report.html "$@"
echo "[run] done in $(( $(date +%s) - start )) s: results/report.html, results/findings.json, results/figures/"
