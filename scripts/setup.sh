#!/usr/bin/env bash
# Create .venv (Python 3.11) with the pinned dependencies and rlprune installed editable.
# Idempotent: a second run only checks. torch is installed first and pinned, so nothing pulls a CUDA build;
# constraints.txt pins the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.rlprune-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # constraints.txt pins every package (direct and transitive), so CI and every setup get the same versions.
  .venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  touch "$stamp"
fi
