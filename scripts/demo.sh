#!/usr/bin/env bash
# The main job: the whole stack on a demo project (a local Label Studio when LABEL_STUDIO_URL
# is not set). Extra arguments go to `labelloop demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export LABELLOOP_LS_VENV=${LABELLOOP_LS_VENV:-$HOME/.cache/labelloop/label-studio-1.23.2}
exec .venv/bin/labelloop demo "$@"
