"""Self-supervised fine-tuning of a trained network on a lab's own raw acquisitions, validated
without ground truth.

:func:`run_finetuning` loads a pre-trained model (:func:`~simuq_core.workflows.train.load_model`),
indexes the user's files and streams random crops from them (:mod:`simuq_core.realdata.crops`: the
pattern of every acquisition is estimated blind on its full field of view and handed to the network
with each crop), trains with the self-supervised objective
(:func:`~simuq_core.training.objectives.selfsup_objective`) on the shared engine
(:class:`~simuq_core.training.engine.Trainer`, a :class:`~simuq_core.training.engine.BatchSource`),
and saves the result like :func:`~simuq_core.workflows.train.run_training` (``model.npz``,
``model.json`` with the same network spec, ``metrics.csv``, ``checkpoints/``) plus ``metrics.json``.

**GT-free validation** (:func:`validate`) on the held-out part (whole acquisitions, or a strip of a
single one), for the pre-trained and the fine-tuned network:

- raw-frame calibration: ``z = (x − rec)/√Var(rec)``, ZMS ``mean(z²)`` and coverage ``|z| < 1``,
  ``|z| < 1.96`` (ideal 1, 0.683, 0.95);
- camera noise: the predicted observation-noise variance ``var_obs`` against the classical
  out-of-band estimate :func:`classical_noise_variance` (same window weights), pooled and per tile;
- resolution by decorrelation analysis (:func:`~simuq_core.evaluation.resolution.decorrelation_resolution`) of
  the widefield image (bilinearly up-sampled, ``max_freq = 0.5/rescale``) and of the emitter, next
  to the diffraction limits ``λ/(2NA)`` and ``λ/(2(NA + NA·|k|/k_c))`` of widefield and SIM;
- how structured the emitter std is: ``p95/mean`` (≈ 1 for a flat map).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simuq_core.config import FinetuneParams, OpticsPrior, TrainParams, UQParams
from simuq_core.evaluation.gtfree import (
    GRID_PERIOD_PX,
    classical_noise_variance,
    grid_index,
    window_weighted_mean,
)
from simuq_core.evaluation.resolution import decorrelation_resolution
from simuq_core.evaluation.synthetic import widefield
from simuq_core.inference.ood import OOD_REFERENCE_FILE
from simuq_core.io import write_json
from simuq_core.network.forward import batch_pattern, predict
from simuq_core.network.simnet import airy_prior
from simuq_core.network.store import load_model, save_model
from simuq_core.pattern.estimate import PATTERN_KEYS
from simuq_core.realdata.crops import (
    CropStream,
    DataIndex,
    Region,
    index_acquisitions,
    read_crop,
    without_unknown_patterns,
)
from simuq_core.realdata.holdout import held_out_structure, split_regions
from simuq_core.realdata.normalise import NORMALISATION_RULE
from simuq_core.realdata.reader import find_inputs
from simuq_core.training.engine import Trainer, parameter_groups
from simuq_core.training.objectives import (
    EMITTER_VAR_HEAD,
    ResimBatches,
    resim_objective,
    resim_training,
    resimulated,
    selfsup_objective,
)
from simuq_core.uncertainty.epistemic import fit_input_model, input_features, ood_reference, ood_scores

__all__ = [
    "ood_reference_from_data",
    "optics_mismatch",
    "run_finetuning",
    "validate",
    "validation_tiles",
]

log = logging.getLogger("simuq.finetune")


# ----------------------------------------------------------------------------------------------
# Classical noise estimate
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def optics_mismatch(microscope: OpticsPrior, model_optics: OpticsPrior,
                    tolerance: float = 0.02) -> str | None:
    """A warning when the acquisitions' microscope differs from the one the pre-trained model was
    trained for by more than ``tolerance`` (relative) in NA, wavelength or pixel; ``None`` if not.
    Fine-tuning adapts the network but starts from the wrong PSF prior and pattern scale."""
    names = {"na": "NA", "wavelength_nm": "emission wavelength (nm)", "lr_pixel_nm": "camera pixel (nm)"}
    diffs = [f"{label} {getattr(microscope, key):g} vs the model's {getattr(model_optics, key):g}"
             for key, label in names.items()
             if abs(getattr(microscope, key) / getattr(model_optics, key) - 1.0) > tolerance]
    if not diffs:
        return None
    return ("the microscope (finetune.optics / the microscope section) differs from the pre-trained "
            "model's: " + "; ".join(diffs) + ". Pre-train on simulation matched to this microscope "
            "(pipelines/real: simulate_matched + pretrain) for a better start")


def validation_tiles(index: DataIndex, regions: Sequence[Region], tile: int, multiple: int,
                     max_tiles: int) -> dict[str, np.ndarray]:
    """Non-overlapping tiles of the held-out regions, as a batch: ``x`` ``(N, F, th, tw)``
    normalised, the :data:`PATTERN_KEYS` arrays, ``acq`` ``(N,)``; each side ``min(tile, the
    regions' smallest extent on that axis)`` rounded down to ``multiple`` (a narrow strip gives
    tall tiles, not small squares: the network sees as much context as the strip allows); at most
    ``max_tiles``, spread evenly over all candidates."""
    th = min([tile] + [r.shape[0] for r in regions])
    tw = min([tile] + [r.shape[1] for r in regions])
    th, tw = th - th % multiple, tw - tw % multiple
    if min(th, tw) < multiple:
        raise ValueError(f"held-out regions {[r.shape for r in regions]} are too small for a tile")
    spots = [(r.acq, r.t, r.y0 + i * th, r.x0 + j * tw) for r in regions
             for i in range(r.shape[0] // th) for j in range(r.shape[1] // tw)]
    pick = np.unique(np.linspace(0, len(spots) - 1, min(max_tiles, len(spots))).round().astype(int))
    rows: dict[str, list[np.ndarray]] = {}
    for acq, t, y0, x0 in (spots[i] for i in pick):
        entry = index.acquisitions[acq]
        item = {"x": read_crop(entry, t, y0, x0, (th, tw)), "acq": np.asarray(acq)}
        item |= entry.pattern_arrays(t, (y0, x0), (th, tw))
        for k, v in item.items():
            rows.setdefault(k, []).append(v)
    return {k: np.stack(v) for k, v in rows.items()}


def _predictor(uq: UQParams, batch_size: int) -> Callable[[nnx.Module, dict[str, np.ndarray]], dict]:
    keys = ("rec", "var_rec", "var_obs", "emitter", "emitter_var")
    fn = nnx.jit(lambda model, batch: {k: v for k, v in predict(model, batch["x"], uq,
                                                                 batch_pattern(batch)).items() if k in keys})

    def run(model: nnx.Module, tiles: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(tiles["x"])
        chunks: dict[str, list[np.ndarray]] = {}
        for i in range(0, n, batch_size):
            part = {k: tiles[k][i:i + batch_size] for k in ("x", *PATTERN_KEYS)}
            pad = batch_size - len(part["x"])
            if pad:  # one compiled shape for every batch
                part = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in part.items()}
            out = jax.device_get(fn(model, {k: jnp.asarray(v) for k, v in part.items()}))
            for k, v in out.items():
                chunks.setdefault(k, []).append(np.asarray(v)[: batch_size - pad])
        return {k: np.concatenate(v) for k, v in chunks.items()}

    return run


def resim_calibration(model: nnx.Module, uq: UQParams, tiles: dict[str, np.ndarray], batch_size: int = 8,
                      seed: int = 0) -> dict[str, float]:
    """GT-free emitter calibration on re-simulated tiles
    (:func:`~simuq_core.training.objectives.resimulated`): ZMS and 95 % coverage of
    ``(e* − ê)/std*``, where ``ê`` is the network's emitter of a tile and ``e*``, ``std*`` its
    reading of the tile re-imaged with new camera noise. It measures the noise-driven part of the
    emitter error on the lab's own structures (``seed``: the noise)."""
    fn = nnx.jit(lambda m, x, noise, pattern: _resim_pair(m, x, noise, uq, pattern))
    rng = np.random.default_rng(seed)
    z2, inside = [], []
    for i in range(0, len(tiles["x"]), batch_size):
        part = {k: jnp.asarray(tiles[k][i:i + batch_size]) for k in ("x", *PATTERN_KEYS)}
        noise = jnp.asarray(rng.standard_normal(part["x"].shape, np.float32))
        outputs = fn(model, part["x"], noise, batch_pattern(part))
        target, emitter, var = (np.asarray(v, np.float64) for v in outputs)
        z = (emitter - target) / np.sqrt(np.maximum(var, 1e-30))
        z2.append((z**2).ravel())
        inside.append((np.abs(z) < 1.96).ravel())
    return {"emitter_resim_zms": float(np.concatenate(z2).mean()),
            "emitter_resim_coverage_95": float(np.concatenate(inside).mean())}


def _resim_pair(model, x, noise, uq: UQParams, pattern):
    target, frames = resimulated(model, x, noise, uq, pattern)
    pred = predict(model, frames, uq, pattern)
    return target, pred["emitter"], pred["emitter_var"]


def _calibration(x: np.ndarray, pred: dict[str, np.ndarray]) -> dict[str, float]:
    z = (x.astype(np.float64) - pred["rec"]) / np.sqrt(np.maximum(pred["var_rec"], 1e-30))
    return {"rec_zms": float(np.mean(z**2)), "rec_coverage_68": float(np.mean(np.abs(z) < 1.0)),
            "rec_coverage_95": float(np.mean(np.abs(z) < 1.96)), "rec_z_mean": float(np.mean(z)),
            "rec_nll": float(np.mean(0.5 * (z**2 + np.log(2 * np.pi * np.maximum(pred["var_rec"], 1e-30)))))}


def validate(model: nnx.Module, uq: UQParams, tiles: dict[str, np.ndarray], index: DataIndex, rescale: int,
             pixel_nm: float, na: float, wavelength_nm: float, batch_size: int = 8,
             noise_band_margin: float = 1.15, full: bool = True) -> dict[str, float]:
    """GT-free metrics (module docstring) of ``model`` on :func:`validation_tiles` ``tiles``.

    ``pixel_nm``: camera pixel; ``na`` / ``wavelength_nm``: the limits' optics (the acquisitions'
    recorded wavelength wins inside :func:`index_acquisitions`, and here the first acquisition's
    if recorded). ``full=False``: the calibration metrics only (cheap, for every epoch).
    Resolutions are medians over tiles (NaN where decorrelation finds no peak); noise numbers are
    in normalised units (``× norm_scale`` for ADU).
    """
    pred = _predictor(uq, batch_size)(model, tiles)
    x = tiles["x"]
    out = _calibration(x, pred)
    if not full:
        return out
    acqs = [index.acquisitions[int(a)] for a in tiles["acq"]]
    classical, predicted = [], []
    for i, entry in enumerate(acqs):
        classical.append(classical_noise_variance(x[i], entry.otf_cutoff, noise_band_margin)[0])
        predicted.append(window_weighted_mean(pred["var_obs"][i]))
    classical_arr, predicted_arr = np.asarray(classical), np.asarray(predicted)
    out["noise_std_classical"] = float(np.sqrt(classical_arr.mean()))
    out["noise_std_pred"] = float(np.sqrt(predicted_arr.mean()))
    out["noise_std_ratio"] = out["noise_std_pred"] / max(out["noise_std_classical"], 1e-30)
    out["noise_tile_corr"] = (float(np.corrcoef(np.sqrt(classical_arr), np.sqrt(predicted_arr))[0, 1])
                              if len(acqs) >= 3 and classical_arr.std() > 0 and predicted_arr.std() > 0
                              else math.nan)
    model_nm = pixel_nm / rescale
    wf = widefield(x, rescale)
    wf_res = [decorrelation_resolution(im, model_nm, max_freq=0.5 / rescale).resolution_nm for im in wf]
    em_res = [decorrelation_resolution(im, model_nm).resolution_nm for im in pred["emitter"]]
    out["widefield_resolution_nm"] = _nanmedian(wf_res)
    out["emitter_resolution_nm"] = _nanmedian(em_res)
    wavelength = acqs[0].wavelength_nm or wavelength_nm
    k_abs = float(np.mean([np.linalg.norm(np.asarray(a.pattern_k), axis=-1).mean() for a in acqs]))
    k_c = 2.0 * na * pixel_nm / wavelength
    out["widefield_limit_nm"] = wavelength / (2.0 * na)
    out["sim_limit_nm"] = wavelength / (2.0 * (na + na * k_abs / k_c))
    # on the tiles' interior: their border rows are no grid
    out["emitter_grid_index"] = grid_index(pred["emitter"], GRID_PERIOD_PX * rescale, border=True)
    if "emitter_var" in pred:
        out |= resim_calibration(model, uq, tiles, batch_size)
        std = np.sqrt(pred["emitter_var"].reshape(len(x), -1))
        mean, p95 = std.mean(axis=1), np.percentile(std, 95, axis=1)
        out["emitter_std_mean"] = float(mean.mean())
        out["emitter_std_p95_over_mean"] = float((p95 / np.maximum(mean, 1e-30)).mean())
    out["n_tiles"] = float(len(x))
    return out


def _nanmedian(values: Sequence[float]) -> float:
    arr = np.asarray(values, np.float64)
    return float(np.nanmedian(arr)) if np.isfinite(arr).any() else math.nan


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What every phase of one fine-tuning run shares: the network and its spec, the data (index,
    regions, crop stream, validation tiles), the training settings and the run's callbacks."""

    pretrained_dir: str
    out_dir: Path
    params: FinetuneParams
    model: nnx.Module
    spec: dict[str, Any]
    uq: UQParams
    optics: OpticsPrior
    crop: int
    multiple: int
    paths: list[Path]
    index: DataIndex
    train_regions: list[Region]
    val_regions: list[Region]
    stream: CropStream
    tiles: dict[str, np.ndarray]
    pixel_nm: float
    cfg: TrainParams
    prior: np.ndarray
    devices: list | None = None
    progress: bool = True
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None

    def evaluate(self, m: nnx.Module, full: bool) -> dict[str, float]:
        return validate(m, self.uq, self.tiles, self.index, int(self.spec["model"]["rescale"]), self.pixel_nm,
                        self.optics.na, self.optics.wavelength_nm, batch_size=self.params.batch_size,
                        noise_band_margin=self.params.noise_band_margin, full=full)

    def trainer(self, model: nnx.Module, cfg: TrainParams, out_dir: Path, on_rows=None) -> Trainer:
        return Trainer(model, selfsup_objective(self.uq, cfg, self.prior), cfg, self.stream, out_dir,
                       evaluator=lambda m: self.evaluate(m, False), devices=self.devices,
                       progress=self.progress, on_rows=on_rows)


def _prepare(pretrained_model_dir, inputs: Sequence[str], out_dir, params: FinetuneParams, cache_dir,
             **callbacks: Any) -> _Run:
    """Load the model, index the user's files, split held-out regions, set up the crop stream."""
    model, spec = load_model(pretrained_model_dir)
    model_cfg = spec["model"]
    multiple = 2 ** int(model_cfg["depth"])
    n_frames = int(spec["n_frames"])
    n_angles = int(model_cfg["light_pattern"]["n_angles"])
    optics = params.optics or OpticsPrior(**model_cfg["optics"])
    if mismatch := optics_mismatch(optics, OpticsPrior(**model_cfg["optics"])):
        log.warning("%s", mismatch)
    crop = params.crop or int(min(spec.get("train_crop") or [64]))
    if crop % multiple:
        raise ValueError(f"crop {crop} must be a multiple of 2**model.depth = {multiple}")
    paths = find_inputs(inputs)
    if not paths:
        raise FileNotFoundError(f"no input matches {list(inputs)}")
    index = index_acquisitions(
        paths, cache_dir, na=optics.na, wavelength_nm=optics.wavelength_nm,
        default_pixel_nm=optics.lr_pixel_nm, n_angles=n_angles, n_phases=n_frames // n_angles,
        frame_order=params.frame_order, period_hint=params.period_hint, norm_offset=params.norm_offset,
        norm_percentile=params.norm_percentile, equalize_frames=params.equalize_frames, strict=params.strict,
        otf_file=params.otf_file)
    if params.skip_unknown_pattern:
        index = without_unknown_patterns(index)
    train_regions, val_regions = split_regions(
        index, crop, val_fraction=params.val_fraction, val_files=params.val_files,
        val_block_fraction=params.val_block_fraction, multiple=multiple, seed=params.seed,
        val_split=params.val_split)
    if not val_regions:
        raise ValueError("nothing held out for validation: set val_fraction > 0 or val_files")
    stream = CropStream(index, train_regions, crop, params.batch_size, params.crops_per_epoch,
                        seed=params.seed, num_threads=params.num_threads, prefetch=params.prefetch)
    tiles = validation_tiles(index, val_regions, params.val_tile, multiple, params.max_val_tiles)
    prior = airy_prior(model_cfg["optics"]["na"], model_cfg["optics"]["wavelength_nm"],
                       spec["model_pixel_nm"], spec["psf_size"])
    return _Run(str(pretrained_model_dir), Path(out_dir), params, model, spec, UQParams(**spec["uq"]), optics,
                crop, multiple, paths, index, list(train_regions), list(val_regions), stream, tiles,
                index.pixel_nm or optics.lr_pixel_nm, params.train_params(), prior, **callbacks)


def run_finetuning(
    pretrained_model_dir: str | os.PathLike,
    inputs: Sequence[str],
    out_dir: str | os.PathLike,
    params: FinetuneParams,
    cache_dir: str | os.PathLike,
    progress: bool = True,
    devices: list | None = None,
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune the model in ``pretrained_model_dir`` on the raw acquisitions matching ``inputs``
    (globs, files or folders) and save it to ``out_dir`` (module docstring).

    ``cache_dir``: the per-acquisition index cache (:func:`~simuq_core.realdata.crops.index_acquisitions`).
    Returns what is written to ``out_dir/metrics.json``: ``pretrained`` and ``finetuned`` validation
    metrics (:func:`validate`), the data ``index`` summary (skipped files with their reasons, the
    pattern of every acquisition) and the training summary.
    """
    run = _prepare(pretrained_model_dir, inputs, out_dir, params, cache_dir, devices=devices,
                   progress=progress, on_rows=on_rows)
    before = run.evaluate(run.model, True)
    log.info("pre-trained, held-out: %s", {k: round(v, 4) for k, v in before.items()})
    result = run.trainer(run.model, run.cfg, run.out_dir, on_rows).fit()
    refit = (_refit_variance(run, result.model, offset=result.history[-1] if result.history else {})
             if params.var_refit_epochs else None)
    final = refit.model if refit is not None else result.model
    resim = None
    if params.resim_epochs and "emitter" in run.uq.targets:
        epochs_before = result.epochs_run + (refit.epochs_run if refit is not None else 0)
        resim = _fit_emitter_std(run, final, epoch0=epochs_before)
        final = resim.model
    reference = _save(run, final)
    after = run.evaluate(final, True)
    log.info("fine-tuned, held-out: %s", {k: round(v, 4) for k, v in after.items()})
    metrics = {"pretrained": before, "finetuned": after, "index": run.index.summary(),
               "train": {"steps": result.steps, "epochs_run": result.epochs_run, "crop": run.crop,
                         "n_train_regions": len(run.train_regions), "n_val_regions": len(run.val_regions),
                         "held_out": held_out_structure(run.index, run.val_regions),
                         "final": {k: v for k, v in result.history[-1].items()
                                   if isinstance(v, float | int)} if result.history else {},
                         "var_refit": ({"steps": refit.steps, "epochs_run": refit.epochs_run,
                                        "frozen": _mean_path_prefixes(result.model)}
                                       if refit is not None else None),
                         "resim": ({"steps": resim.steps, "epochs_run": resim.epochs_run,
                                    "trained": [EMITTER_VAR_HEAD]} if resim is not None else None)},
               "ood_reference": {k: v for k, v in reference.items() if k != "input_model"}}
    write_json(run.out_dir / "metrics.json", _json_safe(metrics))
    return metrics


def _save(run: _Run, final: nnx.Module) -> dict[str, Any]:
    """The fine-tuned model with its spec, and its out-of-distribution reference (returned)."""
    periods = [p for a in run.index.acquisitions for p in a.pattern["period_px"]]
    out_spec = run.spec | {
        "mode": "finetune",
        "train": run.cfg.model_dump(mode="json"),
        "train_crop": [run.crop, run.crop],
        "normalisation": NORMALISATION_RULE + " (per acquisition)",
        "finetune": {"pretrained": run.pretrained_dir, "inputs": [str(p) for p in run.paths],
                     "params": run.params.model_dump(mode="json"), "pixel_nm": run.pixel_nm,
                     "pattern_period_px_median": float(np.median(periods)),
                     "pattern_source": "blind full-field estimate per acquisition; the instrument's wave "
                                       "vectors for those whose own estimate is weak or irregular",
                     "instrument_pattern": (run.index.instrument | {"pixel_nm": run.pixel_nm}
                                            if run.index.instrument else None)},
    }
    save_model(final, out_spec, run.out_dir)
    try:
        reference = ood_reference_from_data(final, run.uq, run.index, run.train_regions + run.val_regions,
                                            run.crop, run.multiple, run.params.batch_size)
        write_json(run.out_dir / OOD_REFERENCE_FILE, reference)
    except ValueError as exc:  # too little data for a reference (e.g. one tiny region)
        log.warning("no out-of-distribution reference written (%s): predict will not check inputs", exc)
        reference = {"error": str(exc)}
    return reference


def ood_reference_from_data(model: nnx.Module, uq: UQParams, index: DataIndex, regions: Sequence[Region],
                            tile: int, multiple: int, batch_size: int, percentile: float = 99.0,
                            max_tiles: int = 64) -> dict[str, Any]:
    """What "in distribution" means for a model fine-tuned on ``regions`` of the user's stacks, for
    ``predict``'s out-of-distribution check (:func:`simuq_core.inference.files.ood_check`) without MC
    dropout or ground truth: ``input`` (:func:`~simuq_core.uncertainty.epistemic.input_features` of every
    ``tile // 2`` block of up to ``max_tiles`` tiles,
    :func:`~simuq_core.uncertainty.epistemic.fit_input_model`)
    and ``misfit`` (mean ``z²`` of the raw frames against ``rec``, ``var_rec``), each with the
    ``percentile`` of the tiles' image-level scores as its threshold
    (:func:`~simuq_core.uncertainty.epistemic.ood_reference`). Training and held-out tiles both count: a
    single acquisition has few held-out tiles, and the misfit of the training area is only
    slightly lower than the held-out one (held-out validation measures that separately)."""

    tiles = validation_tiles(index, regions, tile, multiple, max_tiles)
    x = tiles["x"]
    window = max(8, min(x.shape[-2:]) // 2)
    cutoff = float(np.median([index.acquisitions[int(a)].otf_cutoff for a in tiles["acq"]]))
    input_model = fit_input_model(input_features(x, window, cutoff))
    input_model |= {"window": window, "otf_cutoff": cutoff, "n_train": int(len(x))}
    pred = _predictor(uq, batch_size)(model, tiles)
    pred = {"emitter": pred["emitter"], "emitter_var_epi": np.zeros_like(pred["emitter"]),
            "rec": pred["rec"], "var_rec_total": pred["var_rec"]}
    scores = ood_scores(pred, x, input_model)
    scores.pop("epistemic")  # no dropout passes: the data-only scores
    return (ood_reference(scores, percentile)
            | {"input_model": input_model, "source": "finetune (training + held-out tiles)",
               "n_tiles": int(len(x)), "tile": int(x.shape[-1])})


def _mean_path_prefixes(model: nnx.Module) -> list[str]:
    """Top-level parameter groups that are not variance heads (names without ``logvar``, other
    than the camera-noise coefficients ``obs_noise_raw``): what the variance re-fit freezes."""
    return sorted(t for t in parameter_groups(model) if "logvar" not in t and t != "obs_noise_raw")


def _refit_variance(run: _Run, model: nnx.Module, offset: dict[str, Any]):
    """Second phase of :func:`run_finetuning`: only the variance heads train, for
    ``var_refit_epochs`` with a fresh AdamW at ``var_refit_lr``; the mean is frozen.

    Why: joint mean + variance fine-tuning starts from the pre-trained model's large misfit of
    real data, and Adam's second-moment estimates carry that start: the variance ends
    over-dispersed whatever the learning rate, the steps, mean-first epochs or Adam's ``b2``,
    although the likelihood's optimum lies well below it. A fresh optimiser on the variance alone,
    after the mean has converged, fits it to the final residual (docs/real_data.md has the
    measurements). Rows go to ``out_dir/var_refit/metrics.csv`` and to ``on_rows`` with epochs
    and steps continued."""
    params, cfg = run.params, run.cfg
    frozen = _mean_path_prefixes(model)
    refit_cfg = cfg.model_copy(update={"epochs": params.var_refit_epochs, "lr": params.var_refit_lr,
                                       "warmup_steps": min(cfg.warmup_steps, 2), "mean_first_epochs": 0,
                                       "freeze": frozen, "resume": False})
    epoch0, step0 = int(offset.get("epoch", -1)) + 1, int(offset.get("step", 0))

    def shifted(rows: list[dict[str, Any]]) -> None:
        run.on_rows([r | {"epoch": int(r.get("epoch", 0)) + epoch0, "step": int(r.get("step", 0)) + step0}
                     for r in rows])

    log.info("variance re-fit: %d epochs at lr %g, frozen %s", params.var_refit_epochs,
             params.var_refit_lr, frozen)
    return run.trainer(model, refit_cfg, run.out_dir / "var_refit",
                       shifted if run.on_rows is not None else None).fit()


def _fit_emitter_std(run: _Run, model: nnx.Module, epoch0: int):
    """Last phase of :func:`run_finetuning`: only the emitter variance head trains, on re-simulated
    crops (:func:`~simuq_core.training.objectives.resim_objective`), for ``resim_epochs`` at
    ``resim_lr``. Rows go to ``out_dir/resim/metrics.csv`` and to ``on_rows`` with epochs continued."""
    params = run.params
    resim_cfg = resim_training(run.cfg, parameter_groups(model), params.resim_epochs, params.resim_lr)
    def shifted(rows: list[dict[str, Any]]) -> None:
        run.on_rows([r | {"epoch": int(r.get("epoch", 0)) + epoch0} for r in rows])

    log.info("emitter-std fit on re-simulated crops: %d epochs at lr %g", params.resim_epochs,
             params.resim_lr)
    return Trainer(model, resim_objective(run.uq, resim_cfg, run.prior), resim_cfg,
                   ResimBatches(run.stream, params.batch_size, params.seed), run.out_dir / "resim",
                   evaluator=lambda m: run.evaluate(m, False), devices=run.devices, progress=run.progress,
                   on_rows=shifted if run.on_rows is not None else None).fit()


def _json_safe(obj: Any) -> Any:
    """NaN / Inf (e.g. no decorrelation peak) as ``null``: strict JSON readers reject them."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ----------------------------------------------------------------------------------------------
# Full-field report of a prediction on a real acquisition (the ``real_report`` stage)
# ----------------------------------------------------------------------------------------------


