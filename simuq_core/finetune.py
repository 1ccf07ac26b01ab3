"""Self-supervised fine-tuning of a trained network on a lab's own raw acquisitions, validated
without ground truth.

:func:`run_finetuning` loads a pre-trained model (:func:`~simuq_core.experiment.load_model`),
indexes the user's files and streams random crops from them (:mod:`simuq_core.raw_data`: the
pattern of every acquisition is estimated blind on its full field of view and handed to the network
with each crop), trains with the self-supervised objective (:func:`~simuq_core.objectives.selfsup_objective`)
on the shared engine (:class:`~simuq_core.training.Trainer`, a :class:`~simuq_core.training.BatchSource`),
and saves the result like :func:`~simuq_core.experiment.run_training` (``model.npz``,
``model.json`` with the same network spec, ``metrics.csv``, ``checkpoints/``) plus ``metrics.json``.

**GT-free validation** (:func:`validate`) on the held-out part (whole acquisitions, or a strip of a
single one), for the pre-trained and the fine-tuned network:

- raw-frame calibration: ``z = (x − rec)/√Var(rec)``, ZMS ``mean(z²)`` and coverage ``|z| < 1``,
  ``|z| < 1.96`` (ideal 1, 0.683, 0.95);
- camera noise: the predicted observation-noise variance ``var_obs`` against the classical
  out-of-band estimate :func:`classical_noise_variance` (same window weights), pooled and per tile;
- resolution by decorrelation analysis (:func:`~simuq_core.quality.decorrelation_resolution`) of
  the widefield image (bilinearly up-sampled, ``max_freq = 0.5/rescale``) and of the emitter, next
  to the diffraction limits ``λ/(2NA)`` and ``λ/(2(NA + NA·|k|/k_c))`` of widefield and SIM;
- how structured the emitter std is: ``p95/mean`` (≈ 1 for a flat map).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simuq_core.comparison import checkerboard_index
from simuq_core.config import FinetuneParams, OpticsPrior, UQParams
from simuq_core.evaluation import widefield
from simuq_core.experiment import load_model, save_model
from simuq_core.io import write_json
from simuq_core.models import airy_prior
from simuq_core.objectives import selfsup_objective
from simuq_core.predict import NORMALISATION_RULE, OOD_REFERENCE_FILE, find_inputs
from simuq_core.quality import decorrelation_resolution
from simuq_core.raw_data import CropStream, DataIndex, Region, index_acquisitions, read_crop, split_regions
from simuq_core.reconstruction import PATTERN_KEYS, batch_pattern, predict
from simuq_core.training import Trainer

__all__ = ["GRID_PERIOD_PX", "FinetuneParams", "brightest_window", "classical_noise_variance",
           "field_metrics", "log_spectrum", "ood_reference_from_data", "optics_mismatch",
           "plot_real_walkthrough", "run_finetuning", "validate", "validation_tiles"]

log = logging.getLogger("simuq.finetune")

# The period (camera px) at which the GT-free reports measure a fixed grid in the emitter: it
# holds the strides of the sub-pixel up-sampling (1 px) and of two U-Net levels (2, 4 px).
GRID_PERIOD_PX = 4


# ----------------------------------------------------------------------------------------------
# Classical noise estimate
# ----------------------------------------------------------------------------------------------


def _hann2d(h: int, w: int) -> np.ndarray:
    # Periodic Hann: no zero row, so every pixel carries weight.
    def hann(n: int) -> np.ndarray:
        return np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2

    return np.outer(hann(h), hann(w))


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
    win = _hann2d(h, w)
    radius = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    mask = radius > margin * otf_cutoff
    if not mask.any():
        raise ValueError(f"no frequency beyond {margin:g} × the OTF cut-off {otf_cutoff:.3f} cycles/px "
                         "(the camera under-samples the optics): no out-of-band noise estimate")
    mean = (x * win).sum(axis=(-2, -1), keepdims=True) / win.sum()
    power = np.abs(np.fft.fft2((x - mean) * win)) ** 2
    estimate = float(power[:, mask].mean() / (win**2).sum())
    return estimate, float(mask.sum() * len(x) / 2.0)


def _weighted_mean(var_map: np.ndarray) -> float:
    """``Σ w²·v / Σ w²`` of a ``(..., H, W)`` variance map (weights of :func:`classical_noise_variance`)."""
    h, w = var_map.shape[-2:]
    w2 = _hann2d(h, w) ** 2
    per_frame = (np.asarray(var_map, np.float64).reshape(-1, h, w) * w2).sum(axis=(-2, -1))
    return float(per_frame.mean() / w2.sum())


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
    """Non-overlapping square tiles of the held-out regions, as a batch: ``x`` ``(N, F, t, t)``
    normalised, the :data:`PATTERN_KEYS` arrays, ``acq`` ``(N,)``; ``t = min(tile, region)``
    rounded down to ``multiple``; at most ``max_tiles``, spread evenly over all candidates."""
    side = min([tile] + [min(r.shape) for r in regions])
    side -= side % multiple
    if side < multiple:
        raise ValueError(f"held-out regions {[r.shape for r in regions]} are too small for a tile")
    spots = [(r.acq, r.t, r.y0 + i * side, r.x0 + j * side) for r in regions
             for i in range(r.shape[0] // side) for j in range(r.shape[1] // side)]
    pick = np.unique(np.linspace(0, len(spots) - 1, min(max_tiles, len(spots))).round().astype(int))
    rows: dict[str, list[np.ndarray]] = {}
    for acq, t, y0, x0 in (spots[i] for i in pick):
        entry = index.acquisitions[acq]
        item = {"x": read_crop(entry, t, y0, x0, (side, side)), "acq": np.asarray(acq)}
        item |= entry.pattern_arrays(t, (y0, x0), (side, side))
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
        predicted.append(_weighted_mean(pred["var_obs"][i]))
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
    out["emitter_grid_index"] = _grid_index(pred["emitter"], GRID_PERIOD_PX * rescale, border=True)
    if "emitter_var" in pred:
        std = np.sqrt(pred["emitter_var"].reshape(len(x), -1))
        mean, p95 = std.mean(axis=1), np.percentile(std, 95, axis=1)
        out["emitter_std_mean"] = float(mean.mean())
        out["emitter_std_p95_over_mean"] = float((p95 / np.maximum(mean, 1e-30)).mean())
    out["n_tiles"] = float(len(x))
    return out


def _grid_index(images: np.ndarray, period: int, border: bool = False) -> float:
    """:func:`~simuq_core.comparison.checkerboard_index` at ``period`` of images ``(N, H, W)`` or
    one ``(H, W)``, cropped to a multiple of it (``border``: one period off every side first);
    NaN when nothing is left."""
    img = np.asarray(images).reshape(-1, *np.shape(images)[-2:])
    if border:
        img = img[:, period:-period, period:-period]
    h, w = (n - n % period for n in img.shape[-2:])
    return checkerboard_index(img[:, :h, :w], period) if min(h, w) > 0 else math.nan


def _nanmedian(values: Sequence[float]) -> float:
    arr = np.asarray(values, np.float64)
    return float(np.nanmedian(arr)) if np.isfinite(arr).any() else math.nan


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


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

    ``cache_dir``: the per-acquisition index cache (:func:`~simuq_core.raw_data.index_acquisitions`).
    Returns what is written to ``out_dir/metrics.json``: ``pretrained`` and ``finetuned`` validation
    metrics (:func:`validate`), the data ``index`` summary (skipped files with their reasons, the
    pattern of every acquisition) and the training summary.
    """
    out_dir = Path(out_dir)
    model, spec = load_model(pretrained_model_dir)
    uq = UQParams(**spec["uq"])
    model_cfg = spec["model"]
    rescale, depth = int(model_cfg["rescale"]), int(model_cfg["depth"])
    multiple = 2**depth
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
    train_regions, val_regions = split_regions(
        index, crop, val_fraction=params.val_fraction, val_files=params.val_files,
        val_block_fraction=params.val_block_fraction, multiple=multiple, seed=params.seed)
    if not val_regions:
        raise ValueError("nothing held out for validation: set val_fraction > 0 or val_files")
    stream = CropStream(index, train_regions, crop, params.batch_size, params.crops_per_epoch,
                        seed=params.seed, num_threads=params.num_threads, prefetch=params.prefetch)
    tiles = validation_tiles(index, val_regions, params.val_tile, multiple, params.max_val_tiles)
    pixel_nm = index.pixel_nm or optics.lr_pixel_nm
    cfg = params.train_params()
    prior = airy_prior(model_cfg["optics"]["na"], model_cfg["optics"]["wavelength_nm"],
                       spec["model_pixel_nm"], spec["psf_size"])

    def evaluate(m: nnx.Module, full: bool) -> dict[str, float]:
        return validate(m, uq, tiles, index, rescale, pixel_nm, optics.na, optics.wavelength_nm,
                        batch_size=params.batch_size, noise_band_margin=params.noise_band_margin, full=full)

    before = evaluate(model, True)
    log.info("pre-trained, held-out: %s", {k: round(v, 4) for k, v in before.items()})
    trainer = Trainer(model, selfsup_objective(uq, cfg, prior), cfg, stream, out_dir,
                      evaluator=lambda m: evaluate(m, False), devices=devices, progress=progress,
                      on_rows=on_rows)
    result = trainer.fit()
    refit = None
    if params.var_refit_epochs:
        refit = _refit_variance(result.model, uq, cfg, prior, stream, out_dir, params, evaluate, devices,
                                progress, on_rows, offset=result.history[-1] if result.history else {})
    final = refit.model if refit is not None else result.model
    periods = [p for a in index.acquisitions for p in a.pattern["period_px"]]
    out_spec = spec | {
        "mode": "finetune",
        "train": cfg.model_dump(mode="json"),
        "train_crop": [crop, crop],
        "normalisation": NORMALISATION_RULE + " (per acquisition)",
        "finetune": {"pretrained": str(pretrained_model_dir), "inputs": [str(p) for p in paths],
                     "params": params.model_dump(mode="json"), "pixel_nm": pixel_nm,
                     "pattern_period_px_median": float(np.median(periods)),
                     "pattern_source": "blind full-field estimate per acquisition (raw_data)"},
    }
    save_model(final, out_spec, out_dir)
    try:
        reference = ood_reference_from_data(final, uq, index, list(train_regions) + list(val_regions),
                                            crop, multiple, params.batch_size)
        write_json(out_dir / OOD_REFERENCE_FILE, reference)
    except ValueError as exc:  # too little data for a reference (e.g. one tiny region)
        log.warning("no out-of-distribution reference written (%s): predict will not check inputs", exc)
        reference = {"error": str(exc)}
    after = evaluate(final, True)
    log.info("fine-tuned, held-out: %s", {k: round(v, 4) for k, v in after.items()})
    metrics = {"pretrained": before, "finetuned": after, "index": index.summary(),
               "train": {"steps": result.steps, "epochs_run": result.epochs_run, "crop": crop,
                         "n_train_regions": len(train_regions), "n_val_regions": len(val_regions),
                         "final": {k: v for k, v in result.history[-1].items()
                                   if isinstance(v, float | int)} if result.history else {},
                         "var_refit": ({"steps": refit.steps, "epochs_run": refit.epochs_run,
                                        "frozen": _mean_path_prefixes(result.model)}
                                       if refit is not None else None)},
               "ood_reference": {k: v for k, v in reference.items() if k != "input_model"}}
    write_json(out_dir / "metrics.json", _json_safe(metrics))
    return metrics


def ood_reference_from_data(model: nnx.Module, uq: UQParams, index: DataIndex, regions: Sequence[Region],
                            tile: int, multiple: int, batch_size: int, percentile: float = 99.0,
                            max_tiles: int = 64) -> dict[str, Any]:
    """What "in distribution" means for a model fine-tuned on ``regions`` of the user's stacks, for
    ``predict``'s out-of-distribution check (:func:`simuq_core.predict.ood_check`) without MC
    dropout or ground truth: ``input`` (:func:`~simuq_core.epistemic.input_features` of every
    ``tile // 2`` block of up to ``max_tiles`` tiles, :func:`~simuq_core.epistemic.fit_input_model`)
    and ``misfit`` (mean ``z²`` of the raw frames against ``rec``, ``var_rec``), each with the
    ``percentile`` of the tiles' image-level scores as its threshold
    (:func:`~simuq_core.epistemic.ood_reference`). Training and held-out tiles both count: a
    single acquisition has few held-out tiles, and the misfit of the training area is only
    slightly lower than the held-out one (held-out validation measures that separately)."""
    from simuq_core.epistemic import fit_input_model, input_features, ood_reference, ood_scores

    tiles = validation_tiles(index, regions, tile, multiple, max_tiles)
    x = tiles["x"]
    window = max(8, x.shape[-1] // 2)
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
    _, params = nnx.split(model, nnx.Param)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    tops = {str(getattr(path[0], "key", path[0])) for path, _ in leaves}
    return sorted(t for t in tops if "logvar" not in t and t != "obs_noise_raw")


def _refit_variance(model, uq, cfg, prior, stream, out_dir, params, evaluate, devices, progress, on_rows,
                    offset: dict[str, Any]):
    """Second phase of :func:`run_finetuning`: only the variance heads train, for
    ``var_refit_epochs`` with a fresh AdamW at ``var_refit_lr``; the mean is frozen.

    Why (issue 11): joint mean + variance fine-tuning starts from the pre-trained model's misfit of
    real data (held-out ZMS ~22) and ends over-dispersed on MT.mrc (ZMS 0.4-0.55, camera noise
    1.6-2.3x the out-of-band estimate) whatever the lr, the steps, mean-first epochs or Adam's
    b2, although the NLL optimum lies at ~0.4x that variance. A fresh optimiser on the variance
    alone, after the mean has converged, fits it to the final residual (ZMS 0.94). Rows go
    to ``out_dir/var_refit/metrics.csv`` and to ``on_rows`` with epochs and steps continued."""
    frozen = _mean_path_prefixes(model)
    refit_cfg = cfg.model_copy(update={"epochs": params.var_refit_epochs, "lr": params.var_refit_lr,
                                       "warmup_steps": min(cfg.warmup_steps, 2), "mean_first_epochs": 0,
                                       "freeze": frozen, "resume": False})
    epoch0, step0 = int(offset.get("epoch", -1)) + 1, int(offset.get("step", 0))

    def shifted(rows: list[dict[str, Any]]) -> None:
        on_rows([r | {"epoch": int(r.get("epoch", 0)) + epoch0, "step": int(r.get("step", 0)) + step0}
                 for r in rows])

    log.info("variance re-fit: %d epochs at lr %g, frozen %s", params.var_refit_epochs,
             params.var_refit_lr, frozen)
    trainer = Trainer(model, selfsup_objective(uq, refit_cfg, prior), refit_cfg, stream,
                      out_dir / "var_refit", evaluator=lambda m: evaluate(m, False), devices=devices,
                      progress=progress, on_rows=shifted if on_rows is not None else None)
    return trainer.fit()


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
    (:func:`~simuq_core.comparison.checkerboard_index`): a fixed pattern at the network's strides
    (sub-pixel up-sampling: 1 px, U-Net levels: 2, 4 px) raises it above the sampling spread.
    """
    x = np.asarray(x, np.float64)
    z = (x - maps["rec"]) / np.maximum(np.asarray(maps["rec_std"], np.float64), 1e-15)
    cutoff = 2.0 * na * pixel_nm / wavelength_nm
    out = {"rec_zms": float(np.mean(z**2)), "rec_coverage_68": float(np.mean(np.abs(z) < 1.0)),
           "rec_coverage_95": float(np.mean(np.abs(z) < 1.96))}
    out["noise_std_classical"] = math.sqrt(classical_noise_variance(x, cutoff, noise_band_margin)[0])
    out["rec_std_hann"] = math.sqrt(_weighted_mean(np.asarray(maps["rec_std"], np.float64) ** 2))
    model_nm = pixel_nm / rescale
    wf = widefield(x[None], rescale)[0]
    out["widefield_resolution_nm"] = decorrelation_resolution(wf, model_nm,
                                                              max_freq=0.5 / rescale).resolution_nm
    out["emitter_resolution_nm"] = decorrelation_resolution(maps["emitter"], model_nm).resolution_nm
    out["emitter_grid_index"] = _grid_index(maps["emitter"], GRID_PERIOD_PX * rescale)
    if "wiener" in maps:
        out["wiener_resolution_nm"] = decorrelation_resolution(maps["wiener"], model_nm).resolution_nm
        out["wiener_grid_index"] = _grid_index(maps["wiener"], GRID_PERIOD_PX * rescale)
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


def brightest_window(image: np.ndarray, size: int, x_from: int = 0) -> tuple[int, int]:
    """Top-left ``(y0, x0)`` of the ``size``² window of highest mean in ``image`` ``(H, W)``
    among windows starting at column ``x_from`` or later (steps of ``size/4``): the figure's zoom."""
    h, w = image.shape
    size = min(size, h, w)
    step = max(1, size // 4)
    x_from = min(max(0, x_from), w - size)
    best, where = -np.inf, (0, x_from)
    for y0 in range(0, h - size + 1, step):
        for x0 in range(x_from, w - size + 1, step):
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


def plot_real_walkthrough(path: str | os.PathLike, panels: Sequence[tuple[str, np.ndarray]],
                          zoom: tuple[int, int, int], title: str, pixel_nm: float,
                          circles: Sequence[tuple[str, float]] = ()) -> Path:
    """Full field (top row), a zoom (middle row, the box ``(y0, x0, size)`` in model px, drawn on
    the top row) and the full field's power spectrum (bottom row, :func:`log_spectrum`) of each
    ``(title, (rH, rW) image)`` panel; 1-99 % contrast per panel, the std map in its own colour
    map. ``pixel_nm``: model-grid pixel, for the scale bar (1 µm). ``circles``: ``(label, radius in
    cycles per model px)`` drawn on the spectra (e.g. the widefield cut-off and the SIM limit)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, Rectangle

    from simuq_core.plots import save_figure

    n = len(panels)
    fig = Figure(figsize=(3.2 * n, 9.9), layout="constrained")
    axes = fig.subplots(3, n, squeeze=False)
    styles = ("tab:orange", "tab:cyan", "tab:pink")
    for j, (name, image) in enumerate(panels):
        spec = log_spectrum(image)
        lo, hi = np.percentile(spec, [5.0, 99.9])
        h, w = spec.shape
        ax = axes[2, j]
        ax.imshow(spec, cmap="magma", vmin=lo, vmax=hi, interpolation="nearest")
        for (label, radius), colour in zip(circles, styles, strict=False):
            ax.add_patch(Circle((w // 2, h // 2), radius * w, fill=False, color=colour, lw=0.8, ls="--",
                                label=label))
        ax.set_title(f"{name}: power spectrum", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if circles and j == 0:
            ax.legend(loc="lower left", fontsize=6, framealpha=0.6)
    y0, x0, size = zoom
    bar_px = 1000.0 / pixel_nm
    for j, (name, image) in enumerate(panels):
        lo, hi = np.percentile(image, [1.0, 99.0])
        cmap = "viridis" if "std" in name else "gray"
        for i, (img, label) in enumerate(((image, name), (image[y0:y0 + size, x0:x0 + size], "zoom"))):
            ax = axes[i, j]
            ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(label if i == 0 else f"{name}: zoom", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), size, size, fill=False, color="tab:orange"))
            length = bar_px if i == 0 else bar_px / 4
            h, w = img.shape
            ax.plot([w * 0.95 - length, w * 0.95], [h * 0.94] * 2, color="white", lw=2.5)
        axes[1, j].text(0.02, 0.04, "250 nm", color="white", fontsize=7, transform=axes[1, j].transAxes)
    axes[0, 0].text(0.02, 0.04, "1 µm", color="white", fontsize=7, transform=axes[0, 0].transAxes)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
