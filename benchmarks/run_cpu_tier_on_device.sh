#!/usr/bin/env bash
# CPU-tier capacity on an idle 16-core machine (the lent GPU machine's host CPUs; no GPU is used):
# benchmarks/cpu_tier.py at 1, 2, 4 and 8 cores with full-size random FACER + DeepFace, MTCNN real,
# on real photos. The machine has torch, onnx, onnxruntime, opencv, timm, scikit-image; the rest
# travels as wheels in .whl/ (5.5 MB) and the photos in .faces/ (both ignored, both carried).
#   prepare here, in the repo root:
#     printf '/.whl/\n/.faces/\n' >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#       pyfacer==0.0.5 deepface==0.0.103 facenet-pytorch==2.5.3 gdown beautifulsoup4 soupsieve validators \
#       pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection typing_extensions
#     mkdir -p .faces && cp ../shared/faces/{couple,fr_biden,fr_obama,fr_obama2,id01_1,id02_12,id03_16,id04_38}.jpg .faces/
#   run there (carry: .whl .faces), about 6-8 minutes:
#     bash benchmarks/run_cpu_tier_on_device.sh
# Writes $OUT/cpu_tier.json, cpu_tier.md (the tables), cpu_tier.log and cpu.txt (lscpu, versions).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 VEIL_FACES_DIR=$PWD/.faces
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/full
{ lscpu; nproc; uptime; python3 -c "import torch, onnxruntime; print('torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)"; } | tee "$OUT/cpu.txt"
python3 benchmarks/cpu_tier.py --write-models --models /tmp/full --faces "$VEIL_FACES_DIR" --cores "${CORES:-1,2,4,8}" \
  --images "${IMAGES:-8}" --batch-sizes "${BATCHES:-1,4,8}" --batch-cores "${BATCH_CORES:-1}" \
  --json "$OUT/cpu_tier.json" 2> "$OUT/cpu_tier.log" | tee "$OUT/cpu_tier.md"
uptime | tee -a "$OUT/cpu.txt"
