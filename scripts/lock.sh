#!/usr/bin/env bash
# Regenerate the locks from pyproject.toml: exact versions with the hashes of every file PyPI
# holds for them, resolved for every platform (uv's universal mode) from Python 3.11 on.
#
#   scripts/lock.sh             keep each locked version the ranges still allow (add what is new)
#   scripts/lock.sh --upgrade   move everything to the newest release the ranges allow
#
# requirements.lock: what scripts/install.sh puts in .venv (runtime, the test and bench extras,
#                    and the build backend, since the install builds netifaces and myason
#                    without build isolation so that nothing unhashed is fetched).
# requirements.txt:  the runtime dependencies only, at the same versions, for `pip install -r`.
# After an upgrade, run the tests (./scripts/test.sh) before committing both files.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
TOOLS=${MYASON_TOOLS_VENV:-${TMPDIR:-/tmp}/myason-lock-tools}
upgrade=()
case "${1:-}" in
  "") ;;
  --upgrade) upgrade=(--upgrade) ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

if [ ! -x "$TOOLS/bin/uv" ] || [ "$("$TOOLS/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  python3 -m venv --clear "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
UV="$TOOLS/bin/uv"
build_in=$(mktemp -t myason-build.XXXXXX.in)
trap 'rm -f "$build_in"' EXIT
python3 - >"$build_in" <<'PY'
import tomllib
with open("pyproject.toml", "rb") as fh:
    print("\n".join(tomllib.load(fh)["build-system"]["requires"]))
PY

# PyPI only: a machine's own extra indexes or wheel folders must not end up in the lock.
common=(--universal --python-version 3.11 --generate-hashes --index-url https://pypi.org/simple
        --no-config --quiet)
UV_CUSTOM_COMPILE_COMMAND="scripts/lock.sh" "$UV" pip compile "${common[@]}" "${upgrade[@]}" \
  --all-extras pyproject.toml "$build_in" -o requirements.lock
UV_CUSTOM_COMPILE_COMMAND="scripts/lock.sh" "$UV" pip compile "${common[@]}" \
  -c requirements.lock pyproject.toml -o requirements.txt
# The temporary input's path is noise in the "via" comments.
sed -i "s|$build_in|pyproject.toml (build-system)|" requirements.lock
echo "lock.sh: $(grep -c '^[a-zA-Z0-9]' requirements.lock) packages in requirements.lock," \
     "$(grep -c '^[a-zA-Z0-9]' requirements.txt) in requirements.txt" >&2
