#!/usr/bin/env bash
# Set everything up from nothing, lint, and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check rlprune envs policies tests benchmarks tune_configs
.venv/bin/python -m pytest -q "$@"
