"""The classical baseline and the side-by-side comparison every SIM user asks for.

- :func:`baseline_report`: generalised Wiener SIM (:mod:`simuq_core.baselines.wiener`) on a
  simulated split, with simuq's own pattern estimate and the ``model`` section's optics (what a
  user knows of the instrument). The Wiener parameter is chosen on the val split (best PSNR after
  the affine fit to GT), then applied once to the test split. Its noise std is exact
  (:func:`~simuq_core.baselines.wiener.wiener_noise_variance`): the reconstruction is linear in the
  frames, so ``wiener(raw) − wiener(clean)`` is exactly the propagated camera noise; the report
  checks that calibration (``noise_*``) and, separately, how far the noise-free reconstruction is
  from GT (``bias``): the std covers the noise, not the bias, and both parts are shown.
- :func:`make_benchmark_set` + :func:`compare_methods`: larger stacks (``quality.size``² camera
  pixels) from the same simulated instrument at several photon budgets, each with an independent
  second noise realisation (:func:`simuq_core.simulation.samples.noise_twin`, for FRC). Widefield, Wiener
  SIM and the trained networks (applied exactly as ``predict`` applies them: tiles, image-level
  context and pattern) are scored by the same code
  (:func:`simuq_core.evaluation.quality_summary.quality_table`).

All images are in the loader's normalised units; the emitter GT is block-averaged onto the model
grid (:func:`simuq_core.evaluation.synthetic.pool_gt`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from simuq_core.baselines.wiener import (
    SimReconstruction,
    WienerOptions,
    reconstruct_stack,
    wiener_noise_variance,
    wiener_options,
    wiener_sim,
)
from simuq_core.config import BaselineParams, ModelParams, QualityParams, SimulateParams
from simuq_core.evaluation.gtfree import checkerboard_index
from simuq_core.evaluation.metrics import interval_coverage, z_moments
from simuq_core.evaluation.quality import apodised_spectrum, pattern_norm, register_or_keep
from simuq_core.evaluation.quality_summary import quality_markdown, quality_table
from simuq_core.evaluation.synthetic import affine_align, affine_fit_psnr, pool_gt, widefield
from simuq_core.optics.imaging import otf_cutoff_cycles_per_px
from simuq_core.optics.spectra import hann_window
from simuq_core.simulation.dataset import load_split
from simuq_core.simulation.samples import noise_twin, sample_rng, simulate_sample

__all__ = [
    "BenchmarkSet",
    "baseline_report",
    "baseline_summary",
    "choose_wiener_w",
    "compare_methods",
    "make_benchmark_set",
    "plot_quality_panel",
    "quality_report",
    "wiener_pattern",
]


def wiener_pattern(x: np.ndarray, model: ModelParams, options: WienerOptions) -> SimReconstruction:
    """Pattern estimate (+ one reconstruction) of frames ``(N, F, H, W)`` with the ``model``
    section's optics and period prior; :func:`wiener_sim` then reuses ``k``, phases, modulation."""
    optics, lp = model.optics, model.light_pattern
    return reconstruct_stack(x, optics.na, optics.wavelength_nm, optics.lr_pixel_nm,
                             r=model.rescale, options=options, n_angles=lp.n_angles,
                             period_lr=lp.period_lr, period_tolerance=lp.period_tolerance)


def _wiener(x: np.ndarray, est: SimReconstruction, r: int, options: WienerOptions) -> np.ndarray:
    return wiener_sim(x, est.k, est.phases, est.modulation, est.otf, r, options)


def choose_wiener_w(x: np.ndarray, gt: np.ndarray, model: ModelParams,
                    cfg: BaselineParams) -> tuple[float, dict[str, float]]:
    """The candidate ``w`` with the best mean PSNR (affine fit to ``gt``) on ``x``
    ``(N, F, H, W)``, and every candidate's PSNR (keys ``w=<value>``)."""
    est = wiener_pattern(x, model, wiener_options(cfg, cfg.wiener_w[0]))
    scores = {}
    for w in cfg.wiener_w:
        rec = _wiener(x, est, model.rescale, wiener_options(cfg, w))
        scores[f"w={w:g}"] = affine_fit_psnr(rec, gt)[0]
    best = max(cfg.wiener_w, key=lambda w: scores[f"w={w:g}"])
    return float(best), scores


def baseline_report(data_dir: str, model: ModelParams, cfg: BaselineParams) -> dict[str, Any]:
    """Wiener SIM on the val (choice of ``w``) and test splits of a simulated dataset.

    Returns ``{"metrics": flat dict, "test": {"wiener", "wiener_std", "widefield", "gt"}}``; metric
    keys: ``wiener_w``, ``val_psnr_w=<w>``, ``psnr_wiener`` / ``psnr_widefield`` (dB, affine fit),
    ``noise_zms`` / ``noise_coverage_68`` / ``noise_coverage_95`` of ``wiener(raw) −
    wiener(clean)`` under the exact variance, ``gt_zms`` / ``gt_coverage_95`` of the affinely
    fitted reconstruction against GT under the same (scaled) variance, and the split of its mean
    squared error ``gt_mse = noise_mse + bias_mse (+ cross term)``, ``bias_share``.
    """
    r = model.rescale
    val, test = load_split(data_dir, "val"), load_split(data_dir, "test")
    if val.emitter is None or test.emitter is None:
        raise ValueError(f"{data_dir}: the baseline report needs emitter ground truth in val and test")
    factor = val.emitter.shape[-1] // val.raw.shape[-1]
    if factor % r:
        raise ValueError(f"{data_dir}: GT grid factor {factor} is not a multiple of model.rescale {r}")
    gt_val = pool_gt(val.emitter, factor // r)
    gt = pool_gt(test.emitter, factor // r)
    t0 = time.perf_counter()
    w, val_scores = choose_wiener_w(val.raw, gt_val, model, cfg)
    options = wiener_options(cfg, w)
    t1 = time.perf_counter()
    est = wiener_pattern(test.raw, model, options)
    rec = est.image
    rec_clean = _wiener(test.clean, est, r, options)
    var = wiener_noise_variance(test.sigma.astype(np.float64) ** 2, est.k, est.phases,
                                est.modulation, est.otf, r, options)
    t_test = time.perf_counter() - t1
    noise = rec - rec_clean
    zm = z_moments(noise, var)
    # Against GT: the affine fit of the *noise-free* reconstruction to GT fixes the scale a (the
    # reconstruction has no absolute intensity scale); the noisy one is compared under a²·var.
    _, _, coef = affine_align(rec_clean, gt)
    a = coef[:, 0].reshape(-1, 1, 1)
    b = coef[:, 1].reshape(-1, 1, 1)
    err = a * rec + b - gt
    bias = a * rec_clean + b - gt
    var_gt = a**2 * var
    zm_gt = z_moments(err, var_gt)
    noise_mse = float(np.mean((a * noise) ** 2))
    bias_mse = float(np.mean(bias**2))
    wf = widefield(test.raw, r)
    metrics = {
        "wiener_w": w,
        **{f"val_psnr_{k}": v for k, v in val_scores.items()},
        "psnr_wiener": affine_fit_psnr(rec, gt)[0],
        "psnr_widefield": affine_fit_psnr(wf, gt)[0],
        "modulation_mean": float(np.mean(est.modulation)),
        "noise_zms": zm.zms,
        "noise_z_mean": zm.mean,
        "noise_coverage_68": interval_coverage(noise, var, z_bound=1.0),
        "noise_coverage_95": interval_coverage(noise, var, z_bound=1.96),
        "gt_zms": zm_gt.zms,
        "gt_coverage_95": interval_coverage(err, var_gt, z_bound=1.96),
        "gt_mse": float(np.mean(err**2)),
        "noise_mse": noise_mse,
        "bias_mse": bias_mse,
        "bias_share": bias_mse / max(float(np.mean(err**2)), 1e-30),
        "seconds_choose_w": t1 - t0,
        "seconds_test": t_test,
        "n_test": len(test),
    }
    return {"metrics": metrics,
            "test": {"wiener": rec.astype(np.float32), "wiener_std": np.sqrt(var).astype(np.float32),
                     "widefield": wf.astype(np.float32), "gt": gt.astype(np.float32)}}


# ----------------------------------------------------------------------------------------------
# The side-by-side benchmark set
# ----------------------------------------------------------------------------------------------


class BenchmarkSet(NamedTuple):
    """Normalised stacks of one photon level. ``x``, ``x_twin`` (independent noise of the same
    samples, same normalisation), ``clean``, ``sigma``: ``(N, F, H, W)``; ``gt``: ``(N, rH, rW)``
    emitter on the model grid; ``k_true``: ``(N, A, 2)`` cycles per camera pixel."""

    x: np.ndarray
    x_twin: np.ndarray
    clean: np.ndarray
    sigma: np.ndarray
    gt: np.ndarray
    k_true: np.ndarray
    photons: float


def make_benchmark_set(sim: SimulateParams, cfg: QualityParams, photon_factor: float, rescale: int,
                       split: str = "test") -> BenchmarkSet:
    """``cfg.n_samples`` (``split="test"``) or ``cfg.n_val`` (``"val"``) stacks of ``cfg.size``²
    camera pixels from the ``simulate`` instrument with photon and background counts scaled by
    ``photon_factor`` (read noise unchanged). Sample ``i`` is the same scene at every level."""
    noise = sim.noise.model_copy(update={"photons": sim.noise.photons * photon_factor,
                                         "photon_range": 1.0,
                                         "background_photons":
                                             sim.noise.background_photons * photon_factor})
    scfg = sim.model_copy(update={"lr_h": cfg.size, "lr_w": cfg.size, "noise": noise})
    if sim.hr_factor % rescale:
        raise ValueError(f"simulate.hr_factor {sim.hr_factor} is not a multiple of model.rescale "
                         f"{rescale}")
    n = cfg.n_samples if split == "test" else cfg.n_val
    # Scenes of the benchmark set never coincide with a training sample: their own seed stream.
    seed = cfg.seed + (0 if split == "test" else 1_000_003)
    out: dict[str, list] = {k: [] for k in ("x", "t", "c", "s", "g", "k")}
    for i in range(n):
        s = simulate_sample(sample_rng(seed, "test", i), scfg)
        twin = noise_twin(np.random.default_rng([seed, 2, i]), s, noise)
        off, scale = s.norm_offset, s.norm_scale
        out["x"].append((s.raw - off) / scale)
        out["t"].append((twin - off) / scale)
        out["c"].append((s.clean - off) / scale)
        out["s"].append(s.sigma / scale)
        out["g"].append(s.emitter)
        out["k"].append(s.pattern.k[:: sim.n_phases])
    stack = {k: np.stack(v).astype(np.float32) for k, v in out.items()}
    return BenchmarkSet(stack["x"], stack["t"], stack["c"], stack["s"],
                        pool_gt(stack["g"], sim.hr_factor // rescale), stack["k"],
                        float(noise.photons))


def _network(predictor, x: np.ndarray) -> np.ndarray:
    return np.stack([predictor(xi)[0]["emitter"] for xi in x])


def compare_methods(bench: BenchmarkSet, val: BenchmarkSet, model: ModelParams, cfg: BaselineParams,
                    networks: Mapping[str, Any], sim: SimulateParams) -> dict[str, Any]:
    """Every method on ``bench`` (Wiener ``w`` chosen on ``val``), scored side by side.

    ``networks``: ``{name: TiledPredictor}``. Returns ``{"table": quality_table(...),
    "images": {method: (N, rH, rW)}, "wiener_w": w, "pattern_error": {...}}``.
    """

    r = model.rescale
    w, _ = choose_wiener_w(val.x, val.gt, model, cfg)
    options = wiener_options(cfg, w)
    est = wiener_pattern(bench.x, model, options)
    est_twin = wiener_pattern(bench.x_twin, model, options)
    images = {"widefield": widefield(bench.x, r), "wiener_sim": est.image}
    twins = {"widefield": widefield(bench.x_twin, r), "wiener_sim": est_twin.image}
    for name, predictor in networks.items():
        images[name] = _network(predictor, bench.x)
        twins[name] = _network(predictor, bench.x_twin)
    cutoff_lr = otf_cutoff_cycles_per_px(sim.psf.na, sim.psf.wavelength_nm, sim.psf.lr_pixel_nm)
    k_pattern = np.linalg.norm(bench.k_true, axis=-1).mean() / r
    # Where each method can carry noise (and so information): the bilinear widefield up to the
    # camera Nyquist, everything else up to the SIM support 2NA/λ + |k| (FRC and decorrelation
    # beyond a method's band see window leakage / interpolation, not resolution).
    support = min(0.5, (cutoff_lr + np.linalg.norm(bench.k_true, axis=-1).max()) / r)
    band = {name: support for name in images} | {"widefield": 0.5 / r}
    table = quality_table(images, bench.gt, k_wf=cutoff_lr / r, k_pattern=float(k_pattern),
                          pixel_nm=sim.psf.lr_pixel_nm / r, second=twins,
                          decorr_max_freq={"widefield": 0.5 / r}, frc_max_freq=band)
    for name, img in {**images, "gt": bench.gt}.items():
        table.setdefault(name, {})["checkerboard"] = checkerboard_index(img, r)
    # Pattern estimate vs truth (sign of k is a convention: compare ±k)
    k_est, k_true = est.k, bench.k_true
    dk = np.minimum(np.linalg.norm(k_est - k_true, axis=-1), np.linalg.norm(k_est + k_true, axis=-1))
    rel = dk / np.linalg.norm(k_true, axis=-1)
    return {"table": table, "images": images, "wiener_w": w,
            "pattern_k_rel_error_median": float(np.median(rel)),
            "pattern_k_rel_error_max": float(np.max(rel)),
            "wiener_modulation_mean": float(np.mean(est.modulation))}


def baseline_summary(m: Mapping[str, float]) -> str:
    """Markdown summary of :func:`baseline_report`'s metrics."""
    scores = ", ".join(f"{k[len('val_psnr_w='):]}: {v:.2f}" for k, v in m.items()
                       if k.startswith("val_psnr_w="))
    return (
        "# Classical baseline: generalised Wiener SIM (test split)\n\n"
        f"Wiener parameter w = {m['wiener_w']:g}, chosen on the val split by PSNR (dB) after the "
        f"affine fit to GT ({scores}).\n\n"
        "| | value |\n|---|---:|\n"
        f"| PSNR Wiener SIM (dB) | {m['psnr_wiener']:.2f} |\n"
        f"| PSNR widefield (dB) | {m['psnr_widefield']:.2f} |\n"
        f"| mean estimated modulation | {m['modulation_mean']:.3f} |\n\n"
        "## Its exact noise std\n\n"
        "The reconstruction is linear in the frames, so `wiener(raw) − wiener(clean)` is the "
        "propagated camera noise exactly; the std map is `sqrt(wiener_noise_variance(σ²))`.\n\n"
        "| noise part: `wiener(raw) − wiener(clean)` | value | ideal |\n|---|---:|---:|\n"
        f"| ZMS | {m['noise_zms']:.4f} | 1 |\n"
        f"| mean z | {m['noise_z_mean']:.4f} | 0 |\n"
        f"| coverage 68 % | {m['noise_coverage_68']:.4f} | 0.6827 |\n"
        f"| coverage 95 % | {m['noise_coverage_95']:.4f} | 0.9500 |\n\n"
        "Against GT (the reconstruction affinely fitted to GT, std scaled alike) the error is "
        "noise **plus bias** (resolution loss, ringing, the OTF's missing cone); the std covers "
        "only the noise:\n\n"
        "| against GT | value |\n|---|---:|\n"
        f"| ZMS | {m['gt_zms']:.2f} |\n"
        f"| coverage 95 % | {m['gt_coverage_95']:.3f} |\n"
        f"| MSE | {m['gt_mse']:.3g} |\n"
        f"| noise MSE | {m['noise_mse']:.3g} |\n"
        f"| bias MSE (noise-free reconstruction vs GT) | {m['bias_mse']:.3g} |\n"
        f"| bias share of the MSE | {m['bias_share']:.3f} |\n"
    )


def _level_name(factor: float) -> str:
    return f"photons_x{factor:g}"


def quality_report(params, networks: Mapping[str, Any], out_dir, progress: bool = False
                   ) -> dict[str, Any]:
    """:func:`compare_methods` at every ``quality.photon_factors`` level, with figure panels
    ``<out_dir>/panel_<level>.png``. Returns ``{"metrics": nested dict (DVC metrics), "flat":
    MLflow-ready dict, "markdown": summary, "headline": log lines}``."""
    from pathlib import Path


    sim, q, model = params.simulate, params.quality, params.model
    r = model.rescale
    metrics: dict[str, Any] = {}
    flat: dict[str, float] = {}
    md = ["# Side-by-side quality (simulated stacks, all methods scored by the same code)\n",
          f"{q.n_samples} stacks of {q.size}×{q.size} camera pixels per photon level, from the "
          "`simulate` instrument and objects (their own seed stream: no training scene); the "
          f"Wiener parameter is chosen on {q.n_val} further stacks per level. PSNR and SSIM after "
          "sub-pixel registration and an affine fit to GT; spectral correlation with GT in the ring "
          "1.1·k_wf < |f| < 0.9·(k_wf + |k|) (≈ 0: no true information beyond the widefield "
          "cut-off); FRC (threshold 1/7) between reconstructions of two independent noise "
          "realisations; decorrelation analysis on one image (Descloux et al. 2019).\n"]
    headline = []
    cutoff_lr = otf_cutoff_cycles_per_px(sim.psf.na, sim.psf.wavelength_nm, sim.psf.lr_pixel_nm)
    for factor in q.photon_factors:
        level = _level_name(factor)
        t0 = time.perf_counter()
        bench = make_benchmark_set(sim, q, factor, r, "test")
        val = make_benchmark_set(sim, q, factor, r, "val")
        res = compare_methods(bench, val, model, params.baseline, networks, sim)
        table = res["table"]
        extra = {"wiener_w": res["wiener_w"], "photons": bench.photons,
                 "pattern_k_rel_error_median": res["pattern_k_rel_error_median"],
                 "pattern_k_rel_error_max": res["pattern_k_rel_error_max"],
                 "wiener_modulation_mean": res["wiener_modulation_mean"],
                 "seconds": time.perf_counter() - t0}
        wiener_psnr = table["wiener_sim"]["psnr"]
        for name in networks:
            if table[name]["psnr"] is not None and wiener_psnr is not None:
                extra[f"{name}_psnr_minus_wiener"] = table[name]["psnr"] - wiener_psnr
        metrics[level] = {"methods": table, **extra}
        for name, row in table.items():
            for key, v in row.items():
                if v is not None:
                    flat[f"quality_{level}_{name}_{key}"] = float(v)
        flat |= {f"quality_{level}_{k}": float(v) for k, v in extra.items()}
        md.append(f"\n## {bench.photons:g} photons per structure pixel (×{factor:g})\n\n")
        rows = {k: v for k, v in table.items() if k != "gt"}
        md.append(quality_markdown(rows))
        md.append("\nCheckerboard index (RMS of the sub-pixel means over the model-grid blocks, "
                  "relative to the image mean; GT: "
                  f"{table['gt']['checkerboard']:.4f}): "
                  + ", ".join(f"{k} {v['checkerboard']:.4f}" for k, v in rows.items()) + ".\n")
        md.append(f"\nWiener w = {res['wiener_w']:g}; pattern |k| error median "
                  f"{100 * res['pattern_k_rel_error_median']:.2f} %, max "
                  f"{100 * res['pattern_k_rel_error_max']:.2f} %; mean estimated modulation "
                  f"{res['wiener_modulation_mean']:.3f}.\n")
        for name in networks:
            key = f"{name}_psnr_minus_wiener"
            if key in extra:
                headline.append(f"{level}: {name} PSNR {table[name]['psnr']:.2f} dB vs Wiener SIM "
                                f"{wiener_psnr:.2f} dB ({extra[key]:+.2f} dB)")
        for i in range(min(q.n_panel, len(bench.x))):
            plot_quality_panel(Path(out_dir) / "panels" / f"{level}_{i}.png",
                               {k: v[i] for k, v in res["images"].items()}, bench.gt[i],
                               sim.psf.lr_pixel_nm / r, k_wf=cutoff_lr / r,
                               k_pattern=float(np.linalg.norm(bench.k_true[i], axis=-1).mean() / r),
                               title=f"sample {i}, {bench.photons:g} photons")
    return {"metrics": metrics, "flat": flat, "markdown": "".join(md), "headline": headline}


def plot_quality_panel(
    out_png: str | os.PathLike,
    images: Mapping[str, np.ndarray],
    gt: np.ndarray,
    pixel_nm: float,
    *,
    k_wf: float | None = None,
    k_pattern: float | np.ndarray | None = None,
    row: int | None = None,
    register: bool = True,
    max_shift: float = 2.0,
    title: str = "",
) -> Path:
    """GT and each method side by side: image, log power spectrum, and one line profile.

    Each method is registered onto ``gt`` and affine-fitted to it (as for PSNR), so all images
    share the GT's intensity scale and display range (GT p1–p99). Spectra are
    ``log10 |FFT|²`` of the mean-removed, Hann-windowed image, centred, with circles at ``k_wf``
    and ``k_wf + |k_pattern|`` when given. The bottom panel overlays the profiles along image row
    ``row`` (default: the row of largest GT variance), marked by a dashed line on each image.

    Parameters
    ----------
    images : ``{name: (H, W)}``; gt : ``(H, W)``; pixel_nm : their pixel size.
    k_wf, k_pattern : cycles per pixel of this grid, as in :func:`spectral_correlation`.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    from simuq_core.reports.plots import save_figure  # matplotlib (Agg) only when drawing

    g = np.asarray(gt, dtype=np.float64)
    shown = {"GT": g}
    for name, img in images.items():
        p = np.asarray(img, dtype=np.float64)
        if register:
            p = register_or_keep(p[None], g[None], 20, max_shift)[0][0]
        shown[name] = affine_align(p[None], g[None])[0][0]
    h, w = g.shape
    row = int(np.argmax(g.var(axis=1))) if row is None else row
    lo, hi = (float(v) for v in np.percentile(g, (1.0, 99.0)))
    cols = len(shown)
    fig = Figure(figsize=(3.2 * cols, 9.0), layout="constrained")
    fig.suptitle(title or f"quality panel ({pixel_nm:.3g} nm/px): images registered and affine-fitted "
                          f"to GT, display GT p1–p99\nlog10 power of the Hann-windowed image (white: k_wf, "
                          f"orange: k_wf + |k|); profile along row {row}", fontsize=9)
    grid = fig.add_gridspec(3, cols, height_ratios=(1.0, 1.0, 0.8))
    window = hann_window((h, w))
    extent = (-0.5, 0.5, 0.5, -0.5)
    profile_ax = fig.add_subplot(grid[2, :])
    x_nm = np.arange(w) * pixel_nm
    for j, (name, img) in enumerate(shown.items()):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.axhline(row, color="tab:cyan", ls="--", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("x (px)", fontsize=8)
        ax.set_ylabel("y (px)", fontsize=8)
        ax.tick_params(labelsize=7)
        power = np.fft.fftshift(np.abs(apodised_spectrum(img, window)) ** 2)
        log_power = np.log10(power + power.max() * 1e-12)
        ax_s = fig.add_subplot(grid[1, j])
        ax_s.imshow(log_power, cmap="viridis", extent=extent, interpolation="nearest",
                    vmin=np.percentile(log_power, 5), vmax=log_power.max())
        k_sim = None if k_wf is None or k_pattern is None else k_wf + pattern_norm(k_pattern)
        for radius, colour in ((k_wf, "white"), (k_sim, "tab:orange")):
            if radius is not None:
                ax_s.add_patch(Circle((0, 0), radius, fill=False, ec=colour, ls="--", lw=0.8))
        ax_s.set_title(f"{name}: log10 power", fontsize=9)
        ax_s.set_xlabel("fx (cycles/px)", fontsize=8)
        ax_s.set_ylabel("fy (cycles/px)", fontsize=8)
        ax_s.tick_params(labelsize=7)
        style = {"color": "black", "lw": 1.5} if name == "GT" else {"lw": 1.0}
        profile_ax.plot(x_nm, img[row], label=name, **style)
    profile_ax.set_xlabel("x (nm)", fontsize=8)
    profile_ax.set_ylabel("intensity (a.u., GT scale)", fontsize=8)
    profile_ax.tick_params(labelsize=7)
    profile_ax.legend(fontsize=7, ncols=min(cols, 6))
    return save_figure(fig, out_png)
