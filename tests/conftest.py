"""Shared test configuration.

Hypothesis runs derandomized (a fixed seed per test) under the ``ci`` profile, which is the default, so a
CI run can never flake; ``HYPOTHESIS_PROFILE=explore`` searches fresh examples locally.
"""

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Two cores on CI: keep torch from oversubscribing when pytest-xdist runs workers in parallel.
torch.set_num_threads(1)
