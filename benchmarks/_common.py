"""Shared benchmark plumbing: timing, machine description, atomic JSON output."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simuq_core.io import write_json  # noqa: E402


def time_call(fn: Callable[[], object], reps: int, warmup: int = 1) -> dict[str, float]:
    """Median / min wall time of ``fn()`` over ``reps`` calls after ``warmup`` calls (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "reps": reps}


def machine() -> dict[str, object]:
    import jax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def write_report(name: str, report: dict) -> Path:
    path = ROOT / "reports" / "bench" / f"{name}.json"
    write_json(path, report)
    return path
