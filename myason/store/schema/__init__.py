"""SQL schemas owned by the project: numbered migrations per database kind, applied in order."""
import os
import re

_NAME_RE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


def load_migrations(dialect):
    """[(version, name, sql)] of schema/<dialect>/NNN_name.sql, oldest first."""
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), dialect)
    out = []
    for fname in sorted(os.listdir(folder)):
        match = _NAME_RE.match(fname)
        if match:
            with open(os.path.join(folder, fname), encoding="utf-8") as fh:
                out.append((int(match.group(1)), match.group(2), fh.read()))
    versions = [v for v, _, _ in out]
    if len(set(versions)) != len(versions):
        raise ValueError("duplicate migration version in %s" % folder)
    return out
