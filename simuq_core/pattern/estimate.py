"""Classical SIM pattern estimation and the parametric light pattern (docs/design.md §1, §7, §9).

The illumination of frame ``f = n_phases·a + p`` is ``l_f(x) = 1 + m_a·cos(2π k_a·x + φ_a + 2πp/P)``
(angle-major, equal phase steps), with ``x`` in LR pixels measured from the image corner (LR pixel
``i`` has centre ``i + 0.5``; HR pixel ``j`` of an ``r``× finer grid has centre ``(j + 0.5)/r``), as
in :func:`simuq_core.optics.imaging.illumination_patterns`.

**Estimation** (what fairSIM / HiFi-SIM do, in JAX and batched): for every angle the phase-weighted
sum ``c₊(x) = (1/P)·Σ_p D_p(x)·e^{−2πip/P}`` isolates the shifted band
``(m/2)·e^{iφ}·h ⊛ (s·e^{2πik·x})`` (spectrum ``(m/2)·e^{iφ}·H(f)·S(f − k)``), and the mean ``c₀``
is the widefield image (``H(f)·S(f)``). A coarse ``k`` is the peak of the plain cross-correlation
``|FFT(c₊·c₀)|`` inside the searched ``|k|`` annulus; it is biased towards low ``|k|`` by the OTF's
slope (~0.005 cycles/px on the default geometry). The refinement maximises instead the
*normalised, OTF-weighted band match* ``ρ(q)`` (:func:`_band_match`), whose modulus is 1 exactly at
``q = k`` for noise- and background-free data, and ``arg ρ(k) = φ`` at the reference point
``x_c`` (the image centre, which decouples phase and frequency errors). No apodisation: a
window's spectral leakage mixes frequencies of different OTF weight and biased ``k`` by ~0.003
cycles/px (Tukey, 25 % taper), the bare crop edges by ~3e-4. The phase-step direction need not be
known: a reversed order yields ``(−k, −φ)``, which gives the same pattern.

The blind full-band search for real acquisitions is :mod:`simuq_core.pattern.blind`; the light
pattern and its variance drawn from an estimate, :mod:`simuq_core.pattern.maps`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "PATTERN_KEYS",
    "PatternEstimate",
    "estimate_pattern",
    "shift_pattern_origin",
]


class PatternEstimate(NamedTuple):
    """Per-sample, per-angle estimates. ``k``: ``(B, A, 2)`` ``(ky, kx)`` cycles per LR pixel;
    ``phase``: ``(B, A)`` radians at the reference point ``x_c``; ``contrast``: ``(B, A)`` the
    normalised band match ``|ρ(k)|`` in [0, 1] (how well the bands agree: near 1 for a clear
    pattern); ``origin``: ``(B, 2)`` the reference point relative to the input's centre, in LR
    pixels (0 for an estimate from the input itself; a tile of a larger image refers to the
    image's point, so that phase *and* variance are one pattern across tiles)."""

    k: jax.Array
    phase: jax.Array
    contrast: jax.Array
    origin: jax.Array


def airy_otf(f: jax.Array, cutoff: float) -> jax.Array:
    """Incoherent OTF of a circular pupil at radial frequency ``f`` (cutoff ``2NA/λ``, same units)."""
    rho = jnp.clip(jnp.abs(f) / cutoff, 0.0, 1.0)
    return (2.0 / jnp.pi) * (jnp.arccos(rho) - rho * jnp.sqrt(1.0 - rho**2))


def _lr_otf(fy: jax.Array, fx: jax.Array, cutoff: float) -> jax.Array:
    """OTF of the camera image: Airy OTF × the LR pixel's box integration (cycles per LR pixel)."""
    return airy_otf(jnp.sqrt(fy**2 + fx**2), cutoff) * jnp.sinc(fy) * jnp.sinc(fx)


def _band_match(c_plus_spec, c0, otf, fy, fx, qy, qx, cutoff, xc):
    """Normalised OTF-weighted overlap of the shifted band with the widefield band moved by ``q``.

    For candidate ``q`` ``(B, A, N)``: ``a(f) = C₊(f)·H(f − q)``, ``b(f) = C₀(f − q)·H(f)`` (both
    ``H(f)H(f−k)S(f−k)`` at ``q = k``), returns ``⟨a, b⟩ / (‖a‖·‖b‖)`` ``(B, A, N)`` complex: its
    modulus peaks at 1 at ``q = k`` without the OTF bias of a plain cross-correlation, and its
    argument is the pattern phase at ``xc``.
    """
    h, w = c0.shape[-2:]
    y = jnp.arange(h, dtype=jnp.float32) + 0.5 - xc[0]
    x = jnp.arange(w, dtype=jnp.float32) + 0.5 - xc[1]
    ramp = jnp.exp(2j * jnp.pi * (qy[..., None, None] * y.reshape(1, 1, 1, h, 1)
                                  + qx[..., None, None] * x.reshape(1, 1, 1, 1, w)))
    c0_shift = jnp.fft.fft2(c0[:, :, None] * ramp)  # C₀(f − q) on the f grid, (B, A, N, H, W)
    fyq = fy.reshape(1, 1, 1, h, 1) - qy[..., None, None]
    fxq = fx.reshape(1, 1, 1, 1, w) - qx[..., None, None]
    a = c_plus_spec[:, :, None] * _lr_otf(fyq, fxq, cutoff)
    b = c0_shift * otf.reshape(1, 1, 1, h, w)
    inner = (a * jnp.conj(b)).sum(axis=(-2, -1))
    norm = jnp.sqrt((jnp.abs(a) ** 2).sum(axis=(-2, -1)) * (jnp.abs(b) ** 2).sum(axis=(-2, -1)))
    return inner / jnp.maximum(norm, 1e-30)


def estimate_pattern(
    frames: jax.Array,
    n_angles: int,
    otf_cutoff: float,
    k_range: tuple[float, float] = (0.08, 0.45),
    pad: int = 4,
    refine_steps: int = 8,
    n_candidates: int = 3,
) -> PatternEstimate:
    """Estimate ``k`` and the centre phase of every angle from raw frames ``(B, F, H, W)``.

    ``otf_cutoff``: ``2NA/λ`` in cycles per LR pixel. ``k_range``: the search annulus for ``|k|``
    (cycles per LR pixel; keep the low frequencies out: there the correlation has a spurious peak
    from the widefield band). No gradient flows through the estimate.
    """
    frames = jax.lax.stop_gradient(frames.astype(jnp.float32))
    b, f, h, w = frames.shape
    if f % n_angles:
        raise ValueError(f"{f} frames do not split into n_angles={n_angles} angles")
    p = f // n_angles
    if p < 3:
        raise ValueError(f"pattern estimation needs >= 3 phases per angle, got {p}")
    d = frames.reshape(b, n_angles, p, h, w)
    steps = jnp.exp(-2j * jnp.pi * jnp.arange(p) / p).reshape(1, 1, p, 1, 1)
    c_plus = (d * steps).mean(axis=2)
    c0 = d.mean(axis=2)
    # Coarse: the strongest peaks of the plain cross-correlation on a zero-padded FFT (OTF-biased
    # towards low |k| by a fraction of a bin; the refinement removes the bias). A noisy or sparse
    # sample can make a side lobe win here, so the best ``n_candidates`` (each at least 1.5 bins
    # from the others) are all refined and the best final match is kept.
    ph, pw = pad * h, pad * w
    spec = jnp.abs(jnp.fft.fft2(c_plus * c0, s=(ph, pw)))
    cfy = jnp.fft.fftfreq(ph).reshape(ph, 1)
    cfx = jnp.fft.fftfreq(pw).reshape(1, pw)
    radius = jnp.sqrt(cfy**2 + cfx**2)
    inside = (radius >= k_range[0]) & (radius <= k_range[1])
    masked = jnp.where(inside.reshape(1, 1, ph, pw), spec, 0.0)
    kys, kxs = [], []
    for _ in range(n_candidates):
        flat = masked.reshape(b, n_angles, -1).argmax(axis=-1)
        ky, kx = cfy[:, 0][flat // pw], cfx[0][flat % pw]
        kys.append(ky)
        kxs.append(kx)
        near = ((cfy.reshape(1, 1, ph, 1) - ky[..., None, None]) ** 2
                + (cfx.reshape(1, 1, 1, pw) - kx[..., None, None]) ** 2) < (1.5 / min(h, w)) ** 2
        masked = jnp.where(near, 0.0, masked)
    nc = n_candidates
    ky = jnp.stack(kys, axis=-1).reshape(b, n_angles * nc)
    kx = jnp.stack(kxs, axis=-1).reshape(b, n_angles * nc)
    fy = jnp.fft.fftfreq(h).reshape(h, 1)
    fx = jnp.fft.fftfreq(w).reshape(1, w)
    otf = _lr_otf(fy, fx, otf_cutoff)
    c_plus_spec = jnp.repeat(jnp.fft.fft2(c_plus), nc, axis=1)
    c0 = jnp.repeat(c0, nc, axis=1)
    centre = (h / 2.0, w / 2.0)
    offsets = jnp.arange(-1, 2, dtype=jnp.float32)
    step = 1.0 / min(h, w)
    n = n_angles * nc

    def match(qy, qx):
        return _band_match(c_plus_spec, c0, otf, fy, fx, qy, qx, otf_cutoff, centre)

    for _ in range(refine_steps):
        grid = (b, n, 3, 3)
        qy = jnp.broadcast_to(ky[..., None, None] + step * offsets.reshape(1, 1, 3, 1), grid)
        qx = jnp.broadcast_to(kx[..., None, None] + step * offsets.reshape(1, 1, 1, 3), grid)
        qy, qx = qy.reshape(b, n, 9), qx.reshape(b, n, 9)
        best = jnp.abs(match(qy, qx)).argmax(axis=-1)[..., None]
        ky = jnp.take_along_axis(qy, best, axis=-1)[..., 0]
        kx = jnp.take_along_axis(qx, best, axis=-1)[..., 0]
        step = step / 2.0
    final = match(ky[..., None], kx[..., None])[..., 0].reshape(b, n_angles, nc)
    pick = jnp.abs(final).argmax(axis=-1)[..., None]
    final = jnp.take_along_axis(final, pick, axis=-1)[..., 0]
    ky = jnp.take_along_axis(ky.reshape(b, n_angles, nc), pick, axis=-1)[..., 0]
    kx = jnp.take_along_axis(kx.reshape(b, n_angles, nc), pick, axis=-1)[..., 0]
    return PatternEstimate(jnp.stack([ky, kx], axis=-1), jnp.angle(final), jnp.abs(final),
                           jnp.zeros((b, 2), jnp.float32))


PATTERN_KEYS = ("pattern_k", "pattern_phase", "pattern_contrast", "pattern_origin")


def shift_pattern_origin(estimate: PatternEstimate, crop_origin: tuple[int, int],
                         crop_shape: tuple[int, int], image_shape: tuple[int, int]) -> PatternEstimate:
    """The same pattern for a crop (or tile) of the image it was estimated on.

    ``estimate.origin`` ``(B, 2)`` is the phase reference point relative to the *image* centre
    (LR px); the crop of shape ``crop_shape`` whose top-left pixel is ``crop_origin`` ``(y0, x0)``
    gets ``origin' = (H/2, W/2) + origin − (y0 + h/2, x0 + w/2)`` (relative to its own centre), as
    ``predict.tile_patterns`` does; ``k``, phase and contrast are unchanged, so
    :func:`pattern_maps` on the crop equals the image's maps cut to the crop.
    """
    (y0, x0), (ch, cw), (h, w) = crop_origin, crop_shape, image_shape
    shift = np.asarray([h / 2.0 - (y0 + ch / 2.0), w / 2.0 - (x0 + cw / 2.0)], np.float32)
    return estimate._replace(origin=jnp.asarray(estimate.origin) + jnp.asarray(shift)[None])
