#!/usr/bin/env bash
# One command for the day a GPU is lent (a few minutes on one GPU): the training and predict benchmarks with
# --device cuda --amp, a single-process CUDA training smoke run, and a 2-process DDP smoke run (NCCL on 2+ GPUs;
# with one GPU NCCL cannot run, since two NCCL ranks may not share a GPU and pemma uses NCCL whenever the device is
# CUDA, so the same torchrun command runs on the CPU with gloo instead and the summary says so).
#
# Usage (from the repository root):
#   benchmarks/gpu_check.sh [OUT_DIR]            # default OUT_DIR: gpu_check_<date>
# Environment:
#   PYTHON=path/to/python   (default: .venv/bin/python if present, else python)
#   DEVICE=cpu              CPU dry run of the same commands (tiny sizes, few repeats; checks the script itself)
#   STEP_TIMEOUT=seconds    per step (default 900)
#   BUDGET=seconds          for the whole script (default 3600): a step gets min(STEP_TIMEOUT, what is left), and
#                           is skipped (recorded as rc 125) once under 15 s are left, so a leased machine's time
#                           limit still leaves the finished steps' files and the summary
# Writes under OUT_DIR: <step>.json (benchmark results), <step>.log (output), steps.jsonl (exit code and seconds
# of every step), env.txt, summary.json. A failing step is recorded and the next one still runs; the script exits
# non-zero when any step failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-gpu_check_$(date +%Y%m%d_%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY="python"; fi
DEVICE="${DEVICE:-cuda}"
STEP_TIMEOUT="${STEP_TIMEOUT:-900}"
END=$((SECONDS + ${BUDGET:-3600}))
BENCH="$ROOT/benchmarks"
export PYTHONUNBUFFERED=1
FAILED=0

log() { echo "$(date +%H:%M:%S) gpu_check: $*" | tee -a "$OUT/gpu_check.log"; }

# step NAME CMD...: run with a timeout, output to NAME.log, exit code and seconds to steps.jsonl
step() {
  local name="$1"; shift
  local left=$((END - SECONDS))
  if [[ $left -lt 15 ]]; then
    echo "{\"step\": \"$name\", \"rc\": 125, \"seconds\": 0}" >> "$OUT/steps.jsonl"
    FAILED=1; log "step $name SKIPPED: budget spent"; return 0
  fi
  local limit=$(( left < STEP_TIMEOUT ? left : STEP_TIMEOUT ))
  log "step $name (limit ${limit} s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$((SECONDS - t0))
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $dt}" >> "$OUT/steps.jsonl"
  if [[ $rc -ne 0 ]]; then
    FAILED=1
    log "step $name FAILED (exit $rc after ${dt} s); last lines of $OUT/$name.log:"
    tail -n 15 "$OUT/$name.log" | tee -a "$OUT/gpu_check.log"
  else
    log "step $name ok (${dt} s)"
  fi
  return 0
}

: > "$OUT/steps.jsonl"
GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null)"
GPUS="${GPUS:-0}"
{
  echo "date: $(date -u +%FT%TZ)"; echo "device: $DEVICE"; echo "gpus: $GPUS"; echo "python: $PY"
  "$PY" -c 'import torch, monai; print("torch", torch.__version__, "cuda", torch.version.cuda, "monai", monai.__version__)'
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  git -C "$ROOT" rev-parse HEAD 2>/dev/null
} > "$OUT/env.txt" 2>&1
log "output in $OUT; device $DEVICE; $GPUS CUDA device(s)"

if [[ "$DEVICE" == "cuda" ]]; then
  if [[ "$GPUS" -lt 1 ]]; then
    log "no CUDA device visible to $PY (torch.cuda.is_available() is False); use DEVICE=cpu for a dry run"
    exit 2
  fi
  AMP=(--amp); THREADS=4
  BACKBONES=(--presets paper --repeats 10)
  ADAPT=(--presets paper --backbones unetr swin_unetr --repeats 10)
  PREDICT=(--preset paper --slices 100 200 300)
  TRAIN_STEPS=20
else
  AMP=(); THREADS=1  # CPU dry run: the same commands at tiny sizes (bf16 autocast on a CPU is slow and not the point)
  BACKBONES=(--presets tiny --backbones unetr --repeats 1)
  ADAPT=(--presets tiny --backbones unetr --methods lora --repeats 1 --pair-rounds 1)
  PREDICT=(--preset tiny --inplane 128 --slices 8 16 32 --pet-shape 48 48 48)
  TRAIN_STEPS=2
fi

# 1. the CUDA paths of the CLI on a small phantom, one process: CT training, PEMMA adaptation (the authors' recipe,
#    shared CT route), predict with the adapted model
DATA="$OUT/phantom"
step synth "$PY" -m pemma.cli.main synth "$DATA" --cases-per-centre 2 --centres CHUM,MDA --shape 64 64 48
SMALL=(--preset tiny --spacing 4 4 4 --roi 32 32 32 --batch-size 1 --val-every "$TRAIN_STEPS"
       --max-steps "$TRAIN_STEPS" --val-fraction 0.25 --seed 0)
TRAIN=(train --data "$DATA" --modalities ct,pet "${SMALL[@]}")
step train_1proc "$PY" -m pemma.cli.main "${TRAIN[@]}" --device "$DEVICE" "${AMP[@]}" --out "$OUT/run_1proc"
step train_ct "$PY" -m pemma.cli.main train --data "$DATA" --centres CHUM --modalities ct "${SMALL[@]}" \
  --device "$DEVICE" "${AMP[@]}" --out "$OUT/run_ct"
step adapt "$PY" -m pemma.cli.main adapt --base "$OUT/run_ct" --data "$DATA" --centres MDA --add-modality pet \
  --recipe authors --ct-route shared "${SMALL[@]}" --device "$DEVICE" "${AMP[@]}" --out "$OUT/run_adapt"
step predict_cli "$PY" -m pemma.cli.main predict --model "$OUT/run_adapt" --input "$DATA" --centres MDA \
  --device "$DEVICE" "${AMP[@]}" --out "$OUT/pred_adapt"

# 2. training step: PEMMA adaptation vs early fusion (the issue's ratios); predict on generated clinical-size cases
#    (network on the device; reading, resampling and writing on the CPU); pemma vs plain MONAI
step adaptation "$PY" "$BENCH/bench_adaptation.py" --device "$DEVICE" "${AMP[@]}" --threads "$THREADS" \
  "${ADAPT[@]}" --json "$OUT/adaptation.json"
step predict "$PY" "$BENCH/bench_predict.py" --device "$DEVICE" "${AMP[@]}" --threads "$THREADS" \
  "${PREDICT[@]}" --json "$OUT/predict.json"
step backbones "$PY" "$BENCH/bench_backbones.py" --device "$DEVICE" "${AMP[@]}" --threads "$THREADS" \
  "${BACKBONES[@]}" --json "$OUT/backbones.json"

# 3. two processes under torchrun
TORCHRUN="$(dirname "$PY")/torchrun"
[[ -x "$TORCHRUN" ]] || TORCHRUN="torchrun"
PORT=$((29500 + RANDOM % 1000))
if [[ "$DEVICE" == "cuda" && "$GPUS" -ge 2 ]]; then
  DDP_DEVICE=cuda; DDP_NOTE="NCCL on 2 GPUs"
else
  DDP_DEVICE=cpu
  if [[ "$DEVICE" == "cuda" ]]; then
    DDP_NOTE="NCCL skipped: 1 GPU (two NCCL ranks cannot share one GPU); gloo on the CPU instead"
  else
    DDP_NOTE="dry run: gloo on the CPU"
  fi
fi
log "DDP smoke: $DDP_NOTE"
step ddp_2proc env OMP_NUM_THREADS=1 "$TORCHRUN" --nproc_per_node 2 --master_port "$PORT" -m pemma.cli.main \
  "${TRAIN[@]}" --device "$DDP_DEVICE" $([[ "$DDP_DEVICE" == cuda ]] && echo --amp) --out "$OUT/run_ddp"

# summary: every step's exit code and time, the benchmark ratios where present
"$PY" - "$OUT" "$DDP_NOTE" <<'EOF' || FAILED=1
import json, sys
from pathlib import Path
out, note = Path(sys.argv[1]), sys.argv[2]
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines() if line.strip()]
summary = {"steps": steps, "ddp": note, "results": {}}
for name in ("backbones", "adaptation", "predict"):
    path = out / f"{name}.json"
    if path.exists():
        summary["results"][name] = str(path)
metrics = out / "run_ddp" / "metrics.csv"
summary["ddp_metrics_rows"] = len(metrics.read_text().splitlines()) - 1 if metrics.exists() else None
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
EOF
log "done; $( [[ $FAILED -eq 0 ]] && echo 'every step passed' || echo 'some step FAILED, see steps.jsonl' )"
exit $FAILED
