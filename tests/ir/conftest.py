"""Options for the IR tests.

``--update-goldens`` (or ``LLMC_UPDATE_GOLDENS=1`` in the environment) rewrites the golden files
under ``tests/ir/golden/`` instead of comparing against them. The option is registered here, so
pass it with a path under ``tests/ir`` (``python -m pytest tests/ir --update-goldens``); the
environment variable works from anywhere.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="rewrite tests/ir/golden/*.ir from the current printer output",
    )


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens", default=False)) or (
        os.environ.get("LLMC_UPDATE_GOLDENS", "") not in ("", "0")
    )
