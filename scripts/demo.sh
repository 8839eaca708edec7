#!/usr/bin/env bash
# Set everything up from nothing and run the main job on the embedded default task (digits):
# `rlprune run` = base model -> real samples -> SPN -> Tune sweep of online RL searches -> Tune validation
# trials (RL and every baseline pruned for real, fine-tuned the same) -> report. About 5-6 minutes on 2 cores.
# Rerun after an interruption: finished stages are reused and killed ones resume.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-runs/demo}
.venv/bin/rlprune run --task digits --target-macs 0.5 --out "$out"
