"""Reading docs/reference.md's tables for the tests that check it against the code: sections by
heading, markdown tables, metric tables, schema blocks, and a Prometheus exposition's families."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC_PATH = ROOT / "docs" / "reference.md"


def doc():
    """The text of docs/reference.md."""
    return DOC_PATH.read_text()


# -- parsing the document ------------------------------------------------------------------------

def section(text, heading):
    """The text under the heading line that starts with `heading`, up to the next heading of its level or above."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    assert start is not None, "no heading %r in docs/reference.md" % heading
    out = []
    for line in lines[start + 1:]:
        m = re.match(r"^(#+) ", line)
        if m and len(m.group(1)) <= level:
            break
        out.append(line)
    return "\n".join(out)


def cells(line):
    """The cells of a markdown table row (pipes inside backticks do not occur in this document)."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def tables(text):
    """[(header cells, [row cells])] of every markdown table in text."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-| :]+\|$", lines[i + 1].strip()):
            header, rows, i = cells(lines[i]), [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(cells(lines[i]))
                i += 1
            out.append((header, rows))
        else:
            i += 1
    return out


def ticked(cell):
    """The text of the first `code span` of a cell, or None."""
    m = re.search(r"`([^`]+)`", cell)
    return m.group(1) if m else None


def metric_rows(heading):
    """{metric name: row cells} of the metrics table under `heading`."""
    (header, rows), = [t for t in tables(section(doc(), heading)) if t[0][0] == "metric"]
    assert header[:2] == ["metric", "type"]
    return {ticked(r[0]): r for r in rows}


def parse_schema(text):
    """{table: {"columns": [(name, type)], "pk": [...], "indexes": {name: (unique, method, cols)},
    "partitioned": str or None}} from the `#### \\`table\\`, ...` blocks of a schema section."""
    out = {}
    blocks = re.split(r"^#### ", text, flags=re.M)[1:]
    for block in blocks:
        heading, _, body = block.partition("\n")
        names = re.findall(r"`(\w+)`", heading)
        assert names, heading
        (header, rows), = [t for t in tables(body) if t[0][0] == "column"]
        assert header[:2] == ["column", "type"]
        columns = [(ticked(r[0]), ticked(r[1])) for r in rows]
        pk = re.search(r"^Primary key: \(([^)]*)\)\.$", body, re.M)
        idx = re.search(r"^Indexes: (.*)\.$", body, re.M)
        part = re.search(r"^Partitioned: `([^`]*)`\.$", body, re.M)
        indexes = {}
        if idx:
            for name, unique, method, cols in re.findall(r"`(\w+)` = (unique )?(\w+) \(([^)]*)\)", idx.group(1)):
                indexes[name] = (bool(unique), method, [c.strip() for c in cols.split(",")])
        for name in names:
            out[name] = {"columns": columns, "pk": [c.strip() for c in pk.group(1).split(",")] if pk else [],
                         "indexes": indexes, "partitioned": part.group(1) if part else None}
    return out


def exposed_families(text):
    """{family name: type} of the `# TYPE` lines of a Prometheus text exposition."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
