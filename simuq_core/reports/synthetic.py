"""Reports of a trained model on the synthetic data: the ``export_debug`` and ``calibrate`` drivers.

Both load a model folder (:func:`simuq_core.workflows.train.load_model`) and a dataset split, bring the
ground truth onto the model's grid (:func:`model_truth`) and hand the arrays to
:mod:`simuq_core.reports.debug` / :mod:`simuq_core.reports.calibration`, which do the writing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from simuq_core.config import CalibrateParams, ExportDebugParams, UQParams
from simuq_core.evaluation.sim_band import SimBand
from simuq_core.evaluation.synthetic import apply_gt_norm, make_predictor, pool_gt
from simuq_core.io import atomic_directory, read_json
from simuq_core.network.store import load_model
from simuq_core.reports.calibration import calibration_components, write_calibration_report
from simuq_core.reports.debug import DebugReference, reference_from_split, write_uncertainty_artifacts
from simuq_core.simulation.dataset import DatasetSplit, load_split

__all__ = [
    "calibrate_model",
    "choose_samples",
    "export_debug",
    "model_truth",
    "sim_band",
]

log = logging.getLogger("simuq.reports")


def choose_samples(n_available: int, n_samples: int, seed: int) -> np.ndarray:
    """Sorted indices of ``min(n_samples, n_available)`` distinct samples, fixed by ``seed``."""
    n = min(n_samples, n_available)
    return np.sort(np.random.default_rng(seed).choice(n_available, size=n, replace=False))


def model_truth(split: DatasetSplit, spec: dict[str, Any],
                indices: np.ndarray | None = None) -> DebugReference:
    """Input, noise and ground truth of ``split`` (rows ``indices``) on the model's grids.

    GT is block-averaged from the data grid to the model grid (``hr_factor / rescale``, from
    ``model.json``); a supervised model's GT gets the normalisation it was trained with
    (``train.gt_norm``); the true PSF is block-summed to the model grid and its kernel size.
    """
    idx = np.arange(len(split)) if indices is None else np.asarray(indices)
    rescale, hr_factor = int(spec["model"]["rescale"]), int(spec["hr_factor"])
    if hr_factor % rescale:
        raise ValueError(f"model rescale={rescale} does not divide the data's hr_factor={hr_factor}")
    factor = hr_factor // rescale
    emitter = lp = None
    if split.emitter is not None:
        emitter, lp = pool_gt(split.emitter, factor), pool_gt(split.light_pattern, factor)
        if spec["mode"] == "sup":
            emitter, lp = apply_gt_norm(emitter, lp, spec["train"]["gt_norm"])
    return reference_from_split(split, idx, emitter=emitter, light_pattern=lp, gt_factor=factor,
                                psf_size=int(spec["psf_size"]))


def sim_band(split: DatasetSplit, spec: dict[str, Any], data_dir: str | os.PathLike) -> SimBand | None:
    """Each sample's SIM passband on the model grid (true pattern wave vectors and PSF NA from
    the metadata, emission wavelength and camera pixel from ``dataset.json``;
    :class:`simuq_core.evaluation.sim_band.SimBand`). ``None`` when the split lacks GT or that metadata."""
    if split.emitter is None or split.pattern_k is None or split.psf_na is None:
        return None
    psf = read_json(Path(data_dir) / "dataset.json")["params"]["psf"]
    rescale = int(spec["model"]["rescale"])
    cutoff = 2.0 * split.psf_na * psf["lr_pixel_nm"] / rescale / psf["wavelength_nm"]
    return SimBand(split.pattern_k / rescale, cutoff)


def _predictor(spec: dict[str, Any]):
    return make_predictor(UQParams(**spec["uq"]), int(spec["train"]["batch_size"]))


def export_debug(model_dir: str | os.PathLike, data_dir: str | os.PathLike,
                 out_dir: str | os.PathLike, cfg: ExportDebugParams) -> dict:
    """Debug folder (:mod:`simuq_core.reports.debug`) of ``cfg.n_samples`` seeded test samples; the
    folder is replaced atomically. Returns the summary."""
    model, spec = load_model(model_dir)
    test = load_split(data_dir, "test")
    idx = choose_samples(len(test), cfg.n_samples, cfg.seed)
    ref = model_truth(test, spec, idx)
    pred = _predictor(spec)(model, ref.x)
    with atomic_directory(out_dir) as work:
        summary = write_uncertainty_artifacts(
            pred, work, {"mode": spec["mode"], "split": "test", "sample_indices": idx.tolist()},
            reference=ref, emitter_affine_fit=spec["mode"] == "selfsup",
            camera_pixel_nm=float(spec["model"]["optics"]["lr_pixel_nm"]))
    log.info("wrote %s (test samples %s)", out_dir, ", ".join(ref.names or []))
    return summary


def calibrate_model(model_dir: str | os.PathLike, data_dir: str | os.PathLike,
                    out_dir: str | os.PathLike, cfg: CalibrateParams) -> dict:
    """Calibration report (:mod:`simuq_core.reports.calibration`) on the full test split, σ-scaling
    fitted on the val split; the folder is replaced atomically. Returns ``metrics.json``."""
    model, spec = load_model(model_dir)
    predict = _predictor(spec)
    affine = spec["mode"] == "selfsup"
    splits = {}
    for name in ("val", "test"):
        split = load_split(data_dir, name)
        ref = model_truth(split, spec)
        pred = predict(model, ref.x)
        splits[name] = (ref, pred, calibration_components(pred, ref, emitter_affine_fit=affine,
                                                          band=sim_band(split, spec, data_dir)))
        log.info("%s: %d samples, components %s", name, len(split), list(splits[name][2]))
    ref, pred, test = splits["test"]
    with atomic_directory(out_dir) as work:
        result = write_calibration_report(
            test, splits["val"][2], cfg, work, mode=spec["mode"], emitter_affine_fit=affine,
            noise=(ref.x, ref.clean, ref.sigma, pred["var_rec"]), names=ref.names,
            n_val=len(splits["val"][0].x))
    return result
