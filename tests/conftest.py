"""Shared test configuration.

Hypothesis runs derandomized (a fixed seed per test) under the ``ci`` profile, which is the default, so a
CI run can never flake; ``HYPOTHESIS_PROFILE=explore`` searches fresh examples locally.
"""

import os

import torch
from hypothesis import HealthCheck, settings

# Hypothesis also mines constants from every local module already imported, so under pytest-xdist (each
# worker imports a different set of test files) the "derandomized" examples would still differ between
# runs. Pin that pool to empty so a CI run is reproducible; the private hook is guarded in case it moves.
try:
    from hypothesis.internal.conjecture import providers as _providers

    if hasattr(_providers, "_get_local_constants") and hasattr(_providers, "_local_constants"):
        _providers._get_local_constants = lambda: _providers._local_constants
except ImportError:  # pragma: no cover - a future hypothesis without the feature
    pass

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
