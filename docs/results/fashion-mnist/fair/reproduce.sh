#!/usr/bin/env bash
# Every method at its own best (docs/results-fair.md): the per-method grid on the val split,
# the choice, the fashion-fair study in test mode, publish; the FC part first, then the CNN.
# Needs the Debian package dataset-fashion-mnist. Every step resumes where it stopped: run it
# again after a crash.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
# One torch thread per run (two runs at a time, --jobs 2): CPU numbers depend on the thread
# count (config.json records it), and on a shared machine two threads per run wait on each
# other (measured: 9x slower per step than one thread under load).
export OMP_NUM_THREADS=1
GRID=results/fair-grid
FC="fc-tanh fc-bp fc-fa fc-sign fc-drtp fc-shallow"
CNN="conv-tanh conv-bp"
step() { echo "== $* $(date -u +%FT%TZ)"; }
# Where the best rate of a method (experiments named $1*) is at an edge of its grid, the rate
# one half-decade beyond, until none is (lr_grid --per-method --next: "EXPERIMENT LR EPOCHS").
extend() {
  local round next
  for round in 1 2 3 4 5 6; do
    next=$(python -m mltools.lr_grid "$GRID" --per-method --rule final --next | { grep "^$1" || true; })
    [ -z "$next" ] && return 0
    while read -r exp lr epochs; do
      python best_practices.py --preset fashion --eval-split val --seeds 1 --lr "$lr" \
        --epochs "$epochs" --experiments "$exp" --out "$GRID/lr$lr" --quiet </dev/null
    done <<<"$next"
  done
  echo "reproduce.sh: a rate is still at an edge of the grid after $round rounds" >&2
  return 1
}
# 1. FC grid, seed 0, val mode, 40 epochs (the stated maximum for FC), five rates: the methods
#    of the first grid, then those dfatools gained since (brsf, frsf); its edges.
step "1 FC grid"
for lr in 0.003 0.01 0.03 0.1 0.3; do
  python best_practices.py --preset fashion --eval-split val --seeds 1 --lr "$lr" --epochs 40 \
    --experiments $FC --out "$GRID/lr$lr" --quiet --jobs 2
done
for lr in 0.003 0.01 0.03 0.1 0.3; do
  python best_practices.py --preset fashion --eval-split val --seeds 1 --lr "$lr" --epochs 40 \
    --experiments fc-brsf fc-frsf --out "$GRID/lr$lr" --quiet --jobs 2
done
step "1b FC edges"
extend fc-
# 2. Each method's rate and epochs, into the file the fashion-fair preset reads; the FC study,
#    test mode, 5 seeds.
step "2 FC choice and study"
python -m mltools.lr_grid "$GRID" --per-method --rule final --choices mltools/studies/fashion_fair.json
python best_practices.py --preset fashion-fair --experiments $FC fc-brsf fc-frsf \
  --out results/fair --quiet --jobs 2
# 3. CNN grid, 20 epochs (its stated maximum), four rates; its edges; the choice again (the FC
#    choices stay as they were) and the CNN study, 3 seeds.
step "3 CNN grid"
for lr in 0.01 0.03 0.1 0.3; do
  python best_practices.py --preset fashion --eval-split val --seeds 1 --lr "$lr" --epochs 20 \
    --experiments $CNN --out "$GRID/lr$lr" --quiet --jobs 2
done
step "3b CNN edges"
extend conv-
step "4 CNN choice and study"
python -m mltools.lr_grid "$GRID" --per-method --rule final --choices mltools/studies/fashion_fair.json
python best_practices.py --preset fashion-fair --out results/fair --quiet --jobs 2
# 5. Publish: the grid (records, per_method.md/.csv, each rate's report written again now that
#    all its runs are in) and the study, every run's config.json and metrics.jsonl.
step "5 publish"
for folder in "$GRID"/lr*; do
  python best_practices.py --report-only --out "$folder" >/dev/null
done
python -m mltools.lr_grid "$GRID" --per-method --rule final >/dev/null
python -m mltools.publish "$GRID" docs/results/fashion-mnist/fair/lr-grid --no-figures
python -m mltools.publish results/fair docs/results/fashion-mnist/fair/rule-epochs
# 6. The same study with every method trained to its architecture's stated maximum (40 epochs
#    FC, 20 CNN), each at its chosen rate: the rule's early-stopping epochs left most runs of
#    step 2 still rising (docs/results-fair.md); the rates were chosen on 40- and 20-epoch runs.
step "6 study at the maximum epochs"
python best_practices.py --preset fashion-fair --experiments $FC fc-brsf fc-frsf --epochs 40 \
  --out results/fair-max --quiet --jobs 2
python best_practices.py --preset fashion-fair --experiments $CNN --epochs 20 \
  --out results/fair-max --quiet --jobs 2
python -m mltools.publish results/fair-max docs/results/fashion-mnist/fair/max-epochs
step "done"
