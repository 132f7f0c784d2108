#!/usr/bin/env bash
# One prepared check of the CUDA path and of its speed, for a GPU lent for minutes (issue 13):
# the `cuda` tests, timed slices of the paper preset with --jobs 1 and --jobs N, an estimate of
# the paper study's wall time made from them, and the two benchmarks.
#
#   bash benchmarks/gpu_check.sh                        # --device cuda, full sizes: ~6 min, 8 at most
#   bash benchmarks/gpu_check.sh --device cpu --small   # the same steps, shrunk: a dry run on a CPU
#   options: --jobs "4 8"  the --jobs values timed besides 1 (default 4)
#
# Everything goes into one folder, $OUT when set, else results/gpu_check, as at most 8 files
# and no subfolder, so that all of it comes back from a lent machine:
#   env.txt          nvidia-smi, device name and properties, versions, CPU count, git commit
#   steps.tsv        one line per step: name, status (pass, FAIL, TIMEOUT, SKIPPED), exit code, seconds
#   steps.log        every step's output
#   estimate.md      the paper study's wall time per --jobs value, and how it was computed
#   estimate.json    the same figures, and the measured epoch times they come from
#   epoch_time.json  benchmarks/epoch_time.py's results
#   runs.tar.gz      the slices' run folders (config.json, metrics.jsonl, log.txt, reports)
# A failing step is recorded and the next one runs; the exit code is 0 only when all passed.
set -u
cd "$(dirname "$0")/.."

DEVICE=cuda SMALL=0 JOBS=4
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=${2:?--device needs a value}; shift 2 ;;
    --small) SMALL=1; shift ;;
    --jobs) JOBS=${2:?--jobs needs a value}; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1  # step output reaches steps.log (and a remote caller) as it happens
OUT_DIR=${OUT:-results/gpu_check}
mkdir -p "$OUT_DIR" || exit 2
rm -f "$OUT_DIR"/{env.txt,steps.tsv,steps.log,estimate.md,estimate.json,epoch_time.json,runs.tar.gz}
LOG=$OUT_DIR/steps.log
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT  # checkpoints are large and measure nothing: only a summary is kept

# The slice: fc-tanh and conv-tanh of the paper preset on CIFAR-shaped synthetic data (50000
# training and 10000 test samples, as CIFAR-10), 2N seeds with --jobs N. The sweep trains the FC
# runs first, then the CNN ones, two rounds of N each: most epochs are timed while N runs of one
# net share the device, as in the long study, whatever the workers' staggered start. --small
# shrinks every size, and gives each step 4 times longer (a loaded 2-core CPU is slower than the
# GPU at full size).
if [ "$SMALL" = 1 ]; then
  SIZES=(--train-samples 512 --eval-samples 1000 --epochs 1)
  DFA_STEP=(--steps 5 --warmup 1)
  EPOCH_TIME=(--samples 512 --eval-samples 1000 --epochs 1 --warmup 0)
  SCALE=4 BUDGET=1800
else
  SIZES=(--epochs 2)
  DFA_STEP=()
  EPOCH_TIME=(--samples 50000 --epochs 2)
  SCALE=1 BUDGET=480  # the issue's 8 minutes on one GPU
fi
SLICE=("$PY" best_practices.py --preset paper --dataset synthetic --experiments fc-tanh conv-tanh
       "${SIZES[@]}" --device "$DEVICE" --quiet)
BOTTLENECK=("$PY" bottleneck.py --preset paper --dataset synthetic --sizes 8 --init std pai
            --seeds 1 "${SIZES[@]}" --device "$DEVICE" --quiet --out "$WORK/bottleneck")

FAILED=()
LAST_SECONDS=0
printf 'step\tstatus\texit\tseconds\n' >"$OUT_DIR/steps.tsv"

record() {  # NAME STATUS RC SECONDS: one line of steps.tsv
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$OUT_DIR/steps.tsv"
  [ "$2" = pass ] || FAILED+=("$1")
}

run_step() {  # NAME LIMIT_S COMMAND...: run one step under a time limit, log, time and record it
  local name=$1 limit=$(( $2 * SCALE )); shift 2
  local left=$(( BUDGET - SECONDS ))
  (( limit > left )) && limit=$left
  if (( limit < 10 )); then  # the whole check must end in time: later steps give way
    echo "=== $name: skipped, the ${BUDGET}s budget is spent" | tee -a "$LOG"
    record "$name" SKIPPED - 0
    LAST_SECONDS=0
    return
  fi
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local start=$EPOCHREALTIME
  timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]} status=pass
  LAST_SECONDS=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
  if (( rc == 124 || rc == 137 )); then status=TIMEOUT; elif (( rc != 0 )); then status=FAIL; fi
  echo "=== $name: $status (exit $rc, ${LAST_SECONDS}s)" | tee -a "$LOG"
  record "$name" "$status" "$rc" "$LAST_SECONDS"
}

describe_machine() {  # env.txt: what the figures were measured on
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(hostname)  cpus: $(nproc)"
  echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown), $(git status --porcelain 2>/dev/null | wc -l) changed files"
  echo "check: --device $DEVICE, small=$SMALL, jobs 1 $JOBS"
  if command -v nvidia-smi >/dev/null; then timeout 30 nvidia-smi; else echo "nvidia-smi: not found"; fi
  "$PY" - "$DEVICE" <<'EOF'
import platform, sys
import numpy, torch
from mltools.training.device import resolve_device
device = resolve_device(sys.argv[1])
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}), numpy {numpy.__version__}, "
      f"{torch.get_num_threads()} threads")
if device.type == "cuda":
    p = torch.cuda.get_device_properties(device)
    print(f"device {device}: {p.name}, {p.total_memory / 2**30:.1f} GiB, "
          f"{p.multi_processor_count} multiprocessors, compute capability {p.major}.{p.minor}")
else:
    print(f"device cpu: {platform.processor() or platform.machine()}")
EOF
}

echo "=== environment" | tee -a "$LOG"
describe_machine >"$OUT_DIR/env.txt" 2>&1
env_rc=$?
cat "$OUT_DIR/env.txt" | tee -a "$LOG"
record environment "$([ $env_rc = 0 ] && echo pass || echo FAIL)" "$env_rc" 0

run_step cuda-tests 120 "$PY" -m pytest -m cuda -rs -q -p no:cacheprovider
run_step dfa-step 60 "$PY" benchmarks/dfa_step.py --device "$DEVICE" "${DFA_STEP[@]}"

run_step slice-jobs1 120 "${SLICE[@]}" --seeds 2 --jobs 1 --out "$WORK/jobs1"
SLICES=(--slice 1 "$WORK/jobs1" "$LAST_SECONDS")
# The same sweep again finds every run finished: its wall time is a sweep's fixed cost.
run_step slice-jobs1-fixed-cost 60 "${SLICE[@]}" --seeds 2 --jobs 1 --out "$WORK/jobs1"
FIXED=$LAST_SECONDS
for n in $JOBS; do
  run_step "slice-jobs$n" 150 "${SLICE[@]}" --seeds $(( 2 * n )) --jobs "$n" --out "$WORK/jobs$n"
  SLICES+=(--slice "$n" "$WORK/jobs$n" "$LAST_SECONDS")
done
run_step bottleneck-jobs1 90 "${BOTTLENECK[@]}"
run_step estimate 30 "$PY" benchmarks/study_estimate.py --fixed "$FIXED" "${SLICES[@]}" \
  --bottleneck "$WORK/bottleneck" --markdown "$OUT_DIR/estimate.md" --json "$OUT_DIR/estimate.json"
tar -czf "$OUT_DIR/runs.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='*.png' . \
  || echo "warning: runs.tar.gz not written" | tee -a "$LOG"

# Last: the longest step, and the one the estimate does not need.
run_step epoch-time 240 "$PY" benchmarks/epoch_time.py --device "$DEVICE" "${EPOCH_TIME[@]}" \
  --json "$OUT_DIR/epoch_time.json"

echo "=== summary (${SECONDS}s in all; written to $OUT_DIR)"
column -t -s $'\t' "$OUT_DIR/steps.tsv" 2>/dev/null || cat "$OUT_DIR/steps.tsv"
if (( ${#FAILED[@]} )); then
  echo "not passed: ${FAILED[*]}"
  exit 1
fi
echo "all steps passed"
