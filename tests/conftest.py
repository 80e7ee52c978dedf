"""Shared fixtures and hypothesis profiles.

Hypothesis loads its built-in derandomized ``ci`` profile by itself when the CI environment
variable is set (our .ci/run sets it). Locally the derandomized ``dev`` profile is the default so
that ``make test`` is deterministic too; ``HYPOTHESIS_PROFILE=thorough`` explores many more
random instances.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev", derandomize=True, deadline=None, max_examples=25, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", derandomize=False, deadline=None, max_examples=400, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
if not os.environ.get("CI"):
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture
def rng():
    """A fresh, seeded generator; the seed is in the test id's output on failure."""
    return np.random.default_rng(20261125)

