"""Fixtures every test module shares (the repository's conftest.py sets up kernels, markers and threads)."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def reference_cache(tmp_path_factory):
    """Reference log-probs are shared between the runs of one test session, never with the user's cache."""
    directory = tmp_path_factory.mktemp("reference_cache")
    previous = os.environ.get("UNIFIED_RLHF_CACHE")
    os.environ["UNIFIED_RLHF_CACHE"] = str(directory)
    yield directory
    if previous is None:
        del os.environ["UNIFIED_RLHF_CACHE"]
    else:
        os.environ["UNIFIED_RLHF_CACHE"] = previous
