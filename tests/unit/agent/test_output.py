"""Record files: CSV and JSON lines in FIELDS order."""
import csv
import json

import pytest

from myason.agent.output import RecordFile
from myason.schema import FIELDS

ROW = ["10.0.0.1", "2001:db8::1", 1234, 80, 6, 0, 3, 180, 1.5, 2.25, 27,
       "a1", "eth0", 2, 3, 4, 100, "10.0.0.254", 24, 64, 64500, 0, "fin"]


def test_csv_has_header_and_rows(tmp_path):
    path = tmp_path / "f.csv"
    out = RecordFile(str(path))
    out.write([ROW, ROW])
    out.close()
    rows = list(csv.reader(open(path)))
    assert rows[0] == list(FIELDS)
    assert rows[1] == [str(v) for v in ROW]
    assert len(rows) == 3 and out.rows == 2


def test_jsonl_objects_by_field_name(tmp_path):
    path = tmp_path / "f.jsonl"
    out = RecordFile(str(path))
    out.write([ROW])
    out.close()
    (line,) = path.read_text().splitlines()
    assert json.loads(line) == dict(zip(FIELDS, ROW))


def test_stdout_is_jsonl(capsysbinary):
    out = RecordFile("-")
    out.write([ROW])
    out.close()
    assert json.loads(capsysbinary.readouterr().out)["end_reason"] == "fin"


def test_unknown_extension_is_refused(tmp_path):
    with pytest.raises(ValueError):
        RecordFile(str(tmp_path / "f.txt"))


def test_empty_write_is_a_no_op(tmp_path):
    out = RecordFile(str(tmp_path / "f.jsonl"))
    out.write([])
    out.close()
    assert (tmp_path / "f.jsonl").read_text() == ""


@pytest.mark.parametrize("name", ["f.csv", "f.jsonl"])
def test_record_files_are_private_under_umask_022(tmp_path, umask022, name):
    """Issue 12 item 13: --output files hold flows (personal data): 0600, also when replaced."""
    path = tmp_path / name
    path.write_text("old")          # 0644 under umask 022
    out = RecordFile(str(path))
    out.write([ROW])
    out.close()
    assert path.stat().st_mode & 0o777 == 0o600
    path.unlink()
    RecordFile(str(path)).close()
    assert path.stat().st_mode & 0o777 == 0o600
