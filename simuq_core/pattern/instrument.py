"""The instrument's pattern: wave vectors estimated once per imaging session, phases per file.

The wave vectors (period and orientation of every angle) are set by the instrument's optics (a
grating, an SLM, a galvo setting), not by the sample: every acquisition of one session shares
them, while the phases drift from file to file. A dim file, whose blind search
(:func:`~simuq_core.pattern.blind.estimate_pattern_blind`) finds no peak above its false-alarm
threshold, still holds its phases: fitting a phase at a known ``k`` is one correlation, not a
search over thousands of candidates, and needs far less signal (docs/design.md §5.7).

- :func:`pool_wave_vectors`: the session's wave vectors from the acquisitions whose blind
  estimate is clear, weighted by detection z², with a per-file agreement check;
- :func:`fit_pattern_phases`: phases, band match and modulation of one file at given wave
  vectors, with a detection z of the phase (the band match at ``k`` over its null at the same
  ``|k|`` in other directions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from simuq_core.pattern.blind import (
    BlindPattern,
    OtfFunction,
    _detection_at,
    _fft2,
    _noise_power,
    _phases_and_modulation,
    _separate_bands,
    _wiener_template,
    airy_camera_otf,
)
from simuq_core.pattern.estimate import PatternEstimate

__all__ = [
    "InstrumentPattern",
    "SessionEstimate",
    "fit_pattern_phases",
    "pool_wave_vectors",
    "wave_vector_error",
]

# Directions of the null candidates of a phase fit: |k| kept, rotated by these angles (degrees)
# away from k (and from −k): far from the band's own peak and its Hann main lobe.
_NULL_ROTATIONS_DEG = np.linspace(20.0, 160.0, 24)
# A file's wave vector disagrees with the session's beyond this many combined standard errors.
_AGREEMENT_SIGMAS = 4.0


class InstrumentPattern(NamedTuple):
    """The session's wave vectors ``k`` ``(A, 2)`` (cycles per camera pixel, ``[y, x]``), the
    files they were pooled from, their standard error ``k_error`` ``(A,)`` (cycles/px) and the
    files that disagree with them (``disagreements``: messages)."""

    k: np.ndarray
    sources: tuple[str, ...]
    k_error: np.ndarray
    disagreements: tuple[str, ...]

    @property
    def period_px(self) -> np.ndarray:
        return 1.0 / np.hypot(self.k[:, 0], self.k[:, 1])

    @property
    def orientation_deg(self) -> np.ndarray:
        return np.asarray([_orientation(k) for k in self.k])

    def as_dict(self) -> dict[str, Any]:
        return {"k_cycles_per_px": np.round(self.k, 6).tolist(),
                "period_px": [round(float(v), 4) for v in self.period_px],
                "orientation_deg": [round(float(v), 2) for v in self.orientation_deg],
                "k_error": [float(f"{v:.3g}") for v in self.k_error],
                "sources": list(self.sources), "disagreements": list(self.disagreements)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InstrumentPattern:
        k = np.asarray(d["k_cycles_per_px"], np.float64)
        return cls(k, tuple(d.get("sources", ())), np.asarray(d.get("k_error", np.zeros(len(k))), np.float64),
                   tuple(d.get("disagreements", ())))


def wave_vector_error(quality: np.ndarray, size: int) -> np.ndarray:
    """Standard error (cycles/px) of blind wave vectors of detection z ``quality`` ``(A,)`` on a
    ``size``-px field: one frequency bin ``1/size`` divided by the peak's SNR (the peak of a
    matched filter moves by about its width over its SNR), with the SNR of a Rayleigh peak
    ``√(z² − 1)``."""
    snr = np.sqrt(np.maximum(np.asarray(quality, np.float64) ** 2 - 1.0, 1e-6))
    return 1.0 / (size * snr)


class SessionEstimate(NamedTuple):
    """One file's blind estimate as pooling needs it: ``k`` ``(A, 2)``, detection z ``quality``
    ``(A,)``, ``clear`` (every angle above threshold, no consistency message) and the field
    ``size`` (px, the smaller side)."""

    source: str
    k: np.ndarray
    quality: np.ndarray
    clear: bool
    size: int

    @classmethod
    def from_blind(cls, source: str, est: BlindPattern, size: int) -> SessionEstimate:
        return cls(source, np.asarray(est.estimate.k[0], np.float64), np.asarray(est.quality, np.float64),
                   bool(not est.weak.any() and not est.messages), int(size))


def pool_wave_vectors(estimates: Sequence[SessionEstimate]) -> InstrumentPattern | None:
    """The session's wave vectors from the files' blind estimates.

    Only clear estimates count (a clear, regular pattern). Per angle, their ``k`` are averaged
    with weights ``1/σ²`` (:func:`wave_vector_error`), each first turned to the first clear file's
    sign (``±k`` is one direction); the file farthest from the mean, if more than 4 combined
    standard errors away, is left out and the mean taken again, until the rest agree. Every file
    left out is named in ``disagreements``. ``None`` when no estimate is clear."""
    clear = [e for e in estimates if e.clear]
    if not clear:
        return None
    ref = clear[0].k
    ks = np.asarray([np.where((np.sum(e.k * ref, axis=-1) < 0)[:, None], -e.k, e.k) for e in clear])
    sig = np.asarray([wave_vector_error(e.quality, e.size) for e in clear])  # (N, A)
    pooled, error = np.empty_like(ref), np.empty(len(ref))
    for a in range(len(ref)):  # weighted mean; the worst outlier out until the rest agree
        keep = np.ones(len(clear), bool)
        while True:
            w = keep / sig[:, a] ** 2
            pooled[a] = (ks[:, a] * w[:, None]).sum(axis=0) / w.sum()
            error[a] = 1.0 / np.sqrt(w.sum())
            z = np.hypot(*(ks[:, a] - pooled[a]).T) / np.sqrt(sig[:, a] ** 2 + error[a] ** 2)
            worst = int(np.argmax(np.where(keep, z, -np.inf)))
            if keep.sum() <= 1 or z[worst] <= _AGREEMENT_SIGMAS:
                break
            keep[worst] = False
    disagreements = []
    for e, k, s in zip(clear, ks, sig, strict=True):
        dist = np.hypot(*(k - pooled).T)
        for a in np.flatnonzero(dist > _AGREEMENT_SIGMAS * np.sqrt(s**2 + error**2)):
            disagreements.append(
                f"{e.source}: angle {a} wave vector (period {1 / np.hypot(*k[a]):.3f} px, "
                f"{_orientation(k[a]):.2f}°) disagrees with the session's (period "
                f"{1 / np.hypot(*pooled[a]):.3f} px, {_orientation(pooled[a]):.2f}°) beyond its errors "
                f"({dist[a]:.2g} vs σ {np.sqrt(s[a]**2 + error[a]**2):.2g} cycles/px): left out of the "
                "session's")
    return InstrumentPattern(pooled, tuple(e.source for e in clear), error, tuple(disagreements))


def _orientation(k: np.ndarray) -> float:
    return float(np.degrees(np.arctan2(k[0], k[1])) % 180.0)


def fit_pattern_phases(frames: np.ndarray, k: np.ndarray, otf_cutoff: float,
                       otf: OtfFunction | None = None) -> BlindPattern:
    """Phases, band match and modulation of ``frames`` ``(B, F, H, W)`` or ``(F, H, W)``
    (angle-major, equal phase steps) at the given wave vectors ``k`` ``(A, 2)`` (cycles/px).

    The returned :class:`~simuq_core.pattern.blind.BlindPattern` has ``k`` as given and, as
    ``quality``, the detection z of each angle: the blind search's matched-filter statistic
    (:func:`~simuq_core.pattern.blind._detection_at`, RMS over the time points) at ``k``, over its
    null RMS at the same ``|k|`` rotated 20°–160° away (``RMS = median/√ln2``); ``threshold`` is
    the 1 % false-alarm z of one known location, ``√ln 100``. A weak angle gets a message (its
    phase is unreliable); the wave vectors are not questioned."""
    frames = np.asarray(frames, np.float64)
    frames = frames[None] if frames.ndim == 3 else frames
    k = np.asarray(k, np.float64)
    b, f, h, w = frames.shape
    n_angles = len(k)
    if f % n_angles or f // n_angles < 3:
        raise ValueError(f"{f} frames do not split into {n_angles} angles of >= 3 phases")
    otf = airy_camera_otf(otf_cutoff) if otf is None else otf
    c0, cp = _separate_bands(frames, n_angles)
    cp_spec = _fft2(cp)
    radius = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    noise = _noise_power(cp_spec, radius, otf_cutoff)
    c0_spec = _fft2(c0 - c0.mean(axis=(-2, -1), keepdims=True))
    # one known location: P(z > t) = e^{−t²} for the unit Rayleigh null, 1 % at t = √ln 100
    threshold = float(np.sqrt(np.log(100.0)))
    phases, contrasts, mods, quality, messages = [], [], [], [], []
    rot = np.radians(_NULL_ROTATIONS_DEG)
    for a in range(n_angles):
        ph, co, mod = _phases_and_modulation(c0[:, a], cp[:, a], cp_spec[:, a], noise[:, a], otf, k[a])
        rotated = np.stack([k[a, 0] * np.cos(rot) + k[a, 1] * np.sin(rot),
                            -k[a, 0] * np.sin(rot) + k[a, 1] * np.cos(rot)], -1)
        candidates = np.concatenate([k[a][None], rotated])
        z2 = np.mean([_detection_at(cp[t, a], c0[t, a], otf,
                                    _wiener_template(c0_spec[t, a], radius, float(noise[t, a]), otf),
                                    float(noise[t, a]), candidates) ** 2 for t in range(b)], axis=0)
        z = np.sqrt(z2)
        null_rms = np.median(z[1:]) / np.sqrt(np.log(2.0))
        z = float(z[0] / max(null_rms, 1e-30))
        phases.append(ph)
        contrasts.append(co)
        mods.append(mod)
        quality.append(z)
        if z < threshold:
            messages.append(f"angle {a}: phase at the instrument's wave vector not detected (z {z:.1f} < "
                            f"{threshold:.1f}, band match {np.mean(co):.3f}): its phase is unreliable")
    period = 1.0 / np.hypot(k[:, 0], k[:, 1])
    orient = np.degrees(np.arctan2(k[:, 0], k[:, 1])) % 180.0
    estimate = PatternEstimate(jnp.asarray(np.broadcast_to(k, (b, n_angles, 2)), jnp.float32),
                               jnp.asarray(np.asarray(phases).T, jnp.float32),
                               jnp.asarray(np.asarray(contrasts).T, jnp.float32),
                               jnp.zeros((b, 2), jnp.float32))
    return BlindPattern(estimate, np.asarray(mods), np.asarray(quality), threshold, period, orient,
                        tuple(messages))
