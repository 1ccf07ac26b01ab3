"""Input checks for raw SIM stacks: layout and values (the frame-order hint is
:mod:`simuq_core.pattern.frame_order`).

Users' most common SIM failures are format confusion (9 vs 15 frames, angle/phase order, channel
axis) and bad values; every check here names the file and what was expected.

- the layouts a stack may have are checked by the one reader,
  :func:`simuq_core.realdata.reader.to_time_series`;
- :func:`check_values`: NaN / Inf, empty or constant frames are errors; saturated pixels and an
  offset that leaves most of the data negative are warnings.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "InputError",
    "angle_major_order",
    "check_values",
    "offset_warnings",
]

SATURATION_FRACTION = 1e-3


class InputError(ValueError):
    """A raw stack that cannot be reconstructed; the message names the file and the expectation."""


def angle_major_order(n_angles: int, n_phases: int) -> list[int]:
    """Indices that reorder phase-major frames (``frame = A·phase + angle``) to simuq's angle-major
    order (``frame = P·angle + phase``): ``angle_major[P·a + p] = phase_major[A·p + a]``."""
    return [n_angles * p + a for a in range(n_angles) for p in range(n_phases)]


def check_values(raw: np.ndarray, source: str, dtype: np.dtype | None = None,
                 offset: float | None = None) -> list[str]:
    """Errors (:class:`InputError`) for non-finite, empty or constant frames; warnings returned.

    raw : ``(F, H, W)`` as read (before normalisation); dtype : the file's dtype (saturation is
    checked for integer types); offset : the camera offset that will be subtracted.
    """
    f, h, w = raw.shape
    if h < 8 or w < 8:
        raise InputError(f"{source}: frames of {h}x{w} px are too small (at least 8x8 expected)")
    finite = np.isfinite(raw)
    if not finite.all():
        bad = np.argwhere(~finite)
        n_nan, n_inf = int(np.isnan(raw).sum()), int(np.isinf(raw).sum())
        frame, y, x = bad[0]
        raise InputError(f"{source}: {n_nan} NaN and {n_inf} Inf value(s) (first at frame {frame}, "
                         f"y={y}, x={x}); expected finite camera counts")
    lo, hi = raw.min(axis=(1, 2)), raw.max(axis=(1, 2))
    if (hi == lo).all():
        what = "empty (all zero)" if hi[0] == 0 else f"constant (every pixel = {hi[0]:g})"
        raise InputError(f"{source}: the image is {what}; expected a raw SIM acquisition")
    flat = [int(i) for i in np.flatnonzero(hi == lo)]
    if flat:
        raise InputError(f"{source}: frame(s) {flat} of {f} are constant (value(s) "
                         f"{[float(lo[i]) for i in flat]}): dropped or empty frames?")
    warnings = []
    if dtype is not None and np.issubdtype(dtype, np.integer):
        top = np.iinfo(dtype).max
        frac = float((raw >= top).mean())
        if frac > SATURATION_FRACTION:
            warnings.append(f"{source}: {100 * frac:.2f}% of pixels are saturated (= {top}); "
                            "their uncertainty is under-estimated")
    return warnings + offset_warnings(raw, source, offset)


def offset_warnings(raw: np.ndarray, source: str, offset: float | None) -> list[str]:
    """A warning when most of the stack lies below the camera ``offset`` to be subtracted."""
    if offset is not None and float(np.median(raw)) < offset:
        return [f"{source}: the median pixel ({float(np.median(raw)):g}) is below the "
                f"camera offset ({offset:g}): is norm_offset right?"]
    return []


