#!/usr/bin/env bash
# The row Transformer on Fashion-MNIST with pre- and post-norm blocks (issue 32,
# docs/results-field.md): DFA (signal shared over positions), BP, FA and shallow (untrained
# blocks), 3 seeds on the test set, AdamW with warm-up, cosine and clipping (the field recipe),
# 20 epochs, each experiment at its own rate by the steady rule on the val split (mean val top-1
# over the last 3 epochs of seeds 0 and 1, a half-decade grid extended until the choice is not at
# an edge; python -m mltools.lr_grid --per-method).
#
#   pre   the field study's choices (mltools/studies/fashion_any_field.json, its grid published in
#         docs/results/fashion-mnist/field/any-lr-grid), trained again: same numbers, and the
#         residual stream on record
#   post  a grid of its own, then the study at its choices
#
# Every step resumes where it stopped: run it again after a crash. Parts: bash reproduce.sh [PARTS].
set -euo pipefail
cd "$(dirname "$0")/../../../.."
export OMP_NUM_THREADS=1  # one torch thread per run, two runs at a time
WORK=results/transformer-layouts
PUBLISHED=docs/results/fashion-mnist/transformer-layouts
EXPERIMENTS="transformer-dfa-shared transformer-bp transformer-fa transformer-shallow"
PARTS="${*:-pre post publish}"
step() { echo "== $* $(date -u +%FT%TZ)"; }
wanted() { [[ " $PARTS " == *" $1 "* ]]; }
grid_run() {  # grid_run LR EPOCHS EXPERIMENT...: seeds 0 and 1, val split, post-norm blocks
  local lr=$1 epochs=$2
  shift 2
  python best_practices.py --preset fashion-field --eval-split val --seeds 2 --lr "$lr" \
    --epochs "$epochs" --norm post --experiments "$@" --out "$WORK/post-grid/lr$lr" \
    --quiet --jobs 2 </dev/null
}
if wanted pre; then
  step "pre-norm study"
  # shellcheck disable=SC2086
  python best_practices.py --preset fashion-any-field --norm pre --experiments $EXPERIMENTS \
    --out "$WORK/pre" --quiet --jobs 2 </dev/null
fi
if wanted post; then
  step "post-norm grid"
  for lr in 0.0003 0.001 0.003; do
    # shellcheck disable=SC2086
    grid_run "$lr" 20 $EXPERIMENTS
  done
  for round in 1 2 3 4 5 6 7; do  # 6 rounds of runs; the 7th only checks the last one
    next=$(python -m mltools.lr_grid "$WORK/post-grid" --per-method --next)
    [ -z "$next" ] && break
    if [ "$round" = 7 ]; then
      echo "reproduce.sh: a rate is still at an edge of the grid after 6 rounds" >&2
      exit 1
    fi
    while read -r experiment lr epochs; do grid_run "$lr" "$epochs" "$experiment"; done <<<"$next"
  done
  python -m mltools.lr_grid "$WORK/post-grid" --per-method --choices "$WORK/choices-post.json" \
    >/dev/null
  step "post-norm study"
  # shellcheck disable=SC2086
  python best_practices.py --preset fashion-any-field --choices "$WORK/choices-post.json" \
    --norm post --experiments $EXPERIMENTS --out "$WORK/post" --quiet --jobs 2 </dev/null
fi
if wanted publish; then
  step "publish"
  for folder in "$WORK"/post-grid/lr*; do
    python best_practices.py --report-only --out "$folder" >/dev/null
  done
  python -m mltools.lr_grid "$WORK/post-grid" --per-method >/dev/null
  python -m mltools.publish "$WORK/post-grid" "$PUBLISHED/post-grid" --no-figures
  cp "$WORK/choices-post.json" "$PUBLISHED/choices-post.json"
  for layout in pre post; do
    python best_practices.py --report-only --preset fashion-any-field --out "$WORK/$layout" \
      >/dev/null
    python -m mltools.publish "$WORK/$layout" "$PUBLISHED/$layout"
  done
fi
step "done"
