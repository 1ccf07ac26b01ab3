"""Checks of a reconstruction that need no ground truth: what a lab can measure on its own data.

- :func:`classical_noise_variance`: the camera-noise variance of raw frames from their spectrum
  beyond the OTF cut-off (no signal passes there), the physical reference for ``rec_std``;
- :func:`grid_index` and :func:`checkerboard_index`: fixed patterns at the strides of the
  network's up-sampling, which a natural image does not have;
- :func:`field_metrics`: the full-field summary of a prediction (raw-frame calibration, emitter
  resolution by image decorrelation, grid index, noise std against the classical estimate);
- :func:`carrier_leakage`: residual illumination stripes (power at ``±k``, ``±2k``), the mark of
  wrong phases or modulation;
- :func:`brightest_window`, :func:`log_spectrum`: where to look and what to show.
"""

from __future__ import annotations

import math

import numpy as np

from simuq_core.evaluation.resolution import decorrelation_resolution
from simuq_core.evaluation.synthetic import widefield
from simuq_core.optics.spectra import periodic_hann_window

__all__ = [
    "GRID_PERIOD_PX",
    "brightest_window",
    "carrier_leakage",
    "checkerboard_index",
    "classical_noise_variance",
    "field_metrics",
    "grid_index",
    "log_spectrum",
    "window_weighted_mean",
]


# The period (camera px) at which the GT-free reports measure a fixed grid in the emitter: it
# holds the strides of the sub-pixel up-sampling (1 px) and of two U-Net levels (2, 4 px).
GRID_PERIOD_PX = 4


def classical_noise_variance(frames: np.ndarray, otf_cutoff: float,
                             margin: float = 1.15) -> tuple[float, float]:
    """Camera-noise variance of raw frames from their spectrum beyond the OTF cut-off.

    The optics pass no signal at ``|f| > k_c`` (``k_c = 2NA/λ``·pixel, cycles/px), so there every
    frequency bin holds noise only. For independent pixel noise of any (spatially varying) variance
    ``σ²(x)``, the windowed spectrum ``N(f) = Σ_x w(x)·n(x)·e^{−2πi f·x}`` has
    ``E|N(f)|² = Σ_x w²(x)·σ²(x)`` at every ``f``, hence the unbiased estimate::

        σ̂²_w = mean_{frames, |f| > margin·k_c} |FFT(w·(I − Ī_w))|² / Σ_x w²

    of the ``w²``-weighted mean noise variance (a Hann window ``w`` keeps the edge discontinuity's
    leakage out of the band; ``margin`` keeps the window's main lobe around the cut-off out).
    Compare a predicted variance map ``v`` through the same weights: ``Σ w²·v / Σ w²``.

    Parameters
    ----------
    frames : ``(..., H, W)`` raw frames (any leading axes are averaged over).
    otf_cutoff : ``k_c`` in cycles per pixel; must leave bins below Nyquist (``margin·k_c < 0.5``).

    Returns
    -------
    ``(σ̂²_w, n_bins)``: the estimate and the number of independent noise bins it averages
    (half the masked bins: a real image's spectrum is Hermitian), for its relative standard error
    ``≈ 1.5/√n_bins`` (the Hann window correlates neighbouring bins: 2.25× the variance in 2-D).
    """
    x = np.asarray(frames, np.float64)
    h, w = x.shape[-2:]
    x = x.reshape(-1, h, w)
    win = periodic_hann_window((h, w))
    radius = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    mask = radius > margin * otf_cutoff
    if not mask.any():
        raise ValueError(f"no frequency beyond {margin:g} × the OTF cut-off {otf_cutoff:.3f} cycles/px "
                         "(the camera under-samples the optics): no out-of-band noise estimate")
    mean = (x * win).sum(axis=(-2, -1), keepdims=True) / win.sum()
    power = np.abs(np.fft.fft2((x - mean) * win)) ** 2
    estimate = float(power[:, mask].mean() / (win**2).sum())
    return estimate, float(mask.sum() * len(x) / 2.0)


def window_weighted_mean(var_map: np.ndarray) -> float:
    """``Σ w²·v / Σ w²`` of a ``(..., H, W)`` variance map (weights of :func:`classical_noise_variance`)."""
    h, w = var_map.shape[-2:]
    w2 = periodic_hann_window((h, w)) ** 2
    per_frame = (np.asarray(var_map, np.float64).reshape(-1, h, w) * w2).sum(axis=(-2, -1))
    return float(per_frame.mean() / w2.sum())


def grid_index(images: np.ndarray, period: int, border: bool = False) -> float:
    """:func:`~simuq_core.reports.comparison.checkerboard_index` at ``period`` of images ``(N, H, W)`` or
    one ``(H, W)``, cropped to a multiple of it (``border``: one period off every side first);
    NaN when nothing is left."""
    img = np.asarray(images).reshape(-1, *np.shape(images)[-2:])
    if border:
        img = img[:, period:-period, period:-period]
    h, w = (n - n % period for n in img.shape[-2:])
    return checkerboard_index(img[:, :h, :w], period) if min(h, w) > 0 else math.nan


def field_metrics(x: np.ndarray, maps: dict[str, np.ndarray], pixel_nm: float, rescale: int, na: float,
                  wavelength_nm: float, pattern_k: np.ndarray, noise_band_margin: float = 1.15
                  ) -> dict[str, float]:
    """GT-free numbers of one prediction over a whole field (:func:`validate` on tiles of the
    held-out part; here the full field, training area included).

    Parameters
    ----------
    x : ``(F, H, W)`` the normalised raw frames the prediction was made from.
    maps : ``predict``'s maps (square-rooted stds): ``rec`` / ``rec_std`` ``(F, H, W)``,
        ``emitter`` / ``emitter_std`` ``(rH, rW)``, optionally ``wiener`` ``(rH, rW)``.
    pixel_nm : camera pixel; ``rescale`` ``r``: the model grid is ``pixel_nm / r``.
    na, wavelength_nm : the limits ``λ/(2NA)`` (widefield) and ``λ/(2(NA + NA·|k|/k_c))`` (SIM),
        with ``pattern_k`` ``(A, 2)`` cycles per camera px (mean ``|k|``) and ``k_c = 2NA/λ·pixel``.

    Returns
    -------
    ``rec_zms`` ``mean(z²)``, ``rec_coverage_68`` / ``_95`` (``|z| < 1`` / ``1.96``) with
    ``z = (x − rec)/rec_std``; ``noise_std_classical`` (out-of-band estimate,
    :func:`classical_noise_variance`) and ``rec_std_hann`` (the same Hann weights applied to
    ``rec_std²``: camera noise plus the latent share, so an upper bound of the predicted noise);
    decorrelation resolutions (nm) of the bilinear widefield (analysed up to the camera Nyquist),
    the emitter and, if present, the Wiener SIM image; the two limits; ``emitter_std_mean`` and
    ``emitter_std_p95_over_mean`` (≈ 1 for a flat, uninformative map), also ``_interior`` (an
    Airy-disc diameter from the edges left out), and the same for ``wiener_std`` if present: the
    exact noise propagation of the classical reconstruction, i.e. how structured the photon
    statistics of this stack make a noise std map; ``emitter_grid_index``
    (and ``wiener_grid_index``, the reference): the RMS of the image's mean over the positions of a
    :data:`GRID_PERIOD_PX`-camera-pixel period, relative to its mean
    (:func:`~simuq_core.reports.comparison.checkerboard_index`): a fixed pattern at the network's strides
    (sub-pixel up-sampling: 1 px, U-Net levels: 2, 4 px) raises it above the sampling spread;
    ``emitter_carrier_db_*`` (and ``wiener_carrier_db_*``): residual pattern carriers at ``±k``,
    ``±2k`` (:func:`carrier_leakage`).
    """
    x = np.asarray(x, np.float64)
    z = (x - maps["rec"]) / np.maximum(np.asarray(maps["rec_std"], np.float64), 1e-15)
    cutoff = 2.0 * na * pixel_nm / wavelength_nm
    out = {"rec_zms": float(np.mean(z**2)), "rec_coverage_68": float(np.mean(np.abs(z) < 1.0)),
           "rec_coverage_95": float(np.mean(np.abs(z) < 1.96))}
    out["noise_std_classical"] = math.sqrt(classical_noise_variance(x, cutoff, noise_band_margin)[0])
    out["rec_std_hann"] = math.sqrt(window_weighted_mean(np.asarray(maps["rec_std"], np.float64) ** 2))
    model_nm = pixel_nm / rescale
    wf = widefield(x[None], rescale)[0]
    out["widefield_resolution_nm"] = decorrelation_resolution(wf, model_nm,
                                                              max_freq=0.5 / rescale).resolution_nm
    out["emitter_resolution_nm"] = decorrelation_resolution(maps["emitter"], model_nm).resolution_nm
    out["emitter_grid_index"] = grid_index(maps["emitter"], GRID_PERIOD_PX * rescale)
    if "wiener" in maps:
        out["wiener_resolution_nm"] = decorrelation_resolution(maps["wiener"], model_nm).resolution_nm
        out["wiener_grid_index"] = grid_index(maps["wiener"], GRID_PERIOD_PX * rescale)
    for name in ("emitter", "wiener"):
        if name in maps:
            leak = carrier_leakage(maps[name], np.asarray(pattern_k, np.float64) / rescale)
            out |= {f"{name}_{key}": value for key, value in leak.items()}
    k_abs = float(np.linalg.norm(np.asarray(pattern_k, np.float64), axis=-1).mean())
    out["widefield_limit_nm"] = wavelength_nm / (2.0 * na)
    out["sim_limit_nm"] = wavelength_nm / (2.0 * (na + na * k_abs / cutoff))
    # Within an Airy-disc diameter of the field's edge the emitter is seen from one side only:
    # its std there is the edge's, not the structure's ("interior" statistics leave it out).
    edge = int(math.ceil(1.22 * wavelength_nm / na / pixel_nm)) * rescale
    for name in ("emitter_std", "wiener_std"):
        if name in maps:
            std = np.asarray(maps[name], np.float64)
            inner = std[edge:-edge, edge:-edge] if min(std.shape) > 4 * edge else std
            out[f"{name}_mean"] = float(std.mean())
            out[f"{name}_p95_over_mean"] = float(np.percentile(std, 95) / max(std.mean(), 1e-30))
            out[f"{name}_p95_over_mean_interior"] = float(np.percentile(inner, 95)
                                                          / max(inner.mean(), 1e-30))
    return {k: float(v) for k, v in out.items()}


def carrier_leakage(image: np.ndarray, k: np.ndarray, harmonics: tuple[int, ...] = (1, 2)
                    ) -> dict[str, float]:
    """Residual illumination carriers in a reconstruction: per wave vector ``k`` ``(A, 2)``
    (cycles per pixel of ``image``'s grid) and harmonic ``h``, the power of the Hann-windowed
    spectrum at ``±h·k`` (the largest bin within 1.5 bins) over the median power of the ring
    ``| |f| − h|k| | < 1.5 bins`` away from every carrier (more than 4 bins), in dB. A reconstruction
    without carrier residue (right phases, right modulation) gives ≈ 0-5 dB (the maximum of a few
    exponential bins over their median); a stripe artefact at ``k`` gives tens of dB. Returns
    ``carrier_db_k1`` / ``carrier_db_k2`` (the largest over angles and signs) and
    ``carrier_db_max``. Compare with the Wiener image's on the same stack: its carriers show how
    well the pattern (phases, modulation) itself is known."""
    img = np.asarray(image, np.float64)
    h, w = img.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2((img - img.mean()) * win)) ** 2
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    bin_ = 1.0 / min(h, w)
    radius = np.hypot(fy, fx)
    k = np.asarray(k, np.float64).reshape(-1, 2)
    out: dict[str, float] = {}
    for harmonic in harmonics:
        carriers = [sign * harmonic * v for v in k for sign in (1.0, -1.0)]
        away = np.ones_like(radius, bool)
        for c in carriers:
            away &= np.hypot(fy - c[0], fx - c[1]) > 4 * bin_
        values = []
        for c in carriers:
            norm = np.hypot(*c)
            if norm >= 0.5:
                continue
            ring = (np.abs(radius - norm) < 1.5 * bin_) & away
            peak = np.hypot(fy - c[0], fx - c[1]) < 1.5 * bin_
            if ring.sum() >= 8 and peak.any():
                values.append(10.0 * math.log10(power[peak].max() / max(np.median(power[ring]), 1e-300)))
        if values:
            out[f"carrier_db_k{harmonic}"] = float(max(values))
    if out:
        out["carrier_db_max"] = max(out.values())
    return out


def brightest_window(image: np.ndarray, size: int,
                     within: tuple[int, int, int, int] | None = None) -> tuple[int, int]:
    """Top-left ``(y0, x0)`` of the ``size``² window of highest mean in ``image`` ``(H, W)``, in
    steps of ``size/4``, inside the rectangle ``within`` ``(y0, y1, x0, x1)`` (default: the whole
    image; a rectangle narrower than ``size`` holds the window's start): the figure's zoom."""
    h, w = image.shape
    size = min(size, h, w)
    step = max(1, size // 4)
    ry0, ry1, rx0, rx1 = within if within is not None else (0, h, 0, w)
    y_lo, x_lo = min(max(0, ry0), h - size), min(max(0, rx0), w - size)
    ys = range(y_lo, min(max(ry1 - size, y_lo), h - size) + 1, step)
    xs = range(x_lo, min(max(rx1 - size, x_lo), w - size) + 1, step)
    best, where = -np.inf, (ys[0], xs[0])
    for y0 in ys:
        for x0 in xs:
            value = float(image[y0:y0 + size, x0:x0 + size].mean())
            if value > best:
                best, where = value, (y0, x0)
    return where


def log_spectrum(image: np.ndarray) -> np.ndarray:
    """``log10`` power spectrum ``(H, W)`` of ``image`` (mean removed, Hann window), zero frequency
    at the centre."""
    img = np.asarray(image, np.float64)
    hann = np.outer(np.hanning(img.shape[0]), np.hanning(img.shape[1]))
    power = np.abs(np.fft.fftshift(np.fft.fft2((img - img.mean()) * hann))) ** 2
    return np.log10(power + 1e-12 * max(power.max(), 1e-300))


def checkerboard_index(images: np.ndarray, r: int) -> float:
    """How much an image ``(N, rH, rW)`` varies with the position inside the ``r × r`` blocks of
    the camera grid: the RMS over the ``r²`` sub-pixel positions of their mean, relative to the
    image mean (mean over samples). Sub-pixel (pixel-shuffle) upsampling that has not learned to
    interpolate leaves this fixed pattern, a checkerboard at the model-grid period; for a natural
    image it is only the sampling spread of ``r²`` sub-images (compare with the GT's value)."""
    img = np.asarray(images, np.float64)
    n, hh, ww = img.shape
    blocks = img.reshape(n, hh // r, r, ww // r, r).mean(axis=(1, 3))  # (N, r, r)
    mean = img.mean(axis=(1, 2))
    spread = np.sqrt(((blocks - mean[:, None, None]) ** 2).mean(axis=(1, 2)))
    return float(np.mean(spread / np.maximum(np.abs(mean), 1e-12)))
