#!/usr/bin/env bash
# Installs everything and runs the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/services.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
export VEIL_FACES_DIR="${VEIL_FACES_DIR:-$(cd .. && pwd)/shared/faces}"
python -m pytest -q "$@"
