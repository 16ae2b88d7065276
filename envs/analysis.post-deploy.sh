#!/usr/bin/env bash
# Snakemake runs this once inside the freshly built environment, from the workflow's working directory:
# install this repository's package without dependencies (the environment file pins them) and editable,
# so jobs run the code in src/ (the rules' source hashes in params: rerun exactly what a change affects).
set -euo pipefail
if [[ ! -f pyproject.toml || ! -d src/taskprune ]]; then
  echo "post-deploy: run Snakemake from the taskprune repository root (no pyproject.toml in $PWD)" >&2
  exit 1
fi
python -m pip install --quiet --no-deps --no-build-isolation --editable .
