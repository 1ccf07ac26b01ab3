"""Input handling shared by the calibration metrics: the selected pixels of an error and a
variance map as flat, validated float64 arrays, argument checks, and equal-count bins.

Every metric of :mod:`simuq_core.evaluation.metrics` and
:mod:`simuq_core.evaluation.calibration_curves` starts here, so they all accept the same inputs
(any shape ``S`` shared by the maps, an optional boolean ``mask`` of shape ``S``) and reject the
same invalid ones (non-finite errors, non-finite or non-positive variances on the selected
pixels).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "bin_means",
    "check_finite",
    "check_positive_int",
    "check_variance",
    "equal_count_starts",
    "err_var",
    "select_flat",
]


def select_flat(arrays: Mapping[str, ArrayLike], mask: ArrayLike | None) -> list[np.ndarray]:
    """Check shapes, apply ``mask`` and return each array as flat float64, ``(N,)``."""
    named = {name: np.asarray(a) for name, a in arrays.items()}
    shapes = {name: a.shape for name, a in named.items()}
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shape mismatch: {listed}; all must have the same shape")
    shape = next(iter(shapes.values()))
    if mask is None:
        selected = [a.reshape(-1) for a in named.values()]
    else:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise ValueError(f"mask must be boolean, got dtype {mask.dtype}")
        if mask.shape != shape:
            raise ValueError(f"mask has shape {mask.shape} but the data have shape {shape}")
        selected = [a[mask] for a in named.values()]
    if selected[0].size == 0:
        raise ValueError(f"no pixels selected (data shape {shape}, mask selects none)")
    return [a.astype(np.float64, copy=False) for a in selected]


def check_finite(name: str, x: np.ndarray) -> None:
    """Raises ``ValueError`` naming ``name`` if ``x`` holds NaN or inf."""
    n_bad = int(np.count_nonzero(~np.isfinite(x)))
    if n_bad:
        raise ValueError(f"{name} has {n_bad} non-finite (NaN/inf) value(s) on the selected pixels")


def check_variance(var: np.ndarray) -> None:
    """Raises ``ValueError`` unless every variance is finite and ``> 0``."""
    n_nonfinite = int(np.count_nonzero(~np.isfinite(var)))
    n_nonpositive = int(np.count_nonzero(var <= 0))
    if n_nonfinite or n_nonpositive:
        raise ValueError(
            "var must be finite and > 0 on the selected pixels; found "
            f"{n_nonfinite} non-finite (NaN/inf) and {n_nonpositive} non-positive value(s)"
        )


def err_var(
    err: ArrayLike, var: ArrayLike, mask: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray]:
    """Validated flat float64 ``(e, v)``, ``(N,)`` each, on the selected pixels."""
    e, v = select_flat({"err": err, "var": var}, mask)
    check_finite("err", e)
    check_variance(v)
    return e, v


def check_positive_int(name: str, value: int, minimum: int = 1) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``value`` is an integer ``≥ minimum``."""
    if int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")


def equal_count_starts(n: int, n_bins: int) -> np.ndarray:
    """Start indices of ``min(n_bins, n)`` contiguous near-equal chunks of ``n`` items."""
    n_bins = min(n_bins, n)
    return (np.arange(n_bins) * n) // n_bins


def bin_means(x_sorted: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Mean of ``x_sorted`` over each chunk that begins at ``starts`` (the last runs to the end)."""
    counts = np.diff(np.append(starts, x_sorted.size))
    return np.add.reduceat(x_sorted, starts) / counts
