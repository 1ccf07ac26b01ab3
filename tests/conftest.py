"""Strict test settings (DESIGN/STYLE: 2 simulated CPU devices, rank promotion raises) and the
session-wide tiny dataset and trained tiny models.

Training a tiny model costs tens of seconds on 2 CPU cores (compiles included); the tests that
only need *a* trained model of each mode share one per session (:func:`selfsup_run`,
:func:`sup_run`). They are read-only: a test that changes a model folder works on its own copy.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
# Repeat test runs reuse compiled programs (the cache lives outside git). SIMUQ_TEST_CACHE points it
# elsewhere, e.g. at an empty folder to time a cold run as CI sees it.
JAX_CACHE_DIR = os.environ.get("SIMUQ_TEST_CACHE") or os.path.join(
    os.path.dirname(os.path.dirname(__file__)), ".cache", "jax"
)
jax.config.update("jax_compilation_cache_dir", JAX_CACHE_DIR)
os.environ.setdefault("SIMUQ_COMPILE_CACHE", JAX_CACHE_DIR)  # predict's own cache: the same folder
# The processes tests launch (python -m stages.*, dvc repro) share it: the tiny profile's programs
# compiled once in the session are loaded, not compiled again, by every stage process.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", JAX_CACHE_DIR)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


# -- MLflow: a per-session temporary store, never the repository's mlflow.db / mlruns ----------

@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory) -> Iterator[Path]:
    """Every run a test logs goes to a temporary store, not the repository's ``mlflow.db``.

    ``MLFLOW_TRACKING_URI`` points at ``<tmp>/mlflow.db`` for the whole session, so the stages the
    tests call in-process and the processes they launch (``python -m stages.*``, ``dvc repro``:
    :func:`tests._pipeline.run` passes the environment on) log there; a SQLite store keeps its
    artifacts beside its database (:mod:`simuq_core.tracking`). Tests that check the default
    location (test_tracking.py) or a repository's own store (test_pipeline_e2e.py) override or
    unset the variable with ``monkeypatch``."""
    store = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        yield store


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(12345)


# The shared models' training section over the tiny profile's: 4 epochs (the predict tests'
# seam checks need a network trained that long: after 2 epochs hard tile edges show too weak a
# seam for the negative control), debug samples after epochs 2 and 4.
SHARED_TRAIN = {"epochs": 4, "debug_every_epochs": 2}


@dataclass(frozen=True)
class TrainedRun:
    """A tiny model trained by :func:`~simuq_core.workflows.train.run_training` on :func:`tiny_data`
    with the tiny profile and :data:`SHARED_TRAIN`, and its test metrics."""

    mode: str
    model_dir: Path
    metrics: dict[str, float]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The tiny profile's synthetic dataset (4 train, 2 val, 2 test stacks of 16² camera px)."""
    from simuq_core.simulation.dataset import write_dataset
    from tests._tiny import tiny_params

    root = tmp_path_factory.mktemp("tiny_data") / "sim"
    write_dataset(tiny_params().simulate, root, progress=False)
    return root


def _train(mode: str, data: Path, tmp_path_factory) -> TrainedRun:
    from simuq_core.workflows.train import run_training
    from tests._tiny import tiny_params

    out = tmp_path_factory.mktemp(f"tiny_{mode}") / mode
    params = tiny_params(train_selfsup=SHARED_TRAIN, train_sup=SHARED_TRAIN)
    metrics = run_training(mode, params, data, out, progress=False)
    return TrainedRun(mode, out, metrics)


@pytest.fixture(scope="session")
def selfsup_run(tiny_data, tmp_path_factory) -> TrainedRun:
    """The session's tiny self-supervised model (trained on first use)."""
    return _train("selfsup", tiny_data, tmp_path_factory)


@pytest.fixture(scope="session")
def sup_run(tiny_data, tmp_path_factory) -> TrainedRun:
    """The session's tiny supervised model (trained on first use)."""
    return _train("sup", tiny_data, tmp_path_factory)
