#!/usr/bin/env bash
# One call on a lent GPU machine (torch and transformers there; diffusers, torchsde and their
# small needs travel as wheels in .whl/, see BENCHMARKS.md). Writes the table and JSON to $OUT.
#   prepare here:  echo /.whl/ >> .git/info/exclude
#                  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#                    -d .whl diffusers torchsde trampoline pydantic-settings python-dotenv
#   run there:     bash benchmarks/run_on_device.sh   (carry: .whl)
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 benchmarks/gpu_throughput.py --json "$OUT/gpu_throughput.json" "$@" 2>&1 | tee "$OUT/gpu_throughput.md"
