#!/usr/bin/env bash
# Set everything up from nothing and run the main job on the embedded default task (digits).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-runs/demo}
.venv/bin/rlprune groups --task digits
.venv/bin/rlprune prune --task digits --uniform 0.3 --finetune-steps 100 --out "$out"
