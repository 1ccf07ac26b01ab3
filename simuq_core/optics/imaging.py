"""SIM image formation: PSFs, illumination patterns and the forward model.

Shape conventions (HR = the model grid, ``r`` = ``hr_factor`` times finer than the camera grid):

- emitter ``e``: ``(..., Hh, Wh)``, non-negative fluorophore density;
- light pattern ``l``: ``(..., F, Hh, Wh)`` with ``F = n_angles * n_phases`` frames in angle-major
  order (``frame = n_phases * angle + phase``);
- PSF ``p``: ``(..., K, K)``, ``K`` odd, non-negative, sums to 1;
- raw / reconstruction: ``(..., F, H, W)`` with ``Hh = r * H``.

The forward model (docs/design.md §1) is ``rec_k = block_mean_r(conv_same(e * l_k, p))``. Every
convolution here is a *true* convolution, ``y[n] = sum_m k[m] x[n - m]``, computed with FFTs and
zero padding (linear, never circular). The variance path in :mod:`simuq_core.uncertainty.propagation` uses the
very same functions so the two can never disagree on orientation (docs/design.md §5).

PSF and pattern *construction* is NumPy (it is parameter set-up, done once per sample); everything a
network output flows through is JAX and jittable.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

__all__ = [
    "PatternParams",
    "airy_psf",
    "align_ranks",
    "block_mean",
    "box_mean_full",
    "default_psf_size",
    "fft_convolve",
    "fft_convolve_sum",
    "forward_model",
    "gaussian_psf",
    "illumination_patterns",
    "merged_psf_box_kernel",
    "otf_cutoff_cycles_per_px",
    "pooled_full_convolve",
    "sample_pattern_params",
]


# ----------------------------------------------------------------------------------------------
# PSFs (NumPy)
# ----------------------------------------------------------------------------------------------


def airy_first_zero_nm(na: float, wavelength_nm: float) -> float:
    """Radius of the first dark ring of the Airy disc, ``0.61 λ / NA``."""
    return 0.6098 * wavelength_nm / na


def default_psf_size(na: float, wavelength_nm: float, pixel_nm: float) -> int:
    """Odd kernel size covering the Airy disc and its first bright ring (radius ≈ 1.7 × first zero).

    The first ring holds ~7% of the energy; truncating before it biases the blur width.
    """
    radius_px = math.ceil(1.7 * airy_first_zero_nm(na, wavelength_nm) / pixel_nm)
    return 2 * radius_px + 1


def _pixel_grid(size: int, oversample: int) -> np.ndarray:
    """Sub-pixel sample offsets (in pixels) of a centred ``size × size`` grid, ``(size*o,)``."""
    sub = (np.arange(size * oversample) + 0.5) / oversample - size / 2.0
    return sub


def _integrate_pixels(values: np.ndarray, size: int, oversample: int) -> np.ndarray:
    """Average ``(size*o, size*o)`` sub-samples into ``(size, size)`` pixels."""
    return values.reshape(size, oversample, size, oversample).mean(axis=(1, 3))


def airy_psf(
    size: int,
    na: float,
    wavelength_nm: float,
    pixel_nm: float,
    oversample: int = 5,
) -> np.ndarray:
    """Widefield Airy intensity PSF ``(2 J1(v)/v)²`` with ``v = 2π·NA·ρ/λ``, integrated over pixels.

    Parameters
    ----------
    size : odd kernel size ``K`` in pixels of the grid the PSF is sampled on (the HR grid).
    na, wavelength_nm : numerical aperture and emission wavelength.
    pixel_nm : pixel size of that grid in nm.
    oversample : sub-samples per pixel and axis used to integrate the intensity over each pixel.

    Returns
    -------
    ``(K, K)`` float64 kernel, non-negative, sums to 1, centred on pixel ``K // 2``.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"PSF size must be a positive odd integer, got {size}")
    sub = _pixel_grid(size, oversample) * pixel_nm
    yy, xx = np.meshgrid(sub, sub, indexing="ij")
    v = 2.0 * np.pi * na * np.hypot(yy, xx) / wavelength_nm
    with np.errstate(invalid="ignore", divide="ignore"):
        amp = np.where(v > 1e-9, 2.0 * special.j1(v) / v, 1.0)
    psf = _integrate_pixels(amp**2, size, oversample)
    return psf / psf.sum()


def gaussian_psf(size: int, fwhm_px: float, oversample: int = 5) -> np.ndarray:
    """Isotropic Gaussian PSF of the given FWHM (in pixels), integrated over pixels; sums to 1."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"PSF size must be a positive odd integer, got {size}")
    if fwhm_px <= 0:
        raise ValueError(f"PSF FWHM must be > 0, got {fwhm_px}")
    sigma = fwhm_px / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    sub = _pixel_grid(size, oversample)
    yy, xx = np.meshgrid(sub, sub, indexing="ij")
    psf = _integrate_pixels(np.exp(-(yy**2 + xx**2) / (2 * sigma**2)), size, oversample)
    return psf / psf.sum()


def otf_cutoff_cycles_per_px(na: float, wavelength_nm: float, pixel_nm: float) -> float:
    """Incoherent OTF cut-off ``2 NA / λ`` expressed in cycles per pixel of size ``pixel_nm``."""
    return 2.0 * na / wavelength_nm * pixel_nm


# ----------------------------------------------------------------------------------------------
# Illumination patterns (NumPy)
# ----------------------------------------------------------------------------------------------


class PatternParams(NamedTuple):
    """Per-frame pattern parameters, angle-major.

    k : ``(F, 2)`` wave vector ``(ky, kx)`` in cycles per LR pixel.
    phase : ``(F,)`` phase in radians.
    modulation : ``(F,)`` modulation depth ``m``.
    """

    k: np.ndarray
    phase: np.ndarray
    modulation: np.ndarray


def sample_pattern_params(
    rng: np.random.Generator,
    n_angles: int,
    n_phases: int,
    period_lr_px: float,
    modulation: float,
    period_jitter: float = 0.0,
    modulation_jitter: float = 0.0,
) -> PatternParams:
    """Random SIM pattern set: base angle ``θ0 ~ U[0, π)``, angles ``θ0 + a·π/n_angles``,
    a random phase offset per angle and equal phase steps ``2π/n_phases`` (docs/design.md §7).

    ``period_jitter`` / ``modulation_jitter`` are relative half-widths of a uniform jitter drawn once
    per sample (0 = fixed).
    """
    theta0 = rng.uniform(0.0, np.pi)
    period = period_lr_px * (1.0 + rng.uniform(-period_jitter, period_jitter))
    m = modulation * (1.0 + rng.uniform(-modulation_jitter, modulation_jitter))
    m = float(np.clip(m, 0.0, 1.0))
    ks, phases = [], []
    for a in range(n_angles):
        theta = theta0 + a * np.pi / n_angles
        phi0 = rng.uniform(0.0, 2.0 * np.pi)
        for p in range(n_phases):
            ks.append((np.sin(theta) / period, np.cos(theta) / period))
            phases.append(phi0 + 2.0 * np.pi * p / n_phases)
    n = n_angles * n_phases
    return PatternParams(
        k=np.asarray(ks, dtype=np.float64),
        phase=np.asarray(phases, dtype=np.float64),
        modulation=np.full(n, m, dtype=np.float64),
    )


def illumination_patterns(shape_hr: tuple[int, int], hr_factor: int, params: PatternParams):
    """Patterns ``1 + m·cos(2π k·x + φ)`` sampled at HR pixel centres, ``(F, Hh, Wh)`` float64.

    ``x`` is measured in LR pixels (HR pixel ``j`` has centre ``(j + 0.5) / r``), so ``k`` is in
    cycles per LR pixel. With equally spaced phases the mean over the phases of one angle is exactly
    1 at every pixel, hence so is the mean over all frames.
    """
    hh, wh = shape_hr
    y = (np.arange(hh) + 0.5) / hr_factor
    x = (np.arange(wh) + 0.5) / hr_factor
    arg = (
        2.0 * np.pi * (params.k[:, 0, None, None] * y[None, :, None]
                       + params.k[:, 1, None, None] * x[None, None, :])
        + params.phase[:, None, None]
    )
    return 1.0 + params.modulation[:, None, None] * np.cos(arg)


# ----------------------------------------------------------------------------------------------
# Forward model (JAX, jittable)
# ----------------------------------------------------------------------------------------------


def _fft_size(n: int) -> int:
    """Smallest ``m >= n`` whose only prime factors are 2, 3 and 5 (fast FFT length)."""
    m = max(n, 1)
    while True:
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1


def align_ranks(a: jnp.ndarray, b: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Prepend unit axes to the lower-rank array (explicit under rank_promotion="raise")."""
    if a.ndim < b.ndim:
        a = a.reshape((1,) * (b.ndim - a.ndim) + a.shape)
    elif b.ndim < a.ndim:
        b = b.reshape((1,) * (a.ndim - b.ndim) + b.shape)
    return a, b


def fft_convolve(x: jnp.ndarray, kernel: jnp.ndarray, mode: str = "same") -> jnp.ndarray:
    """Linear (zero-padded) 2-D true convolution over the last two axes, via real FFTs.

    Parameters
    ----------
    x : ``(..., H, W)``.
    kernel : ``(..., K1, K2)``, leading axes broadcast against ``x``'s.
    mode : ``"full"`` -> ``(..., H+K1-1, W+K2-1)``; ``"same"`` -> ``(..., H, W)`` centred on kernel
        pixel ``(K1//2, K2//2)`` (``y[n] = sum_m k[m] x[n + K//2 - m]``).
    """
    h, w = x.shape[-2:]
    k1, k2 = kernel.shape[-2:]
    x, kernel = align_ranks(x, kernel)
    full_h, full_w = h + k1 - 1, w + k2 - 1
    fh, fw = _fft_size(full_h), _fft_size(full_w)
    spec = jnp.fft.rfft2(x, s=(fh, fw)) * jnp.fft.rfft2(kernel, s=(fh, fw))
    full = jnp.fft.irfft2(spec, s=(fh, fw))[..., :full_h, :full_w]
    if mode == "full":
        return full
    if mode == "same":
        return full[..., k1 // 2 : k1 // 2 + h, k2 // 2 : k2 // 2 + w]
    raise ValueError(f"mode must be 'full' or 'same', got {mode!r}")


def fft_convolve_sum(pairs: list[tuple[jnp.ndarray, jnp.ndarray]]) -> jnp.ndarray:
    """``sum_i conv_full(x_i, k_i)`` with one inverse FFT (spectra add linearly).

    Every pair must give the same "full" size ``H_i + K1_i − 1`` (and along ``W``); leading axes
    broadcast as in :func:`fft_convolve`. Used by the exact variance path, whose terms share the
    output grid of the mean path.
    """
    sizes = {(x.shape[-2] + k.shape[-2] - 1, x.shape[-1] + k.shape[-1] - 1) for x, k in pairs}
    if len(sizes) != 1:
        raise ValueError(f"fft_convolve_sum needs equal full sizes, got {sorted(sizes)}")
    full_h, full_w = sizes.pop()
    fh, fw = _fft_size(full_h), _fft_size(full_w)
    spec = None
    for x, kernel in pairs:
        x, kernel = align_ranks(x, kernel)
        term = jnp.fft.rfft2(x, s=(fh, fw)) * jnp.fft.rfft2(kernel, s=(fh, fw))
        if spec is not None and term.ndim != spec.ndim:
            rank = max(term.ndim, spec.ndim)
            term = term.reshape((1,) * (rank - term.ndim) + term.shape)
            spec = spec.reshape((1,) * (rank - spec.ndim) + spec.shape)
        spec = term if spec is None else spec + term
    return jnp.fft.irfft2(spec, s=(fh, fw))[..., :full_h, :full_w]


def box_mean_full(x: jnp.ndarray, r: int) -> jnp.ndarray:
    """``conv_full(x, ones(r, r)) / r²`` by a running window sum (no FFT).

    ``(..., Hh, Wh) -> (..., Hh + r − 1, Wh + r − 1)``.
    """
    if r == 1:
        return x
    lead = (1,) * (x.ndim - 2)
    pad = [(0, 0)] * (x.ndim - 2) + [(r - 1, r - 1), (r - 1, r - 1)]
    summed = jnp.pad(x, pad)
    for window in (lead + (r, 1), lead + (1, r)):  # separable: 2r adds per pixel, not r²
        summed = jax.lax.reduce_window(summed, 0.0, jax.lax.add, window, (1,) * x.ndim, "VALID")
    return summed / (r * r)


def block_mean(x: jnp.ndarray, r: int) -> jnp.ndarray:
    """Mean over non-overlapping ``r × r`` blocks: ``(..., r·H, r·W) -> (..., H, W)``."""
    if r == 1:
        return x
    *lead, hh, wh = x.shape
    if hh % r or wh % r:
        raise ValueError(f"spatial shape {(hh, wh)} is not divisible by the pooling factor {r}")
    return x.reshape(*lead, hh // r, r, wh // r, r).mean(axis=(-3, -1))


def forward_model(
    emitter: jnp.ndarray,
    light_pattern: jnp.ndarray,
    psf: jnp.ndarray,
    r: int,
    background: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """``rec_k = block_mean_r(conv_same(e · l_k, p)) [+ bg]``.

    Parameters
    ----------
    emitter : ``(B, Hh, Wh)``.
    light_pattern : ``(B, F, Hh, Wh)``.
    psf : ``(B, K, K)`` (one PSF per sample) or ``(K, K)`` (shared).
    r : pooling factor (HR pixels per LR pixel along each axis).
    background : optional ``(B, H, W)`` or ``(B, F, H, W)`` additive background on the LR grid.

    Returns
    -------
    ``(B, F, H, W)``.
    """
    deconv = emitter[..., None, :, :] * light_pattern
    kernel = psf[..., None, :, :] if psf.ndim == 3 else psf
    rec = block_mean(fft_convolve(deconv, kernel, "same"), r)
    if background is not None:
        rec = rec + (background[:, None] if background.ndim == 3 else background)
    return rec


def merged_psf_box_kernel(psf: jnp.ndarray, r: int) -> jnp.ndarray:
    """``G = conv_full(p, ones(r, r)) / r²``: PSF and ``r × r`` box mean in one kernel.

    ``(..., K, K) -> (..., K+r-1, K+r-1)`` (docs/design.md §4.2).
    """
    box = jnp.ones((r, r), dtype=psf.dtype) / (r * r)
    return fft_convolve(psf, box, "full")


def pooled_full_convolve(x: jnp.ndarray, kernel: jnp.ndarray, r: int, psf_size: int) -> jnp.ndarray:
    """``conv_full(x, kernel)`` sampled on the LR grid: every ``r``-th pixel from offset
    ``r - 1 + K//2`` (``K`` = ``psf_size``), aligned with :func:`forward_model`.

    With ``kernel = merged_psf_box_kernel(p, r)`` this equals ``block_mean(conv_same(x, p), r)``;
    with ``kernel = G²`` it gives the exact variance of that pooled blur for independent ``x``.

    x : ``(..., r·H, r·W)``; kernel : ``(..., Kg, Kg)`` broadcastable. Returns ``(..., H, W)``.
    """
    hh, wh = x.shape[-2:]
    off = r - 1 + psf_size // 2
    full = fft_convolve(x, kernel, "full")
    return full[..., off : off + hh : r, off : off + wh : r]
