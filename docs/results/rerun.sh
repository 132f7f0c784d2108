#!/usr/bin/env bash
# One published run of every study, trained again from its config.json alone, every number of
# its metrics.jsonl compared with the published one (python -m mltools.rerun; strict: any
# difference is reported). The DFA run with the shortest recorded time in each study.
#   bash docs/results/rerun.sh [--own-commit] [OUT]    # OUT: default results/rerun-check
# About 15 minutes on 2 cores. Runs made on another CPU, or with another thread count, round
# differently, and unstable runs carry that far. --own-commit also trains each run with the
# code of the commit that made it (docs/results/rerun_at_commit.py, a git worktree per commit;
# 27 minutes for both on a 2-core AMD EPYC) and compares it with today's: the same numbers there mean that any
# difference from the published ones comes from the machine, not from the code.
set -uo pipefail
cd "$(dirname "$0")/../.."
own=0
out=results/rerun-check
while [ $# -gt 0 ]; do
  case "$1" in
    --own-commit) own=1 ;;
    -*) echo "rerun.sh: unknown option $1 (see the head of this file)" >&2; exit 2 ;;
    *) out=$1 ;;
  esac
  shift
done
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
  if [ $own = 1 ]; then
    again=$(ls -d "$out/$i"/*/ | head -1)
    python docs/results/rerun_at_commit.py "$run" "$again" --work "$out/at-commit" || own_failed=$((${own_failed:-0} + 1))
  fi
done
echo "runs that differ from the published numbers: $failed of ${#runs[@]}"
[ $own = 1 ] && echo "runs where today's code and the run's own commit differ: ${own_failed:-0} of ${#runs[@]}"
exit 0
