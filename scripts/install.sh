#!/usr/bin/env bash
# Installs Veil and its test tools into .venv (created if missing). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip_q() { python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
# torch first, at the versions that lie on this machine kind's disk (CUDA builds that also run on the CPU)
python -c "import torch, torchvision" 2>/dev/null || pip_q "torch==2.14.1" "torchvision==0.29.1"
pip_q -e ".[all,test]"
# opencv-python (pyfacer) and opencv-contrib-python-headless (deepface) write the same cv2/
# folder; reinstall the contrib build last so cv2/ is whole and at the pinned version.
pip_q --force-reinstall --no-deps "opencv-contrib-python-headless==4.14.0.94"
python -c "import cv2, torch, diffusers, facer, deepface, facenet_pytorch, celery, boto3; cv2.CascadeClassifier; print('veil installed: torch', torch.__version__, 'cv2', cv2.__version__)"
