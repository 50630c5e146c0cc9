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
LIMIT="${VEIL_DEMO_LIMIT:-8}"
if [ -n "${1:-}" ]; then
  INPUT="$1"
else
  # scikit-image (installed with pyfacer) ships these photos: NASA's portrait of astronaut Eileen
  # Collins (public domain) and Lav Varshney's "camera" (CC0). Written beside the outputs, so the
  # contact sheet's originals stay where it links them (nothing is left in /tmp).
  INPUT="$OUTPUT/originals"
  mkdir -p "$INPUT"
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
NOTE="Stable Diffusion column: the method's portraits (Realistic Vision v5.1)."
if ! veil models check >/dev/null; then
  if ! { online && veil models fetch; }; then
    export VEIL_MODELS_DIR="$PWD/.cache/tiny-models"
    echo "!! real weights could not be fetched (offline?): using tiny RANDOM models in $VEIL_MODELS_DIR"
    echo "!! the SD images written below are NOISE; they only show that the pipeline runs."
    veil models check >/dev/null || veil models tiny "$VEIL_MODELS_DIR"
    NOTE="Offline: the sd column comes from tiny RANDOM test models, so its images are noise. The blur and mask columns are real: the face detector (MTCNN) ships with its weights."
  fi
fi
echo "== at most $LIMIT photo(s) per method (VEIL_DEMO_LIMIT)"
# exit 1 (some photos failed) does not stop the demo: the sheet shows which and why
run() { veil run "$INPUT" "$OUTPUT/$1" --limit "$LIMIT" "${@:2}" || [ $? -eq 1 ]; }
run sd
# the classical methods with the real detector: something a person can judge, offline too
run blur --method blur --quiet
run mask --method mask --quiet
python -m orchestrator.contact_sheet "$OUTPUT/index.html" sd="$OUTPUT/sd" blur="$OUTPUT/blur" mask="$OUTPUT/mask" \
  --note "$NOTE"
echo "== outputs and manifest.jsonl in $OUTPUT/{sd,blur,mask}; open the contact sheet: $(cd "$OUTPUT" && pwd)/index.html"
if [ -n "${VEIL_MODELS_DIR:-}" ]; then
  echo "== in a new shell, point veil at the same models first:  export VEIL_MODELS_DIR=$VEIL_MODELS_DIR"
fi
