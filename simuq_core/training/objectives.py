"""Training objectives: what differs between the self-supervised and the supervised stage.

Both have the engine's signature ``(model, batch, mean_only) -> (loss, terms)``; ``mean_only`` is
a traced 0/1 scalar selecting the mean-first phase (docs/design.md §4.5): there the loss is the squared
error of the means only, so the variance heads receive no gradient.

Batches: ``x`` ``(B, F, H, W)`` normalised frames, optionally the precomputed pattern estimates
(:func:`~simuq_core.network.forward.estimate_patterns`); supervised batches add ``emitter_gt``
``(B, Hh, Wh)`` and ``lp_gt`` ``(B, F, Hh, Wh)`` on the model grid.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from simuq_core.config import TrainParams, UQParams
from simuq_core.network.forward import batch_pattern, predict
from simuq_core.training.losses import aux_rec_loss, gaussian_nll
from simuq_core.uncertainty.frame_covariance import covariance_of_prediction
from simuq_core.uncertainty.frame_likelihood import frame_gaussian_nll

__all__ = [
    "RESIM_NOISE_KEY",
    "ResimBatches",
    "resim_objective",
    "resim_training",
    "resimulated",
    "selfsup_objective",
    "sup_objective",
]


def _regularisers(pred: Mapping[str, jax.Array], psf_prior: jax.Array, cfg: TrainParams):
    """Relative squared distance of the PSF from its prior, and LP gradient energy."""
    terms = {}
    if cfg.psf_prior_weight > 0:
        diff = ((pred["psf"] - psf_prior[None]) ** 2).sum(axis=(-2, -1)) / (psf_prior**2).sum()
        terms["psf_reg"] = diff.mean()
    if cfg.lp_smooth_weight > 0:
        lp = pred["light_pattern"]
        terms["lp_reg"] = (jnp.diff(lp, axis=-1) ** 2).mean() + (jnp.diff(lp, axis=-2) ** 2).mean()
    total = cfg.psf_prior_weight * terms.get("psf_reg", 0.0)
    total = total + cfg.lp_smooth_weight * terms.get("lp_reg", 0.0)
    return total, terms


def _std_means(pred: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    out = {"rec_std_mean": jnp.sqrt(pred["var_rec"]).mean()}
    for comp, key in (("emitter", "emitter_var"), ("lp", "lp_var"), ("psf", "psf_var")):
        if key in pred:
            out[f"{comp}_std_mean"] = jnp.sqrt(pred[key]).mean()
    return out


def selfsup_objective(uq: UQParams, cfg: TrainParams, psf_prior: np.ndarray):
    """NLL of the raw frames under the propagated ``Var(rec)`` (+ aux + regularisers); no GT."""
    prior = jnp.asarray(psf_prior, jnp.float32)

    def objective(model, batch, mean_only, key=None):
        x = batch["x"]
        pred = predict(model, x, uq, batch_pattern(batch), dropout_key=key)
        rec, var = pred["rec"], pred["var_rec"]
        if uq.frame_covariance == "full":
            # The 9 residuals of a pixel share every latent error: their joint NLL.
            cov = covariance_of_prediction(pred, model.n_angles, model.rescale, uq)
            nll = frame_gaussian_nll(x - rec, cov, beta=uq.nll_beta)
        else:
            nll = gaussian_nll(x, rec, var, beta=uq.nll_beta, detach_mean=uq.detach_mean_in_var)
        mse = ((x - rec) ** 2).mean()
        data = mean_only * mse + (1.0 - mean_only) * nll
        terms = {"rec_nll": gaussian_nll(x, rec, var), "rec_mse": mse,
                 "rec_mae": jnp.abs(x - rec).mean(),
                 "psnr": 10.0 * jnp.log10(jnp.maximum(x.max() - x.min(), 1e-6) ** 2 / mse)}
        loss = data
        if uq.aux_rec_weight > 0:
            terms["rec_aux"] = aux_rec_loss(rec, x, uq.aux_rec_mode)
            loss = loss + uq.aux_rec_weight * terms["rec_aux"]
        reg, reg_terms = _regularisers(pred, prior, cfg)
        return loss + reg, {**terms, **reg_terms, **_std_means(pred)}

    return objective


def sup_objective(uq: UQParams, cfg: TrainParams, psf_prior: np.ndarray):
    """NLL of emitter and light pattern against ground truth (squared error for components
    without a variance head); the raw-frame terms are logged, not trained."""
    prior = jnp.asarray(psf_prior, jnp.float32)

    def objective(model, batch, mean_only, key=None):
        x = batch["x"]
        pred = predict(model, x, uq, batch_pattern(batch), dropout_key=key)
        terms, loss = {}, jnp.zeros((), jnp.float32)
        for comp, gt_key, mean_key, var_key in (
            ("emitter", "emitter_gt", "emitter", "emitter_var"),
            ("lp", "lp_gt", "light_pattern", "lp_var"),
        ):
            gt, mean = batch[gt_key], pred[mean_key]
            mse = ((gt - mean) ** 2).mean()
            terms[f"{comp}_mse"] = mse
            if var_key in pred:
                nll = gaussian_nll(gt, mean, pred[var_key], beta=uq.nll_beta,
                                   detach_mean=uq.detach_mean_in_var)
                terms[f"{comp}_nll"] = gaussian_nll(gt, mean, pred[var_key])
                loss = loss + mean_only * mse + (1.0 - mean_only) * nll
            else:
                loss = loss + mse
        rec, var = pred["rec"], pred["var_rec"]
        terms |= {"rec_nll": gaussian_nll(x, rec, var), "rec_mse": ((x - rec) ** 2).mean(),
                  "rec_mae": jnp.abs(x - rec).mean()}
        reg, reg_terms = _regularisers(pred, prior, cfg)
        return loss + reg, {**terms, **reg_terms, **_std_means(pred)}

    return objective


#: Batch key of the standard-normal draws ``(B, F, H, W)`` that :func:`resim_objective` turns into
#: camera noise (drawn on the host, so the objective needs no random key).
RESIM_NOISE_KEY = "resim_noise"


def resimulated(model, x: jax.Array, noise: jax.Array, uq: UQParams, pattern=None
                ) -> tuple[jax.Array, jax.Array]:
    """A parametric bootstrap of raw frames ``x`` from the network's own reading of them: the
    emitter ``ê`` (the re-simulation's ground truth) and new frames ``x* = rec + √var_obs · noise``,
    with ``rec`` the forward model of ``ê`` under the network's pattern and PSF and ``var_obs`` its
    fitted camera noise. Both carry no gradient."""
    first = predict(model, x, uq, pattern)
    frames = first["rec"] + jnp.sqrt(first["var_obs"]) * noise
    return jax.lax.stop_gradient(first["emitter"]), jax.lax.stop_gradient(frames)


def resim_objective(uq: UQParams, cfg: TrainParams, psf_prior: np.ndarray):
    """Supervised latent NLL of the emitter on re-simulated frames (:func:`resimulated`): the
    network reads ``x*`` and its emitter std is trained to hold ``ê`` (docs/design.md §5.15).

    On real data no ground truth exists, and the self-supervised NLL constrains the emitter
    variance only through ``Var(rec)``, where the camera noise dominates: after fine-tuning it is
    of unknown scale. The re-simulated pair gives it a ground truth on the lab's own structures,
    with its own optics and noise. Batches add :data:`RESIM_NOISE_KEY`. Train it with the mean
    frozen (the emitter target is the mean network's own output)."""
    del cfg, psf_prior

    def objective(model, batch, mean_only, key=None):
        target, frames = resimulated(model, batch["x"], batch[RESIM_NOISE_KEY], uq, batch_pattern(batch))
        pred = predict(model, frames, uq, batch_pattern(batch), dropout_key=key)
        mse = ((pred["emitter"] - target) ** 2).mean()
        nll = gaussian_nll(target, pred["emitter"], pred["emitter_var"], beta=uq.nll_beta)
        loss = mean_only * mse + (1.0 - mean_only) * nll
        return loss, {"resim_emitter_nll": gaussian_nll(target, pred["emitter"], pred["emitter_var"]),
                      "resim_emitter_mse": mse, **_std_means(pred)}

    return objective


class ResimBatches:
    """A :class:`~simuq_core.training.engine.BatchSource` for :func:`resim_objective`: the batches
    of ``source`` (a batch source, or in-memory arrays drawn in a seeded permutation per epoch) with
    fresh standard-normal draws :data:`RESIM_NOISE_KEY` of the frames' shape, deterministic for
    ``(seed, epoch, batch)``."""

    def __init__(self, source, batch_size: int, seed: int):
        self.source, self.batch_size, self.seed = source, int(batch_size), int(seed)
        if isinstance(source, Mapping):
            self.steps_per_epoch = max(1, len(source["x"]) // self.batch_size)
        else:
            self.steps_per_epoch = source.steps_per_epoch

    def _batches(self, epoch: int):
        if not isinstance(self.source, Mapping):
            yield from self.source.epoch_batches(epoch)
            return
        order = np.random.default_rng([self.seed, epoch, 1]).permutation(len(self.source["x"]))
        for i in range(self.steps_per_epoch):
            idx = np.sort(order[i * self.batch_size:(i + 1) * self.batch_size])
            yield {k: np.asarray(v)[idx] for k, v in self.source.items()}

    def epoch_batches(self, epoch: int):
        for i, batch in enumerate(self._batches(epoch)):
            rng = np.random.default_rng([self.seed, epoch, i])
            yield dict(batch) | {RESIM_NOISE_KEY: rng.standard_normal(np.shape(batch["x"]), np.float32)}


#: The one parameter group the emitter-std fit trains.
EMITTER_VAR_HEAD = "emitter_logvar_head"


def resim_training(cfg: TrainParams, groups: set[str], epochs: int, lr: float) -> TrainParams:
    """The engine settings of the emitter-std fit after a training run ``cfg``: ``epochs`` at
    ``lr``, a short warm-up, no mean-first phase, every parameter group in ``groups`` but
    :data:`EMITTER_VAR_HEAD` frozen."""
    return cfg.model_copy(update={"epochs": epochs, "lr": lr, "warmup_steps": min(cfg.warmup_steps, 2),
                                  "mean_first_epochs": 0, "resume": False,
                                  "freeze": sorted(g for g in groups if g != EMITTER_VAR_HEAD)})
