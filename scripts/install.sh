#!/usr/bin/env bash
# Install what myason needs on Debian (run as root): system packages, then a virtualenv in
# .venv with requirements.txt and myason itself. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${MYASON_VENV:-$ROOT/.venv}

APT_PKGS="python3 python3-venv python3-dev gcc libpcap0.8 tcpdump iproute2 softflowd nfdump tshark time chromium chromium-driver"
need_apt=""
for p in $APT_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need_apt="$need_apt $p"
done
if [ -n "$need_apt" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install.sh: missing Debian packages:$need_apt (run as root)" >&2; exit 1
  fi
  echo "install.sh: apt-get install$need_apt" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq $need_apt >/dev/null
fi

PY=${PYTHON:-python3}
stamp="$VENV/.myason-installed"
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)
if ! { [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }; then
  if [ ! -x "$VENV/bin/python" ]; then
    echo "install.sh: creating $VENV" >&2
    "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  echo "install.sh: pip install -r requirements.txt" >&2
  "$VENV/bin/python" -m pip install -q -r requirements.txt
  "$VENV/bin/python" -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi

# The agent's fast path is compiled ahead of time once per kernel version (about a minute);
# doing it here keeps that wait out of the first replay. A no-op when it is built already.
"$VENV/bin/python" - <<'PY'
import logging
import sys
logging.basicConfig(level=logging.INFO, format="install.sh: %(message)s")
from myason.agent import fastjit
if fastjit.load() is None:
    print("install.sh: numba unavailable: the agent replays with the reference engine", file=sys.stderr)
PY
