"""`python -m myason.kernels [--check] [--quiet]`: build the C kernels and compile every numba
kernel into the cache (warm it).

scripts/install.sh runs it once, so that the agent and the collector start without compiling.
Prints what it did: the C kernels' build, the cache directory, the numba kernels loaded from the
cache and compiled, the seconds. A C build that fails (no compiler, no Python headers) is
reported and is not an error: replays then load numba's kernels (slower to start). --check:
exit status 3 when anything had to be compiled (the cache was cold) or the C kernels are not
built, without touching other cache directories. Exit status 2 when numba is not installed
(the reference engine is used then, but for what the C kernels serve).
"""
import argparse
import logging
import sys

from myason.kernels import native, registry


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m myason.kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 3 if the cache was cold or the C kernels are not built")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="myason.kernels: %(message)s")
    try:
        if args.check:
            built = native.find(registry.cache_roots())
            stats = registry.load_numba()
        else:
            stats = registry.warm()
            built = registry.STATS["native"]
    except OSError as exc:
        print("myason.kernels: %s" % exc, file=sys.stderr)
        return 1
    if not args.quiet or (args.check and not built):
        print("myason.kernels: C kernels %s" % (built or "not built (%s)" % registry.STATS.get("native_error", "--check")),
              file=sys.stderr)
    if stats is None:
        print("myason.kernels: numba is not installed: the agent uses the reference engine for live capture",
              file=sys.stderr)
        return 2
    stats = registry.STATS
    cold = args.check and (stats["compiled"] or not built)
    if not args.quiet or cold:
        print("myason.kernels: cache %s: %d kernels loaded from the cache, %d compiled, %.2f s"
              % (stats["cache_dir"], len(stats["loaded"]), len(stats["compiled"]), stats["seconds"]),
              file=sys.stderr)
    return 3 if cold else 0


if __name__ == "__main__":
    sys.exit(main())
