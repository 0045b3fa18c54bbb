"""The systemd unit files in conf/, read as systemd reads them."""
import re
from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "conf"


def parse_unit(text):
    """{section: {key: [values in order]}} of a systemd unit file (comments and blank lines skipped)."""
    out, section = {}, None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = re.fullmatch(r"\[([A-Za-z]+)\]", line)
        if m:
            section = out.setdefault(m.group(1), {})
            continue
        key, sep, value = line.partition("=")
        assert sep and section is not None, "not a unit line: %r" % raw
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def service(name):
    """The [Service] section of a unit: key -> last value (what systemd uses for single values)."""
    return {k: v[-1] for k, v in parse_unit((CONF / name).read_text())["Service"].items()}
