"""Shared fixtures and the `slow` marker.

    bash scripts/test.sh                 the whole suite (what CI runs)
    bash scripts/test.sh -m "not slow"   the quick unit tests (seconds to a few minutes)
    bash scripts/test.sh -m slow         the end-to-end runs: fairseq-train / -generate command lines,
                                         the demo, the pipelines, DDP, interruption, the bench

Helpers the tests import: tiny.py (tiny models through fairseq's own argument parsing), methods.py
(the one shared method table), env.py (repository, real data, tools).
"""
import pytest

from env import DATA, REPO, tool_env
from tiny import tiny_dict


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: an end-to-end run (subprocesses, real data, minutes)")


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
