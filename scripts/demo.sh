#!/usr/bin/env bash
# Quick start: install what is needed, replay the bundled capture through the agent and print a
# summary and the top flows. Run as root on Debian (the install step uses apt-get once).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
work=$(mktemp -d /tmp/myason-demo.XXXXXX)
.venv/bin/myason agent --read data/demo.pcap --no-export --no-progress --output "$work/flows.csv"
.venv/bin/python - "$work/flows.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print("\n%d flow records written to %s; top 10 by bytes:" % (len(rows), sys.argv[1]))
fmt = "%-40s %-40s %5s %8s %9s  %s"
print(fmt % ("source", "destination", "proto", "packets", "bytes", "end"))
for r in sorted(rows, key=lambda r: -int(r["bytes"]))[:10]:
    src = "%s:%s" % (r["src_ip"], r["src_port"])
    dst = "%s:%s" % (r["dst_ip"], r["dst_port"])
    print(fmt % (src, dst, r["proto"], r["packets"], r["bytes"], r["end_reason"]))
PY
