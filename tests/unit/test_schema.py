"""myason.schema owns the flow row: the docs' field tables and the code's column lists follow it."""
import ast
import re
from pathlib import Path

import pytest

from myason import schema

ROOT = Path(__file__).resolve().parents[2]
KINDS = {"int": int, "float": float, "str": str}


def table(doc, header):
    """Rows (lists of cells) of the markdown table whose header line starts with `header`."""
    lines = (ROOT / "docs" / doc).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows


def names(cell):
    return re.findall(r"`([a-z_]+)`", cell)


def test_wire_table_in_protocol_doc_is_the_schema():
    rows = table("protocol.md", "| # | field | type | meaning |")
    assert [(int(r[0]), names(r[1])[0], KINDS[r[2]], r[3]) for r in rows] == [
        (i, c.name, c.kind, c.meaning) for i, c in enumerate(schema.WIRE)]


def test_enrichment_table_in_events_doc_is_the_schema():
    from myason.enrich import enricher_names
    got = []
    for cell, kind, step, meaning in table("events.md", "| column | type | step | meaning |"):
        assert step in enricher_names(), step
        got += [(n, KINDS[kind], meaning) for n in names(cell)]
    assert got == [(c.name, c.kind, c.meaning) for c in schema.ENRICH]


@pytest.mark.parametrize("section", ["#### `flows`"])
def test_every_store_table_in_the_reference_has_the_schema_columns_in_order(section):
    text = (ROOT / "docs" / "reference.md").read_text()
    starts = [m.end() for m in re.finditer(re.escape(section), text)]
    assert len(starts) >= 2, "the SQLite and PostgreSQL flows tables"
    for start in starts:
        block = text[start:].split("\n####", 1)[0]
        cols = [names(line.split(" | ")[0])[0] for line in block.splitlines()
                if line.startswith("| `")]
        assert tuple(cols[:len(schema.ENRICHED_ROW_FIELDS)]) == schema.ENRICHED_ROW_FIELDS


def test_row_parts_compose():
    assert schema.ROW_FIELDS == schema.FIELDS + schema.COLLECTOR_FIELDS
    assert schema.ENRICHED_ROW_FIELDS == schema.ROW_FIELDS + schema.ENRICH_FIELDS
    assert len(set(schema.ENRICHED_ROW_FIELDS)) == len(schema.ENRICHED_ROW_FIELDS)
    assert [schema.INDEX[n] for n in schema.ENRICHED_ROW_FIELDS] == list(range(len(schema.COLUMNS)))
    assert schema.INT_FIELDS | schema.FLOAT_FIELDS | schema.STR_FIELDS == set(schema.FIELDS)
    assert schema.ENRICH_DEFAULTS == tuple(c.kind() for c in schema.ENRICH)
    assert schema.indexes("agent", "received", "direction") == (11, 23, 25)


def test_make_row():
    row = schema.make_row(src_ip="192.0.2.1", packets=3, end_reason="fin")
    assert len(row) == len(schema.FIELDS)
    assert row[schema.INDEX["src_ip"]] == "192.0.2.1" and row[schema.INDEX["packets"]] == 3
    assert row[schema.INDEX["first"]] == 0.0 and row[schema.INDEX["next_hop"]] == ""
    with pytest.raises(TypeError, match="srcip"):
        schema.make_row(srcip="192.0.2.1")


def _string_tuples(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List)) and len(node.elts) >= 8 and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            yield node.lineno, tuple(e.value for e in node.elts)


def test_no_module_redefines_the_row():
    """Eight or more consecutive row columns, in row order, outside schema.py: a copy of the row.

    (Shorter runs are selections: the API's output columns, the rollups' dimensions.)
    """
    cols, n = schema.ENRICHED_ROW_FIELDS, 8
    runs = {cols[i:i + n] for i in range(len(cols) - n + 1)}
    found = []
    for path in sorted((ROOT / "myason").rglob("*.py")):
        if path.name == "schema.py":
            continue
        for lineno, values in _string_tuples(ast.parse(path.read_text())):
            if any(values[i:i + n] in runs for i in range(len(values) - n + 1)):
                found.append("%s:%d %s" % (path.relative_to(ROOT), lineno, values[:4]))
    assert not found, found
