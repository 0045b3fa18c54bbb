"""`python -m myason.kernels [--check] [--quiet]`: compile every kernel into the cache (warm it).

scripts/install.sh runs it once, so that the agent and the collector start without compiling.
Prints what it did: the cache directory, the kernels loaded from the cache and compiled, the
seconds. --check: exit status 3 when anything had to be compiled (the cache was cold), without
touching other cache directories. Exit status 2 when numba is not installed (the reference
engine is used then).
"""
import argparse
import logging
import sys

from myason.kernels import registry


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m myason.kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 3 if the cache was cold")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="myason.kernels: %(message)s")
    try:
        stats = registry.load() if args.check else registry.warm()
    except OSError as exc:
        print("myason.kernels: %s" % exc, file=sys.stderr)
        return 1
    if stats is None:
        print("myason.kernels: numba is not installed: the agent uses the reference engine",
              file=sys.stderr)
        return 2
    stats = registry.STATS
    if not args.quiet or (args.check and stats["compiled"]):
        print("myason.kernels: cache %s: %d kernels loaded from the cache, %d compiled, %.2f s"
              % (stats["cache_dir"], len(stats["loaded"]), len(stats["compiled"]), stats["seconds"]),
              file=sys.stderr)
    return 3 if args.check and stats["compiled"] else 0


if __name__ == "__main__":
    sys.exit(main())
