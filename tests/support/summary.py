"""Read the summary block a myason daemon prints on stderr at exit."""
import re


def parse_summary(stderr, what="agent"):
    """The `myason <what> summary:` block of stderr as a dict (numbers and {reason: count} dicts)."""
    lines = stderr.splitlines()
    head = "myason %s summary:" % what
    if head not in lines:
        raise AssertionError("no summary on stderr:\n%s" % stderr)
    out = {}
    for line in lines[lines.index(head) + 1:]:
        m = re.match(r"^  (\S+)\s+(.*)$", line)
        if not m:
            break
        key, text = m.groups()
        if "=" in text:
            out[key] = {k: int(v) for k, v in (kv.split("=") for kv in text.split(", "))}
        elif text == "-":
            out[key] = {}
        else:
            out[key] = float(text) if "." in text else int(text)
    return out
