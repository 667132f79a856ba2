"""Suite-wide configuration: the hypothesis profile (``tests/hypothesis_profiles.py``)."""

from __future__ import annotations

import pytest

from tests import hypothesis_profiles

PROFILE = hypothesis_profiles.load()


def pytest_report_header(config: pytest.Config) -> str:
    return f"hypothesis profile: {PROFILE} (HYPOTHESIS_PROFILE=ci|nightly)"
