#!/usr/bin/env python3
"""Thin shim: `python3 myason.py ...` is the same as the `myason` console script."""
from myason.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
