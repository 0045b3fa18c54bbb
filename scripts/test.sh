#!/usr/bin/env bash
# Run the whole test suite (installs what it needs first). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
# The stated lint rule set (pyproject.toml [tool.ruff]); the layer rule is a test in the suite.
.venv/bin/ruff check myason tests bench scripts
exec .venv/bin/python -m pytest -q -p no:cacheprovider -rs "$@" tests
