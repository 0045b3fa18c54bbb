#!/usr/bin/env bash
# Try myason against other releases of its dependencies than the locked ones, in a throwaway
# venv, and run the unit tests there. Not part of CI: run it by hand (or on a schedule) so that
# an upstream release that breaks myason is found here before users meet it.
#
#   scripts/check-deps.sh [--newest]   the newest release of every dependency on PyPI, ignoring
#                                      pyproject.toml's upper bounds and the lock
#   scripts/check-deps.sh --lowest     the lowest release each lower bound allows (direct
#                                      dependencies; theirs as a resolver picks them)
#   extra arguments after -- go to pytest (default: tests/unit)
#
# Prints the versions tried and pytest's result; exit status is pytest's. When --newest passes
# with a release above an upper bound, raise the bound in pyproject.toml and run scripts/lock.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
mode=newest
case "${1:-}" in
  ""|--newest) ;;
  --lowest) mode=lowest ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
shift $(( $# > 0 ? 1 : 0 ))
[ "${1:-}" = "--" ] && shift
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(tests/unit)

work=$(mktemp -d -t myason-check-deps.XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
PIP=("$work/venv/bin/python" -m pip install -q --no-cache-dir --index-url https://pypi.org/simple)
# The dependency names with their extras, without version bounds, from pyproject.toml.
python3 - "$mode" >"$work/wanted.txt" <<'PY'
import re, sys, tomllib
with open("pyproject.toml", "rb") as fh:
    project = tomllib.load(fh)["project"]
specs = list(project["dependencies"]) + [d for extra in project["optional-dependencies"].values() for d in extra]
for spec in specs:
    if sys.argv[1] == "newest":
        print(re.match(r"[A-Za-z0-9._-]+(\[[^\]]*\])?", spec).group(0))
    else:
        print(spec)
PY
if [ "$mode" = newest ]; then
  "${PIP[@]}" --upgrade pip setuptools
  "${PIP[@]}" --upgrade -r "$work/wanted.txt"
else
  "${PIP[@]}" "uv==0.13.9"
  "$work/venv/bin/uv" pip compile --quiet --no-config --index-url https://pypi.org/simple \
    --resolution lowest-direct --python "$work/venv/bin/python" "$work/wanted.txt" -o "$work/lowest.txt"
  "${PIP[@]}" --upgrade setuptools
  "${PIP[@]}" -r "$work/lowest.txt"
fi
"$work/venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" >/dev/null
"$work/venv/bin/python" -m pip check || true
echo "check-deps.sh: $mode releases:" >&2
"$work/venv/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE "^($(sed -E 's/\[.*//' "$work/wanted.txt" \
  | sed -E 's/[<>=!~;, ].*//' | paste -sd'|'))==" | sed 's/^/  /' >&2
# The compiled kernels are built for the numba at hand; keep them out of the checkout.
export MYASON_CACHE_DIR="$work/kernels"
set +e
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}"
rc=$?
echo "check-deps.sh: $mode: pytest exit $rc" >&2
exit $rc
