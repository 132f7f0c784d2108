#!/usr/bin/env bash
# Every method at its own best (docs/results-fair.md): the per-method grid on the val split,
# the choice, the fashion-fair study in test mode, publish. Needs the Debian package
# dataset-fashion-mnist. Every step resumes where it stopped: run it again after a crash.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
# One torch thread per run: CPU numbers depend on the thread count, and on a shared machine two
# threads per run wait on each other (measured: 9x slower per step than one thread under load).
export OMP_NUM_THREADS=1
GRID=results/fair-grid
FC="fc-tanh fc-bp fc-fa fc-sign fc-drtp fc-shallow"
CNN="conv-tanh conv-bp"
# 1. The base grid, seed 0, val mode: FC for 40 epochs (the stated maximum for FC) at five
#    rates, the CNN for 20 (its stated maximum) at four.
for lr in 0.003 0.01 0.03 0.1 0.3; do
  python best_practices.py --preset fashion --eval-split val --seeds 1 --lr "$lr" --epochs 40 \
    --experiments $FC --out "$GRID/lr$lr" --quiet
done
for lr in 0.01 0.03 0.1 0.3; do
  python best_practices.py --preset fashion --eval-split val --seeds 1 --lr "$lr" --epochs 20 \
    --experiments $CNN --out "$GRID/lr$lr" --quiet
done
# 1b. The methods dfatools gained since (brsf, frsf), on the same FC grid.
for lr in 0.003 0.01 0.03 0.1 0.3; do
  python best_practices.py --preset fashion --eval-split val --seeds 1 --lr "$lr" --epochs 40 \
    --experiments fc-brsf fc-frsf --out "$GRID/lr$lr" --quiet
done
# 2. Where a method's best rate is at an edge of its grid, the rate one half-decade beyond,
#    until none is (mltools/lr_grid.py --per-method --next lists "EXPERIMENT LR EPOCHS").
for round in 1 2 3 4 5 6; do
  next=$(python -m mltools.lr_grid "$GRID" --per-method --next)
  [ -z "$next" ] && break
  while read -r exp lr epochs; do
    python best_practices.py --preset fashion --eval-split val --seeds 1 --lr "$lr" \
      --epochs "$epochs" --experiments "$exp" --out "$GRID/lr$lr" --quiet </dev/null
  done <<<"$next"
done
if [ -n "$(python -m mltools.lr_grid "$GRID" --per-method --next)" ]; then
  echo "reproduce.sh: a rate is still at an edge of the grid after $round rounds" >&2
  exit 1
fi
# 3. Each method's rate and epochs, into the file the fashion-fair preset reads.
python -m mltools.lr_grid "$GRID" --per-method --choices mltools/fashion_fair.json
# 4. The study, test mode: the FC methods first (5 seeds), then the CNN (3 seeds).
python best_practices.py --preset fashion-fair --experiments $FC fc-brsf fc-frsf \
  --out results/fair --quiet
python best_practices.py --preset fashion-fair --out results/fair --quiet
# 5. Publish: the grid (records, per_method.md/.csv, each rate's report written again now that
#    all its runs are in) and the study, every run's config.json and metrics.jsonl.
for folder in "$GRID"/lr*; do
  python best_practices.py --report-only --out "$folder" >/dev/null
done
python -m mltools.lr_grid "$GRID" --per-method >/dev/null
python -m mltools.publish "$GRID" docs/results/fashion-mnist/fair/grid --no-figures
python -m mltools.publish results/fair docs/results/fashion-mnist/fair
