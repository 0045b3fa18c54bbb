#!/usr/bin/env bash
# Install what myason needs on Debian (run as root): system packages, then a virtualenv in
# .venv with the locked dependencies (requirements.lock) and myason itself. Idempotent: a
# second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${MYASON_VENV:-$ROOT/.venv}

APT_PKGS="python3 python3-venv python3-dev gcc libpcap0.8 tcpdump iproute2 softflowd nfdump tshark time strace chromium chromium-driver nftables ipset"
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
# The venv holds exactly the locked set (requirements.lock: exact versions, every file's hash),
# never whatever a resolver would pick today. A changed lock builds a new venv, so nothing of
# an older set lingers. scripts/lock.sh regenerates the lock; scripts/check-deps.sh tries the
# newest (and the lowest) releases the ranges allow in a throwaway venv.
stamp="$VENV/.myason-installed"
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if ! { [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }; then
  if [ -e "$VENV" ]; then
    if [ ! -f "$stamp" ] && [ "$VENV" != "$ROOT/.venv" ]; then
      echo "install.sh: $VENV exists and was not made by install.sh; remove it or set MYASON_VENV" >&2
      exit 1
    fi
    echo "install.sh: the lock changed: rebuilding $VENV" >&2
    rm -rf "$VENV"
  fi
  echo "install.sh: creating $VENV" >&2
  "$PY" -m venv "$VENV"
  pip=("$VENV/bin/python" -m pip install -q --require-hashes --no-deps --no-build-isolation)
  # The build backend first (netifaces has no wheel for current Pythons and is built here),
  # then everything else; builds use the locked setuptools instead of an unhashed download.
  "${pip[@]}" -r <(awk '/^setuptools==/ {p = 1} p {print} p && !/\\$/ {exit}' requirements.lock)
  echo "install.sh: pip install -r requirements.lock" >&2
  "${pip[@]}" -r requirements.lock
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
  "$VENV/bin/python" -m pip check >&2
  echo "$want" > "$stamp"
fi

# The compiled kernels (myason/kernels: the agent's fast engine, the collector's encoders): the
# replay kernels built from C (myason/kernels/_native.c, a second) into
# myason/kernels/__pycache__/kernels/native-<source hash>/, and every kernel built by numba once
# per kernel version (half a minute to a minute) into numba's cache beside it,
# myason/kernels/__pycache__/kernels/<source hash>/ (or under $MYASON_CACHE_DIR when set; the
# daemons need the same setting then). Doing it here means no agent or collector process
# compiles anything at start; a no-op when both are built already. Python's own bytecode is
# compiled too: the daemons run with a read-only tree (ProtectSystem=strict) and cannot write
# it, and where PYTHONDONTWRITEBYTECODE is set nobody does (a replay would compile ~70 ms of
# sources at every start).
"$VENV/bin/python" -m compileall -q -j 0 myason >/dev/null
set +e
"$VENV/bin/python" -m myason.kernels
rc=$?
set -e
if [ "$rc" = 2 ]; then
  echo "install.sh: numba unavailable: the agent replays with the reference engine" >&2
elif [ "$rc" != 0 ]; then
  echo "install.sh: compiling the kernels failed (python -m myason.kernels: exit $rc)" >&2; exit 1
fi
