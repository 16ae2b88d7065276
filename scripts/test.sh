#!/usr/bin/env bash
# Quick start, command 2: set up what the tests need and run them (unit tests, the bad-input matrix,
# and the whole DAG on config/smoke.yaml end to end). With CI=true it also brings up a single-node
# SLURM cluster and runs the smoke config through profiles/slurm.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
ruff check src tests
# Snakemake's linter (exit 1 on any lint; README says why none is left deliberately)
snakemake --lint
# In CI (as root) the SLURM test brings up a single-node cluster (.ci/slurm-up.sh) and tears it down.
if [ "${CI:-}" = "true" ] && [ "$(id -u)" = "0" ]; then export TASKPRUNE_SLURM="${TASKPRUNE_SLURM:-1}"; fi
set +e
python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "[test] pytest collected no tests: failing"; exit 1; fi
exit "$rc"
