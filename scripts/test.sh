#!/usr/bin/env bash
# Run the whole test suite (installs what it needs first). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider -rs "$@" tests
