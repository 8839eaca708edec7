#!/usr/bin/env bash
# Set everything up from nothing and run the main job on the embedded default task (digits):
# real samples -> SPN -> online RL search at 50% MACs -> baselines at the same budget -> prune the winner.
# Every step resumes: rerun the script after an interruption and finished work is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-runs/demo}
rl=.venv/bin/rlprune
mkdir -p "$out"
$rl groups --task digits
$rl sample --task digits --n 128 --workers 2 --out "$out/samples"
[ -f "$out/spn.pt" ] || $rl spn train --samples "$out/samples" --out "$out/spn.pt"
$rl search --task digits --spn "$out/spn.pt" --target-macs 0.5 --iters 15 --out "$out/search" \
  --json > "$out/search.json"
$rl baselines --task digits --target-macs 0.5 --spn "$out/search/world_model/world_model.pt" | tee "$out/baselines.txt"
ratios=$(.venv/bin/python -c "import json,sys; print(','.join(str(r) for r in json.load(open(sys.argv[1]))['ratios']))" \
  "$out/search.json")
echo "RL search result, pruned for real and fine-tuned 100 steps (the table above is before any fine-tuning):"
$rl prune --task digits --ratios "$ratios" --finetune-steps 100 --out "$out/pruned"
