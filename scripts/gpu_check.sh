#!/usr/bin/env bash
# The device check, one script: run it on a machine with a CUDA GPU (or DEVICE=cpu to rehearse it).
#   1. the tests marked `gpu` (skipped elsewhere);
#   2. every checkerboard / eight-Gaussian preset trained for STEPS steps on the device, in float32 and
#      with bf16 autocast, through the normal command line (checkpoints, state checks, diagnostics);
#   3. an exact-resume check on the device: 2 x STEPS/2 steps with a resume equals STEPS steps;
#   4. the step-time benchmark of every objective relative to flow matching on the device.
# Prints one summary table at the end; with $OUT set, the logs and the summary are copied there.
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
row() { printf '%-34s %s\n' "$1" "$2" | tee -a "$summary"; }

$PY - <<'PY' 2>&1 | tee -a "$summary"
import torch
print("torch", torch.__version__, "| cuda", torch.version.cuda,
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")
PY

if [ "$DEVICE" = cuda ]; then
  $PY -m pytest -q -p no:cacheprovider -m gpu tests >>"$log" 2>&1
  row "pytest -m gpu" "rc=$? $(grep -E '[0-9]+ (passed|failed)' "$log" | tail -1)"
fi

presets=$($PY -c "from workbench.experiments import get_presets; print(' '.join(n for n in get_presets() if n.startswith(('checker-', 'gmm8-'))))")
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

$PY -m workbench.experiments bench --device "$DEVICE" --batch 4096 --reps 7 >>"$WORK/bench.txt" 2>&1
row "bench (batch 4096, $DEVICE)" "rc=$?"
cat "$WORK/bench.txt" | tee -a "$summary"

if [ -n "${OUT:-}" ]; then cp "$summary" "$log" "$WORK/bench.txt" "$OUT"/ 2>/dev/null; fi
echo "== summary"; cat "$summary"
