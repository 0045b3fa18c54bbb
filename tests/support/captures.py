"""The shared captures (../shared/pcaps): where they are, and a folder of them or a clean skip."""
from pathlib import Path

import pytest

PCAPS = Path(__file__).resolve().parents[2].parent / "shared" / "pcaps"


def shared_files(sub):
    """The files of ../shared/pcaps/SUB, sorted; the test is skipped when the folder is absent."""
    folder = PCAPS / sub
    if not folder.is_dir():
        pytest.skip("../shared/pcaps/%s is absent" % sub)
    return sorted(folder.iterdir())
