"""Shared fixtures and the `slow` marker.

    bash scripts/test.sh                 the whole suite (what CI runs)
    bash scripts/test.sh -m "not slow"   the quick unit tests (seconds to a few minutes)
    bash scripts/test.sh -m slow         the end-to-end runs: fairseq-train / -generate command lines,
                                         the demo, the pipelines, DDP, interruption, the bench

Helpers the tests import: tiny.py (tiny models through fairseq's own argument parsing), methods.py
(the one shared method table), env.py (repository, real data, tools).
"""
import os

import pytest

from env import DATA, REAL_HOME, REPO, tool_env
from tiny import tiny_dict


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: an end-to-end run (subprocesses, real data, minutes)")


@pytest.fixture(scope="session", autouse=True)
def private_home(tmp_path_factory):
    """HOME and the unifairseq cache in a temporary folder for the whole run, subprocesses included (they
    inherit os.environ): no test writes to the user's ~/.cache/unifairseq (its base index would keep entries
    of pytest's temporary folders)."""
    root = tmp_path_factory.mktemp("home")
    new = dict(HOME=str(root), XDG_CACHE_HOME=str(root / ".cache"),
               UNIFAIRSEQ_CACHE=str(root / ".cache" / "unifairseq"))
    # pip's own cache and config stay the user's: the pip-install test reuses the downloaded wheels
    new["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR") or str(REAL_HOME / ".cache" / "pip")
    if "PIP_CONFIG_FILE" not in os.environ and (REAL_HOME / ".config" / "pip" / "pip.conf").is_file():
        new["PIP_CONFIG_FILE"] = str(REAL_HOME / ".config" / "pip" / "pip.conf")
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def dictionary():
    """A tiny fairseq dictionary (40 words, padded to a multiple of 8)."""
    return tiny_dict()


@pytest.fixture(scope="session")
def data_root():
    return DATA


@pytest.fixture(scope="session")
def repo():
    return REPO


@pytest.fixture
def env():
    return tool_env()
