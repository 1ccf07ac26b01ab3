"""From raw frames to every mean and variance map: build a :class:`SIMNet` from params, run it,
bound its log-variances and propagate them through the forward model (docs/design.md §1, §4, §5).

Variance conventions of :func:`predict` (all variances, never log-variances):

- ``emitter_var = exp(b(emitter_logvar))``, ``lp_var = exp(b(lp_logvar))`` (absolute units);
- ``psf_var = psf² · exp(b(psf_logvar))`` (the head predicts a *relative* tap variance);
- ``var_rec = var_latent + a·rec + b [+ exp(b(obs_logvar))] (+ floor)`` on the camera grid,
  where the map head may also read the leave-one-out local residual energy
  (``uq.obs_map_window``; :func:`~simuq_core.uncertainty.propagation.local_residual_energy`),

with ``b(·)`` the configured log-variance bound.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simuq_core.config import ModelParams, UQParams
from simuq_core.network.simnet import SIMNet, SIMNetConfig, airy_prior, model_psf_size
from simuq_core.pattern.estimate import PATTERN_KEYS, PatternEstimate
from simuq_core.uncertainty.logvar_bounds import logvar_bias_init, variance_from_logvar
from simuq_core.uncertainty.propagation import (
    ObsNoiseParams,
    init_obs_noise_params,
    local_residual_energy,
    propagate_rec_variance,
)

__all__ = [
    "batch_pattern",
    "build_model",
    "estimate_patterns",
    "model_spec",
    "predict",
]

# Starting Poisson-Gaussian coefficients in normalised units (x ≈ 1 at the brightest pixels):
# a ≈ 1 / (peak electrons), b ≈ (read noise / peak)²; learned from there.
_OBS_A0, _OBS_B0 = 2e-3, 2e-4


def model_spec(model: ModelParams, uq: UQParams, n_frames: int) -> dict[str, Any]:
    """Everything needed to rebuild the network (stored beside every checkpoint)."""
    pixel_nm = model.optics.lr_pixel_nm / model.rescale
    size = model_psf_size(model.optics.na, model.optics.wavelength_nm, pixel_nm, model.psf_size)
    return {
        "model": model.model_dump(mode="json"),
        "uq": uq.model_dump(mode="json"),
        "n_frames": n_frames,
        "psf_size": size,
        "model_pixel_nm": pixel_nm,
    }


def build_model(model: ModelParams, uq: UQParams, n_frames: int, seed: int) -> SIMNet:
    """A freshly initialised network for these params (deterministic for ``seed``)."""
    spec = model_spec(model, uq, n_frames)
    size = spec["psf_size"]
    obs_raw = None
    if uq.obs_noise != "none":
        p = init_obs_noise_params(_OBS_A0, _OBS_B0)
        obs_raw = (float(p.a_raw), float(p.b_raw))
    lp = model.light_pattern
    cfg = SIMNetConfig(
        n_frames=n_frames,
        rescale=model.rescale,
        width=model.width,
        depth=model.depth,
        psf_size=size,
        uq_targets=tuple(uq.targets),
        obs_map=uq.obs_noise == "poisson_gaussian_map",
        obs_map_residual=uq.obs_map_window > 0,
        logvar_bias=logvar_bias_init(uq.logvar_init, uq.logvar_min, uq.logvar_max,
                                     uq.logvar_bound),
        background=model.background,
        psf_mode=model.psf_mode,
        obs_noise_raw=obs_raw,
        backbone=model.backbone,
        upsample=model.upsample,
        unet_upsample=model.unet_upsample,
        wiener_input=model.wiener_input,
        wiener_w=model.wiener_w,
        lp_mode=lp.mode,
        n_angles=lp.n_angles,
        otf_cutoff=2.0 * model.optics.na * model.optics.lr_pixel_nm / model.optics.wavelength_nm,
        k_range=lp.k_range(),
        modulation_init=lp.modulation_init,
        logvar_init=uq.logvar_init,
        dropout=model.dropout,
        dropout_at=tuple(model.dropout_at),
    )
    prior = airy_prior(model.optics.na, model.optics.wavelength_nm, spec["model_pixel_nm"], size)
    return SIMNet(cfg, prior, rngs=nnx.Rngs(seed))


def estimate_patterns(model: SIMNet, x: np.ndarray, batch_size: int = 32) -> dict[str, np.ndarray]:
    """The network's classical pattern estimates for frames ``x`` ``(N, F, H, W)``, as host arrays
    under :data:`PATTERN_KEYS` (``{}`` for a free light pattern). Training computes them once per
    split: they depend on the input only."""
    if model.lp_mode != "parametric":
        return {}
    fn = jax.jit(lambda xb: model.estimate_pattern(xb))
    parts = [jax.device_get(fn(jnp.asarray(x[i:i + batch_size])))
             for i in range(0, len(x), batch_size)]
    return {key: np.concatenate([np.asarray(p[j]) for p in parts])
            for j, key in enumerate(PATTERN_KEYS)}


def batch_pattern(batch: dict[str, jax.Array]) -> PatternEstimate | None:
    """The precomputed :func:`estimate_patterns` entries of a batch, if present."""
    if PATTERN_KEYS[0] not in batch:
        return None
    return PatternEstimate(*(batch[key] for key in PATTERN_KEYS))


def predict(model: SIMNet, x: jax.Array, uq: UQParams,
            pattern: PatternEstimate | None = None,
            wiener: jax.Array | None = None,
            dropout_key: jax.Array | None = None) -> dict[str, jax.Array]:
    """Run the network on ``x`` ``(B, F, H, W)`` and propagate its uncertainty.

    ``pattern``: a precomputed pattern estimate for ``x`` (parametric light pattern; see
    :meth:`SIMNet.estimate_pattern`), estimated by the network when omitted; ``wiener``: the
    Wiener SIM input ``(B, rH, rW)`` of a ``wiener_input`` network (computed from ``x`` when
    omitted; a tile of an image passes its slice of the image's, so tiles agree);
    ``dropout_key``: one MC-dropout sample of a network with ``model.dropout > 0`` (the
    deterministic mean network without it).

    Returns the network outputs plus ``emitter_var`` / ``lp_var`` / ``psf_var`` (for enabled
    targets), ``rec``, ``var_rec``, ``var_latent``, ``var_obs`` ``(B, F, H, W)`` and
    ``var_deconv`` ``(B, F, Hh, Wh)`` (variance of ``S = emitter · light_pattern``).
    """
    if dropout_key is not None:
        out = dict(model(x, pattern, wiener, dropout_key))
    else:
        out = dict(model(x, pattern, wiener) if wiener is not None else model(x, pattern))

    def var(name: str) -> jax.Array:
        return variance_from_logvar(out[name], uq.logvar_min, uq.logvar_max, uq.logvar_bound)

    if "emitter_logvar" in out:
        out["emitter_var"] = var("emitter_logvar")
    if "lp_logvar" in out:
        out["lp_var"] = var("lp_logvar")
    if "psf_logvar" in out:
        out["psf_var"] = out["psf"] ** 2 * var("psf_logvar")
    obs_params = None
    if model.obs_noise_raw is not None:
        raw = model.obs_noise_raw[...]
        obs_params = ObsNoiseParams(raw[0], raw[1])
    obs_map = var("obs_logvar")[:, None] if "obs_logvar" in out else None
    # The residual-aware map needs the mean reconstruction: propagate without it, then add it
    # (it is additive, like everything after the latent terms).
    late_map = "obs_features" in out
    obs_mode = "none" if obs_params is None else (
        "poisson_gaussian_map" if obs_map is not None else "poisson_gaussian")
    prop = propagate_rec_variance(
        out["emitter"], out["light_pattern"], out["psf"], model.rescale,
        var_emitter=out.get("emitter_var"),
        var_light_pattern=out.get("lp_var"),
        var_psf=out.get("psf_var"),
        psf_var_weight=uq.psf_var_weight,
        pool_var=uq.pool_var,
        obs_noise=obs_mode,
        obs_noise_params=obs_params,
        obs_var_map=obs_map,
        var_floor=uq.var_floor,
        background=out.get("background"),
        detach_mean_in_var=uq.detach_mean_in_var,
    )
    var_rec, var_obs = prop.var_rec, prop.var_obs
    if late_map:
        energy = local_residual_energy(x, prop.rec, uq.obs_map_window)
        out["obs_logvar"] = model.obs_logvar(out.pop("obs_features"), energy)
        obs_map = var("obs_logvar")[:, None]
        var_rec, var_obs = var_rec + obs_map, var_obs + obs_map
    out.update(rec=prop.rec, var_rec=var_rec, var_latent=prop.var_latent,
               var_obs=jnp.broadcast_to(var_obs, prop.rec.shape), var_deconv=prop.var_deconv)
    return out
