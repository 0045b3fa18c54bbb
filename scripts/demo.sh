#!/usr/bin/env bash
# Quick start: install what is needed, then run a collector with the embedded store (SQLite) and
# an agent replaying data/demo.pcap into it over encrypted UDP, and print what was stored.
# Run as root on Debian (the install step uses apt-get once).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
exec .venv/bin/python scripts/demo.py "$@"
