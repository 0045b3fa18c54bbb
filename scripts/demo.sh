#!/usr/bin/env bash
# Quick start: install what is needed, then run a collector with the embedded store (SQLite) and
# an agent replaying data/demo.pcap into it over encrypted UDP, print what was stored, then serve
# it on the built-in web page until Ctrl-C (--no-serve or MYASON_DEMO_SERVE=0: stop after the report).
# Run as root on Debian (the install step uses apt-get once).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
exec .venv/bin/python scripts/demo.py "$@"
