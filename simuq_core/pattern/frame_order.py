"""A quick frame-order check from the raw frames alone: are they angle-major?

Frames are expected angle-major (``frame = n_phases·angle + phase``). For every angle the frames
minus their mean over the angle's phases keep only the pattern-modulated part of the signal, whose
spectrum peaks at the pattern wave vector ``±k`` (the sample's DC term shifted by ``k``). The peak
of the summed ``|FFT|`` (Hann window, DC neighbourhood excluded, sub-bin centroid) gives each
angle's orientation; the ``n_angles`` orientations must be ``180°/n_angles`` apart (60° for 3
angles). Weak peaks, or orientations not evenly spread, give a warning (with a hint when the
phase-major grouping would pass). It is a hint, never an error: sparse or low-modulation samples
can fail it.

This is deliberately not :func:`simuq_core.pattern.estimate.estimate_pattern`: it needs no optics
(no OTF, no period range) and returns only orientation, period and a peak-to-median contrast per
group of frames (:class:`FramePeaks`), which is all the order check compares. The pattern used for
reconstruction always comes from :mod:`simuq_core.pattern.estimate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

__all__ = [
    "FramePeaks",
    "MIN_SIZE_FOR_ORDER_CHECK",
    "PEAK_CONTRAST_MIN",
    "frame_order_warnings",
    "pattern_peaks",
]


# A pattern peak must exceed this multiple of the median of the search band. On simulated stacks
# (period 5 px, m 0.8, 200 photons, 32-64 px) 90% of peaks exceed 15; pure noise gives ≈ 3.5.
PEAK_CONTRAST_MIN = 6.0


# Phase-major grouping with peaks this much clearer than angle-major means phase-major frames
# (the right grouping is ≈ 3× clearer on simulated data, the wrong one ≈ 1/3; noise ≈ 1).
PHASE_MAJOR_RATIO = 1.3


# Largest accepted deviation of the angle between orientations from 180°/n_angles.
ORIENTATION_TOL_DEG = 12.0


# Frequencies searched for the pattern, cycles per camera pixel: above the lowest bins (sample
# structure, vignetting) and below Nyquist.
_BAND = (0.08, 0.5)


_CLIP_PERCENT = 0.1


# The orientation check needs a few frequency bins along the pattern's wave vector.
MIN_SIZE_FOR_ORDER_CHECK = 24


@dataclass(frozen=True)
class FramePeaks:
    """Per angle: pattern orientation in degrees ``[0, 180)`` (of the wave vector, measured from
    the x axis towards y), period in camera pixels, and peak contrast (peak / median |FFT|)."""

    orientation_deg: np.ndarray
    period_px: np.ndarray
    contrast: np.ndarray

    def as_dict(self) -> dict[str, list[float]]:
        return {"orientation_deg": [round(float(v), 2) for v in self.orientation_deg],
                "period_px": [round(float(v), 3) for v in self.period_px],
                "peak_contrast": [round(float(v), 2) for v in self.contrast]}


def _peak(spectrum: np.ndarray, fy: np.ndarray, fx: np.ndarray, band: np.ndarray):
    """Sub-bin centroid ``(ky, kx)`` of the largest |FFT| in ``band`` (over its 3x3
    neighbourhood) and that largest value."""
    masked = np.where(band, spectrum, -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(masked)), spectrum.shape)
    h, w = spectrum.shape
    ys, xs = (np.arange(iy - 1, iy + 2) % h), (np.arange(ix - 1, ix + 2) % w)
    patch = spectrum[np.ix_(ys, xs)]
    dy, dx = np.mgrid[-1:2, -1:2]
    weight = patch.sum()
    step_y, step_x = fy[1] - fy[0], fx[1] - fx[0]
    ky = fy[iy] + step_y * float((patch * dy).sum() / weight)
    kx = fx[ix] + step_x * float((patch * dx).sum() / weight)
    return ky, kx, float(spectrum[iy, ix])


def pattern_peaks(raw: np.ndarray, groups: list[list[int]]) -> FramePeaks:
    """Pattern orientation, period and peak contrast of each group of frames (one angle each).

    raw : ``(F, H, W)``; groups : frame indices of each angle, in phase order.

    The group is demodulated with the nominal equal phase steps, ``c = Σ_p x_p · exp(−2πi p/P)``,
    which cancels the unmodulated (widefield) part and keeps one pattern sideband
    ``FT(c)(f) ∝ Ê(f − k) · OTF(f)``. Its raw maximum is biased towards low frequencies (the OTF
    falls with ``|f|``, and filaments spread ``Ê`` along lines), so ``c`` is multiplied by the
    zero-mean widefield image first: in Fourier space that cross-correlates the sideband with the
    widefield band, which adds up coherently (``Σ |Ê|² · OTF · OTF``) only at the true ``k``
    (the shift estimate of classical SIM, e.g. fairSIM). ``contrast`` is the peak over the median
    of the search band.
    """
    _, h, w = raw.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    fy = np.fft.fftshift(np.fft.fftfreq(h))
    fx = np.fft.fftshift(np.fft.fftfreq(w))
    radius = np.hypot(fy[:, None], fx[None, :])
    # Exclude the DC neighbourhood: at least two bins (the Hann window spreads DC over ±1 bin).
    low = max(_BAND[0], 2.01 / min(h, w))
    band = (radius >= low) & (radius <= _BAND[1])
    # Clip the extreme 0.1% at both ends: a few hot or wrapped-around pixels would otherwise
    # dominate the product below and hide the pattern.
    lo, hi = np.percentile(raw, [_CLIP_PERCENT, 100.0 - _CLIP_PERCENT])
    orient, period, contrast = [], [], []
    for idx in groups:
        frames = np.clip(raw[idx].astype(np.float64), lo, hi)
        widefield = frames.mean(axis=0)
        steps = np.exp(-2j * np.pi * np.arange(len(idx)) / len(idx))
        sideband = np.tensordot(steps, frames - widefield, axes=1)
        product = sideband * (widefield - widefield.mean()) * window
        spec = np.abs(np.fft.fftshift(np.fft.fft2(product)))
        ky, kx, peak = _peak(spec, fy, fx, band)
        orient.append(np.degrees(np.arctan2(ky, kx)) % 180.0)
        period.append(1.0 / max(np.hypot(ky, kx), 1e-12))
        contrast.append(peak / max(float(np.median(spec[band])), 1e-30))
    return FramePeaks(np.asarray(orient), np.asarray(period), np.asarray(contrast))


def _spread_error(orientation_deg: np.ndarray) -> float:
    """Largest deviation (degrees) of the gaps between sorted orientations (mod 180°) from even
    spacing ``180°/n``."""
    n = len(orientation_deg)
    o = np.sort(orientation_deg % 180.0)
    gaps = [b - a for a, b in pairwise(o)] + [o[0] + 180.0 - o[-1]]
    return float(np.max(np.abs(np.asarray(gaps) - 180.0 / n)))


def _order_ok(est: FramePeaks) -> bool:
    return bool((est.contrast >= PEAK_CONTRAST_MIN).all()
                and _spread_error(est.orientation_deg) <= ORIENTATION_TOL_DEG)


def frame_order_warnings(raw: np.ndarray, source: str, n_angles: int = 3,
                         n_phases: int = 3) -> tuple[list[str], FramePeaks | None]:
    """Warnings when the angle-major frame order looks wrong, and the pattern estimate.

    raw : ``(F, H, W)`` with ``F = n_angles · n_phases`` (module docstring). Two hypotheses are
    compared: angle-major groups ``[P·a + p]`` and phase-major groups ``[A·p + a]``. Demodulating
    the right grouping adds the phases coherently (peaks ≈ 3× higher on simulated data), so
    phase-major peaks clearly stronger than angle-major ones mean the frames are phase-major.
    Returns no estimate (and a note) when the frames are too small to resolve the orientation.
    """
    f, h, w = raw.shape
    if f != n_angles * n_phases or n_angles < 2:
        return [], None
    if min(h, w) < MIN_SIZE_FOR_ORDER_CHECK:
        return [f"{source}: {h}x{w} px is too small to check the frame order "
                f"(needs ≥ {MIN_SIZE_FOR_ORDER_CHECK} px)"], None
    angle_major = pattern_peaks(raw, [[n_phases * a + p for p in range(n_phases)]
                                         for a in range(n_angles)])
    phase_major = pattern_peaks(raw, [[n_angles * p + a for p in range(n_phases)]
                                         for a in range(n_angles)])
    found = (f"pattern orientations of angles 0..{n_angles - 1}: "
             f"{', '.join(f'{o:.0f}°' for o in angle_major.orientation_deg)}, peak contrast "
             f"{', '.join(f'{c:.1f}' for c in angle_major.contrast)}")
    if (phase_major.contrast.mean() > PHASE_MAJOR_RATIO * angle_major.contrast.mean()
            and _order_ok(phase_major)):
        return [f"{source}: the frames look phase-major (frame = {n_angles}·phase + angle): "
                f"grouping them that way gives {phase_major.contrast.mean():.1f}× clearer pattern "
                f"peaks than angle-major ({angle_major.contrast.mean():.1f}×); reorder them to "
                f"angle-major (frame = {n_phases}·angle + phase)"], angle_major
    if _order_ok(angle_major):
        return [], angle_major
    spacing = 180.0 / n_angles
    weak = [a for a, c in enumerate(angle_major.contrast) if c < PEAK_CONTRAST_MIN]
    why = (f"no clear pattern peak (contrast < {PEAK_CONTRAST_MIN:g}) for angle(s) {weak}" if weak
           else f"the orientations are not {spacing:.0f}° apart (off by "
                f"{_spread_error(angle_major.orientation_deg):.0f}°)")
    return [f"{source}: could not confirm the frame order: {why} ({found}); expected "
            f"{n_angles} pattern orientations {spacing:.0f}° apart, frames angle-major "
            f"(frame = {n_phases}·angle + phase). Low signal or sparse samples can fail this "
            "check; otherwise check the frame order"], angle_major
