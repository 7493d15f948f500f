"""What the end-to-end tests share: where the repository, the real data and the tools are.

Real data is read in place from $UNIFAIRSEQ_DATA (default ../shared/data beside the repository,
unifairseq.data.tsv.default_data_root). Under CI (CI set) the data is there, so missing data fails a
test; on a user's machine without it the test is skipped, naming what is missing.
"""
import os
import sys
from pathlib import Path

import pytest

from unifairseq.data.tsv import default_data_root

REPO = Path(__file__).resolve().parents[1]
DATA = Path(default_data_root())
BIN = Path(sys.executable).parent  # python, fairseq-train, fairseq-generate, unifairseq-* of this environment
# the user's home as the run started; conftest.py's private_home fixture points HOME and the caches elsewhere
REAL_HOME = Path(os.path.expanduser("~"))


def tool_env(**extra) -> dict:
    """The environment for the repository's scripts and fairseq's command lines."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    env.setdefault("UNIFAIRSEQ_BIN", str(BIN))
    return env


def missing(*relpaths: str):
    return [str(DATA / p) for p in relpaths if not (DATA / p).is_file()]


def require_data(*relpaths: str) -> None:
    """Fail (CI) or skip (elsewhere) unless every DATA/relpath exists."""
    gone = missing(*relpaths)
    if gone:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            f"data not found: {', '.join(gone[:3])}; set UNIFAIRSEQ_DATA to the directory holding it")
