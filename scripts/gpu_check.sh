#!/usr/bin/env bash
# The device check, one script: run it on a machine with a CUDA GPU (or DEVICE=cpu to rehearse it).
#   1. the tests marked `gpu` (only the files that have them are collected: the device image need not
#      have the notebook packages the other test files import);
#   2. an exact-resume check on the device: a run stopped by SIGTERM and resumed equals an unbroken one;
#   3. the step-time benchmark of every objective relative to flow matching on the device;
#   4. each preset in PRESETS (default: every checkerboard / eight-Gaussian preset) trained for STEPS
#      steps on the device, in float32 and with bf16 autocast, through the normal command line.
#      Measured on an H200: about 16 s a run (process start, CUDA set-up, diagnostics), so the
#      default 28 runs take about 8 minutes; narrow PRESETS when device time is short.
# The summary grows row by row (copied to $OUT/summary.txt after each row when $OUT is set), so a
# run stopped by a time limit still reports what it finished.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-400}
WORK=$(mktemp -d)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
summary=$WORK/summary.txt
log=$WORK/log.txt
: >"$summary"
save() { if [ -n "${OUT:-}" ]; then cp "$summary" "$OUT/summary.txt"; cp "$log" "$OUT/log.txt" 2>/dev/null; fi; }
row() { printf '%-34s %s\n' "$1" "$2" | tee -a "$summary"; save; }

$PY - <<'PY' 2>&1 | tee -a "$summary"
import torch
print("torch", torch.__version__, "| cuda", torch.version.cuda,
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")
PY

if [ "$DEVICE" = cuda ]; then
  $PY -m pytest -q -p no:cacheprovider -m gpu $(grep -l "mark.gpu" tests/test_*.py) >>"$log" 2>&1
  row "pytest -m gpu" "rc=$? $(grep -E '[0-9]+ (passed|failed)' "$log" | tail -1)"
fi

# exact resume on the device: STEPS steps in one go vs STEPS/2 + resume to STEPS
half=$((STEPS / 2))
$PY -m workbench.experiments checker-lsd --device "$DEVICE" --steps "$STEPS" --checkpoint_every "$half" \
    --progress false --run-dir "$WORK/resume-a" >>"$log" 2>&1
$PY -m workbench.experiments checker-lsd --device "$DEVICE" --steps "$STEPS" --checkpoint_every "$half" \
    --progress false --run-dir "$WORK/resume-b" >>"$log" 2>&1 &
pid=$!
# stop run b once its first checkpoint exists, then resume it
for _ in $(seq 600); do ls "$WORK/resume-b/checkpoints/"step-*.pt >/dev/null 2>&1 && break; sleep 0.1; done
kill -TERM $pid 2>/dev/null; wait $pid
$PY -m workbench.experiments --resume "$WORK/resume-b" >>"$log" 2>&1
$PY - "$WORK/resume-a" "$WORK/resume-b" <<'PY' 2>&1 | tee -a "$summary"
import sys
from workbench.training.checkpoint import load_latest
a, b = (load_latest(d) for d in sys.argv[1:3])
diff = max(float((a["model"][k].float() - b["model"][k].float()).abs().max()) for k in a["model"])
print(f"{'resume after SIGTERM':<34} steps {a['step']} / {b['step']}, max |weight difference| {diff:.3g}")
PY
save

$PY -m workbench.experiments bench --device "$DEVICE" --batch 4096 --reps 7 >>"$WORK/bench.txt" 2>&1
row "bench (batch 4096, $DEVICE)" "rc=$?"
tee -a "$summary" <"$WORK/bench.txt"; save

presets=${PRESETS:-$($PY -c "from workbench.experiments import get_presets; print(' '.join(n for n in get_presets() if n.startswith(('checker-', 'gmm8-'))))")}
for p in $presets; do
  for bf16 in false true; do
    start=$(date +%s.%N)
    $PY -m workbench.experiments "$p" --device "$DEVICE" --steps "$STEPS" --bf16 "$bf16" --progress false \
        --run-dir "$WORK/runs/$p-bf16-$bf16" >>"$log" 2>&1
    rc=$?
    secs=$($PY -c "import time; print(f'{time.time() - $start:.1f}')")
    last=$($PY - "$WORK/runs/$p-bf16-$bf16" <<'PY'
import sys
from workbench.rundir import RunDir, read_jsonl
rows = [r for r in read_jsonl(RunDir(sys.argv[1]).metrics) if "loss" in r]
print(f"loss {rows[-1]['loss']:.4g} at step {rows[-1]['step']}" if rows else "no loss logged")
PY
)
    row "$p bf16=$bf16" "rc=$rc ${secs}s $last"
  done
done

save

echo "== summary"; cat "$summary"
