#!/usr/bin/env python3
"""Rebuild data/demo.pcap, the capture the quick start replays (deterministic, made with scapy)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import trafficgen  # noqa: E402


def main():
    out = ROOT / "data" / "demo.pcap"
    pkts = []
    for seed in range(1, 5):
        # Four copies of the mixed scenario, 100 s apart, each with other addresses.
        shift = (seed - 1) * 100.0
        pkts += [(t + shift, p) for t, p in trafficgen.scenario(seed)]
    pkts.sort(key=lambda tp: tp[0])
    trafficgen.write_pcap(out, pkts)
    print("wrote %s (%d packets)" % (out, len(pkts)))


if __name__ == "__main__":
    main()
