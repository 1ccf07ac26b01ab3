"""Strict test settings (DESIGN/STYLE: 2 simulated CPU devices, rank promotion raises)."""

import os

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# Repeat test runs reuse compiled programs (the cache lives outside git).
_CACHE = os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache", "jax")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(12345)
