#!/usr/bin/env bash
# benchmarks/gpu_check.py on a GPU machine, in one call of at most 7 minutes (docs/gpu.md): installs the carried
# wheels (.whl, made by benchmarks/gpu_wheels.sh) into /tmp/site, gives the check what is left of 420 s less a
# margin for its end (--budget-s), points NOMAD_EXE at a carried nomad binary, and writes gpu_check.json,
# gpu_check.md, gpu_check.log and nvidia-smi.txt to $OUT.
#   bash benchmarks/gpu_check.sh                         # every part
#   bash benchmarks/gpu_check.sh --parts prepare,variants   # a rerun of some (prepare: the others need its model)
set -uo pipefail
started=$SECONDS
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -f .whl/nomad/bin/nomad ]; then
    chmod +x .whl/nomad/bin/nomad
    export NOMAD_EXE=$PWD/.whl/nomad/bin/nomad
fi
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
# 420 s in all: what the install took, and 15 s for the end (the table, the processes' exit), are not the parts'.
budget=$((420 - (SECONDS - started) - 15))
echo "wheels installed in $((SECONDS - started)) s; the parts' budget: $budget s"
python3 benchmarks/gpu_check.py --out "$OUT" --budget-s "$budget" "$@"
