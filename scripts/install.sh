#!/usr/bin/env bash
# Installs Veil and its test tools into .venv (created if missing). Idempotent.
# A first install takes minutes (torch, diffusers, deepface...): each phase is announced with the
# seconds spent so far. pip's own output (~400 lines) goes to .venv/install.log, named with its last
# lines when pip fails; VEIL_INSTALL_VERBOSE=1 shows it as it runs instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$SECONDS
LOG=.venv/install.log
phase() { echo "== [$((SECONDS - START))s] $*"; }
# pip quiet, its whole output kept in $LOG; a failing pip stops the script with its last lines and
# the log's path. Verbose: pip's lines minus the flood (a line per package already there, the index
# location notice); pipefail makes the pipeline's status pip's.
pip_install() {
  if [ -n "${VEIL_INSTALL_VERBOSE:-}" ]; then
    python -m pip install --disable-pip-version-check --progress-bar on "$@" 2>&1 \
      | { grep -v -e "^Requirement already satisfied" -e "^WARNING: Location" || true; }
    return
  fi
  echo "== pip install $*" >> "$LOG"
  if ! python -m pip install --disable-pip-version-check --progress-bar off "$@" >> "$LOG" 2>&1; then
    echo "install.sh: pip install $* failed; its last lines:" >&2
    tail -n 15 "$LOG" >&2
    echo "install.sh: pip's whole output is in $(pwd)/$LOG (VEIL_INSTALL_VERBOSE=1 shows it as it runs)" >&2
    return 1
  fi
}
if [ ! -x .venv/bin/python ]; then
  phase "creating .venv"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
# Done before with the same pyproject.toml and this script: nothing to do (a re-run of
# scripts/test.sh or demo.sh took 1-4 minutes and re-downloaded opencv). VEIL_REINSTALL=1 forces it.
STAMP=.venv/.veil-installed
WANT="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1)"
if [ -z "${VEIL_REINSTALL:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
   && command -v chromium >/dev/null && command -v prometheus >/dev/null; then
  phase "already installed (same pyproject.toml and install.sh; VEIL_REINSTALL=1 to reinstall)"
  exit 0
fi
rm -f "$STAMP"
: > "$LOG"
phase "pip's output goes to $LOG (VEIL_INSTALL_VERBOSE=1 to see it)"
# torch first, at the versions that lie on this machine kind's disk (CUDA builds that also run on the CPU)
if python -c "import torch, torchvision" 2>/dev/null; then
  phase "torch already installed"
else
  phase "installing torch and torchvision (from local disk)"
  pip_install "torch==2.14.1" "torchvision==0.29.1"
fi
phase "installing veil and test tools (diffusers, pyfacer, deepface, celery, boto3, pytest, moto...)"
pip_install -e ".[all,test]"
# opencv-python (pyfacer) and opencv-contrib-python-headless (deepface) write the same cv2/
# folder; reinstall the contrib build last so cv2/ is whole and at the pinned version.
phase "reinstalling opencv-contrib-python-headless last (pyfacer and deepface share cv2/)"
pip_install --force-reinstall --no-deps "opencv-contrib-python-headless==4.14.0.94"
# Headless Chromium and its WebDriver from Debian's packages, for the real-browser tests: Flower
# (tests/integration/test_watching.py, driven by selenium) and veil eval's HTML report
# (tests/integration/test_eval.py); Prometheus scrapes real workers in test_watching.py
if command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v prometheus >/dev/null; then
  phase "chromium, chromedriver and prometheus already installed"
elif command -v apt-get >/dev/null; then
  phase "installing chromium, chromium-driver and prometheus (apt-get)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
else
  phase "no apt-get here: install Chromium, chromedriver and prometheus for the browser and scrape tests"
fi
phase "checking the imports"
python -c "import cv2, torch, diffusers, facer, deepface, facenet_pytorch, celery, boto3; cv2.CascadeClassifier; print('veil installed: torch', torch.__version__, 'cv2', cv2.__version__)"
python -c "import dlib; print('dlib', dlib.__version__)"
echo "$WANT" > "$STAMP"
phase "install done"
