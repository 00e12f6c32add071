#!/usr/bin/env bash
# Prepare this machine for labelloop (fresh Debian with Python 3.11 is enough):
#   - redis-server (and, for the tests, chromium) from Debian's packages when missing,
#   - ./.venv with labelloop, CPU torch 2.13.0, torchvision 0.28.0 and the dev tools,
#   - Label Studio in its own virtual environment (it pins its own SDK and Django).
# Re-running it is cheap: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LS_VERSION=1.23.2
LS_VENV=${LABELLOOP_LS_VENV:-$HOME/.cache/labelloop/label-studio-$LS_VERSION}

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
apt_install() {
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
if ! command -v redis-server >/dev/null 2>&1; then
  echo "bootstrap: installing redis-server (Debian package)"
  apt_install redis-server
fi
if ! command -v chromium >/dev/null 2>&1; then
  # Only the tests use it: the project page's screenshot test renders it in headless Chromium.
  echo "bootstrap: installing chromium (Debian package)"
  apt_install chromium || echo "bootstrap: chromium not installed; the project page's browser test will be skipped"
fi
if ! command -v docker-compose >/dev/null 2>&1; then
  # Only the tests use it, to validate docker-compose.yml without a Docker engine.
  echo "bootstrap: installing docker-compose (Debian package)"
  apt_install docker-compose || echo "bootstrap: docker-compose not installed; its test will be skipped"
fi

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv
fi
if ! command -v promtool >/dev/null 2>&1 && [ ! -x .venv/bin/promtool ]; then
  # Only the tests use it (tests/test_alert_rules.py checks deploy/prometheus/alerts.yml). Debian's
  # prometheus package ships it as a static binary: take just that, no server, no service started.
  echo "bootstrap: installing promtool into .venv/bin (from Debian's prometheus package)"
  dl=$(mktemp -d)
  if (cd "$dl" && chmod 777 . && apt-get download prometheus >/dev/null 2>&1 \
      || { $SUDO apt-get update -qq && apt-get download prometheus >/dev/null; }) \
     && dpkg-deb --fsys-tarfile "$dl"/prometheus_*.deb | tar -x -C "$dl" ./usr/bin/promtool; then
    install -m 755 "$dl/usr/bin/promtool" .venv/bin/promtool
  else
    echo "bootstrap: promtool not installed; the alert-rule tests will fail"
  fi
  rm -rf "$dl"
fi
stamp=.venv/.labelloop-installed
want=$(sha256sum pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing labelloop into .venv"
  .venv/bin/pip install -q --upgrade pip
  # torch and torchvision are pinned in the same resolve: ultralytics alone would pull a CUDA torch.
  .venv/bin/pip install -q "torch==2.13.0" "torchvision==0.28.0" -e ".[ml,dev]"
  echo "$want" > "$stamp"
fi

if [ ! -x "$LS_VENV/bin/label-studio" ]; then
  echo "bootstrap: installing Label Studio $LS_VERSION into $LS_VENV"
  "$PY" -m venv "$LS_VENV"
  "$LS_VENV/bin/pip" install -q "label-studio==$LS_VERSION"
fi
