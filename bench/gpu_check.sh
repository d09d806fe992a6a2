#!/usr/bin/env bash
# One short GPU check of the trainer and kernels (the first GPU numbers of the project); results under $OUT.
#
#   OUT=/tmp/out bash bench/gpu_check.sh            # from any folder; runs from the repo this script is in
#
# Environment: OUT (default: REPO/gpu_out), PY (default python3), GPU_CHECK_WHEELS (a folder with whl/ = wheels to
# install into /tmp/site, e.g. duckdb, and whl_opt/ = wheels installed only if `cli.py train --help` fails, e.g.
# typer + pydantic), GPU_CHECK_BUDGET (seconds for all parts, default 370). Every part has its own timeout (clamped
# to what is left of the budget), a failing part does not stop the others, and each part's log, rc and seconds are
# kept. Without a GPU the GPU parts skip or fall back cleanly (a CPU rehearsal of the script).
#
# Parts: env + wheels; phase A (correctness, concurrently): kernel tests on the GPU (compiled Triton, tensors on
# CUDA through bench/gpu_pytest_plugin.py), the same tests on CPU (interpreter), bench/kernels.py accuracy, a
# synthetic build, `cli.py train` with the flex and sdpa_loop attention backends; phase B (timed, one at a time):
# bench/kernels.py ops and model (instella-3b), `cli.py train` with the auto backend,
# bench/train_throughput.py (instella-1b vs HF Llama), bench/gpu_attention.py. Output: $OUT/gpu_check.log, $OUT/summary.json,
# $OUT/logs.tar.gz (the device returns at most 8 files, so the logs travel as one archive).
set -u -x
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
OUT=${OUT:-$REPO/gpu_out}
LOG=$OUT/logs
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check_work}
PY=${PY:-python3}
BUDGET=${GPU_CHECK_BUDGET:-370}
STEPS_AUTO=${GPU_CHECK_STEPS:-40}
START=$(date +%s)
rm -rf "$WORK" "$LOG"; mkdir -p "$OUT" "$LOG" "$WORK"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR=$WORK/inductor TRITON_CACHE_DIR=$WORK/triton MPLBACKEND=Agg
export NLTK_DATA=$WORK/nltk  # nothing here needs it; keeps imports from searching
unset TRITON_INTERPRET
HAVE_GPU=0
nvidia-smi >/dev/null 2>&1 && HAVE_GPU=1

# part NAME TIMEOUT CMD...: run CMD with its output in $LOG/NAME.log; record rc and seconds; print the log's tail
part() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if (( left < 20 )); then
    echo "### SKIP $name: budget spent"; printf '%s\t%s\t%s\n' "$name" skipped 0 >> "$LOG/parts.tsv"; return 0
  fi
  (( limit > left )) && limit=$left
  local t0=$(date +%s.%N)
  timeout -k 5 "$limit" bash -c '"$@"' bash "$@" > "$LOG/$name.log" 2>&1  # bash -c: CMD may be a function
  local rc=$?
  local sec=$(awk "BEGIN{print $(date +%s.%N) - $t0}")
  printf '%s\t%s\t%s\n' "$name" "$rc" "$sec" >> "$LOG/parts.tsv"
  { echo "### $name: rc $rc, ${sec}s (limit ${limit}s)"; tail -n 30 "$LOG/$name.log"; } | grep -v '^+ '
}

# ------------------------------------------------------------------------------------------------ env + wheels
{
  date -u; uname -a; nvidia-smi; nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
  $PY -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"
  $PY -m pip list 2>/dev/null | grep -i -E '^(torch|triton|transformers|typer|click|rich|numpy|pyarrow|duckdb|safetensors|matplotlib|pytest|flash)' 
} > "$LOG/env.log" 2>&1
cat "$LOG/env.log"
if [ -n "${GPU_CHECK_WHEELS:-}" ] && ls "$GPU_CHECK_WHEELS"/whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$GPU_CHECK_WHEELS"/whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if ! $PY cli.py train --help > "$LOG/cli_help.log" 2>&1; then
  tail -5 "$LOG/cli_help.log"
  if [ -n "${GPU_CHECK_WHEELS:-}" ] && ls "$GPU_CHECK_WHEELS"/whl_opt/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site_opt "$GPU_CHECK_WHEELS"/whl_opt/*.whl
    export PYTHONPATH="$REPO:/tmp/site_opt:/tmp/site"
    $PY cli.py train --help > "$LOG/cli_help.log" 2>&1 || tail -5 "$LOG/cli_help.log"
  fi
fi
$PY -c "import duckdb, typer; print('duckdb', duckdb.__version__, 'typer', getattr(typer, '__version__', '?'))"

# the backend `auto` picks on this GPU must run (torch's varlen_attn changed signature between releases); if it
# does not, the timed trainer runs below use flex instead and the failure is in varlen_probe.log
BACKEND=auto
if (( HAVE_GPU )); then
  if ! timeout 120 $PY - > "$LOG/varlen_probe.log" 2>&1 <<'PYEOF'
import torch
from midtrain.kernels.attention import resolve_backend, varlen_attention
q = torch.randn(64, 2, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
cu = torch.tensor([0, 20, 64], device="cuda", dtype=torch.int32)
print("auto picks", resolve_backend(q))
varlen_attention(q, q, q, cu, 44).sum().backward()
torch.cuda.synchronize()
print("auto backend forward+backward ok")
PYEOF
  then BACKEND=flex; fi
  cat "$LOG/varlen_probe.log"; echo "trainer attention backend for the timed runs: $BACKEND"
fi

# ------------------------------------------------------------------------- phase A: correctness, concurrently
KTESTS="tests/test_kernels_triton.py tests/test_kernels_loss.py tests/test_kernels_ops.py tests/test_kernels_plan.py tests/test_attention.py"
part pytest_gpu 150 env TRITON_INTERPRET=0 $PY -m pytest -p no:cacheprovider -p bench.gpu_pytest_plugin -s -v -rA \
  --junitxml="$LOG/pytest_gpu.xml" $KTESTS &
P1=$!
part pytest_cpu 170 env TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES= $PY -m pytest -p no:cacheprovider -q -rA \
  --junitxml="$LOG/pytest_cpu.xml" $KTESTS &
P2=$!
if (( HAVE_GPU )); then
  part kernels_accuracy 120 $PY bench/kernels.py accuracy &
else
  part kernels_accuracy 120 env TRITON_INTERPRET=1 $PY bench/kernels.py accuracy &
fi
P3=$!
part synth_build 60 $PY bench/gpu_synth_build.py "$WORK/build" --seq-len 1024 --tokens 800000
train() {  # train NAME BACKEND STEPS [extra flags]: a short real `cli.py train` run on the synthetic build (bf16)
  local name=$1 backend=$2 steps=$3; shift 3
  $PY cli.py train --data "$WORK/build" --out "$LOG/run_$name" --preset small --steps "$steps" --dtype bf16 \
    --attention document --micro-batch 8 --attn-backend "$backend" --no-progress "$@"
}
export -f train
export PY WORK LOG
if (( HAVE_GPU )); then
  part train_flex 120 train flex flex 20 &
  P4=$!
  part train_sdpa_loop 120 train sdpa_loop sdpa_loop 20 &
  P5=$!
  wait $P4 $P5
fi
wait $P1 $P2 $P3

# --------------------------------------------------------------------------- phase B: timed, one at a time
if (( HAVE_GPU )); then
  part kernels_ops 60 $PY bench/kernels.py ops
  part kernels_model 80 $PY bench/kernels.py model --preset instella-3b --seq-len 4096 --iters 10 --attn-backend $BACKEND
  part train_auto 60 train auto $BACKEND "$STEPS_AUTO"
  part train_throughput 170 $PY bench/train_throughput.py --preset instella-1b --seq-len 4096 --docs 8 --steps 5 \
    --warmup 2 --attn-seq 0 --attn-backend $BACKEND --extra-backends flex --json "$LOG/train_throughput.json"
  part attention 75 $PY bench/gpu_attention.py --reps 7 --json "$LOG/attention.json"
else  # CPU rehearsal: the same code paths at toy sizes
  part kernels_ops 120 env TRITON_INTERPRET=1 $PY bench/kernels.py ops --small
  part train_auto 200 train auto auto 2
  part attention 60 $PY bench/gpu_attention.py --device cpu --small --json "$LOG/attention.json"
fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv 2>/dev/null

# ---------------------------------------------------------------------------------------------------- results
rm -rf "$LOG"/run_*/checkpoints "$LOG"/run_*/model.safetensors
$PY bench/gpu_summary.py "$LOG" "$OUT/summary.json"
echo "total $(( $(date +%s) - START )) s"
tar -C "$OUT" -czf "$OUT/logs.tar.gz" logs && rm -rf "$LOG"
ls -la "$OUT"
