"""README.md in step with the command line and the tree: every subcommand listed, every path it names there."""
import re
from pathlib import Path

from myason import cli

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def subcommands():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return list(action.choices)


def opening_list():
    """The bullet list before the first section: one `- \\`myason NAME ...\\`: ...` item per subcommand."""
    head = README[:README.index("\n## ")]
    return re.findall(r"^- `myason ([a-z]+)[^`]*`: \S", head, re.M)


def test_the_opening_list_names_every_subcommand_once_in_parser_order():
    assert opening_list() == subcommands()


def layout():
    block = README[README.index("## Layout"):]
    return block[block.index("```") + 3:block.index("```", block.index("```") + 3)]


def test_layout_names_conf_api_yaml():
    assert "api.yaml" in layout()


def test_every_path_the_layout_names_exists():
    text = layout()
    missing = []
    current = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            head, _, desc = line.partition("  ")
            heads = [h.strip() for h in head.split(",")]
            for h in heads:
                if not (ROOT / h).exists():
                    missing.append(h)
            # The lines that list a directory's contents; the others describe it in prose.
            listing = heads[0].startswith(("myason/", "conf/", "scripts/"))
            where = heads[0] if len(heads) == 1 and heads[0].endswith("/") else ""
            current = where if listing and where else None
        else:
            desc = line
        # Paths anywhere on the line, from the top (tests/integration/) or from its directory.
        for path in re.findall(r"\b[\w.-]+/[\w./*-]*", desc):
            if "*" not in path and not (ROOT / path).exists() and not (ROOT / where / path).exists():
                missing.append(path)
        if current is None:
            continue
        # Names listed for a directory: modules, files or subdirectories of it (remarks in
        # parentheses are not names).
        plain = re.sub(r"\([^)]*\)", "", desc)
        for name in re.split(r"[,+;]|\band\b", plain):
            name = name.strip().rstrip("/")
            if not re.fullmatch(r"[\w.-]+", name):
                continue
            base = ROOT / current / name
            if not (base.exists() or base.with_suffix(".py").exists() or Path(str(base) + ".py").exists()):
                missing.append(current + name)
    assert missing == []
