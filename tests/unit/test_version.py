"""The version is stated once in pyproject.toml and once in the package: they must agree."""
import re
from pathlib import Path

import myason


def test_package_version_matches_pyproject():
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', text, re.M).group(1) == myason.__version__
