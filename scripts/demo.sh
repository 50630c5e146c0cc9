#!/usr/bin/env bash
# The main job: installs Veil, makes sure weights are there, anonymizes example photos.
#   bash scripts/demo.sh                      # public-domain photos that scikit-image ships
#   bash scripts/demo.sh /path/to/photos [OUTPUT]   # your own folder, glob, list file or s3:// prefix
# Online: fetches the real weights (several GB). Offline: falls back to tiny RANDOM test models
# and says so loudly; their images are noise, not the method's output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
OUTPUT="${2:-out/demo}"
if [ -n "${1:-}" ]; then
  INPUT="$1"
else
  # scikit-image (installed with pyfacer) ships these photos: NASA's portrait of astronaut Eileen
  # Collins (public domain) and Lav Varshney's "camera" (CC0). Written to a temporary folder.
  INPUT="$(mktemp -d "${TMPDIR:-/tmp}/veil-demo-input.XXXXXX")"
  python - "$INPUT" <<'PY'
import sys
from PIL import Image
from skimage import data
Image.fromarray(data.astronaut()).save(f"{sys.argv[1]}/astronaut.png")
Image.fromarray(data.camera()).convert("RGB").save(f"{sys.argv[1]}/camera.png")
PY
  echo "== input: scikit-image's public-domain example photos, written to $INPUT"
  echo "   (your own photos:  bash scripts/demo.sh /path/to/photos)"
fi
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
