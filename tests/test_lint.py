"""`ruff check` (pyflakes, pycodestyle, import order, bugbear, pyupgrade; config in pyproject.toml) over the code.

Part of the test suite so that CI, which runs exactly the README's test command, lints every submission.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is in the dev extra (bash scripts/setup.sh dev)")
def test_ruff_check_is_clean():
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "sparse_trt", "tests", "benchmarks"],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
