#!/usr/bin/env bash
# Create .venv (Python 3.11) with torch==2.13.0 (CPU wheel) and taskprune installed in editable mode.
# Idempotent: does nothing when .venv is already up to date with pyproject.toml.
# Usage: source scripts/setup.sh   (or bash scripts/setup.sh)
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_py="${PYTHON:-$(command -v python3.11 || command -v python3)}"
_stamp="$_root/.venv/.taskprune-installed"
if [ ! -x "$_root/.venv/bin/python" ]; then
  echo "[setup] creating .venv with $_py"
  "$_py" -m venv "$_root/.venv"
fi
if [ ! -f "$_stamp" ] || [ "$_root/pyproject.toml" -nt "$_stamp" ]; then
  echo "[setup] installing torch==2.13.0 and taskprune (a few minutes on a fresh machine)"
  "$_root/.venv/bin/python" -m pip install -q --upgrade pip
  # torch first and pinned: any other spec would pull a multi-GB CUDA build.
  "$_root/.venv/bin/python" -m pip install -q "torch==2.13.0"
  "$_root/.venv/bin/python" -m pip install -q -e "$_root[test]"
  touch "$_stamp"
fi
export PATH="$_root/.venv/bin:$PATH"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
