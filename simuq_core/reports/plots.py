"""Figures people look at: uncertainty maps, predictions against ground truth, calibration plots
and training curves (docs/design.md §3, §6).

Conventions shared by every figure:

- a title (the figure's ``suptitle``) that names the component, the data and the display scaling;
  every image has a colour bar with its unit (``a.u.`` when the scale is arbitrary) and axes in
  pixels of its grid ("camera px" for the 9 raw frames, "model px" for the model's finer grid);
- images are displayed between the 1st and 99th percentile of the panel (``display p1–p99``)
  unless the title says otherwise; signed maps (errors, z) use a symmetric diverging scale;
- at most :data:`MAX_ROWS` samples are shown, one per row;
- PNGs are written atomically (temporary name in the same folder, then renamed) and every figure is
  cleared after saving, so long runs do not accumulate memory.

Matplotlib runs on the non-interactive Agg backend and figures are built on
:class:`matplotlib.figure.Figure` without pyplot's global state, so nothing here needs a display
and drawing may run on a worker thread (:mod:`simuq_core.reports.debug` does that during training).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FormatStrFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
    NullLocator,
)

from simuq_core.evaluation.calibration_curves import (  # noqa: E402
    CalibrationCurve,
    PITHistogram,
    Sparsification,
)
from simuq_core.io import atomic_file  # noqa: E402

__all__ = [
    "MAX_ROWS",
    "plot_calibration_curves",
    "plot_component_std",
    "plot_input_frames",
    "plot_nll_maps",
    "plot_pit_histograms",
    "plot_pred_vs_gt",
    "plot_psf_pred_vs_gt",
    "plot_sparsification",
    "plot_std_histogram",
    "plot_training_curves",
    "plot_uq_vs_noise",
    "save_figure",
]

#: Samples shown per figure (one row each).
MAX_ROWS = 4
_PCT = (1.0, 99.0)
_DPI = 110
_PANEL_W, _PANEL_H = 3.4, 2.75


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Save ``fig`` as PNG atomically and release it.

    Figures are built on :class:`matplotlib.figure.Figure` directly (not pyplot), so no global
    figure registry keeps them alive; clearing drops the artists at once.
    """
    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", dpi=_DPI)
    finally:
        fig.clear()
    return path


def _figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    return Figure(figsize=(width, height), layout=layout)


# ----------------------------------------------------------------------------------------------
# Image panels
# ----------------------------------------------------------------------------------------------


def _limits(a: np.ndarray, pct: tuple[float, float] = _PCT, symmetric: bool = False) -> tuple:
    """Display limits from percentiles of the finite values (never an empty range)."""
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return 0.0, 1.0
    if symmetric:
        m = float(np.percentile(np.abs(a), pct[1]))
        m = m if m > 0 else 1e-12
        return -m, m
    lo, hi = (float(v) for v in np.percentile(a, pct))
    if hi <= lo:
        pad = max(abs(lo), 1e-12) * 1e-3
        lo, hi = lo - pad, hi + pad
    return lo, hi


def _grid(rows: int, cols: int, title: str, extra_w: float = 0.0) -> tuple[Figure, np.ndarray]:
    """A grid of image panels with fixed margins (constrained layout would double the drawing
    time of these many-panel figures, which training writes every few epochs)."""
    title_h = 0.3 + 0.25 * (title.count("\n") + 1)  # inches above the panels
    width, height = _PANEL_W * cols + extra_w, _PANEL_H * rows + title_h
    fig = _figure(width, height, layout=None)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.6 / width, right=1 - 0.75 / width, bottom=0.5 / height,
                        top=1 - title_h / height, wspace=0.85, hspace=0.45)
    fig.suptitle(title, fontsize=11)
    return fig, axes


def _image(ax, img: np.ndarray, title: str, cbar: str, *, grid: str, cmap: str = "magma",
           limits: tuple | None = None, symmetric: bool = False) -> None:
    vmin, vmax = limits if limits is not None else _limits(img, symmetric=symmetric)
    im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label(cbar, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(f"x ({grid})", fontsize=8)
    ax.set_ylabel(f"y ({grid})", fontsize=8)
    ax.tick_params(labelsize=7)


def _log_scale(ax, which: str, lo: float, hi: float) -> None:
    """Log scale on ``ax.xaxis`` / ``ax.yaxis`` with readable ticks: decades over three or more
    decades, 1-2-5 steps over one to three, else a few plain ticks (matplotlib would label crowded
    minor ticks over a narrow range and leave a one-decade axis with a single label)."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    decades = np.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    if decades >= 3:
        axis.set_major_locator(LogLocator(base=10))
        axis.set_minor_formatter(NullFormatter())
    elif decades >= 1:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FormatStrFormatter("%.3g"))
        axis.set_minor_formatter(NullFormatter())
    else:
        axis.set_major_locator(MaxNLocator(4))
        axis.set_major_formatter(FormatStrFormatter("%.3g"))
        axis.set_minor_locator(NullLocator())


def _names(names: Sequence[str] | None, n: int) -> list[str]:
    return list(names) if names is not None else [str(i) for i in range(n)]


def _first_frame(a: np.ndarray, stacked: bool) -> np.ndarray:
    return a[0] if stacked else a


def plot_component_std(path: str | os.PathLike, mean: np.ndarray, std: np.ndarray, *,
                       component: str, unit: str, grid: str, quantity: str = "value",
                       names: Sequence[str] | None = None) -> Path:
    """Mean and predicted std of one component, one row per sample.

    ``mean`` and ``std``: ``(N, H, W)`` maps or ``(N, F, H, W)`` frame stacks; stacks show frame 0
    (mean and std) and the std averaged over the ``F`` frames. Colour bars read
    ``"{quantity} ({unit})"`` and ``"std ({unit})"``.
    """
    stacked = std.ndim == 4
    n = min(len(std), MAX_ROWS)
    names = _names(names, len(std))
    cols = 3 if stacked else 2
    frame = " (frame 0)" if stacked else ""
    fig, axes = _grid(n, cols, f"{component}: prediction and predicted std "
                               f"({n} of {len(std)} samples; display p1–p99 per panel)")
    for i in range(n):
        _image(axes[i, 0], _first_frame(mean[i], stacked), f"sample {names[i]}: {component}{frame}",
               f"{quantity} ({unit})", grid=grid, cmap="gray")
        _image(axes[i, 1], _first_frame(std[i], stacked), f"{component} std{frame}", f"std ({unit})",
               grid=grid)
        if stacked:
            _image(axes[i, 2], std[i].mean(axis=0), f"{component} std, mean of {std.shape[1]} frames",
                   f"std ({unit})", grid=grid)
    return save_figure(fig, path)


def plot_error_std_rows(path: str | os.PathLike,
                        rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], *,
                        title: str, unit: str = "a.u.") -> Path:
    """One row per ``(name, |error|, aleatoric std, epistemic std)``, ``(H, W)`` maps; the three
    panels of a row share one colour scale (p1–p99 of the three together), so they compare."""
    fig, axes = _grid(len(rows), 3, title)
    for i, (name, err, alea, epi) in enumerate(rows):
        lo, hi = _limits(np.concatenate([err.ravel(), alea.ravel(), epi.ravel()]))
        for j, (img, label) in enumerate(((err, f"{name}: |error|"), (alea, "aleatoric std"),
                                          (epi, "epistemic std"))):
            im = axes[i, j].imshow(img, cmap="magma", vmin=lo, vmax=hi, interpolation="nearest")
            axes[i, j].set_title(label, fontsize=9)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            fig.colorbar(im, ax=axes[i, j], fraction=0.046, pad=0.02, label=unit)
    return save_figure(fig, path)


def _log_bins(values: np.ndarray, n: int = 60) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.geomspace(lo * 0.9, lo * 1.1, n + 1)
    return np.geomspace(lo, hi, n + 1)


def plot_std_histogram(path: str | os.PathLike, std: np.ndarray, *, component: str,
                       unit: str) -> Path:
    """Histogram of every pixel's predicted std (log-spaced bins) with its mean and p95."""
    values = np.asarray(std, dtype=np.float64).ravel()
    positive = values[values > 0]
    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    mean, p95 = float(values.mean()), float(np.percentile(values, 95))
    scale = "linear"
    if positive.size:
        lo, hi = float(positive.min()), float(positive.max())
        if hi / lo >= 10:  # log bins only when the values span a decade
            scale = "log"
            _log_scale(ax, "x", lo, hi)
        bins = _log_bins(positive) if scale == "log" else np.linspace(lo, max(hi, lo * 1.001 + 1e-30), 61)
        ax.hist(positive, bins=bins, color="tab:blue", alpha=0.8)
    ax.axvline(mean, color="k", ls="--", label=f"mean {mean:.3g}")
    ax.axvline(p95, color="tab:red", ls=":", label=f"p95 {p95:.3g} (p95/mean {p95 / max(mean, 1e-30):.2f})")
    ax.set_yscale("log")
    ax.set_xlabel(f"predicted std ({unit}); {scale} scale")
    ax.set_ylabel("pixel count (log scale)")
    n_zero = values.size - positive.size
    ax.set_title(f"{component} std histogram: {values.size:,} pixels of {len(std)} samples"
                 + (f" ({n_zero} zeros left out)" if n_zero else ""), fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_input_frames(path: str | os.PathLike, x: np.ndarray, *, name: str = "0",
                      n_phases: int = 3) -> Path:
    """The raw frames of one sample, ``(F, H, W)``, angle-major (rows: angles, columns: phases),
    on one shared scale."""
    f = len(x)
    cols = n_phases if f % n_phases == 0 else int(np.ceil(np.sqrt(f)))
    rows = int(np.ceil(f / cols))
    limits = _limits(x, (0.5, 99.5))
    width, height = 3.0 * cols + 1.0, 2.75 * rows + 0.6
    fig = _figure(width, height, layout=None)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(left=0.6 / width, right=1 - 0.9 / width, bottom=0.5 / height,
                        top=1 - 0.6 / height, wspace=0.45, hspace=0.45)
    fig.suptitle(f"input: sample {name}, {f} raw frames (frame = {n_phases}·angle + phase), "
                 "shared display p0.5–p99.5", fontsize=11)
    for k, ax in enumerate(axes.ravel()):
        if k >= f:
            ax.set_axis_off()
            continue
        im = ax.imshow(x[k], cmap="gray", vmin=limits[0], vmax=limits[1], interpolation="nearest")
        ax.set_title(f"frame {k} (angle {k // n_phases}, phase {k % n_phases})", fontsize=9)
        ax.set_xlabel("x (camera px)", fontsize=8)
        ax.set_ylabel("y (camera px)", fontsize=8)
        ax.tick_params(labelsize=7)
    bar = fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02)
    bar.set_label("intensity (normalised a.u.), all frames", fontsize=9)
    return save_figure(fig, path)


def plot_pred_vs_gt(path: str | os.PathLike, pred: np.ndarray, gt: np.ndarray, *, component: str,
                    unit: str, grid: str, quantity: str = "value", std: np.ndarray | None = None,
                    names: Sequence[str] | None = None, note: str = "") -> Path:
    """Ground truth, prediction, error and (when given) predicted std, one row per sample.

    ``(N, H, W)`` maps or ``(N, F, H, W)`` stacks (frame 0 shown). GT and prediction share one
    display range per row, so their contrast compares directly.
    """
    stacked = pred.ndim == 4
    n = min(len(pred), MAX_ROWS)
    names = _names(names, len(pred))
    cols = 4 if std is not None else 3
    frame = " (frame 0)" if stacked else ""
    fig, axes = _grid(n, cols, f"{component}: prediction vs ground truth{frame}{note}\n"
                               f"GT and prediction share display p1–p99 of the GT per row; error: "
                               f"symmetric p99; std: p1–p99")
    for i in range(n):
        g, p = _first_frame(gt[i], stacked), _first_frame(pred[i], stacked)
        err = p - g
        rmse = float(np.sqrt(np.mean(err**2)))
        limits = _limits(g)
        label = f"{quantity} ({unit})"
        _image(axes[i, 0], g, f"sample {names[i]}: GT", label, grid=grid, cmap="gray", limits=limits)
        _image(axes[i, 1], p, "prediction", label, grid=grid, cmap="gray", limits=limits)
        _image(axes[i, 2], err, f"prediction − GT (RMSE {rmse:.3g})", f"error ({unit})", grid=grid,
               cmap="RdBu_r", symmetric=True)
        if std is not None:
            s = _first_frame(std[i], stacked)
            _image(axes[i, 3], s, f"predicted std (mean {s.mean():.3g})", f"std ({unit})", grid=grid)
    return save_figure(fig, path)


def _radial_profile(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = img.shape[-1]
    yy, xx = np.indices(img.shape)
    r = np.hypot(yy - (k - 1) / 2, xx - (k - 1) / 2)
    bins = np.round(r).astype(int)
    sums = np.bincount(bins.ravel(), img.ravel())
    counts = np.bincount(bins.ravel())
    return np.arange(len(sums)), sums / np.maximum(counts, 1)


def plot_psf_pred_vs_gt(path: str | os.PathLike, pred: np.ndarray, gt: np.ndarray, *,
                        std: np.ndarray | None = None, pixel_nm: float | None = None,
                        names: Sequence[str] | None = None) -> Path:
    """Predicted vs true PSF ``(N, K, K)`` on the model grid: images, difference, std, and the
    azimuthally averaged radial profiles."""
    n = min(len(pred), MAX_ROWS)
    names = _names(names, len(pred))
    cols = 5 if std is not None else 4
    grid = "model px" if pixel_nm is None else f"model px, {pixel_nm:.1f} nm"
    fig, axes = _grid(n, cols, "PSF: prediction vs ground truth (tap weights; each kernel sums to 1)\n"
                               "GT and prediction share display 0–max of the GT per row; difference: "
                               "symmetric p99; std: p1–p99", extra_w=0.6)
    unit = "tap weight"
    for i in range(n):
        limits = (0.0, float(max(gt[i].max(), 1e-12)))
        _image(axes[i, 0], gt[i], f"sample {names[i]}: GT PSF", unit, grid=grid, cmap="viridis",
               limits=limits)
        _image(axes[i, 1], pred[i], "predicted PSF", unit, grid=grid, cmap="viridis", limits=limits)
        _image(axes[i, 2], pred[i] - gt[i], "prediction − GT", "difference (tap weight)", grid=grid,
               cmap="RdBu_r", symmetric=True)
        c = cols - 1
        if std is not None:
            _image(axes[i, 3], std[i], "predicted std per tap", "std (tap weight)", grid=grid)
        ax = axes[i, c]
        for img, label, style in ((gt[i], "GT", "k-"), (pred[i], "prediction", "C1--")):
            r, prof = _radial_profile(img)
            ax.plot(r if pixel_nm is None else r * pixel_nm, prof, style, label=label)
        if std is not None:
            r, prof = _radial_profile(pred[i])
            _, sd = _radial_profile(std[i])
            ax.fill_between(r if pixel_nm is None else r * pixel_nm, prof - sd, prof + sd,
                            color="C1", alpha=0.25, label="prediction ± mean std")
        ax.set_xlabel("radius (model px)" if pixel_nm is None else "radius (nm)", fontsize=8)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_title("radial profile (azimuthal mean)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_nll_maps(path: str | os.PathLike, gt: np.ndarray, nll: np.ndarray, z: np.ndarray, *,
                  component: str, unit: str, grid: str, quantity: str = "value",
                  names: Sequence[str] | None = None, note: str = "") -> Path:
    """Per-pixel Gaussian NLL ``0.5 (log 2πv + e²/v)`` and ``z = e/√v`` against GT, per sample
    (stacks: frame 0)."""
    stacked = gt.ndim == 4
    n = min(len(gt), MAX_ROWS)
    names = _names(names, len(gt))
    frame = " (frame 0)" if stacked else ""
    fig, axes = _grid(n, 3, f"{component}: per-pixel Gaussian NLL against GT{frame}{note}\n"
                            f"mean NLL {nll.mean():.3g} nats/px over all samples; display p1–p99, "
                            f"z clipped at ±3")
    for i in range(n):
        _image(axes[i, 0], _first_frame(gt[i], stacked), f"sample {names[i]}: GT",
               f"{quantity} ({unit})", grid=grid, cmap="gray")
        m = _first_frame(nll[i], stacked)
        _image(axes[i, 1], m, f"NLL (mean {m.mean():.3g})", "NLL (nats / pixel)", grid=grid,
               cmap="inferno")
        zi = _first_frame(z[i], stacked)
        _image(axes[i, 2], zi, f"z = error / std (mean z² {np.mean(zi**2):.3g})", "z (dimensionless)",
               grid=grid, cmap="RdBu_r", limits=(-3.0, 3.0))
    return save_figure(fig, path)


def plot_uq_vs_noise(path: str | os.PathLike, sigma: np.ndarray, rec_std: np.ndarray, *,
                     names: Sequence[str] | None = None, subtitle: str = "") -> Path:
    """Predicted rec std against the true noise σ, both ``(N, F, H, W)`` on the camera grid.

    Left: frame 0 of each shown sample (true σ and predicted std on one shared scale, and the log₂
    ratio). Right: 2-D histogram of every pixel (log–log) with ``y = x``.
    """
    n = min(len(sigma), MAX_ROWS - 1)
    names = _names(names, len(sigma))
    s, p = np.asarray(sigma, np.float64).ravel(), np.asarray(rec_std, np.float64).ravel()
    pearson = float(np.corrcoef(s, p)[0, 1]) if s.std() > 0 and p.std() > 0 else float("nan")
    ratio = float(p.mean() / s.mean())
    fig = _figure(_PANEL_W * 3 + 5.0, max(_PANEL_H * n, 4.6) + 0.6)
    fig.suptitle(f"predicted rec std vs true noise σ{subtitle}: Pearson r = {pearson:.3f}, "
                 f"mean(std)/mean(σ) = {ratio:.3g} (maps: frame 0, shared display p1–p99)",
                 fontsize=11)
    gs = fig.add_gridspec(n, 4, width_ratios=[1, 1, 1, 1.55])
    for i in range(n):
        limits = _limits(np.concatenate([sigma[i, 0].ravel(), rec_std[i, 0].ravel()]))
        _image(fig.add_subplot(gs[i, 0]), sigma[i, 0], f"sample {names[i]}: true σ",
               "σ (normalised a.u.)", grid="camera px", cmap="magma", limits=limits)
        _image(fig.add_subplot(gs[i, 1]), rec_std[i, 0], "predicted rec std",
               "std (normalised a.u.)", grid="camera px", cmap="magma", limits=limits)
        log_ratio = np.log2(rec_std[i, 0] / np.maximum(sigma[i, 0], 1e-30))
        m = max(1.0, float(np.percentile(np.abs(log_ratio), 99)))
        _image(fig.add_subplot(gs[i, 2]), log_ratio, "log₂(predicted std / true σ)",
               "log₂ ratio (0 = equal)", grid="camera px", cmap="RdBu_r", limits=(-m, m))
    ax = fig.add_subplot(gs[:, 3])
    positive = (s > 0) & (p > 0)
    lo = float(min(s[positive].min(), p[positive].min()))
    hi = float(max(s[positive].max(), p[positive].max()))
    bins = np.geomspace(lo, hi * 1.0001, 80) if hi > lo else np.geomspace(lo * 0.9, lo * 1.1, 80)
    *_, im = ax.hist2d(s[positive], p[positive], bins=[bins, bins], norm=LogNorm(), cmap="viridis")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("pixels per bin (log scale)", fontsize=8)
    ax.plot([lo, hi], [lo, hi], "r--", label="y = x (calibrated noise)")
    _log_scale(ax, "x", lo, hi)
    _log_scale(ax, "y", lo, hi)
    pad = (hi / lo) ** 0.06  # keep pixels at the extremes off the frame
    ax.set_xlim(lo / pad, hi * pad)
    ax.set_ylim(lo / pad, hi * pad)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("true noise σ (normalised a.u.)")
    ax.set_ylabel("predicted rec std (normalised a.u.)")
    ax.set_title(f"all {s.size:,} pixels ({len(sigma)} samples × {sigma.shape[1]} frames)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# Calibration plots
# ----------------------------------------------------------------------------------------------


def plot_calibration_curves(path: str | os.PathLike, curves: Mapping[str, CalibrationCurve], *,
                            title: str, unit: str = "a.u.", confidence: float = 0.95,
                            binning: str = "equal-count") -> Path:
    """Calibration curves (mean predicted variance vs empirical MSE per bin), log–log, ``y = x``,
    bootstrap intervals as error bars; one labelled curve per entry of ``curves``."""
    fig = _figure(6.6, 5.6)
    ax = fig.subplots()
    lo, hi = np.inf, -np.inf
    cmap = matplotlib.colormaps["viridis" if len(curves) > 3 else "tab10"]
    bins_used = sorted({len(c.mean_var) for c in curves.values()})
    for k, (label, c) in enumerate(curves.items()):
        colour = cmap(k / max(len(curves) - 1, 1)) if len(curves) > 3 else cmap(k)
        yerr = np.vstack([c.mean_sq_err - c.ci_low, c.ci_high - c.mean_sq_err]).clip(min=0)
        ax.errorbar(c.mean_var, c.mean_sq_err, yerr=yerr, fmt="o-", ms=4, lw=1.2, capsize=2,
                    color=colour, label=f"{label} ({len(c.mean_var)} bins)")
        values = np.concatenate([c.mean_var, c.mean_sq_err, c.ci_low[c.ci_low > 0]])
        lo, hi = min(lo, values[values > 0].min()), max(hi, values.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x (calibrated)")
    _log_scale(ax, "x", lo, hi)
    _log_scale(ax, "y", lo, hi)
    ax.set_xlabel(f"mean predicted variance per bin ({unit}²)")
    ax.set_ylabel(f"empirical MSE per bin ({unit}²)")
    n_bins = "/".join(str(b) for b in bins_used)
    ax.set_title(f"{title}\n{n_bins} {binning} bins of predicted variance; bars: "
                 f"{confidence:.0%} bootstrap CI", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_pit_histograms(path: str | os.PathLike, hists: Mapping[str, PITHistogram], *,
                        title: str) -> Path:
    """PIT histograms of ``Φ(z)`` as densities (flat at 1 when calibrated)."""
    fig = _figure(6.6, 4.4)
    ax = fig.subplots()
    for k, (label, h) in enumerate(hists.items()):
        density = h.counts / max(h.counts.sum(), 1) / np.diff(h.edges)
        ax.stairs(density, h.edges, lw=1.8, color=f"C{k}", label=label,
                  fill=k == 0, alpha=0.35 if k == 0 else 1.0)
    ax.axhline(1.0, color="k", ls="--", lw=1, label="calibrated (uniform)")
    ax.set_xlim(0, 1)
    ax.set_xlabel("PIT value Φ(z), z = (prediction − reference) / predicted std")
    ax.set_ylabel("density (1 = uniform)")
    n_bins = len(next(iter(hists.values())).counts)
    ax.set_title(f"{title}\n{n_bins} bins; U shape: std too small, hump: too large, tilt: bias",
                 fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_sparsification(path: str | os.PathLike, sp: Sparsification, *, title: str) -> Path:
    """Sparsification curve (remove the most uncertain pixels first) with its oracle."""
    fig = _figure(6.6, 4.4)
    ax = fig.subplots()
    ax.plot(sp.fractions, sp.model, "C0-", lw=1.8, label="by predicted variance (model)")
    ax.plot(sp.fractions, sp.oracle, "k--", lw=1.5, label="by true squared error (oracle)")
    ax.fill_between(sp.fractions, sp.oracle, sp.model, color="C0", alpha=0.2,
                    label=f"AUSE = {sp.ause:.3g}")
    ax.axhline(1.0, color="0.5", ls=":", lw=1, label="random removal (expected)")
    ax.set_xlabel("fraction of pixels removed (most uncertain first)")
    ax.set_ylabel("RMSE of the kept pixels / RMSE of all (dimensionless)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_title(f"{title}\n{len(sp.fractions)} fractions; lower and closer to the oracle is better",
                 fontsize=10)
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# Training curves (metrics.csv)
# ----------------------------------------------------------------------------------------------

# (file stem, title, y label, column filter, log y, reference line)
_CURVE_GROUPS = (
    ("loss", "training loss", "loss (a.u.)", lambda c: c in ("loss", "train_loss"), False, None),
    ("nll", "Gaussian NLL terms", "NLL (nats / pixel)", lambda c: c.endswith("_nll"), False, None),
    ("calib_ratio", "calibration ratio MSE / mean predicted variance (1 = calibrated)",
     "calib ratio (dimensionless, log)", lambda c: c.endswith("_calib_ratio"), True, 1.0),
    ("zms", "ZMS = mean z² (1 = calibrated)", "ZMS (dimensionless, log)",
     lambda c: c.endswith("_zms"), True, 1.0),
    ("corr", "correlation of predicted variance with squared error (dashed: perfect-model ref.)",
     "correlation (dimensionless)",
     lambda c: c.endswith(("_corr", "_corr_ref", "_spearman")), False, None),
    ("std", "mean predicted std", "std (a.u., log)", lambda c: c.endswith("_std_mean"), True, None),
    ("psnr", "reconstruction quality", "PSNR (dB)", lambda c: c.endswith("psnr"), False, None),
)


def _quantity(column: str) -> str:
    """What a metrics.csv column measures, without its source prefix (``train_`` / ``val_``) or
    correlation variant, so one quantity keeps one colour."""
    name = column.removeprefix("train_").removeprefix("val_")
    for suffix in ("_corr_ref", "_spearman", "_corr"):
        name = name.removesuffix(suffix)
    return name


def plot_training_curves(metrics_csv: str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Loss and metric curves from a training ``metrics.csv`` (rows ``kind=step`` and
    ``kind=epoch``) against the optimiser step; one PNG per group that has columns.

    Groups: loss, NLL terms, calibration ratios, ZMS, correlations (with their perfect-model
    references dashed), mean predicted std, PSNR. One colour per quantity; step rows (training
    batches) are plain lines, epoch rows are lines with markers (``train_*`` dashed, ``val_*``
    solid); in the correlation group the reference is dashed and Spearman dotted.
    """
    import pandas as pd

    table = pd.read_csv(metrics_csv)
    steps = table[table["kind"] == "step"]
    epochs = table[table["kind"] == "epoch"]
    out_dir = Path(out_dir)
    written = []
    for stem, title, ylabel, wanted, log_y, ref in _CURVE_GROUPS:
        cols = [c for c in table.columns if wanted(c) and table[c].notna().any()]
        if not cols:
            continue
        fig = _figure(7.5, 4.6)
        ax = fig.subplots()
        colours: dict[str, str] = {}
        for col in cols:
            is_epoch = col.startswith(("train_", "val_"))
            rows = epochs if is_epoch else steps
            data = rows[["step", col]].dropna()
            if data.empty:
                continue
            colour = colours.setdefault(_quantity(col), f"C{len(colours) % 10}")
            if col.endswith(("_corr_ref", "_spearman")):
                style = "--" if col.endswith("_ref") else ":"
            else:
                style = "--" if col.startswith("train_") else "-"
            ax.plot(data["step"], data[col], style, marker="o" if is_epoch else None, ms=3,
                    color=colour, lw=1.3, label=col)
        if ref is not None:
            ax.axhline(ref, color="k", ls="--", lw=0.8, label=f"ideal = {ref:g}")
        lo, hi = float(table[cols].min().min()), float(table[cols].max().max())
        if log_y and lo > 0:
            _log_scale(ax, "y", min(lo, ref or lo), max(hi, ref or hi))
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}\n{Path(metrics_csv)} (plain: logged steps; markers: epoch ends, "
                     "train_ dashed, val_ solid)", fontsize=10)
        ax.grid(True, alpha=0.25)
        ax.legend(fontsize=7, ncol=2 if len(cols) > 6 else 1)
        written.append(save_figure(fig, out_dir / f"{stem}.png"))
    return written
