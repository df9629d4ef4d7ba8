#!/usr/bin/env bash
# The GPU checks of a session lent a GPU machine, in one call (see README "Benchmarks"):
#   device run: bash benchmarks/gpu_run.sh      (carry .whl: wheels the GPU image lacks, see below)
# MODELS, VARIANTS (benchmarks/throughput.py's) and RUN_TESTS=0 narrow a rerun.
# Installs the carried wheels (pydantic, datasets and their missing needs: the image has torch,
# transformers, peft and accelerate), runs benchmarks/throughput.py (Llama-2-7B and a 1B Llama, baseline
# and ours side by side) and the CUDA tests, and writes everything under $OUT.
# Prepare the wheels on the development machine (Python 3.12 on the GPU image):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl pydantic pydantic-core annotated-types typing-inspection typing_extensions datasets dill multiprocess \
#     liger-kernel
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda); \
print('transformers', transformers.__version__, 'peft', peft.__version__)"
  python3 -c "from blackbox.training import attention; print('varlen available:', attention.varlen_available())"
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"
timeout 330 python3 benchmarks/throughput.py --models "${MODELS:-llama2-7b,llama-1b}" --steps 3 \
  --variants "${VARIANTS:-baseline,padded,packed-varlen,packed-varlen-liger}" --out "$OUT/throughput.json" \
  2>&1 | grep -v -E "it/s\]|Warning|warn" | tee "$OUT/throughput.log"
[ "${RUN_TESTS:-1}" = 1 ] && timeout 90 python3 -m pytest -q -p no:cacheprovider tests/training/test_gpu.py 2>&1 | tail -30 | tee "$OUT/test_gpu.log"
exit 0
