#!/usr/bin/env bash
# benchmarks/gpu_check.py on a GPU machine, in one call (docs/gpu.md): installs the carried wheels (.whl, made by
# benchmarks/gpu_wheels.sh) into /tmp/site, runs every part within gpu_check.py's budget (420 s: the call stays
# under 8 minutes), and writes gpu_check.json, gpu_check.md, gpu_check.log and nvidia-smi.txt to $OUT.
#   bash benchmarks/gpu_check.sh                         # every part
#   bash benchmarks/gpu_check.sh --parts prepare,variants   # a rerun of some (prepare: the others need its model)
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 benchmarks/gpu_check.py --out "$OUT" "$@"
