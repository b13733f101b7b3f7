"""Shared pytest configuration: hypothesis profiles and the doctest namespace.

Select a hypothesis profile with the ``HYPOTHESIS_PROFILE`` environment variable
(``ci`` by default, ``dev`` for a longer local search).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def add_doctest_namespace(doctest_namespace: dict) -> None:
    """Make ``np`` and ``xr`` available in every doctest, as in the docs."""
    import xarray as xr  # imported here: test_grid.py must stay xarray-free

    doctest_namespace["np"] = np
    doctest_namespace["xr"] = xr
