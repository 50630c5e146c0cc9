#!/usr/bin/env bash
# One call on a lent GPU machine (torch and transformers are there; diffusers, torchsde, pydantic
# and their small needs travel as wheels in .whl/). Writes the table, JSON and profile to $OUT.
#   prepare here:  mkdir -p .git/info && echo /.whl/ >> .git/info/exclude
#                  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#                    --platform manylinux2014_x86_64 -d .whl diffusers torchsde trampoline pydantic \
#                    pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection \
#                    importlib_metadata typing_extensions
#   run there:     bash benchmarks/run_on_device.sh --budget-s 470 --until-oom   (carry: .whl)
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
python3 benchmarks/gpu_throughput.py --json "$OUT/gpu_throughput.json" "$@" 2>&1 | tee "$OUT/gpu_throughput.log"
