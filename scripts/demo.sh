#!/usr/bin/env bash
# The main job: installs Veil, makes sure weights are there, anonymizes the example photos.
# Online: fetches the real weights (several GB). Offline: falls back to tiny RANDOM test models
# and says so loudly; their images are noise, not the method's output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
INPUT="${1:-$(cd .. && pwd)/shared/faces}"
OUTPUT="${2:-out/demo}"
online() { python -c "import socket; socket.create_connection(('huggingface.co', 443), 3)" 2>/dev/null; }
if ! veil models check >/dev/null; then
  if ! { online && veil models fetch; }; then
    export VEIL_MODELS_DIR="$PWD/.cache/tiny-models"
    echo "!! real weights could not be fetched (offline?): using tiny RANDOM models in $VEIL_MODELS_DIR"
    echo "!! the images written below are NOISE; they only show that the pipeline runs."
    veil models check >/dev/null || veil models tiny "$VEIL_MODELS_DIR"
  fi
fi
veil run "$INPUT" "$OUTPUT" --limit "${VEIL_DEMO_LIMIT:-8}"
echo "outputs and manifest.jsonl in $OUTPUT"
