#!/usr/bin/env bash
# Installs everything, lints, and runs the whole test suite (what CI runs) as one pytest session
# on two processes: tests/unit (no services) and tests/integration (Redis, moto_server, worker
# processes, the real photos in ../shared/faces). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/services.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
export VEIL_FACES_DIR="${VEIL_FACES_DIR:-$(cd .. && pwd)/shared/faces}"
bash scripts/lint.sh
echo "== tests (one session, two processes: pytest-xdist, a redis-server each; tests/conftest.py)"
python -m pytest -q -n "${VEIL_TEST_PROCESSES:-2}" --dist loadfile --durations=30 tests "$@"
