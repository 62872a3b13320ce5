#!/usr/bin/env bash
# The GPU device check of issue 15, in one call (under 10 minutes on an H200). Run from the repository
# root on the GPU machine, with the wheels of what the machine lacks in .whl/ (docs/BENCHMARKS.md,
# "GPU (pending a lent device)", says how to build that folder):
#
#   bash bench/device_check.sh            # writes $OUT/device_check.md and one log per step
#
# Steps, each under its own time limit (seconds; a step that runs out is reported and the next runs):
#   1. the machine: GPU, torch, triton;
#   2. the gpu-marked tests (compiled kernels against the torch references, the engine's device path
#      for every codec with its Triton launches counted);
#   3. every kernel at 10^5 ColPali-shaped pages (1030 x 128) with the fraction of peak bandwidth and
#      flash-maxsim on the same float16 pages;
#   4. the service path (the index engine) on synthetic pages with a compressed codec and without one:
#      p50 / p95, recall@10 against the brute-force scan, per-stage times, the scan's bandwidth.
# Sizes and limits can be overridden: KERNEL_PAGES, ENGINE_PAGES, ENGINE_PAGES_DENSE, T_TESTS, T_KERNELS,
# T_ENGINE; DEVICE=cpu runs the same steps on the CPU (a smoke test of the script with tiny sizes).
set -u
OUT=${OUT:-/tmp/device-check}
mkdir -p "$OUT"
REPORT="$OUT/device_check.md"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
KERNEL_PAGES=${KERNEL_PAGES:-"100 100000"}  # 100 pages: the rerank-sized call (target < 1 ms in fp16)
ENGINE_PAGES=${ENGINE_PAGES:-10000}
ENGINE_PAGES_DENSE=${ENGINE_PAGES_DENSE:-3000}
T_TESTS=${T_TESTS:-120}
T_KERNELS=${T_KERNELS:-150}
T_ENGINE=${T_ENGINE:-170}
T_ENGINE_DENSE=${T_ENGINE_DENSE:-110}

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || { echo "wheel install failed" >&2; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0

echo "# Device check (issue 15), $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null)" >"$REPORT"

step() {  # step NAME LIMIT_S COMMAND...: run, keep the log, copy its tail (tables) into the report
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    {
        echo
        echo "## $name (exit $rc$([ $rc -eq 124 ] && echo ', ran out of time'), $((SECONDS - start)) s)"
        echo
        echo '`'"$*"'`'
        echo
        grep -E '^\||^<!--|passed|failed|error|skipped' "$OUT/$name.log" | tail -n 80
    } >>"$REPORT"
}

step machine 30 bash -c "nvidia-smi -L || true; $PY -c 'import torch, triton; print(\"torch\", torch.__version__, \
\"triton\", triton.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))'; \
$PY -c 'import faiss; print(\"faiss\", faiss.__version__, \"gpus\", faiss.get_num_gpus())' || true"
# --confcutdir: the kernel tests' conftest only (the suite's root conftest needs the service's packages)
step gpu_tests "$T_TESTS" "$PY" -m pytest -p no:cacheprovider --confcutdir=tests/kernels -m gpu -q tests/kernels
step kernels "$T_KERNELS" "$PY" bench/kernels.py --device "$DEVICE" --sizes $KERNEL_PAGES --repeats 5 --no-colpali \
    --no-fp32
step engine_pq "$T_ENGINE" "$PY" bench/engine.py --device "$DEVICE" --pages "$ENGINE_PAGES" --queries 50 \
    --job-pages 2000 --compression '{"quantizer": "pq", "pq_opq": false, "keep": "float16"}'
step engine_dense "$T_ENGINE_DENSE" "$PY" bench/engine.py --device "$DEVICE" --pages "$ENGINE_PAGES_DENSE" --queries 50 \
    --job-pages 1000
echo "report: $REPORT"
cat "$REPORT"
