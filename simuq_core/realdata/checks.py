"""Input checks for raw SIM stacks: layout and values (the frame-order hint is
:mod:`simuq_core.pattern.frame_order`).

Users' most common SIM failures are format confusion (9 vs 15 frames, angle/phase order, channel
axis) and bad values; every check here names the file and what was expected.

- :func:`to_frame_stack`: accepts ``(F, H, W)``, ``(F, 1, H, W)`` and ``(1, F, H, W)``, integer or
  float; anything else is an :class:`InputError` with a hint (channel-last, 15 frames, a single
  image …).
- :func:`check_values`: NaN / Inf, empty or constant frames are errors; saturated pixels and an
  offset that leaves most of the data negative are warnings.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "InputError",
    "angle_major_order",
    "check_values",
    "to_frame_stack",
]

SATURATION_FRACTION = 1e-3


class InputError(ValueError):
    """A raw stack that cannot be reconstructed; the message names the file and the expectation."""


def _layout_hint(shape: tuple[int, ...], n_frames: int) -> str:
    if len(shape) == 3 and shape[-1] == n_frames and shape[0] != n_frames:
        return f" (looks channel-last: transpose to ({n_frames}, H, W))"
    if len(shape) >= 3 and 15 in shape[:2]:
        return " (15 frames is 3 angles × 5 phases or 5 × 3: this model takes 3 × 3)"
    if len(shape) == 2:
        return " (a single image: SIM needs every raw frame, not a reconstruction or a widefield sum)"
    return ""


def angle_major_order(n_angles: int, n_phases: int) -> list[int]:
    """Indices that reorder phase-major frames (``frame = A·phase + angle``) to simuq's angle-major
    order (``frame = P·angle + phase``): ``angle_major[P·a + p] = phase_major[A·p + a]``."""
    return [n_angles * p + a for a in range(n_angles) for p in range(n_phases)]


def to_frame_stack(array: np.ndarray, n_frames: int, source: str) -> tuple[np.ndarray, str]:
    """The raw frames as ``(F, H, W)`` float32 and the layout found (e.g. ``"(9,1,H,W)"``).

    Accepted: ``(F, H, W)``, ``(F, 1, H, W)``, ``(1, F, H, W)`` with ``F = n_frames``; integer or
    real dtypes. Raises :class:`InputError` otherwise.
    """
    shape = tuple(array.shape)
    expected = f"({n_frames},H,W), ({n_frames},1,H,W) or (1,{n_frames},H,W)"
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"{source}: dtype {array.dtype} is not supported (expected uint16 or float)")
    if array.size == 0:
        raise InputError(f"{source}: empty image (shape {shape}); expected {expected}")
    if len(shape) == 3 and shape[0] == n_frames:
        layout = f"({n_frames},H,W)"
        stack = array
    elif len(shape) == 4 and shape[0] == n_frames and shape[1] == 1:
        layout = f"({n_frames},1,H,W)"
        stack = array[:, 0]
    elif len(shape) == 4 and shape[0] == 1 and shape[1] == n_frames:
        layout = f"(1,{n_frames},H,W)"
        stack = array[0]
    else:
        found = shape[0] if len(shape) == 3 else "?"
        raise InputError(
            f"{source}: shape {shape} is not a {n_frames}-frame stack (found {found} frames); "
            f"expected {expected}, angle-major (frame = 3·angle + phase){_layout_hint(shape, n_frames)}"
        )
    return np.asarray(stack, dtype=np.float32), layout


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
    if offset is not None and float(np.median(raw)) < offset:
        warnings.append(f"{source}: the median pixel ({float(np.median(raw)):g}) is below the "
                        f"camera offset ({offset:g}): is norm_offset right?")
    return warnings


