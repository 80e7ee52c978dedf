"""Shared fixtures and hypothesis profiles.

Seeds
-----
The ``rng`` fixture gives each test its own generator, seeded by ``(base seed, test id)``: the
base seed is ``LORAML_TEST_SEED`` (default 20261125, so ``make test`` is deterministic), and
``LORAML_TEST_SEED=random`` draws a fresh one to explore new instances. The header of every run
prints the base seed, and a failing test that used ``rng`` prints the line that replays it.

Hypothesis profiles
-------------------
Hypothesis loads its built-in derandomized ``ci`` profile by itself when the CI environment
variable is set (our .ci/run sets it). Locally the derandomized ``dev`` profile (the same example
counts) is the default, so ``make test`` is deterministic too; ``HYPOTHESIS_PROFILE=thorough``
runs eight times as many random (not derandomized) examples. Tests that set their own budget
write ``@settings(max_examples=examples(n))`` (tests/helpers.py), which scales n with the profile.
"""

from __future__ import annotations

import os
import secrets
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev", derandomize=True, deadline=None, max_examples=100, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", derandomize=False, deadline=None, max_examples=800, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
if not os.environ.get("CI"):
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

_DEFAULT_SEED = 20261125


def _base_seed() -> int:
    raw = os.environ.get("LORAML_TEST_SEED", "")
    if raw == "random":
        return secrets.randbits(32)
    return int(raw) if raw else _DEFAULT_SEED


BASE_SEED = _base_seed()


def pytest_report_header(config):
    profile = settings.get_current_profile_name()
    return (f"loraml: rng fixture base seed {BASE_SEED} (replay with LORAML_TEST_SEED={BASE_SEED}); "
            f"hypothesis profile {profile!r}, max_examples {settings.default.max_examples}")


def seed_for(nodeid: str) -> int:
    """The seed of one test: a function of the base seed and the test id alone."""
    return zlib.crc32(f"{BASE_SEED}:{nodeid}".encode())


@pytest.fixture
def rng(request):
    """A generator seeded by (base seed, test id); a failure report says how to replay it."""
    seed = seed_for(request.node.nodeid)
    request.node.user_properties.append(("rng_seed", seed))
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and any(name == "rng_seed" for name, _ in item.user_properties):
        seed = dict(item.user_properties)["rng_seed"]
        report.sections.append(("rng seed", f"this test's rng was seeded with {seed}; replay with "
                                            f"LORAML_TEST_SEED={BASE_SEED} pytest '{item.nodeid}'"))
