"""Cross-check simuq's simulator and classical SIM against independent implementations.

    python benchmarks/crosscheck_classical.py [--n-samples 8] [--hint-error 0.02]

Simulates ``n`` stacks of 128×128 camera pixels at the default optics (``params.yaml`` simulate
section, ``lr_h = lr_w = 128``), runs the external classical SIM tools on each (``pyfairsim`` 0.0.3,
``napari-sim-processor`` 0.1.1; whichever is installed), simuq's own band-matching estimator
(:func:`simuq_core.pattern.estimate.estimate_pattern`) and, when present, simuq's Wiener-SIM
(``simuq_core.baselines.wiener.reconstruct_stack``), and compares their pattern parameters with the
truth and their reconstructions with the GT emitter and with each other. Writes
``reports/bench/crosscheck_classical.json`` and ``reports/bench/crosscheck_classical.md``.

Every tool's output is converted to simuq's conventions (docs/design.md §1,
:mod:`simuq_core.pattern.estimate`):

- frames angle-major (``frame = 3·angle + phase``), pattern ``1 + m·cos(2π k·x + φ + 2πp/3)``;
- ``k`` = ``(ky, kx)`` in cycles per LR pixel, ``x`` in LR pixels from the image corner (pixel ``i``
  has centre ``i + 0.5``); ``(k, φ)`` and ``(−k, −φ)`` are the same pattern, so each estimate is
  flipped to the sign of the true ``k`` before comparing;
- phases are compared at the image centre ``x_c = (H/2, W/2)`` (decouples phase from ``k`` errors);
- reconstructions on simuq's HR grid at ``r = 2`` (HR pixel ``j`` has centre ``(j + 0.5)/2``).

Metrics: relative period error ``(|k̂|⁻¹ − P)/P`` (signed per angle; the summary
gives its absolute mean and max); orientation error (angle between ``k̂`` and
``k``, degrees; 1 % of ``|k|`` perpendicular is 0.573°); wrapped centre-phase error; modulation
estimate (truth ``m``); PSNR (``simuq_core.evaluation.synthetic.affine_fit_psnr``) and SSIM (skimage,
after the same per-sample affine fit) against the GT emitter; Pearson correlation with the GT and
between tools.
Image metrics use the centre after dropping ``--margin`` LR pixels on each side (pyfairsim fades
15 px of border; every tool wraps periodically at the edges).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml
from _common import ROOT, machine, write_report
from scipy import ndimage

from simuq_core.config import LightPatternParams, SimulateParams, parse_params
from simuq_core.evaluation.synthetic import affine_align, affine_fit_psnr, widefield
from simuq_core.optics.imaging import otf_cutoff_cycles_per_px
from simuq_core.simulation.samples import SimSample, sample_rng, simulate_sample

LR_SIZE = 128
RESCALE = 2  # every tool returns a 2x grid; simuq's GT is compared at hr_factor 2


class Optics(NamedTuple):
    """What a classical tool is told about the microscope."""

    na: float
    wavelength_nm: float
    pixel_nm: float  # camera pixel at the sample

    @property
    def cutoff(self) -> float:
        """OTF cut-off ``2NA/λ`` in cycles per LR pixel."""
        return otf_cutoff_cycles_per_px(self.na, self.wavelength_nm, self.pixel_nm)


class ToolResult(NamedTuple):
    """One tool on one stack, in simuq's conventions (module docstring).

    k : ``(A, 2)`` ``(ky, kx)`` cycles per LR pixel; phase_c : ``(A,)`` radians at the image centre;
    modulation : ``(A,)`` (NaN where a tool gives none); recon : ``(2H, 2W)`` on simuq's r=2 grid, or
    ``None``; info : tool-specific notes (e.g. pyfairsim's silent modulation replacement).
    """

    k: np.ndarray
    phase_c: np.ndarray
    modulation: np.ndarray
    recon: np.ndarray | None
    info: dict[str, Any]


# ----------------------------------------------------------------------------------------------
# Simulation
# ----------------------------------------------------------------------------------------------


def simulate_config(params_path: Path = ROOT / "params.yaml", size: int = LR_SIZE) -> SimulateParams:
    """The ``simulate`` section of ``params_path`` with the camera crop set to ``size``²."""
    raw = yaml.safe_load(Path(params_path).read_text())
    raw["simulate"]["lr_h"] = raw["simulate"]["lr_w"] = size
    raw["simulate"]["noise"]["photon_range"] = 1.0  # the default budget for every stack
    cfg = parse_params(raw, str(params_path)).simulate
    if cfg.hr_factor % RESCALE:
        raise ValueError(f"hr_factor {cfg.hr_factor} is not a multiple of the tools' {RESCALE}x grid")
    return cfg


def simulate(cfg: SimulateParams, index: int, split: str = "test") -> SimSample:
    """Sample ``index`` of ``split`` at ``cfg`` (independent of every other index)."""
    return simulate_sample(sample_rng(cfg.seed, split, index), cfg)


def optics_of(cfg: SimulateParams) -> Optics:
    return Optics(cfg.psf.na, cfg.psf.wavelength_nm, cfg.psf.lr_pixel_nm)


def true_params(sample: SimSample, n_angles: int, n_phases: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-angle truth ``k (A, 2)``, centre phase ``(A,)`` and modulation ``(A,)`` of phase step 0."""
    h, w = sample.raw.shape[-2:]
    first = np.arange(n_angles) * n_phases
    k = sample.pattern.k[first]
    phase_c = sample.pattern.phase[first] + 2 * np.pi * (k[:, 0] * h / 2 + k[:, 1] * w / 2)
    return k, _wrap(phase_c), sample.pattern.modulation[first]


def _wrap(phase: np.ndarray) -> np.ndarray:
    return np.angle(np.exp(1j * np.asarray(phase)))


def _gt_at_rescale(sample: SimSample, hr_factor: int) -> np.ndarray:
    """GT emitter block-averaged from the simulator's ``hr_factor`` grid to the tools' 2x grid."""
    f = hr_factor // RESCALE
    e = sample.emitter.astype(np.float64)
    return e.reshape(e.shape[0] // f, f, e.shape[1] // f, f).mean(axis=(1, 3))


# ----------------------------------------------------------------------------------------------
# External tools (called, never copied)
# ----------------------------------------------------------------------------------------------


def tool_versions() -> dict[str, str | None]:
    """Installed versions of the external tools (``None`` = not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("pyfairsim", "napari-sim-processor"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def load_napari_conv_processor() -> type:
    """``ConvSimProcessor`` of napari-sim-processor without importing napari or Qt.

    The package's ``__init__`` imports the napari widget (napari, qtpy, magicgui, superqt); the
    numpy processors under ``processors/`` need none of them. Registering the package module made
    from its spec but never executed lets ``processors`` import while skipping that ``__init__``.
    """
    name = "napari_sim_processor"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.submodule_search_locations is None:
            raise ModuleNotFoundError(f"{name} is not installed (pip install napari-sim-processor==0.1.1)")
        sys.modules[name] = importlib.util.module_from_spec(spec)  # spec and path set, not executed
    return importlib.import_module(f"{name}.processors.convSimProcessor").ConvSimProcessor


def run_napari(raw: np.ndarray, offset: float, optics: Optics, period_hint: float, n_angles: int = 3,
               wiener_w: float = 0.2) -> ToolResult:
    """napari-sim-processor 0.1.1 ``ConvSimProcessor``: calibrate + ``reconstruct_rfftw``.

    raw : ``(A·P, H, W)`` camera ADU (angle-major, its own order too); H, W even.

    Its conventions and how they are converted:

    - lengths in µm: ``pixelsize / magnification`` is the pixel at the sample (magnification 1);
    - wave vectors ``(kx, ky)`` in units of ``NA/λ`` (cut-off = 2): ``f = k_n·NA·dx/λ`` cycles/px;
      its carrier is the conjugate band's, i.e. ``k_simuq = −(ky_n, kx_n)·NA·dx/λ``;
    - ``p`` is the phase of ``cos(2π f_n·(x − x_n) + p)`` with ``x_n`` the centre of pixel index
      ``N/2`` (simuq coordinate ``N/2 + 0.5``); with ``k = −f_n`` the simuq phase at ``x_n`` is
      ``−p``, so at ``x_c = N/2``: ``φ_c = −p − 2π k·(0.5, 0.5)``;
    - ``ampl`` = ``2|⟨band0, band1⟩|/|band0|²`` estimates ``m``;
    - the carrier search is ``|k_n| > 1.9·eta`` (``eta`` default 0.75, i.e. above 0.71 of the cut-off,
      which misses simuq's default pattern at 0.6): the period hint sets ``eta`` so the search starts
      at 0.855 of the hinted frequency;
    - output ``2N×2N`` by Fourier zero-padding: pixel ``j`` sits at input index ``j/2``, i.e. HR
      index ``j + 0.5`` of simuq's grid (shifted by :func:`to_simuq_grid`).

    Widget defaults are used for the filter (``alpha`` 0.5, ``beta`` 0.98, ``w`` 0.2); phases are
    the ideal equal steps (``usePhases`` off: the simulator's steps are exact).
    """
    proc_cls = load_napari_conv_processor()
    n_phases = raw.shape[0] // n_angles
    proc = proc_cls(n_angles, n_phases)
    proc.debug = False  # the default (True) draws matplotlib figures on every call
    proc.usePhases = False
    proc.pixelsize = optics.pixel_nm * 1e-3
    proc.magnification = 1.0
    proc.NA = optics.na
    proc.wavelength = optics.wavelength_nm * 1e-3
    proc.alpha, proc.beta, proc.w = 0.5, 0.98, wiener_w
    to_norm = optics.wavelength_nm / (optics.na * optics.pixel_nm)  # cycles/px -> NA/λ units
    proc.eta = 0.45 * to_norm / period_hint
    img = (np.asarray(raw, np.float64) - offset).astype(np.float32)
    proc.calibrate(img)
    rec = np.asarray(proc.reconstruct_rfftw(img), np.float64)
    k = -np.stack([proc.ky.ravel(), proc.kx.ravel()], axis=1).astype(np.float64) / to_norm
    phase_c = -proc.p.ravel().astype(np.float64) - np.pi * (k[:, 0] + k[:, 1])
    return ToolResult(k, _wrap(phase_c), proc.ampl.ravel().astype(np.float64),
                      to_simuq_grid(rec), {"eta": float(proc.eta), "w": wiener_w})


def _pyfairsim_settings(shape: int, optics: Optics, n_angles: int, n_phases: int, background: float,
                        fit_exclude: float, wiener: float) -> dict[str, Any]:
    """A pyfairsim settings dict (what its JSON file holds) for 2-beam SIM."""
    direction = {
        "number_bands": 2, "number_phases": n_phases, "px": 0.0, "py": 0.0,
        "phases": list(2 * np.pi * np.arange(n_phases) / n_phases), "modulations": [1.0, 1.0],
        "angle_intensity_factor": 1.0, "phase_intensity_factors": [1.0] * n_phases,
    }
    return {
        "directions": [dict(direction) for _ in range(n_angles)],
        "microscope_parameters": {"pixel_size": optics.pixel_nm, "na": optics.na,
                                  "wavelength": optics.wavelength_nm},
        # Ideal OTF without compensation: the simulator's PSF is an ideal Airy disc.
        "sim_parameters": {"otf_correction": 0.15, "otf_type": "NONE", "otf_before_shift": True,
                           "attenuation_strength": 0.99, "attenuation_fwhm": 1.2,
                           "use_attenuation": False, "fit_band": 1, "fit_exclude": fit_exclude,
                           "otf_file_location": None},
        "filter_parameters": {"wiener_filter_parameter": wiener, "apodization_cutoff": 2.0,
                              "apodization_bend": 0.9},
        "image_parameters": {"image_shape": [shape, shape], "ordering": "paz", "z_slice": 0,
                             "background": background, "tile_size": shape},
    }


def run_pyfairsim(raw: np.ndarray, offset: float, optics: Optics, period_hint: float, n_angles: int = 3,
                  wiener: float = 0.05) -> ToolResult:
    """pyfairsim 0.0.3: per-angle parameter estimation + ``run_reconstruction``.

    raw : ``(A·P, N, N)`` camera ADU; pyfairsim needs square images (its Fourier shift assumes it).

    Its conventions and how they are converted:

    - frame order ``"paz"`` (phase fastest, then angle) is simuq's angle-major order;
    - pixel size and wavelength in nm; ``background`` is subtracted and negatives clipped to 0,
      then 15 px of border are faded with cos² before the FFT;
    - the carrier ``(px, py)`` is in cycles per image (``N`` px) for band 1, with
      ``k_simuq = (py, px)/N`` (y down, as array rows; checked on noise-free stacks);
    - the phase offset is the band phase at pixel index 0 (simuq coordinate ``(0.5, 0.5)``):
      ``φ_c = φ_pf + 2π k·(x_c − 0.5)``;
    - modulation = ``|⟨band0, band1⟩|/|band0|²``; *reconstruction* silently replaces a modulation
      outside [0.4, 1.1] with 0.65 (``Direction.get_modulations``, a logging warning only): the raw
      estimate is reported and ``info["modulation_replaced"]`` flags the replacement;
    - the carrier search is the strongest correlation peak beyond ``fit_exclude``·cut-off, with no
      upper bound: the period hint sets ``fit_exclude`` to 0.85 of the hinted frequency;
    - output ``2N×2N`` by Fourier zero-padding, like napari's (pixel ``j`` at HR index ``j + 0.5``).

    ``estimate_parameters`` runs the three angles in a ``multiprocessing.Pool`` (fork of a
    JAX-threaded process); :func:`estimate_parameters_one_direction` is called per angle instead,
    with the same arguments ``estimate_parameters`` passes, and its results are stored as that
    function stores them.
    """
    from pyfairsim.sim_algorithm import SIM_Utils
    from pyfairsim.sim_algorithm.OTF_Provider import get_attenuation_array
    from pyfairsim.sim_algorithm.SIM_Parameters import Parameters
    from pyfairsim.utils.tif import fft_images

    f, h, w = raw.shape
    if h != w:
        raise ValueError(f"pyfairsim needs square images, got {h}x{w}")
    n_phases = f // n_angles
    fit_exclude = 0.85 / (period_hint * optics.cutoff)
    settings = Parameters.from_dict(
        _pyfairsim_settings(h, optics, n_angles, n_phases, offset, fit_exclude, wiener))
    for d in settings.directions:  # from_dict keeps JSON lists; the algorithm indexes arrays
        d.phases = np.asarray(d.phases, np.float64)
        d.modulations = np.asarray(d.modulations, np.float64)
        d.phase_intensity_factors = np.asarray(d.phase_intensity_factors, np.float64)
    spectra = fft_images(list(np.asarray(raw, np.float64)), n_angles, n_phases, offset)
    attenuation = get_attenuation_array((h, w), 0.99, 0.15 * settings.cutoff)
    k, phase_c, mod, replaced = [], [], [], []
    for a, d in enumerate(settings.directions):
        px, py, phase, m1, _ = SIM_Utils.estimate_parameters_one_direction(
            a, settings, spectra, attenuation, False)
        d.set_px_py(px, py)
        d.set_phase_offset(phase)
        d.modulations[1] = m1
        ka = np.array([py, px], np.float64) / h
        k.append(ka)
        phase_c.append(phase + 2 * np.pi * (ka[0] * (h / 2 - 0.5) + ka[1] * (w / 2 - 0.5)))
        mod.append(float(m1))
        replaced.append(bool(not d.mod_low_limit <= m1 <= d.mod_high_limit))
    rec, _ = SIM_Utils.run_reconstruction(settings, spectra)
    info = {"fit_exclude": fit_exclude, "wiener": wiener, "modulation_replaced": replaced}
    return ToolResult(np.stack(k), _wrap(np.array(phase_c)), np.array(mod),
                      to_simuq_grid(np.asarray(rec, np.float64)), info)


# ----------------------------------------------------------------------------------------------
# simuq
# ----------------------------------------------------------------------------------------------


def run_simuq_estimate(raw: np.ndarray, sample: SimSample, optics: Optics, period_hint: float,
                       n_angles: int = 3) -> ToolResult:
    """simuq's own estimator (:func:`simuq_core.pattern.estimate.estimate_pattern`, parameters only) with the
    model's default period window around the hint; ``modulation`` holds its band-match contrast."""
    import jax.numpy as jnp

    from simuq_core.pattern.estimate import estimate_pattern

    x = (np.asarray(raw, np.float64) - sample.norm_offset) / sample.norm_scale
    window = LightPatternParams(period_lr=period_hint).k_range()
    est = estimate_pattern(jnp.asarray(x[None], jnp.float32), n_angles, optics.cutoff, window)
    return ToolResult(np.asarray(est.k[0], np.float64), np.asarray(est.phase[0], np.float64),
                      np.asarray(est.contrast[0], np.float64), None, {"k_range": list(window)})


def simuq_wiener_available() -> bool:
    """Whether ``simuq_core.baselines.wiener`` exists (it is being written alongside this script)."""
    return importlib.util.find_spec("simuq_core.baselines") is not None and \
        importlib.util.find_spec("simuq_core.baselines.wiener") is not None


def run_simuq_wiener(raw: np.ndarray, sample: SimSample, cfg: SimulateParams, period_hint: float,
                     period_tolerance: float = 0.3) -> ToolResult | None:
    """simuq's Wiener-SIM (``simuq_core.baselines.wiener.reconstruct_stack``, default options), or
    ``None`` where the module does not exist.

    It already speaks simuq's conventions: ``k`` ``(A, 2)`` ``(ky, kx)`` cycles/LR px, per-frame
    phases ``(A, P)`` at the image centre (frame ``p = 0`` is compared), the image on the
    simulator's ``r``× grid. Input: the loader's normalised frames (any affine scale works).
    """
    if not simuq_wiener_available():
        return None
    wiener = importlib.import_module("simuq_core.baselines.wiener")
    x = (np.asarray(raw, np.float64) - sample.norm_offset) / sample.norm_scale
    rec = wiener.reconstruct_stack(x, cfg.psf.na, cfg.psf.wavelength_nm, cfg.psf.lr_pixel_nm, r=RESCALE,
                                   n_angles=cfg.n_angles, period_lr=period_hint,
                                   period_tolerance=period_tolerance)
    return ToolResult(np.asarray(rec.k, np.float64), _wrap(np.asarray(rec.phases, np.float64)[:, 0]),
                      np.asarray(rec.modulation, np.float64), np.asarray(rec.image, np.float64),
                      {"contrast": np.asarray(rec.contrast).tolist(), "already_on_simuq_grid": True})


# ----------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------


def to_simuq_grid(rec: np.ndarray) -> np.ndarray:
    """Move a Fourier-zero-padded 2x reconstruction onto simuq's r=2 grid (half an HR pixel).

    Pixel ``j`` of a zero-padded 2x FFT image samples input index ``j/2`` = simuq LR coordinate
    ``j/2 + 0.5`` = HR index ``j + 0.5`` (HR pixel ``i`` is centred on ``(i + 0.5)/2``); the output
    ``out[i] = rec(i − 0.5)`` (periodic, like the FFT that made it).
    """
    spec = ndimage.fourier_shift(np.fft.fft2(rec), (0.5, 0.5))
    return np.fft.ifft2(spec).real


def align_k(k: np.ndarray, phase_c: np.ndarray, k_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``(k, φ_c) → (−k, −φ_c)`` per angle where ``k`` points against ``k_ref`` (same pattern)."""
    sign = np.where(np.sum(k * k_ref, axis=-1) < 0, -1.0, 1.0)
    return k * sign[:, None], _wrap(phase_c * sign)


def param_errors(k: np.ndarray, phase_c: np.ndarray, k_ref: np.ndarray,
                 phase_ref: np.ndarray) -> dict[str, np.ndarray]:
    """Per-angle errors of ``(k, φ_c)`` against a reference: signed relative period error, orientation
    error (degrees), relative wave-vector error ``|Δk|/|k_ref|`` and wrapped centre-phase error."""
    k, phase_c = align_k(k, phase_c, k_ref)
    period, period_ref = 1 / np.linalg.norm(k, axis=-1), 1 / np.linalg.norm(k_ref, axis=-1)
    cos = np.sum(k * k_ref, axis=-1) / (np.linalg.norm(k, axis=-1) * np.linalg.norm(k_ref, axis=-1))
    return {
        "period_rel_err": (period - period_ref) / period_ref,
        "orientation_err_deg": np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))),
        "k_rel_err": np.linalg.norm(k - k_ref, axis=-1) / np.linalg.norm(k_ref, axis=-1),
        "phase_err_rad": _wrap(phase_c - phase_ref),
    }


def crop(img: np.ndarray, margin: int) -> np.ndarray:
    return img[..., margin:img.shape[-2] - margin, margin:img.shape[-1] - margin]


def register_to(reference: np.ndarray, moving: np.ndarray, margin: int,
                upsample: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel translation of ``moving`` onto ``reference`` (plain cross-correlation of the crops,
    which tolerates their different blur better than phase correlation); returns the shifted image
    (full size) and the shift ``(dy, dx)`` in HR pixels."""
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(crop(reference, margin), crop(moving, margin),
                                          upsample_factor=upsample, normalization=None)
    moved = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(moving), shift)).real
    return moved, np.asarray(shift, np.float64)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def highpass(img: np.ndarray, cutoff: float) -> np.ndarray:
    """Keep only frequencies ``|f| > cutoff`` (cycles per pixel of ``img``; periodic FFT).

    With ``cutoff`` the widefield OTF cut-off this is the band only SIM can fill: the plain Pearson
    correlation of two reconstructions is dominated by their shared widefield content (a widefield
    image correlates at ~0.95 with a Wiener-SIM one), the high-passed one is not.
    """
    fy = np.fft.fftfreq(img.shape[-2])[:, None]
    fx = np.fft.fftfreq(img.shape[-1])[None, :]
    return np.fft.ifft2(np.fft.fft2(img) * (np.hypot(fy, fx) > cutoff)).real


def recon_correlations(a: np.ndarray, b: np.ndarray, cutoff: float, margin: int) -> dict[str, float]:
    """Pearson of two registered full-size reconstructions on the centre crop, plain and high-passed
    beyond ``cutoff`` (the widefield cut-off, cycles per HR pixel; :func:`highpass`)."""
    return {"recon_corr": pearson(crop(a, margin), crop(b, margin)),
            "recon_corr_hf": pearson(crop(highpass(a, cutoff), margin), crop(highpass(b, cutoff), margin))}


def image_metrics(rec: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """PSNR / NRMSE (``affine_fit_psnr``), SSIM after the same affine fit, Pearson with the GT."""
    from skimage.metrics import structural_similarity

    psnr, nrmse = affine_fit_psnr(rec[None], gt[None])
    fitted = affine_align(rec[None], gt[None])[0][0]
    ssim = structural_similarity(fitted, gt, data_range=float(gt.max() - gt.min()))
    return {"psnr_db": psnr, "nrmse": nrmse, "ssim": float(ssim), "corr_gt": pearson(rec, gt)}


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def run_tools(sample: SimSample, cfg: SimulateParams, period_hint: float) -> dict[str, ToolResult]:
    """Every available tool on one sample (external tools first; missing ones are skipped)."""
    optics, raw = optics_of(cfg), sample.raw
    versions = tool_versions()
    out: dict[str, ToolResult] = {}
    if versions["pyfairsim"]:
        out["pyfairsim"] = run_pyfairsim(raw, sample.norm_offset, optics, period_hint, cfg.n_angles)
    if versions["napari-sim-processor"]:
        out["napari-sim-processor"] = run_napari(raw, sample.norm_offset, optics, period_hint,
                                                 cfg.n_angles)
    out["simuq estimate_pattern"] = run_simuq_estimate(raw, sample, optics, period_hint, cfg.n_angles)
    wiener = run_simuq_wiener(raw, sample, cfg, period_hint)
    if wiener is not None:
        out["simuq wiener"] = wiener
    return out


def compare_sample(sample: SimSample, cfg: SimulateParams, results: dict[str, ToolResult],
                   margin_lr: int) -> dict[str, Any]:
    """All metrics of one sample (JSON-ready)."""
    k_true, phase_true, m_true = true_params(sample, cfg.n_angles, cfg.n_phases)
    gt = _gt_at_rescale(sample, cfg.hr_factor)
    margin = margin_lr * RESCALE
    gt_c = crop(gt, margin)
    record: dict[str, Any] = {"true": {"k": k_true.tolist(), "period": float(1 / np.linalg.norm(k_true[0])),
                                       "phase_c": phase_true.tolist(), "modulation": m_true.tolist()},
                              "tools": {}}
    wf = widefield((sample.raw[None].astype(np.float64) - sample.norm_offset), RESCALE)[0]
    record["widefield"] = image_metrics(crop(wf, margin), gt_c)
    registered: dict[str, np.ndarray] = {"widefield": wf}  # full size, on the GT's grid
    for name, res in results.items():
        errs = param_errors(res.k, res.phase_c, k_true, phase_true)
        entry: dict[str, Any] = {key: v.tolist() for key, v in errs.items()}
        entry["k"] = align_k(res.k, res.phase_c, k_true)[0].tolist()
        entry["modulation"] = res.modulation.tolist()
        entry["info"] = res.info
        if res.recon is not None:
            registered[name], shift = register_to(gt, res.recon, margin)
            entry["residual_shift_hr_px"] = shift.tolist()
            entry.update(image_metrics(crop(registered[name], margin), gt_c))
        record["tools"][name] = entry
    # Tool-vs-tool: parameters against each other, reconstructions (both registered to the GT).
    cutoff_hr = optics_of(cfg).cutoff / RESCALE
    pairs: dict[str, Any] = {}
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = results[a], results[b]
            kb, pb = align_k(rb.k, rb.phase_c, k_true)
            errs = param_errors(ra.k, ra.phase_c, kb, pb)
            pair: dict[str, Any] = {"period_rel_diff": errs["period_rel_err"].tolist(),
                                    "orientation_diff_deg": errs["orientation_err_deg"].tolist(),
                                    "phase_diff_rad": errs["phase_err_rad"].tolist()}
            if a in registered and b in registered:
                pair.update(recon_correlations(registered[a], registered[b], cutoff_hr, margin))
            pairs[f"{a} vs {b}"] = pair
    # How far a plain widefield image already correlates with each reconstruction: the floor any
    # "the reconstructions agree" threshold must clear.
    for name in results:
        if name in registered:
            pairs[f"widefield vs {name}"] = recon_correlations(registered["widefield"], registered[name],
                                                               cutoff_hr, margin)
    record["pairs"] = pairs
    return record


def summarise(records: list[dict[str, Any]], tol: float = 0.01) -> dict[str, Any]:
    """Per tool: mean and max of each error over samples × angles, pass fractions at ``tol``."""

    def stack(tool: str, key: str) -> np.ndarray:
        return np.array([r["tools"][tool][key] for r in records if tool in r["tools"]], np.float64)

    out: dict[str, Any] = {}
    for tool in records[0]["tools"]:
        signed, orient = stack(tool, "period_rel_err"), stack(tool, "orientation_err_deg")
        period = np.abs(signed)
        phase, mod = np.abs(stack(tool, "phase_err_rad")), stack(tool, "modulation")
        s: dict[str, Any] = {
            "period_rel_err_mean": float(period.mean()), "period_rel_err_max": float(period.max()),
            "period_rel_err_signed_mean": float(signed.mean()),
            "orientation_err_deg_mean": float(orient.mean()),
            "orientation_err_deg_max": float(orient.max()),
            "phase_abs_err_rad_median": float(np.median(phase)),
            "phase_abs_err_rad_max": float(phase.max()),
            "modulation_mean": float(mod.mean()), "modulation_std": float(mod.std()),
            # 1 % of |k| perpendicular to k is an orientation error of 0.01 rad.
            "frac_within_tol": float(np.mean((period < tol) & (np.radians(orient) < tol))),
        }
        if "psnr_db" in records[0]["tools"][tool]:
            for key in ("psnr_db", "ssim", "corr_gt"):
                vals = stack(tool, key)
                s[f"{key}_mean"], s[f"{key}_min"] = float(vals.mean()), float(vals.min())
            shifts = np.abs(stack(tool, "residual_shift_hr_px"))
            s["residual_shift_hr_px_max"] = float(shifts.max())
        out[tool] = s
    for key in ("psnr_db", "ssim", "corr_gt"):
        vals = np.array([r["widefield"][key] for r in records])
        out.setdefault("widefield", {})[f"{key}_mean"] = float(vals.mean())
        out["widefield"][f"{key}_min"] = float(vals.min())
    pairs: dict[str, Any] = {}
    for pair in records[0]["pairs"]:
        rows = [r["pairs"][pair] for r in records]
        p: dict[str, Any] = {} if "period_rel_diff" not in rows[0] else {
            "period_rel_diff_max": float(np.max(np.abs([x["period_rel_diff"] for x in rows]))),
            "orientation_diff_deg_max": float(np.max([x["orientation_diff_deg"] for x in rows])),
            "phase_abs_diff_rad_median": float(np.median(np.abs([x["phase_diff_rad"] for x in rows]))),
        }
        for key in ("recon_corr", "recon_corr_hf"):
            if key in rows[0]:
                corr = np.array([x[key] for x in rows])
                p[f"{key}_mean"], p[f"{key}_min"] = float(corr.mean()), float(corr.min())
        pairs[pair] = p
    out["pairs"] = pairs
    return out


def markdown(report: dict[str, Any]) -> str:
    """The short human-readable table of :func:`summarise`."""
    s, cfg = report["summary"], report["config"]
    lines = [
        "# Cross-check against independent classical SIM",
        "",
        f"{cfg['n_samples']} simulated stacks, {cfg['lr_size']}² camera px, default optics "
        f"(NA {cfg['na']}, λ {cfg['wavelength_nm']} nm, {cfg['pixel_nm']} nm px), true period "
        f"{cfg['period_lr']} LR px, m = {cfg['modulation']}; period hint = truth × "
        f"(1 + {cfg['hint_error']}); image metrics on the centre ({cfg['margin_lr']} LR px margin "
        f"dropped), GT = emitter at 2×. Versions: {report['versions']}.",
        "Produced by `python benchmarks/crosscheck_classical.py`.",
        "",
        "| tool | period err mean / max | orientation err mean / max (°) | abs phase err median / max "
        "(rad) | modulation mean ± sd | within 1 % | PSNR (dB) | SSIM | corr GT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for tool, t in s.items():
        if tool in ("pairs", "widefield"):
            continue
        img = (f"{t['psnr_db_mean']:.2f} | {t['ssim_mean']:.3f} | {t['corr_gt_mean']:.3f}"
               if "psnr_db_mean" in t else "– | – | –")
        lines.append(
            f"| {tool} | {100 * t['period_rel_err_mean']:.3f} % / {100 * t['period_rel_err_max']:.3f} % "
            f"| {t['orientation_err_deg_mean']:.3f} / {t['orientation_err_deg_max']:.3f} "
            f"| {t['phase_abs_err_rad_median']:.3f} / {t['phase_abs_err_rad_max']:.3f} "
            f"| {t['modulation_mean']:.3f} ± {t['modulation_std']:.3f} "
            f"| {100 * t['frac_within_tol']:.0f} % | {img} |")
    w = s["widefield"]
    lines.append(f"| widefield (reference) | – | – | – | – | – | {w['psnr_db_mean']:.2f} "
                 f"| {w['ssim_mean']:.3f} | {w['corr_gt_mean']:.3f} |")
    lines += ["", "Tool against tool (max over samples × angles; reconstructions registered to the GT):",
              "", "| pair | period diff max | orientation diff max (°) | abs phase diff median (rad) "
              "| recon corr mean / min | high-pass recon corr mean / min |", "|---|---|---|---|---|---|"]
    for pair, p in s["pairs"].items():
        corr = (f"{p['recon_corr_mean']:.3f} / {p['recon_corr_min']:.3f} | "
                f"{p['recon_corr_hf_mean']:.3f} / {p['recon_corr_hf_min']:.3f}" if "recon_corr_mean" in p
                else "– | –")
        if "period_rel_diff_max" not in p:
            lines.append(f"| {pair} | – | – | – | {corr} |")
            continue
        lines.append(f"| {pair} | {100 * p['period_rel_diff_max']:.3f} % "
                     f"| {p['orientation_diff_deg_max']:.3f} | {p['phase_abs_diff_rad_median']:.3f} "
                     f"| {corr} |")
    lines += ["", "High-pass: only frequencies beyond the widefield cut-off 2NA/λ (the SIM-extended band).",
              "", "\"simuq estimate_pattern\" reports its band-match contrast in the modulation column "
              "(not m). Conventions and conversions: module docstring of the script.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--hint-error", type=float, default=0.02,
                        help="period hint = true period × (1 + this)")
    parser.add_argument("--margin", type=int, default=16, help="LR px dropped per side for image metrics")
    args = parser.parse_args()
    cfg = simulate_config()
    optics = optics_of(cfg)
    period_hint = cfg.period_lr * (1 + args.hint_error)
    records, times = [], {}
    t_start = time.perf_counter()
    for i in range(args.n_samples):
        sample = simulate(cfg, i)
        t0 = time.perf_counter()
        results = run_tools(sample, cfg, period_hint)
        times[i] = time.perf_counter() - t0
        records.append(compare_sample(sample, cfg, results, args.margin))
        period_errs = {n: f"{100 * np.max(np.abs(r['period_rel_err'])):.3f}%"
                       for n, r in records[-1]["tools"].items()}
        print(f"sample {i}: max period error {period_errs}  ({times[i]:.1f} s)", flush=True)
    report = {
        "machine": machine(),
        "versions": tool_versions(),
        "config": {"n_samples": args.n_samples, "lr_size": LR_SIZE, "hr_factor": cfg.hr_factor,
                   "na": optics.na, "wavelength_nm": optics.wavelength_nm, "pixel_nm": optics.pixel_nm,
                   "otf_cutoff_cycles_per_px": optics.cutoff, "period_lr": cfg.period_lr,
                   "modulation": cfg.modulation, "hint_error": args.hint_error,
                   "period_hint": period_hint, "margin_lr": args.margin,
                   "photons": cfg.noise.photons, "simuq_wiener": simuq_wiener_available()},
        "summary": summarise(records),
        "samples": records,
        "seconds": time.perf_counter() - t_start,
    }
    path = write_report("crosscheck_classical", report)
    md = path.with_suffix(".md")
    md.write_text(markdown(report))
    print(markdown(report))
    print("wrote", path, "and", md)


if __name__ == "__main__":
    main()
