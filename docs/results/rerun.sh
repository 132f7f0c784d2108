#!/usr/bin/env bash
# One published run of every study, trained again from its config.json alone, every number of
# its metrics.jsonl compared with the published one (python -m mltools.rerun; strict: any
# difference is reported). The DFA run with the shortest recorded time in each study.
#   bash docs/results/rerun.sh [OUT]    # OUT: default results/rerun-check
# About 15 minutes on 2 cores. Runs made on another CPU may differ in the last digits.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${1:-results/rerun-check}
runs=(
  digits/lr-grid/lr0.01/best_practices/fc-tanh/seed0
  fashion-mnist/best_practices/fc-pai/seed0
  fashion-mnist/lr-grid/lr0.1/best_practices/fc-tanh/seed0
  fashion-mnist/bottleneck/mask-pai-b1/seed1
  fashion-mnist/fair/rule-epochs/best_practices/fc-tanh/seed4
  fashion-mnist/field/lr-grid/lr0.003/best_practices/fc-tanh/seed1
  fashion-mnist/any-model/lr-grid/lr0.003/best_practices/transformer-dfa/seed0
  fashion-mnist/transformer-layouts/post/best_practices/transformer-dfa-shared/seed2
  shakespeare/language_model/dfa/seed0
  shakespeare-layouts/final/post/language_model/dfa/seed2
)
failed=0
for i in "${!runs[@]}"; do
  run=docs/results/${runs[$i]}
  echo "== $run (cpu of the published run: $(python -c 'import json,sys; print(json.load(open(sys.argv[1])).get("cpu") or "not recorded")' "$run/config.json"))"
  python -m mltools.rerun "$run" --out "$out/$i" || failed=$((failed + 1))
done
echo "runs that differ: $failed of ${#runs[@]}"
