#!/usr/bin/env bash
# DFA on models that are not a chain of layers (docs/any-model.md): a small ResNet (points at its
# BasicBlocks) and a Transformer over image rows (points at its encoder layers), by dfa, bp and
# fa, on Fashion-MNIST (Debian package dataset-fashion-mnist). Every step resumes where it
# stopped: run it again after a crash.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
# One torch thread per run: CPU numbers depend on the thread count (config.json records it).
export OMP_NUM_THREADS=1
GRID=results/any-grid
RESNET="resnet-dfa resnet-bp resnet-fa"
TRANSFORMER="transformer-dfa transformer-bp transformer-fa"
# 1. The learning-rate grid, seed 0, val split, the fashion preset's data (10 epochs): SGD for
#    the ResNet, Adam for the Transformer (docs/any-model.md says why), half-decade steps.
for lr in 0.01 0.03 0.1; do
  python best_practices.py --preset fashion --eval-split val --seeds 1 --lr "$lr" \
    --experiments $RESNET --out "$GRID/lr$lr" --quiet
done
for lr in 0.0003 0.001 0.003; do
  python best_practices.py --preset fashion --eval-split val --seeds 1 --lr "$lr" \
    --experiments $TRANSFORMER --out "$GRID/lr$lr" --quiet
done
# 2. Where a method's best rate is at an edge of its grid, the rate one half-decade beyond (for
#    this grid: transformer-dfa at 0.0001), until none is.
for round in 1 2 3; do
  python -m mltools.lr_grid "$GRID" --per-method --rule final --next | while read -r exp lr epochs; do
    python best_practices.py --preset fashion --eval-split val --seeds 1 --lr "$lr" \
      --epochs "$epochs" --experiments "$exp" --out "$GRID/lr$lr" --quiet
  done
done
# 3. The choice: mltools/studies/fashion_any.json (the fashion-any preset reads it).
python -m mltools.lr_grid "$GRID" --per-method --rule final --choices mltools/studies/fashion_any.json
# 4. The study: 3 seeds, test mode, each experiment at its rate, 10 epochs for every one.
python best_practices.py --preset fashion-any --experiments $RESNET $TRANSFORMER --epochs 10 \
  --out results/any-model --quiet
# 5. Publish: the report, figures, and every run's config.json and metrics.jsonl.
python -m mltools.publish "$GRID" docs/results/fashion-mnist/any-model/lr-grid --no-figures
python -m mltools.publish results/any-model docs/results/fashion-mnist/any-model
# 6. transformer-fa again with dfatools 0.3.0 or later, whose FA reaches the attention's
#    projections too (the runs above predate it: their backward through the attention was BP's).
#    Same preset, rate and epochs (docs/any-model.md).
python best_practices.py --preset fashion-any --experiments transformer-fa --epochs 10 \
  --out results/any-model-attention --quiet
python -m mltools.publish results/any-model-attention \
  docs/results/fashion-mnist/any-model/attention-fa
