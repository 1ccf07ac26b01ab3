"""Debug artifacts of a few samples: uncertainty maps, their summary, TIFFs and figures (docs/design.md §3).

The same function, :func:`write_uncertainty_artifacts`, writes the training-time folders
``<model_dir>/debug_samples/epoch_XXX_step_XXXXXXX/`` (every ``debug_every_epochs``, on validation
samples) and the ``export_debug`` stage's ``reports/debug/<mode>/`` (fixed test samples):

- ``uq_uncertainty.npz``: ``rec_std`` ``(N, F, H, W)``, ``deconv_std`` ``(N, F, Hh, Wh)``, and for
  every enabled component its ``<comp>_logvar`` (bounded) and ``<comp>_std``, plus the means
  (``rec``, ``deconv``, ``emitter``, ``light_pattern``, ``psf``); with a reference also what the
  figures compare with: ``input``, ``noise_sigma``, ``emitter_gt``, ``lp_gt``, ``psf_gt``;
- ``uq_summary.json``: ``{"<map>": {"mean": …, "p95": …}}`` for every std, log-variance and mean map
  of the npz, ``"nll"`` (mean Gaussian NLL in nats/pixel: ``rec`` against the input frames,
  ``emitter`` / ``lp`` against GT, when a reference is given), ``"n_samples"``, ``"samples"`` (names)
  and ``"emitter_affine_fit"`` (whether the emitter was affinely fitted to GT first, see below);
- float32 ImageJ TIFFs (``T`` = sample, ``Z`` = frame; pixel size in µm when known):
  ``<comp>_mean.tif`` for every component and ``<comp>_std.tif`` for the enabled ones;
- PNGs (only for enabled components): ``<comp>_std.png`` and ``<comp>_std_hist.png`` for ``rec``,
  ``deconv`` (when emitter or LP has a variance), ``emitter``, ``lp``, ``psf``; with a reference:
  ``input.png`` (the frames of the first sample), ``emitter_pred_gt.png``, ``lp_pred_gt.png``,
  ``psf_pred_gt.png``, ``emitter_nll.png`` / ``lp_nll.png`` (per-pixel NLL against GT) and
  ``uq_vs_noise.png`` (predicted rec std against the true noise σ).

Drawing the ~20 figures takes seconds; training passes ``background=True`` so they are drawn on
one worker thread while training goes on (the Figure API, no pyplot state, all drawing on that
thread); a call without it, or :func:`wait_for_figures`, first waits for everything queued, and
the interpreter waits for the queue at exit.

"deconv" is ``S = emitter · light_pattern`` before the PSF. A self-supervised emitter has no
absolute scale: with ``emitter_affine_fit=True`` it is mapped to GT per sample by least squares
(``a·pred + b``, variance ``a²·var``, :func:`simuq_core.evaluation.synthetic.affine_align`) before it is
compared with GT; its own std maps stay in model units.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simuq_core.evaluation.metrics import gaussian_nll
from simuq_core.evaluation.synthetic import affine_align, pool_psf
from simuq_core.io import write_json, write_npz, write_tiff
from simuq_core.simulation.dataset import DatasetSplit

__all__ = [
    "COMPONENTS",
    "DebugReference",
    "debug_dir_name",
    "enabled_components",
    "reference_from_split",
    "uncertainty_maps",
    "wait_for_figures",
    "write_uncertainty_artifacts",
]

log = logging.getLogger("simuq.debug")

#: ``(name, mean key, variance key, grid, quantity, unit)`` of every map with a mean and a variance.
COMPONENTS = (
    ("rec", "rec", "var_rec", "camera px", "intensity", "normalised a.u."),
    ("deconv", "deconv", "var_deconv", "model px", "emitter × LP", "a.u."),
    ("emitter", "emitter", "emitter_var", "model px", "density", "a.u."),
    ("lp", "light_pattern", "lp_var", "model px", "illumination", "relative, mean 1"),
    ("psf", "psf", "psf_var", "model px", "tap weight", "fraction of the kernel sum"),
)
_QUANTITY_UNIT = {c[0]: (c[4], c[5]) for c in COMPONENTS}
_LATENT = (("emitter", "emitter_var"), ("lp", "lp_var"), ("psf", "psf_var"))


@dataclass(frozen=True)
class DebugReference:
    """What predictions are compared with, on the model's grids; all but ``x`` optional.

    x, sigma, clean : ``(N, F, H, W)`` normalised input frames, true noise std, noise-free signal.
    emitter : ``(N, Hh, Wh)``; light_pattern : ``(N, F, Hh, Wh)``; psf : ``(N, K, K)`` (the model's
    kernel size), ground truth pooled to the model grid.
    names : sample names (default ``0, 1, …``).
    """

    x: np.ndarray
    sigma: np.ndarray | None = None
    clean: np.ndarray | None = None
    emitter: np.ndarray | None = None
    light_pattern: np.ndarray | None = None
    psf: np.ndarray | None = None
    names: list[str] | None = None


def reference_from_split(split: DatasetSplit, indices: np.ndarray, *,
                         emitter: np.ndarray | None = None, light_pattern: np.ndarray | None = None,
                         gt_factor: int = 1, psf_size: int | None = None) -> DebugReference:
    """The reference of rows ``indices`` of ``split``.

    ``emitter`` ``(N, Hh, Wh)`` and ``light_pattern`` ``(N, F, Hh, Wh)``: GT of the whole split
    already on the model grid (pooled and normalised as the model was trained), or ``None``. The
    true PSF is block-summed by ``gt_factor`` (``hr_factor / rescale``) to the model grid and
    cropped or padded to ``psf_size``.
    """
    idx = np.asarray(indices)
    psf = None if split.psf is None else pool_psf(split.psf[idx], gt_factor, psf_size)
    return DebugReference(
        x=split.raw[idx], sigma=split.sigma[idx], clean=split.clean[idx],
        emitter=None if emitter is None else emitter[idx],
        light_pattern=None if light_pattern is None else light_pattern[idx],
        psf=psf, names=[split.names[i] for i in idx])


def debug_dir_name(epoch: int, step: int) -> str:
    return f"epoch_{epoch:03d}_step_{step:07d}"


def enabled_components(pred: dict[str, np.ndarray]) -> list[str]:
    """Components with a predicted variance: ``rec`` always, ``deconv`` when emitter or LP has one,
    and every latent target that has a variance head."""
    enabled = ["rec"]
    if "emitter_var" in pred or "lp_var" in pred:
        enabled.append("deconv")
    return enabled + [comp for comp, key in _LATENT if key in pred]


def uncertainty_maps(pred: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Std / log-variance maps of every enabled component, plus rec and deconv std."""
    maps = {"rec_std": np.sqrt(pred["var_rec"]), "deconv_std": np.sqrt(pred["var_deconv"])}
    for comp, key in _LATENT:
        if key in pred:
            var = np.maximum(pred[key], 1e-30)
            maps[f"{comp}_std"] = np.sqrt(var)
            maps[f"{comp}_logvar"] = np.log(var)
    return maps


def _means(pred: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    means = {k: pred[k] for k in ("rec", "emitter", "light_pattern", "psf") if k in pred}
    if "emitter" in pred and "light_pattern" in pred:
        means["deconv"] = pred["emitter"][:, None] * pred["light_pattern"]
    return means


def _reference_arrays(ref: DebugReference | None) -> dict[str, np.ndarray]:
    if ref is None:
        return {}
    named = {"input": ref.x, "noise_sigma": ref.sigma, "emitter_gt": ref.emitter,
             "lp_gt": ref.light_pattern, "psf_gt": ref.psf}
    return {k: v for k, v in named.items() if v is not None}


def _pixel_sizes(pred: dict[str, np.ndarray], camera_pixel_nm: float | None) -> dict[str, tuple]:
    """Resolution (pixels per µm) of the camera and model grids, for the TIFF headers."""
    if camera_pixel_nm is None:
        return {}
    model_nm = camera_pixel_nm * pred["rec"].shape[-1] / pred["emitter"].shape[-1]
    return {"camera px": (1000.0 / camera_pixel_nm,) * 2, "model px": (1000.0 / model_nm,) * 2}


def _write_tiffs(out_dir: Path, pred: dict[str, np.ndarray], maps: dict[str, np.ndarray],
                 enabled: list[str], camera_pixel_nm: float | None) -> None:
    res = _pixel_sizes(pred, camera_pixel_nm)
    means = _means(pred)
    for comp, mean_key, _, grid, _, _ in COMPONENTS:
        arrays = {"mean": means.get(mean_key)}
        if comp in enabled:
            arrays["std"] = maps[f"{comp}_std"]
        for kind, arr in arrays.items():
            if arr is None:
                continue
            axes = "TZYX" if arr.ndim == 4 else "TYX"
            write_tiff(out_dir / f"{comp}_{kind}.tif", arr, axes, resolution=res.get(grid))


def _pixel_nll(err: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel Gaussian NLL ``0.5 (log 2πv + e²/v)`` and ``z = e/√v``, same shape as ``err``."""
    return 0.5 * (np.log(2 * np.pi * var) + err**2 / var), err / np.sqrt(var)


def _write_figures(out_dir: Path, pred: dict[str, np.ndarray], maps: dict[str, np.ndarray],
                   enabled: list[str], ref: DebugReference | None, aligned: dict,
                   camera_pixel_nm: float | None) -> None:
    from simuq_core.reports import plots  # matplotlib is imported only when figures are drawn

    names = ref.names if ref is not None else None
    means = _means(pred)
    for comp, mean_key, _, grid, quantity, unit in COMPONENTS:
        if comp not in enabled:
            continue
        std = maps[f"{comp}_std"]
        plots.plot_component_std(out_dir / f"{comp}_std.png", means[mean_key], std, component=comp,
                                 unit=unit, quantity=quantity, grid=grid, names=names)
        plots.plot_std_histogram(out_dir / f"{comp}_std_hist.png", std, component=comp, unit=unit)
    if ref is None:
        return
    plots.plot_input_frames(out_dir / "input.png", ref.x[0], name=(names or ["0"])[0])
    note = " (emitter affinely fitted to GT per sample)" if aligned["emitter_affine_fit"] else ""
    for comp, gt in (("emitter", ref.emitter), ("lp", ref.light_pattern)):
        if gt is None:
            continue
        mean, var = aligned[comp]
        quantity, unit = _QUANTITY_UNIT[comp]
        std = None if var is None else np.sqrt(var)
        plots.plot_pred_vs_gt(out_dir / f"{comp}_pred_gt.png", mean, gt, component=comp, unit=unit,
                              quantity=quantity, grid="model px", std=std, names=names,
                              note=note if comp == "emitter" else "")
        if var is not None:
            nll, z = _pixel_nll(mean - gt, var)
            plots.plot_nll_maps(out_dir / f"{comp}_nll.png", gt, nll, z, component=comp, unit=unit,
                                quantity=quantity, grid="model px", names=names,
                                note=note if comp == "emitter" else "")
    if ref.psf is not None:
        pixel_nm = None
        if camera_pixel_nm is not None:
            pixel_nm = camera_pixel_nm * pred["rec"].shape[-1] / pred["emitter"].shape[-1]
        plots.plot_psf_pred_vs_gt(out_dir / "psf_pred_gt.png", pred["psf"], ref.psf,
                                  std=maps.get("psf_std"), pixel_nm=pixel_nm, names=names)
    if ref.sigma is not None:
        plots.plot_uq_vs_noise(out_dir / "uq_vs_noise.png", ref.sigma, maps["rec_std"], names=names)


def _aligned_latents(pred: dict[str, np.ndarray], ref: DebugReference | None,
                     emitter_affine_fit: bool) -> dict:
    """Emitter and LP mean / variance as compared with GT (emitter affinely fitted if asked)."""
    out: dict = {"emitter_affine_fit": bool(emitter_affine_fit)}
    if ref is None:
        return out
    if ref.emitter is not None:
        mean, var = pred["emitter"], pred.get("emitter_var")
        if emitter_affine_fit:
            mean, var, _ = affine_align(mean, ref.emitter, var)
        out["emitter"] = (mean, var)
    if ref.light_pattern is not None:
        out["lp"] = (pred["light_pattern"], pred.get("lp_var"))
    return out


_figure_lock = threading.Lock()
_figure_executor: ThreadPoolExecutor | None = None
_pending_figures: list[Future] = []


def _log_failure(future: Future) -> None:
    if future.exception() is not None:
        log.error("drawing debug figures failed", exc_info=future.exception())


def _queue_figures(*args) -> None:
    global _figure_executor
    with _figure_lock:
        if _figure_executor is None:
            _figure_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="simuq-figures")
        future = _figure_executor.submit(_write_figures, *args)
        future.add_done_callback(_log_failure)
        _pending_figures.append(future)


def wait_for_figures() -> None:
    """Block until every figure queued with ``background=True`` is written; re-raise the first
    error of those jobs."""
    with _figure_lock:
        pending = list(_pending_figures)
        _pending_figures.clear()
    errors = [exc for exc in (f.exception() for f in pending) if exc is not None]
    if errors:
        raise errors[0]


def _stats(arr: np.ndarray) -> dict[str, float]:
    arr = np.asarray(arr, dtype=np.float64)
    return {"mean": float(arr.mean()), "p95": float(np.percentile(arr, 95))}


def write_uncertainty_artifacts(
    pred: dict[str, np.ndarray],
    out_dir: str | Path,
    extra_summary: dict | None = None,
    *,
    reference: DebugReference | None = None,
    emitter_affine_fit: bool = False,
    camera_pixel_nm: float | None = None,
    figures: bool = True,
    tiffs: bool = True,
    background: bool = False,
) -> dict:
    """Write the debug folder (see the module docstring) into ``out_dir``; return the summary.

    Parameters
    ----------
    pred : dict
        Predictions of :func:`simuq_core.evaluation.synthetic.make_predictor` for ``N`` samples.
    out_dir : path
        Folder to write (created if needed; files are replaced atomically).
    extra_summary : dict, optional
        Merged into ``uq_summary.json``.
    reference : DebugReference, optional
        Input frames and truth of the same samples; enables the GT figures and the NLL summary.
    emitter_affine_fit : bool
        Fit the emitter to GT per sample before comparing (self-supervised models).
    camera_pixel_nm : float, optional
        Camera pixel size at the sample; written into the TIFFs and the PSF figure.
    figures, tiffs : bool
        Draw the PNGs / write the TIFFs.
    background : bool
        Queue the figures on the drawing thread and return at once (see the module docstring);
        otherwise wait for queued figures first, then draw these.
    """
    out_dir = Path(out_dir)
    maps = uncertainty_maps(pred)
    means = _means(pred)
    enabled = enabled_components(pred)
    refs = _reference_arrays(reference)
    write_npz(out_dir / "uq_uncertainty.npz", **{k: np.asarray(v, dtype=np.float32) for k, v in
                                                 {**maps, **means, **refs}.items()})
    summary: dict = {name: _stats(arr) for name, arr in {**maps, **means}.items()}
    aligned = _aligned_latents(pred, reference, emitter_affine_fit)
    nll = {}
    if reference is not None:
        nll["rec"] = gaussian_nll(pred["rec"] - reference.x, pred["var_rec"])
        for comp, gt in (("emitter", reference.emitter), ("lp", reference.light_pattern)):
            if gt is not None and aligned[comp][1] is not None:
                nll[comp] = gaussian_nll(aligned[comp][0] - gt, aligned[comp][1])
    summary |= {"nll": nll, "n_samples": len(pred["rec"]),
                "samples": list(reference.names) if reference is not None and reference.names
                else [str(i) for i in range(len(pred["rec"]))],
                "emitter_affine_fit": bool(emitter_affine_fit)}
    summary |= extra_summary or {}
    write_json(out_dir / "uq_summary.json", summary)
    if tiffs:
        _write_tiffs(out_dir, pred, maps, enabled, camera_pixel_nm)
    if figures:
        args = (out_dir, pred, maps, enabled, reference, aligned, camera_pixel_nm)
        if background:
            _queue_figures(*args)
        else:
            wait_for_figures()
            _write_figures(*args)
    return summary
