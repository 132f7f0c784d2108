#!/usr/bin/env bash
# The quick preset's learning rate: the rule of mltools/lr_grid.py on the val split of digits.
set -euo pipefail
cd "$(dirname "$0")/../../.."
for lr in 0.003 0.01 0.03 0.1 0.3; do
  python best_practices.py --eval-split val --experiments fc-tanh fc-bp conv-tanh conv-bp \
    --seeds 1 --lr "$lr" --out "results/lr-grid/digits/lr$lr" --quiet
done
python -m mltools.lr_grid results/lr-grid/digits
python -m mltools.publish results/lr-grid/digits docs/results/digits/lr-grid --no-figures
