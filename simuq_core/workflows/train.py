"""One training run end to end: data, model, objective, engine, saved model and test metrics.

:func:`run_training` is what the ``train`` stage calls (``--mode selfsup|sup``); the two modes
share everything but the objective (:mod:`simuq_core.training.objectives`).

Model folder (``models/<mode>/``): ``model.npz`` (parameters as host arrays), ``model.json`` (what
rebuilds the network: model/uq params, PSF size, frame count, data geometry, normalisation rule),
``metrics.csv``, ``checkpoints/``, ``debug_samples/``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from flax import nnx

from simuq_core.config import Params, TrainParams, params_hash
from simuq_core.evaluation.synthetic import apply_gt_norm, evaluate, make_predictor, pool_gt
from simuq_core.io import read_json
from simuq_core.network.forward import build_model, estimate_patterns, model_spec
from simuq_core.network.simnet import airy_prior
from simuq_core.network.store import save_model
from simuq_core.reports.debug import debug_dir_name, reference_from_split, write_uncertainty_artifacts
from simuq_core.simulation.dataset import DatasetSplit, load_split
from simuq_core.training.engine import Trainer, parameter_groups
from simuq_core.training.objectives import (
    ResimBatches,
    resim_objective,
    resim_training,
    selfsup_objective,
    sup_objective,
)

__all__ = [
    "run_training",
]

log = logging.getLogger("simuq.experiment")
Mode = Literal["selfsup", "sup"]


def _gt_factor(data_dir: Path, rescale: int) -> int:
    hr_factor = int(read_json(data_dir / "dataset.json")["geometry"]["hr_factor"])
    if hr_factor % rescale:
        raise ValueError(
            f"model.rescale={rescale} must divide the dataset's hr_factor={hr_factor} "
            f"({data_dir / 'dataset.json'}): GT is block-averaged onto the model grid"
        )
    return hr_factor // rescale


def _arrays(split: DatasetSplit, factor: int, gt_norm: str, with_gt: bool) -> dict[str, np.ndarray]:
    out = {"x": split.raw}
    if with_gt:
        if split.emitter is None:
            raise FileNotFoundError("supervised training needs <split>_gt/ ground truth")
        em, lp = apply_gt_norm(pool_gt(split.emitter, factor), pool_gt(split.light_pattern, factor),
                               gt_norm)
        out |= {"emitter_gt": em.astype(np.float32), "lp_gt": lp.astype(np.float32)}
    return out


def run_training(
    mode: Mode,
    params: Params,
    data_dir: str | Path,
    out_dir: str | Path,
    progress: bool = True,
    devices: list | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
) -> dict[str, float]:
    """Train one model (``selfsup`` or ``sup``), save it, and return its test-split metrics."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    cfg: TrainParams = params.train_selfsup if mode == "selfsup" else params.train_sup
    uq, model_cfg = params.uq, params.model
    factor = _gt_factor(data_dir, model_cfg.rescale)
    sup = mode == "sup"
    train = load_split(data_dir, "train")
    val = load_split(data_dir, "val", limit=cfg.max_val_samples)
    n_frames = train.raw.shape[1]
    model = build_model(model_cfg, uq, n_frames, cfg.seed)
    spec = model_spec(model_cfg, uq, n_frames)
    prior = airy_prior(model_cfg.optics.na, model_cfg.optics.wavelength_nm,
                       spec["model_pixel_nm"], spec["psf_size"])
    objective = (sup_objective if sup else selfsup_objective)(uq, cfg, prior)
    predictor = make_predictor(uq, cfg.batch_size)
    val_arrays = _arrays(val, factor, cfg.gt_norm, with_gt=val.emitter is not None)

    def evaluator(m: nnx.Module) -> dict[str, float]:
        pred = predictor(m, val.raw)
        return evaluate(pred, val.raw, val.sigma, val_arrays.get("emitter_gt"),
                        val_arrays.get("lp_gt"), model_cfg.rescale, latent=sup)

    debug_ref = reference_from_split(val, np.arange(min(cfg.n_debug_samples, len(val))),
                                     emitter=val_arrays.get("emitter_gt"),
                                     light_pattern=val_arrays.get("lp_gt"), gt_factor=factor,
                                     psf_size=model.psf_size)

    def on_debug(m: nnx.Module, epoch: int, step: int) -> None:
        pred = predictor(m, debug_ref.x)
        write_uncertainty_artifacts(pred, out_dir / "debug_samples" / debug_dir_name(epoch, step),
                                    reference=debug_ref, emitter_affine_fit=not sup,
                                    camera_pixel_nm=model_cfg.optics.lr_pixel_nm,
                                    background=epoch + 1 < cfg.epochs)  # the last one waits

    # The pattern estimates depend on the frames only: computed once, not at every step.
    train_arrays = _arrays(train, factor, cfg.gt_norm, with_gt=sup) | estimate_patterns(
        model, train.raw, cfg.batch_size)
    trainer = Trainer(model, objective, cfg, train_arrays,
                      out_dir, evaluator=evaluator, on_debug=on_debug, on_epoch_end=on_epoch_end,
                      on_rows=on_rows, devices=devices, progress=progress)
    result = trainer.fit()
    model_out = result.model
    if not sup and cfg.resim_epochs and "emitter" in uq.targets:  # rows, checkpoints: checkpoints/resim
        resim_cfg = resim_training(cfg, parameter_groups(result.model), cfg.resim_epochs, cfg.resim_lr)
        log.info("emitter-std fit on re-simulated samples: %d epochs at lr %g", cfg.resim_epochs,
                 cfg.resim_lr)
        model_out = Trainer(result.model, resim_objective(uq, resim_cfg, prior), resim_cfg,
                            ResimBatches(train_arrays, cfg.batch_size, cfg.seed),
                            out_dir / "checkpoints" / "resim", evaluator=evaluator, devices=devices,
                            progress=progress).fit().model
    manifest = read_json(data_dir / "dataset.json")
    spec = spec | {
        "mode": mode,
        "train": cfg.model_dump(mode="json"),
        "params_hash": params_hash(params),
        "dataset_sha256": manifest["content_sha256"],
        "normalisation": manifest["normalisation"],
        "hr_factor": manifest["geometry"]["hr_factor"],
        "train_crop": list(train.raw.shape[-2:]),
    }
    save_model(model_out, spec, out_dir)

    test = load_split(data_dir, "test")
    test_arrays = _arrays(test, factor, cfg.gt_norm, with_gt=test.emitter is not None)
    metrics = evaluate(predictor(model_out, test.raw), test.raw, test.sigma,
                       test_arrays.get("emitter_gt"), test_arrays.get("lp_gt"),
                       model_cfg.rescale, latent=sup)
    log.info("test metrics: %s", {k: round(v, 4) for k, v in metrics.items()})
    return metrics
