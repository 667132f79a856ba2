"""Hypothesis profiles for the whole suite: ``ci`` (the default) and ``nightly``.

Select one with the environment variable ``HYPOTHESIS_PROFILE`` (``ci`` when unset)::

    HYPOTHESIS_PROFILE=nightly .venv/bin/python -m pytest tests/test_fuzz_passes.py

A profile fixes the example budget; tests never hard-code ``max_examples``. A test whose examples
cost more (or less) than usual scales the profile's budget with :func:`examples`, so ``nightly``
grows every test by the same factor::

    @settings(max_examples=examples(0.25))   # a quarter of the profile's budget, at least 1

Deadlines are off in both profiles: the suite runs on shared, loaded machines, and many tests
build TVM modules or run calibration, whose time says nothing about correctness.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

#: name -> example budget of a test with weight 1.0
BUDGETS = {"ci": 40, "nightly": 1000}
DEFAULT = "ci"

for _name, _n in BUDGETS.items():
    settings.register_profile(
        _name,
        max_examples=_n,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )


def load() -> str:
    """Load the profile named by ``HYPOTHESIS_PROFILE`` (default ``ci``); returns its name."""
    name = os.environ.get("HYPOTHESIS_PROFILE", "") or DEFAULT
    if name not in BUDGETS:
        raise ValueError(
            f"HYPOTHESIS_PROFILE={name!r} is not a registered profile (known: {sorted(BUDGETS)})"
        )
    settings.load_profile(name)
    return name


def examples(weight: float = 1.0) -> int:
    """``weight`` times the loaded profile's example budget, at least 1."""
    return max(1, round(settings.default.max_examples * weight))
