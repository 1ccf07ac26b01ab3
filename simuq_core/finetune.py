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
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from pydantic import BaseModel, ConfigDict, Field

from simuq_core.config import OpticsPrior, TrainParams, UQParams
from simuq_core.evaluation import widefield
from simuq_core.experiment import load_model, save_model
from simuq_core.io import write_json
from simuq_core.models import airy_prior
from simuq_core.objectives import selfsup_objective
from simuq_core.predict import NORMALISATION_RULE, find_inputs
from simuq_core.quality import decorrelation_resolution
from simuq_core.raw_data import CropStream, DataIndex, Region, index_acquisitions, read_crop, split_regions
from simuq_core.reconstruction import PATTERN_KEYS, batch_pattern, predict
from simuq_core.training import Trainer

__all__ = ["FinetuneParams", "classical_noise_variance", "run_finetuning", "validate", "validation_tiles"]

log = logging.getLogger("simuq.finetune")


class FinetuneParams(BaseModel):
    """The ``finetune`` section: fine-tuning a trained model on real raw acquisitions."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    seed: int = Field(0, ge=0, description="crop plan, validation split")
    batch_size: int = Field(8, ge=1, le=4096, description="crops per step (all processes)")
    epochs: int = Field(10, ge=1, le=100000)
    crops_per_epoch: int = Field(512, ge=1, description="random crops drawn per epoch")
    crop: int | None = Field(None, ge=8, le=4096,
                             description="crop side, camera px; null = the model's training crop")
    lr: float = Field(1e-4, gt=0.0, lt=1.0, description="lower than training: the model is trained")
    weight_decay: float = Field(1e-4, ge=0.0, lt=1.0)
    warmup_steps: int = Field(20, ge=0)
    grad_clip: float = Field(1.0, gt=0.0)
    mean_first_epochs: int = Field(0, ge=0, description="mean-only epochs first (the model has a mean)")
    log_every: int = Field(10, ge=1)
    keep_checkpoints: int = Field(2, ge=1, le=100)
    resume: bool = False
    psf_prior_weight: float = Field(1.0, ge=0.0)
    lp_smooth_weight: float = Field(0.0, ge=0.0)
    optics: OpticsPrior | None = Field(
        None, description="the acquisitions' microscope (NA, emission λ, pixel) for the blind pattern "
        "search and the resolution limits; null = the model's optics. A file's own pixel size and "
        "emission wavelength win when it records them")
    period_hint: float | None = Field(None, gt=2.0, lt=100.0,
                                      description="expected pattern period (camera px); null = blind")
    frame_order: Literal["angle_major", "phase_major"] = "angle_major"
    norm_offset: float | None = Field(None, description="camera offset; null = TIFF metadata, else 0")
    norm_percentile: float = Field(99.9, gt=50.0, le=100.0)
    strict: bool = Field(False, description="stop at the first bad file instead of skipping it")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="held-out share of the acquisitions")
    val_files: list[str] = Field(default_factory=list, description="held-out files (overrides the fraction)")
    val_block_fraction: float = Field(0.25, gt=0.0, lt=1.0,
                                      description="single acquisition: held-out strip, share of the width")
    val_tile: int = Field(64, ge=8, le=1024, description="side of the validation tiles (camera px)")
    max_val_tiles: int = Field(16, ge=1, le=4096)
    noise_band_margin: float = Field(1.15, ge=1.0, le=2.0,
                                     description="noise estimate from |f| > margin × OTF cut-off")
    num_threads: int = Field(2, ge=0, le=64, description="crop reader threads (0: inline)")
    prefetch: int = Field(16, ge=1, le=4096, description="crops read ahead")

    def train_params(self) -> TrainParams:
        """The engine's settings (no debug artefacts: there is no ground truth to show)."""
        return TrainParams(seed=self.seed, batch_size=self.batch_size, epochs=self.epochs, lr=self.lr,
                           weight_decay=self.weight_decay, warmup_steps=self.warmup_steps,
                           grad_clip=self.grad_clip, mean_first_epochs=self.mean_first_epochs,
                           log_every=self.log_every, debug_every_epochs=self.epochs,
                           keep_checkpoints=self.keep_checkpoints, resume=self.resume,
                           psf_prior_weight=self.psf_prior_weight, lp_smooth_weight=self.lp_smooth_weight)


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
    if "emitter_var" in pred:
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
        norm_percentile=params.norm_percentile, strict=params.strict)
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
    save_model(result.model, out_spec, out_dir)
    after = evaluate(result.model, True)
    log.info("fine-tuned, held-out: %s", {k: round(v, 4) for k, v in after.items()})
    metrics = {"pretrained": before, "finetuned": after, "index": index.summary(),
               "train": {"steps": result.steps, "epochs_run": result.epochs_run, "crop": crop,
                         "n_train_regions": len(train_regions), "n_val_regions": len(val_regions),
                         "final": {k: v for k, v in result.history[-1].items()
                                   if isinstance(v, float | int)} if result.history else {}}}
    write_json(out_dir / "metrics.json", _json_safe(metrics))
    return metrics


def _json_safe(obj: Any) -> Any:
    """NaN / Inf (e.g. no decorrelation peak) as ``null``: strict JSON readers reject them."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
