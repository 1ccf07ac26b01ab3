"""Measure a lab's raw SIM stacks so the simulator can be matched to them.

:func:`measure_acquisition` reads what the ``simulate`` section needs from one raw stack in camera
ADU; :func:`simulate_override` turns one or more such measurements into a partial ``simulate``
override (the format of ``ood.shifts``, merged by :func:`simuq_core.config.merge_override`).

**Pattern**: the blind, full-band estimate :func:`~simuq_core.pattern.blind.estimate_pattern_blind`
(period and orientation per angle, modulation by band ratio, detection z).

**Photon transfer**: the camera's gain and offset line (:mod:`simuq_core.realdata.photon_transfer`).

**Offset.** The line gives ``g`` and ``c`` only: ``o`` and ``r`` are one unknown. With the offset
given, ``r² = (c + g·o)/g²``. Without it, ``o = −c/g + g·r₀²`` for an assumed read noise ``r₀``
(default 0: the lower bound of the offset, at which all dark variance is Poisson). The choice
moves electrons between background and read noise only: ``background + r²`` (the dark level's
variance in e⁻², ``dark_variance_e2``) and the photons on structure do not depend on it, and an
error ``δ`` in ``r₀²`` shifts the background by ``−δ`` e⁻ and the offset by ``g·δ`` ADU.

**Photons** follow the simulator's definition
(:func:`simuq_core.simulation.samples.clean_expected_electrons`):
the mean expected count over *structure* pixels (signal above ``0.2 ×`` its maximum over the
stack's frames), background excluded, in e⁻. The expected signal of each frame is estimated by
the frame low-passed to the OTF support (all the signal, ~``πk_c²`` of the noise), minus the
background: a low percentile of the widefield image (all frames averaged, Gaussian-smoothed).
``photons_tiles``: the same per ``tile × tile`` field (the simulator's samples are crops, each
with its own maximum), for the photon range. On 64² px simulations (16 seeds) the estimate reads
+4 % at 50 photons (the noisy maximum lifts the threshold) and +1 % at 500; a mask from the
widefield image instead of each frame reads ~14 % below the simulator's ``noise.photons``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from simuq_core.optics.imaging import otf_cutoff_cycles_per_px
from simuq_core.optics.spectra import freq_radius
from simuq_core.pattern.blind import OtfFunction, estimate_pattern_blind
from simuq_core.pattern.instrument import SessionEstimate, pool_wave_vectors
from simuq_core.realdata.checks import InputError
from simuq_core.realdata.normalise import resolve_offset
from simuq_core.realdata.photon_transfer import periodic_smooth, photon_transfer
from simuq_core.realdata.reader import Acquisition, measured_otf, read_acquisition
from simuq_core.simulation.samples import (
    _STRUCTURE_FRACTION,  # the photons must mean what noise.photons means
)

__all__ = ["MEASURE_VERSION", "Measurement", "measure_acquisition", "measure_files", "simulate_override"]

MEASURE_VERSION = 1
# Low percentile of the smoothed widefield image taken as the background level, and the smoothing
# (px): σ = 2 px cuts the widefield noise ~7× so the percentile is not pulled down by noise.
_BACKGROUND_PERCENTILE = 5.0
_BACKGROUND_SMOOTH_PX = 2.0
# Warn when the gain's relative standard error exceeds this, or the noise spectrum's outer half
# differs from its inner half by more than this (the file was filtered or resampled: not white).
_GAIN_REL_SE_MAX = 0.1
_WHITENESS_TOL = 0.15
# Clipping: more than this fraction of pixels at the stack's extreme value (validation.py's level).
_CLIP_FRACTION = 1e-3


# ----------------------------------------------------------------------------------------------
# One acquisition
# ----------------------------------------------------------------------------------------------


def _signal_band(frames: np.ndarray, otf_cutoff: float, margin: float) -> np.ndarray:
    """``(N, H, W)`` frames low-passed to ``|f| ≤ margin·k_c`` (the complement of the noise band):
    every bit of the signal, a fraction ``1 − β`` of the white noise (periodic + smooth split, so
    the crop edges do not ring)."""
    periodic, smooth = periodic_smooth(np.asarray(frames, np.float64))
    mask = freq_radius(frames.shape[-2:]) <= margin * otf_cutoff
    return np.fft.ifft2(np.fft.fft2(periodic) * mask).real + smooth


def _structure_photons(signal_e: np.ndarray) -> float | None:
    """The simulator's photon budget of ``(F, h, w)`` background-free expected electrons: the mean
    over pixels above ``_STRUCTURE_FRACTION × max``
    (:func:`simuq_core.simulation.samples.clean_expected_electrons`);
    ``None`` when nothing rises above the background."""
    peak = float(signal_e.max())
    if peak <= 0.0:
        return None
    return float(signal_e[signal_e > _STRUCTURE_FRACTION * peak].mean())


def _tiles(h: int, w: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Non-overlapping ``tile × tile`` windows covering the field (the whole field when smaller)."""
    th, tw = min(tile, h), min(tile, w)
    return [(y, x, th, tw) for y in range(0, h - th + 1, th) for x in range(0, w - tw + 1, tw)]


def _pool(values: np.ndarray, se: np.ndarray) -> tuple[float, float]:
    """Inverse-variance mean of ``values`` and the reduced chi² of their scatter about it."""
    wts = 1.0 / np.maximum(se, 1e-300) ** 2
    mean = float((wts * values).sum() / wts.sum())
    return mean, float((wts * (values - mean) ** 2).sum() / max(len(values) - 1, 1))


def _clean(value: float | None, digits: int = 6) -> float | None:
    """A JSON-safe float (``None`` for NaN / Inf), rounded to ``digits`` significant digits."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def measure_acquisition(
    frames: np.ndarray,
    *,
    na: float,
    wavelength_nm: float,
    pixel_nm: float,
    n_angles: int,
    offset: float | None,
    otf: OtfFunction | None = None,
    period_hint: float | None = None,
    read_noise_e: float = 0.0,
    margin: float = 1.15,
    block: int = 8,
    tile: int = 64,
) -> dict[str, Any]:
    """What the simulator needs to reproduce one raw acquisition (module docstring).

    Parameters
    ----------
    frames : ``(T, F, H, W)`` or ``(F, H, W)`` camera ADU, angle-major (``frame = P·angle + phase``).
    na, wavelength_nm, pixel_nm : detection optics; the OTF cut-off is ``2·NA/λ·pixel`` cycles/px.
    n_angles : pattern orientations ``A`` (``P = F/A`` phases).
    offset : camera offset (ADU); ``None``: from the photon-transfer intercept with the read noise
        ``read_noise_e`` assumed (module docstring: 0 gives the offset's lower bound).
    otf : measured ``H(fy, fx)`` for the pattern search (:func:`simuq_core.realdata.reader.measured_otf`).
    period_hint : search the pattern only within 5 % of this period (camera px).
    margin : noise band ``|f| > margin·k_c``; block : photon-transfer blocks (px); tile : side of the
        fields of ``photons_tiles`` (px; the simulated crop size is a good choice).

    Returns
    -------
    A JSON-safe dict: ``pattern`` (per-angle ``period_px``, ``orientation_deg``, ``modulation``,
    ``quality_z``, … and ``weak`` angles), ``photon_transfer`` (per-angle lines ``Var = g·mean +
    c`` with standard errors, their combination, ``reduced_chi2``, ``whiteness``), ``gain_adu_per_e``,
    ``offset_adu`` / ``offset_source``, ``read_noise_e``, ``background_adu``, ``background_photons``,
    ``dark_variance_e2`` (= background + read², independent of the offset choice), ``photons`` (e⁻
    on structure, the simulator's definition, mean over time points), ``photons_tiles`` (the same
    per tile and time point), ``clipped_fraction`` and ``warnings``.

    Raises
    ------
    ValueError : bad shapes, a frame count not divisible into ``n_angles`` × ≥ 3 phases, no noise band.
    """
    m = Measurement(optics={"na": na, "wavelength_nm": wavelength_nm, "pixel_nm": pixel_nm,
                            "otf_cutoff": _clean(otf_cutoff_cycles_per_px(na, wavelength_nm, pixel_nm)),
                            "otf": "measured" if otf is not None else "airy"},
                    block=block, margin=margin, tile=tile)
    x = _frames_4d(frames, n_angles)
    m.shape = list(x.shape)
    cutoff = otf_cutoff_cycles_per_px(na, wavelength_nm, pixel_nm)
    blind = estimate_pattern_blind(x, n_angles, cutoff, period_hint=period_hint, otf=otf)
    m.notes += list(blind.messages)
    m.pattern = blind.as_dict() | {"weak": np.flatnonzero(blind.weak).tolist()}
    clipped = _clipped_pixels(x, m)
    camera = _camera_lines(x, n_angles, cutoff, margin, block, clipped, m)
    _offsets(camera, offset, read_noise_e, m)
    _photons(x, n_angles, cutoff, margin, tile, camera, offset, read_noise_e, m)
    return m.as_dict()


@dataclass
class Measurement:
    """One acquisition's measurement, filled in by the named steps of :func:`measure_acquisition`
    (``notes``: what the user should know, in the order found)."""

    optics: dict[str, Any]
    block: int
    margin: float
    tile: int
    shape: list[int] = field(default_factory=list)
    pattern: dict[str, Any] = field(default_factory=dict)
    clipped_fraction: float = 0.0
    photon_transfer: dict[str, Any] = field(default_factory=dict)
    gain: float = math.nan
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0))
    offset_source: str = ""
    read_noise: float = math.nan
    read_source: str = ""
    background_adu: float = math.nan
    background_e: float = math.nan
    photons: float = math.nan
    photons_tiles: list[float | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe (module docstring of :func:`measure_acquisition`)."""
        return {
            "version": MEASURE_VERSION, "shape": self.shape, "optics": self.optics, "pattern": self.pattern,
            "photon_transfer": self.photon_transfer,
            "gain_adu_per_e": _clean(self.gain),
            "offset_adu": _clean(float(np.mean(self.offsets))),
            "offset_source": self.offset_source,
            "read_noise_e": _clean(self.read_noise),
            "read_noise_source": self.read_source,
            "background_adu": _clean(self.background_adu),
            "background_photons": _clean(self.background_e),
            "dark_variance_e2": _clean(self.background_e + self.read_noise**2),
            "photons": _clean(self.photons),
            "photons_tiles": [_clean(v) for v in self.photons_tiles if v is not None],
            "tile": self.tile,
            "clipped_fraction": _clean(self.clipped_fraction, 4),
            "warnings": self.notes,
        }


class _CameraLines(NamedTuple):
    """The photon-transfer lines of the angles and what is used of them: per angle ``gains`` and
    zero-read-noise offsets ``zero_read`` (pooled unless the angles disagree), with their errors."""

    lines: list
    gains: np.ndarray
    zero_read: np.ndarray
    offset_se: np.ndarray


def _frames_4d(frames: np.ndarray, n_angles: int) -> np.ndarray:
    x = np.asarray(frames, np.float64)
    x = x[None] if x.ndim == 3 else x
    if x.ndim != 4:
        raise ValueError(f"frames must be (T, F, H, W) or (F, H, W), got shape {np.shape(frames)}")
    f = x.shape[1]
    if f % n_angles or f // n_angles < 3:
        raise ValueError(f"{f} frames do not split into n_angles={n_angles} angles of >= 3 phases")
    return x


def _clipped_pixels(x: np.ndarray, m: Measurement) -> np.ndarray:
    """Pixels at the stack's extreme values are clipped (saturated, or floored at 0): their blocks
    would break the photon-transfer line. Continuous data hit each extreme once: harmless."""
    lo_val, hi_val = float(x.min()), float(x.max())
    clipped = (x <= lo_val) | (x >= hi_val)
    m.clipped_fraction = float(clipped.mean())
    if m.clipped_fraction > _CLIP_FRACTION:
        m.notes.append(f"{100 * m.clipped_fraction:.2f}% of the pixels sit at the extreme values "
                       f"{lo_val:g} / {hi_val:g} (clipped or saturated): their blocks are left out of "
                       "the photon-transfer fit and the photon numbers there are too low")
    return clipped


def _camera_lines(x: np.ndarray, n_angles: int, cutoff: float, margin: float, block: int,
                  clipped: np.ndarray, m: Measurement) -> _CameraLines:
    """One photon-transfer line per angle: a file rescaled angle by angle (seen on rDL-SIM's
    MT.mrc) has its own gain and offset per angle; a plain camera gives the same line for all.
    The angles' lines are pooled (inverse-variance weights) unless they disagree beyond 3
    standard errors; then each angle's photon numbers use its own line."""
    t, f, h, w = x.shape
    p = f // n_angles
    lines = []
    for a in range(n_angles):
        sl = slice(a * p, (a + 1) * p)
        lines.append(photon_transfer(x[:, sl].reshape(-1, h, w), cutoff, margin=margin, block=block,
                                     valid=~clipped[:, sl].reshape(-1, h, w)))
    gains = np.array([ln.gain for ln in lines])
    gain_se = np.array([ln.gain_se for ln in lines])
    if (gains <= 0).any():
        raise ValueError(f"photon-transfer gain {gains.tolist()} ADU/e- is not positive: the noise does "
                         "not grow with the signal (not raw camera counts, or no signal range)")
    # Offsets where each line has zero read noise, ``o = −c/g``, with the delta-method error
    # (gradient ``(c/g², −1/g)`` through the line's covariance).
    zero_read = np.array([-ln.intercept / ln.gain for ln in lines])
    line_gains, line_zero_read = gains.copy(), zero_read.copy()
    offset_se = np.array([math.sqrt(max(float(j @ ln.cov @ j), 0.0)) for ln in lines
                          for j in [np.array([ln.intercept / ln.gain**2, -1.0 / ln.gain])]])
    gain, gain_chi2 = _pool(gains, gain_se)
    zero_read_pooled, offset_chi2 = _pool(zero_read, offset_se)
    per_angle = max(gain_chi2, offset_chi2) > 9.0
    if per_angle:
        m.notes.append(f"the angles' photon-transfer lines disagree beyond their errors (gains "
                       f"{', '.join(f'{g:.4g}' for g in gains)} ADU/e-, zero-read-noise offsets "
                       f"{', '.join(f'{o:.4g}' for o in zero_read)} ADU): file rescaled angle by angle? "
                       "Each angle's photon numbers use its own line")
    else:
        gains, zero_read = np.full(n_angles, gain), np.full(n_angles, zero_read_pooled)
    rel_se = float(np.max(gain_se / gains))
    if rel_se > _GAIN_REL_SE_MAX:
        m.notes.append(f"photon-transfer gain uncertain (relative standard error up to {100 * rel_se:.0f}%): "
                       "too little signal range or too few pixels; photon numbers are as uncertain")
    whiteness = float(np.mean([ln.whiteness for ln in lines]))
    if abs(whiteness - 1.0) > _WHITENESS_TOL:
        m.notes.append(f"the noise spectrum beyond the OTF cut-off is not flat (outer/inner power "
                       f"{whiteness:.2f}): the file was filtered or resampled, or the NA is too low; "
                       "gain and photon numbers are unreliable")
    chi2 = float(np.mean([ln.reduced_chi2 for ln in lines]))
    m.gain = gain
    m.photon_transfer = {
        "gain_adu_per_e": [_clean(v) for v in line_gains], "gain_se": [_clean(v) for v in gain_se],
        "zero_read_offset_adu": [_clean(v) for v in line_zero_read],
        "intercept_adu2": [_clean(ln.intercept) for ln in lines],
        "intercept_se": [_clean(ln.intercept_se) for ln in lines],
        "offset_adu": None, "offset_se": [_clean(v) for v in offset_se],
        "reduced_chi2": _clean(chi2, 4), "gain_chi2": _clean(gain_chi2, 4),
        "offset_chi2": _clean(offset_chi2, 4), "per_angle": bool(per_angle),
        "whiteness": _clean(whiteness, 4), "n_blocks": int(sum(ln.n_blocks for ln in lines)),
        "n_used": int(sum(ln.n_used for ln in lines)), "block": block, "margin": margin,
        "mean_range_adu": [_clean(min(ln.mean_range[0] for ln in lines)),
                           _clean(max(ln.mean_range[1] for ln in lines))]}
    return _CameraLines(lines, gains, zero_read, offset_se)


def _offsets(camera: _CameraLines, offset: float | None, read_noise_e: float, m: Measurement) -> None:
    """The camera offset per angle and the read noise: the given offset and the read noise it
    implies (``r² = (o − o₀)/g``, ``o₀`` the zero-read-noise offset), or the offset the assumed
    read noise implies."""
    gains, zero_read, n_angles = camera.gains, camera.zero_read, len(camera.gains)
    if offset is not None:
        m.offsets = np.full(n_angles, float(offset))
        m.offset_source = "given"
        read_var = (m.offsets - zero_read) / gains
        if (read_var < -3.0 * camera.offset_se / gains).any():
            m.notes.append(f"the given offset {offset:g} ADU implies a negative read-noise variance "
                           f"({', '.join(f'{v:.3g}' for v in read_var)} e-²): the offset is too low")
        m.read_noise = float(math.sqrt(max(float(np.mean(read_var)), 0.0)))
        m.read_source = "photon-transfer intercept with the given offset"
    else:
        m.offsets = zero_read + gains * read_noise_e**2
        m.offset_source = (f"photon-transfer intercept with the read noise assumed {read_noise_e:g} e- "
                           "(the offset's lower bound if 0)")
        m.read_noise = float(read_noise_e)
        m.read_source = "assumed (offset unknown)"
    m.photon_transfer["offset_adu"] = [_clean(v) for v in m.offsets]


def _photons(x: np.ndarray, n_angles: int, cutoff: float, margin: float, tile: int, camera: _CameraLines,
             offset: float | None, read_noise_e: float, m: Measurement) -> None:
    """Expected electrons of every frame (signal band only, each angle on its own line), the
    background level, and the photons on structure (whole field and per tile)."""
    t, f, h, w = x.shape
    p = f // n_angles
    gains, offsets = camera.gains, m.offsets
    electrons = _signal_band(x.reshape(-1, h, w), cutoff, margin).reshape(t, f, h, w)
    for a in range(n_angles):
        electrons[:, a * p:(a + 1) * p] = (electrons[:, a * p:(a + 1) * p] - offsets[a]) / gains[a]
    widefield = ndimage.gaussian_filter(electrons.mean(axis=1), (0, _BACKGROUND_SMOOTH_PX,
                                                                 _BACKGROUND_SMOOTH_PX), mode="nearest")
    background = np.percentile(widefield.reshape(t, -1), _BACKGROUND_PERCENTILE, axis=1)  # (T,)
    signal = electrons - background[:, None, None, None]
    photons_t = [_structure_photons(signal[i]) for i in range(t)]
    m.photons_tiles = [_structure_photons(signal[i, :, y:y + th, xx:xx + tw])
                       for i in range(t) for y, xx, th, tw in _tiles(h, w, tile)]
    if any(v is None for v in photons_t):
        m.notes.append("no signal above the background in some time point: photons undefined there")
    found = [v for v in photons_t if v is not None]
    m.photons = float(np.mean(found)) if found else float("nan")
    bg_mean = float(background.mean())
    if bg_mean < 0:  # pixels may dip below the offset through noise; the smoothed level may not
        m.notes.append(f"background {bg_mean:.3g} e- is negative: " + (
            f"the given offset {offset:g} ADU is too high, or the camera is not linear" if offset is not None
            else f"the assumed read noise {read_noise_e:g} e- exceeds the dark level's noise: lower it"))
    m.background_e = bg_mean
    m.background_adu = float(np.mean(offsets + gains * bg_mean))


# ----------------------------------------------------------------------------------------------
# Several acquisitions -> a simulate override
# ----------------------------------------------------------------------------------------------

# Photon range: the 10th-90th percentile of the per-tile photon levels. It covers the bulk of the
# crops a network meets on these data; the extremes are tiles whose 0.2 × max threshold is set by
# a single bright spot or by noise (nearly empty fields), which would otherwise dictate the range.
_PHOTON_QUANTILES = (0.1, 0.9)
# Jitters stay inside the schema's bounds (period_jitter < 0.5, modulation_jitter < 1) and keep
# the shortest simulated period above 2 px with a small margin.
_MAX_PERIOD_JITTER = 0.45
_MAX_MODULATION_JITTER = 0.95


def _relative_spread(values: np.ndarray, centre: float) -> float:
    """Half-width ``j`` such that ``centre·(1 ± j)`` covers every value (the simulator's uniform
    jitter; 0 for a single value)."""
    return float(np.max(np.abs(np.asarray(values) / centre - 1.0))) if len(values) > 1 else 0.0


def simulate_override(measurements: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The partial ``simulate`` override that matches :func:`measure_acquisition` results.

    - ``pattern_period_lr``: median over files of each file's median period over its clear
      (non-weak) angles; ``period_jitter``: the relative half-width covering every file's period
      (0 for one file), so ``period·(1 ± jitter)`` spans them; ``pattern_k_frac`` is nulled.
    - ``modulation``: median over every clear angle of every file (clipped to [0, 1]);
      ``modulation_jitter``: the half-width covering them all. Angles differ genuinely in
      modulation (polarisation, pattern contrast) and the network meets each of them, unlike
      their periods, whose spread is estimator noise.
    - ``noise.photons`` / ``noise.photon_range``: the simulator draws a sample's budget
      log-uniformly in ``[photons/range, photons]``; here ``photons`` is the 90th percentile and
      ``range`` the 90th/10th percentile ratio of the per-tile levels of all files (spread over
      the field and over files, :data:`_PHOTON_QUANTILES`). ``background_photons``: the median
      background-to-photon ratio times ``photons`` (the simulator scales both together, so the
      ratio, which is what the images show, is kept).
    - ``noise.read_noise_e``, ``gain_adu_per_e``, ``offset_adu``: medians over files (offset
      floored at 0, the schema's bound).

    Raises
    ------
    ValueError : no measurement, or no clear pattern angle / photon level in any of them.
    """
    if not measurements:
        raise ValueError("no measurement to build a simulate override from")
    periods, mods, tiles, ratios = [], [], [], []
    for m in measurements:
        weak = set(m["pattern"]["weak"])
        clear = [i for i in range(len(m["pattern"]["period_px"])) if i not in weak]
        if clear:
            periods.append(float(np.median([m["pattern"]["period_px"][i] for i in clear])))
            mods += [float(np.clip(m["pattern"]["modulation"][i], 0.0, 1.0)) for i in clear]
        tiles += [v for v in m["photons_tiles"] if v is not None and v > 0]
        if m.get("photons") and m["photons"] > 0 and m.get("background_photons") is not None:
            ratios.append(max(float(m["background_photons"]), 0.0) / float(m["photons"]))
    if not periods:
        raise ValueError("no acquisition has a clear pattern angle: no period or modulation to match")
    if not tiles or not ratios:
        raise ValueError("no acquisition has a photon level: nothing rises above the background")
    period = float(np.median(periods))
    period_jitter = min(_relative_spread(np.asarray(periods), period), _MAX_PERIOD_JITTER,
                        max(1.0 - 2.05 / period, 0.0))
    modulation = float(np.median(mods))
    mod_jitter = (min(_relative_spread(np.asarray(mods), modulation), _MAX_MODULATION_JITTER)
                  if modulation > 0 else 0.0)
    lo, hi = np.quantile(np.asarray(tiles), _PHOTON_QUANTILES)
    photons = float(hi)
    photon_range = float(np.clip(hi / max(lo, 1e-12), 1.0, 1000.0))

    def median(key: str) -> float:
        return float(np.median([float(m[key]) for m in measurements if m.get(key) is not None]))

    return {
        "pattern_period_lr": _clean(period), "pattern_k_frac": None,
        "period_jitter": _clean(period_jitter, 4),
        "modulation": _clean(modulation, 4), "modulation_jitter": _clean(mod_jitter, 4),
        "noise": {"photons": _clean(photons, 4), "photon_range": _clean(photon_range, 4),
                  "background_photons": _clean(float(np.median(ratios)) * photons, 4),
                  "read_noise_e": _clean(median("read_noise_e"), 4),
                  "gain_adu_per_e": _clean(median("gain_adu_per_e"), 6),
                  "offset_adu": _clean(max(median("offset_adu"), 0.0), 6)},
    }


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def _file_offset(acq: Acquisition, given: float | None) -> tuple[float | None, str]:
    """The camera offset of an acquisition: given, else its metadata or simuq side-car
    (:func:`~simuq_core.realdata.normalise.resolve_offset`), else ``None`` (estimated from the noise)."""
    value, source = resolve_offset(given, Path(acq.path), acq.metadata)
    return (None, "unknown") if source.startswith("none found") else (value, source)


def measure_files(
    paths: Sequence[str | os.PathLike],
    *,
    na: float,
    wavelength_nm: float,
    pixel_nm: float,
    n_angles: int = 3,
    n_phases: int = 3,
    frame_order: str = "angle_major",
    offset: float | None = None,
    otf_file: str | os.PathLike | None = None,
    period_hint: float | None = None,
    known_gain: float | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`measure_acquisition` of every raw stack in ``paths`` and their :func:`simulate_override`.

    A file's own pixel size and emission wavelength (metadata) win over ``pixel_nm`` /
    ``wavelength_nm``; its offset is ``offset``, else its metadata, else estimated. A file that
    cannot be read or measured is skipped with the reason (naming it). ``known_gain``: the
    camera's stated gain (ADU/e⁻), compared with the measured one. ``kwargs`` go to
    :func:`measure_acquisition`.

    Returns
    -------
    ``{"version", "files": [measurement + "path", "layout"], "skipped": [{"path", "reason"}],
    "override", "warnings", "instrument_pattern"}`` (JSON-safe; warnings prefixed with the file;
    ``instrument_pattern``: the wave vectors pooled over the files with a clear pattern,
    :func:`~simuq_core.pattern.instrument.pool_wave_vectors`, or ``None``).

    Raises
    ------
    InputError : no usable file (every file named with its reason).
    """
    files, skipped, notes = [], [], []
    otf_cache: dict[float, OtfFunction] = {}
    for raw_path in paths:
        path = Path(raw_path)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                acq = read_acquisition(path, n_angles, n_phases, frame_order)  # type: ignore[arg-type]
            pixel = acq.pixel_nm or pixel_nm
            wavelength = acq.wavelength_nm or wavelength_nm
            file_offset, offset_source = _file_offset(acq, offset)
            otf = None
            if otf_file:
                otf = otf_cache.get(pixel) or measured_otf(otf_file, pixel)
                otf_cache[pixel] = otf
            result = measure_acquisition(acq.frames, na=na, wavelength_nm=wavelength, pixel_nm=pixel,
                                         n_angles=n_angles, offset=file_offset, otf=otf,
                                         period_hint=period_hint, **kwargs)
        except (InputError, ValueError, OSError) as exc:
            reason = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            skipped.append({"path": str(path), "reason": reason})
            continue
        if file_offset is not None:
            result["offset_source"] = offset_source
        read_notes = list(acq.warnings) + [str(w.message) for w in caught
                                           if str(w.message) not in acq.warnings]
        if known_gain is not None and abs(result["gain_adu_per_e"] / known_gain - 1.0) > 0.1:
            result["warnings"].append(f"measured gain {result['gain_adu_per_e']:.4g} ADU/e- differs from the "
                                      f"stated camera gain {known_gain:g} by more than 10 % (file rescaled?)")
        result["warnings"] = read_notes + result["warnings"]
        files.append({"path": str(path), "layout": acq.layout, "pixel_nm": pixel,
                      "wavelength_nm": wavelength} | result)
        notes += [f"{path}: {w}" for w in result["warnings"]]
    if not files:
        raise InputError("no usable acquisition among the inputs" + "".join(
            f"\n  {s['reason']}" for s in skipped))
    instrument = pool_wave_vectors([
        SessionEstimate(f["path"], np.asarray(f["pattern"]["k_cycles_per_px"], np.float64),
                        np.asarray(f["pattern"]["quality_z"], np.float64),
                        not f["pattern"]["weak"] and not f["pattern"]["messages"], int(min(f["shape"][-2:])))
        for f in files])
    if instrument is not None:
        notes += list(instrument.disagreements)
    return {"version": MEASURE_VERSION, "files": files, "skipped": skipped,
            "override": simulate_override(files), "warnings": notes,
            "instrument_pattern": (instrument.as_dict() | {"pixel_nm": float(files[0]["pixel_nm"])}
                                   if instrument is not None else None)}
