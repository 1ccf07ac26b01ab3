"""Synthetic SIM samples with known heteroscedastic noise (docs/design.md §4.6, §7).

One sample is drawn from its own ``numpy.random.Generator`` (seeded by ``(seed, split, index)``),
so a dataset is reproducible and independent of generation order. Units:

- ``emitter`` GT: relative density, max 1, on the HR grid ``(Hh, Wh)``;
- ``light_pattern`` GT: ``(F, Hh, Wh)``, mean over frames exactly 1;
- ``raw``, ``clean``, ``sigma``: ``(F, H, W)`` float32 in camera ADU (``gain·electrons + offset``).
  ``clean`` is the noise-free expectation, ``sigma`` the exact per-pixel standard deviation of
  ``raw - clean`` (Poisson photons + Gaussian read noise + a smooth extra Gaussian term). Noisy
  values are never clipped, so ``sigma`` stays exact.

The loader's normalisation is ``(raw - norm_offset) / norm_scale``; in those units the noise std is
``sigma / norm_scale``. Both numbers are stored with every sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from simuq_core.config import NoiseParams, ObjectParams, PsfParams, SimulateParams
from simuq_core.optics.imaging import (
    PatternParams,
    airy_psf,
    default_psf_size,
    forward_model,
    gaussian_psf,
    illumination_patterns,
    sample_pattern_params,
)

__all__ = [
    "SPLITS",
    "SimSample",
    "add_noise",
    "make_psf",
    "noise_mask",
    "noise_sigma_e",
    "noise_twin",
    "render_objects",
    "sample_rng",
    "simulate_sample",
]

SPLITS = ("train", "val", "test")

# Structure pixels are those whose clean signal exceeds this fraction of the frame maximum; the
# photon budget (``noise.photons``) is the mean expected count over them.
_STRUCTURE_FRACTION = 0.2


@dataclass(frozen=True)
class SimSample:
    """One synthetic SIM acquisition and its ground truth (shapes in the module docstring)."""

    raw: np.ndarray
    clean: np.ndarray
    sigma: np.ndarray
    noise_mask: np.ndarray
    emitter: np.ndarray
    light_pattern: np.ndarray
    psf: np.ndarray
    pattern: PatternParams
    na: float
    photon_scale: float
    norm_offset: float
    norm_scale: float

    def meta(self) -> dict[str, Any]:
        """Arrays and scalars for ``<split>_meta/<name>.npz``."""
        return {
            "noise_sigma": self.sigma.astype(np.float32),
            "noise_mask": self.noise_mask.astype(np.float32),
            "clean": self.clean.astype(np.float32),
            "psf": self.psf.astype(np.float32),
            "psf_na": np.float64(self.na),
            "pattern_k": self.pattern.k,
            "pattern_phase": self.pattern.phase,
            "pattern_modulation": self.pattern.modulation,
            "photon_scale": np.float64(self.photon_scale),
            "norm_offset": np.float64(self.norm_offset),
            "norm_scale": np.float64(self.norm_scale),
        }


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of ``split``: independent of every other sample."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


# ----------------------------------------------------------------------------------------------
# PSF
# ----------------------------------------------------------------------------------------------


def psf_size(psf: PsfParams, hr_pixel_nm: float) -> int:
    """Kernel size in HR pixels (configured, or covering the Airy disc and first ring)."""
    if psf.size is not None:
        return psf.size
    return default_psf_size(psf.na * (1.0 - psf.na_jitter), psf.wavelength_nm, hr_pixel_nm)


def make_psf(psf: PsfParams, hr_pixel_nm: float, na: float | None = None) -> np.ndarray:
    """The ``(K, K)`` PSF on the HR grid for numerical aperture ``na`` (default: ``psf.na``)."""
    na = psf.na if na is None else na
    size = psf_size(psf, hr_pixel_nm)
    if psf.kind == "airy":
        return airy_psf(size, na, psf.wavelength_nm, hr_pixel_nm)
    fwhm_nm = psf.gaussian_fwhm_nm or 0.51 * psf.wavelength_nm / na
    return gaussian_psf(size, fwhm_nm / hr_pixel_nm)


# ----------------------------------------------------------------------------------------------
# Objects
# ----------------------------------------------------------------------------------------------


def _splat(canvas: np.ndarray, ys: np.ndarray, xs: np.ndarray, w: np.ndarray) -> None:
    """Add point masses at sub-pixel positions with bilinear weights (in place)."""
    h, wd = canvas.shape
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    fy, fx = ys - y0, xs - x0
    for dy, dx, ww in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        yy, xx = y0 + dy, x0 + dx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < wd)
        np.add.at(canvas, (yy[ok], xx[ok]), (w * ww)[ok])


def _bezier(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A random cubic Bézier curve crossing the field, sampled every ≤ 0.25 px: ``(N, 2)`` points
    and ``(N,)`` arc-length weights."""
    h, w = shape
    margin = 0.2
    pts = np.stack(
        [rng.uniform(-margin * h, (1 + margin) * h, 4), rng.uniform(-margin * w, (1 + margin) * w, 4)],
        axis=1,
    )
    approx_len = np.sum(np.linalg.norm(np.diff(pts, axis=0), axis=1))
    n = max(int(approx_len / 0.25), 8)
    t = np.linspace(0.0, 1.0, n)[:, None]
    curve = (
        (1 - t) ** 3 * pts[0] + 3 * (1 - t) ** 2 * t * pts[1] + 3 * (1 - t) * t**2 * pts[2]
        + t**3 * pts[3]
    )
    seg = np.linalg.norm(np.gradient(curve, axis=0), axis=1)
    return curve, seg


def _puncta(
    rng: np.random.Generator, shape_hr: tuple[int, int], hr_pixel_nm: float, cfg: ObjectParams,
    empty: bool,
) -> np.ndarray:
    """A dense point texture ``(Hh, Wh)``: ``cfg.puncta`` Gaussian dots of peak ``U(0.3, 1)`` and
    width ``cfg.puncta_sigma_nm`` (at least 1 when ``empty``, so the field is never blank)."""
    lo, hi = cfg.puncta
    n = max(int(rng.integers(lo, hi + 1)), int(empty))
    yy, xx = np.arange(shape_hr[0], dtype=np.float64), np.arange(shape_hr[1], dtype=np.float64)
    texture = np.zeros(shape_hr)
    for _ in range(n):
        # Floored at half a pixel, like the filaments: narrower dots would alias on the grid.
        sig = max(rng.uniform(*cfg.puncta_sigma_nm) / hr_pixel_nm, 0.5)
        cy, cx = rng.uniform(0, shape_hr[0]), rng.uniform(0, shape_hr[1])
        # Separable: an outer product of 1-D Gaussians costs O(H + W) exponentials, not O(H·W).
        gy, gx = np.exp(-((yy - cy) ** 2) / (2 * sig**2)), np.exp(-((xx - cx) ** 2) / (2 * sig**2))
        texture += rng.uniform(0.3, 1.0) * np.outer(gy, gx)
    return texture


def render_objects(
    rng: np.random.Generator, shape_hr: tuple[int, int], hr_pixel_nm: float, cfg: ObjectParams
) -> np.ndarray:
    """Emitter density ``(Hh, Wh)`` float64 with max 1: filaments, tubes, rings, blobs and puncta.

    Puncta (``cfg.puncta``, off by default) are drawn last and only when their max is > 0, so a
    configuration without them consumes exactly the random draws it did before they existed.
    """
    counts = {k: int(rng.integers(lo, hi + 1)) for k, (lo, hi) in
              (("curves", cfg.curves), ("tubes", cfg.tubes), ("rings", cfg.rings),
               ("blobs", cfg.blobs))}
    if sum(counts.values()) == 0:  # never return an empty field
        kinds = [k for k, (_, hi) in (("curves", cfg.curves), ("tubes", cfg.tubes),
                                      ("rings", cfg.rings), ("blobs", cfg.blobs)) if hi > 0]
        if kinds:  # a puncta-only configuration gets its one object from _puncta
            counts[kinds[int(rng.integers(len(kinds)))]] = 1

    lines = np.zeros(shape_hr)
    for _ in range(counts["curves"]):
        curve, seg = _bezier(rng, shape_hr)
        _splat(lines, curve[:, 0], curve[:, 1], seg * rng.uniform(0.5, 1.0))
    for _ in range(counts["tubes"]):
        curve, seg = _bezier(rng, shape_hr)
        tangent = np.gradient(curve, axis=0)
        normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
        half = 0.5 * rng.uniform(*cfg.tube_diameter_nm) / hr_pixel_nm
        amp = rng.uniform(0.5, 1.0)
        for side in (-1.0, 1.0):
            wall = curve + side * half * normal
            _splat(lines, wall[:, 0], wall[:, 1], seg * amp)
    for _ in range(counts["rings"]):
        radius = rng.uniform(*cfg.ring_radius_nm) / hr_pixel_nm
        ecc = rng.uniform(0.85, 1.0)
        cy, cx = rng.uniform(0, shape_hr[0]), rng.uniform(0, shape_hr[1])
        n = max(int(2 * np.pi * radius / 0.25), 16)
        phi = np.linspace(0, 2 * np.pi, n, endpoint=False)
        step = np.full(n, 2 * np.pi * radius / n)
        _splat(lines, cy + radius * ecc * np.sin(phi), cx + radius * np.cos(phi),
               step * rng.uniform(0.5, 1.0))
    width_sigma = max(cfg.filament_width_nm / 2.3548 / hr_pixel_nm, 0.5)
    emitter = ndimage.gaussian_filter(lines, width_sigma, mode="constant")
    # Lines carry density per unit length; their peak after blurring is ~1/(sqrt(2π)·σ).
    emitter *= np.sqrt(2 * np.pi) * width_sigma

    yy, xx = np.mgrid[: shape_hr[0], : shape_hr[1]].astype(np.float64)
    for _ in range(counts["blobs"]):
        sig = rng.uniform(*cfg.blob_sigma_nm) / hr_pixel_nm
        cy, cx = rng.uniform(0, shape_hr[0]), rng.uniform(0, shape_hr[1])
        emitter += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2))
    if cfg.puncta[1] > 0:
        emitter += _puncta(rng, shape_hr, hr_pixel_nm, cfg, empty=sum(counts.values()) == 0)

    peak = emitter.max()
    if peak <= 0:  # every object fell outside the field: put one blob in the middle
        sig = np.mean(cfg.blob_sigma_nm) / hr_pixel_nm
        emitter = np.exp(-((yy - shape_hr[0] / 2) ** 2 + (xx - shape_hr[1] / 2) ** 2) / (2 * sig**2))
        peak = emitter.max()
    return emitter / peak


# ----------------------------------------------------------------------------------------------
# Noise
# ----------------------------------------------------------------------------------------------


def noise_mask(rng: np.random.Generator, shape: tuple[int, int], n_blobs: int) -> np.ndarray:
    """Smooth random mask ``(H, W)`` in ``[0, 1]`` (max 1 unless ``n_blobs`` is 0): a sum of wide
    Gaussian blobs marking where the camera is locally noisier."""
    h, w = shape
    mask = np.zeros(shape)
    if n_blobs == 0:
        return mask
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    for _ in range(n_blobs):
        sig = rng.uniform(0.08, 0.2) * min(h, w)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        mask += rng.uniform(0.5, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig**2))
    return mask / mask.max()


def noise_sigma_e(expected_e: np.ndarray, mask: np.ndarray, cfg: NoiseParams) -> np.ndarray:
    """Exact per-pixel noise std in electrons: ``sqrt(λ + σ_read² + (σ_het·mask)²)``.

    expected_e : ``(F, H, W)`` expected photo-electrons (Poisson mean); mask : ``(H, W)``.
    """
    gauss_var = cfg.read_noise_e**2 + (cfg.hetero_noise_e * mask) ** 2
    return np.sqrt(expected_e + gauss_var)


def add_noise(
    rng: np.random.Generator, expected_e: np.ndarray, mask: np.ndarray, cfg: NoiseParams
) -> np.ndarray:
    """One noisy frame stack in ADU: ``gain·(Poisson(λ) + N(0, σ_read² + (σ_het·mask)²)) + offset``.

    Not clipped or quantised, so ``gain · noise_sigma_e`` is its exact standard deviation.
    """
    gauss_std = np.sqrt(cfg.read_noise_e**2 + (cfg.hetero_noise_e * mask) ** 2)
    electrons = rng.poisson(expected_e).astype(np.float64)
    electrons += gauss_std * rng.standard_normal(expected_e.shape)
    return cfg.gain_adu_per_e * electrons + cfg.offset_adu


def noise_twin(rng: np.random.Generator, sample: SimSample, cfg: NoiseParams) -> np.ndarray:
    """A second, independent noisy stack ``(F, H, W)`` (ADU) of the same sample: same objects,
    pattern, PSF and noise mask, new camera noise. Two such realisations are what Fourier ring
    correlation needs (their only difference is noise)."""
    expected_e = (sample.clean.astype(np.float64) - cfg.offset_adu) / cfg.gain_adu_per_e
    return add_noise(rng, np.maximum(expected_e, 0.0), sample.noise_mask.astype(np.float64),
                     cfg).astype(np.float32)


def normalisation_scale(raw: np.ndarray, offset: float, percentile: float) -> float:
    """Loader scale: the ``percentile`` of ``raw - offset`` over the whole stack (≥ tiny)."""
    scale = float(np.percentile(np.asarray(raw, dtype=np.float64) - offset, percentile))
    return max(scale, 1e-6)


# ----------------------------------------------------------------------------------------------
# One sample
# ----------------------------------------------------------------------------------------------


@partial(jax.jit, static_argnames="r")
def _clean_signal(emitter, light_pattern, psf, r: int):
    return forward_model(emitter[None], light_pattern[None], psf[None], r)[0]


def clean_expected_electrons(
    emitter: np.ndarray, light_pattern: np.ndarray, psf: np.ndarray, cfg: SimulateParams
) -> tuple[np.ndarray, float]:
    """Noise-free expected electrons ``(F, H, W)`` and the photon scale applied to the forward model.

    The scale makes the mean expected count over structure pixels equal ``noise.photons``; a
    uniform ``background_photons`` is added on top.
    """
    signal = np.asarray(
        _clean_signal(jnp.asarray(emitter, jnp.float32), jnp.asarray(light_pattern, jnp.float32),
                      jnp.asarray(psf, jnp.float32), cfg.hr_factor),
        dtype=np.float64,
    )
    signal = np.maximum(signal, 0.0)  # FFT round-off can leave -1e-9 where the signal is 0
    structure = signal > _STRUCTURE_FRACTION * signal.max()
    photon_scale = cfg.noise.photons / signal[structure].mean()
    return signal * photon_scale + cfg.noise.background_photons, float(photon_scale)


def simulate_sample(rng: np.random.Generator, cfg: SimulateParams) -> SimSample:
    """Draw one sample: objects, pattern, PSF, clean signal, noise mask and noisy frames."""
    shape_hr = (cfg.lr_h * cfg.hr_factor, cfg.lr_w * cfg.hr_factor)
    emitter = render_objects(rng, shape_hr, cfg.hr_pixel_nm, cfg.objects)
    pattern = sample_pattern_params(
        rng, cfg.n_angles, cfg.n_phases, cfg.period_lr, cfg.modulation,
        cfg.period_jitter, cfg.modulation_jitter,
    )
    lp = illumination_patterns(shape_hr, cfg.hr_factor, pattern)
    na = cfg.psf.na * (1.0 + rng.uniform(-cfg.psf.na_jitter, cfg.psf.na_jitter))
    psf = make_psf(cfg.psf, cfg.hr_pixel_nm, na)

    noise = cfg.noise
    if noise.photon_range > 1.0:  # drawn only then: datasets without a range stay bit-identical
        scale = float(np.exp(-rng.uniform(0.0, np.log(noise.photon_range))))
        noise = noise.model_copy(update={"photons": noise.photons * scale,
                                         "background_photons": noise.background_photons * scale})
        cfg = cfg.model_copy(update={"noise": noise})
    expected_e, photon_scale = clean_expected_electrons(emitter, lp, psf, cfg)
    mask = noise_mask(rng, (cfg.lr_h, cfg.lr_w), cfg.noise.hetero_blobs)
    raw = add_noise(rng, expected_e, mask, noise)
    sigma = noise.gain_adu_per_e * noise_sigma_e(expected_e, mask, noise)
    clean = noise.gain_adu_per_e * expected_e + noise.offset_adu
    scale = normalisation_scale(raw, noise.offset_adu, noise.norm_percentile)
    return SimSample(
        raw=raw.astype(np.float32),
        clean=clean.astype(np.float32),
        sigma=sigma.astype(np.float32),
        noise_mask=mask.astype(np.float32),
        emitter=emitter.astype(np.float32),
        light_pattern=lp.astype(np.float32),
        psf=psf.astype(np.float32),
        pattern=pattern,
        na=float(na),
        photon_scale=photon_scale,
        norm_offset=float(noise.offset_adu),
        norm_scale=scale,
    )
