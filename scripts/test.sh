#!/usr/bin/env bash
# The test command: lint, types, and every test, the real-Label-Studio ones included.
# Extra arguments go to pytest (e.g. scripts/test.sh -k receiver).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export LABELLOOP_LS_VENV=${LABELLOOP_LS_VENV:-$HOME/.cache/labelloop/label-studio-1.23.2}
.venv/bin/ruff check labelloop service workers tests bench
.venv/bin/ruff format --check labelloop service workers tests bench
.venv/bin/mypy labelloop service workers
exec .venv/bin/python -m pytest "$@"
