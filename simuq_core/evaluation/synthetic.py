"""Validation / test metrics of a trained network on a synthetic split (with known truth).

- raw-frame calibration: ``rec_*`` metrics of ``rec`` against the input frames under ``var_rec``
  (ZMS, coverage …, :func:`simuq_core.evaluation.metrics.calibration_metrics`);
- noise ground truth: Pearson correlation of the predicted ``sqrt(var_rec)`` with the true noise
  std map stored with the data (``noise_corr``);
- reconstruction quality: emitter PSNR / NRMSE against GT after a per-sample least-squares affine
  fit (the self-supervised emitter has no absolute scale), and the same for the widefield baseline
  (mean of the frames, bilinearly upsampled) so the gain is visible (``psnr_gain``);
- how structured the std maps are: mean, p95 and ``p95/mean`` (flat maps give ≈ 1);
- with ``latent=True`` (supervised): emitter and LP calibration against their GT.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simuq_core.config import UQParams
from simuq_core.evaluation.metrics import calibration_metrics
from simuq_core.network.forward import predict
from simuq_core.optics.imaging import block_mean

__all__ = [
    "affine_align",
    "affine_fit_psnr",
    "apply_gt_norm",
    "evaluate",
    "make_predictor",
    "pool_gt",
    "pool_psf",
    "widefield",
]

_REC_KEYS = ("zms", "coverage_68", "coverage_95", "calib_ratio", "nll", "z_mean")
_LATENT_KEYS = ("zms", "coverage_68", "coverage_95", "calib_ratio", "corr", "corr_ref",
                "spearman", "nll", "rmse", "miscal_area", "ence", "ause")


def make_predictor(uq: UQParams, batch_size: int) -> Callable[[nnx.Module, np.ndarray], dict]:
    """``(model, x (N, F, H, W)) -> {name: np.ndarray (N, …)}`` in fixed-size jitted batches
    (the last batch is padded, so one compile serves every call)."""
    fn = nnx.jit(lambda model, x: predict(model, x, uq))

    def run(model: nnx.Module, x: np.ndarray) -> dict[str, np.ndarray]:
        n = len(x)
        chunks: dict[str, list[np.ndarray]] = {}
        for i in range(0, n, batch_size):
            xb = x[i:i + batch_size]
            pad = batch_size - len(xb)
            if pad:
                xb = np.concatenate([xb, np.repeat(xb[-1:], pad, axis=0)])
            out = jax.device_get(fn(model, jnp.asarray(xb)))
            for k, v in out.items():
                chunks.setdefault(k, []).append(np.asarray(v)[: batch_size - pad])
        return {k: np.concatenate(v) for k, v in chunks.items()}

    return run


def pool_gt(gt: np.ndarray, factor: int) -> np.ndarray:
    """Block-mean GT from the data grid to the model grid (``factor = hr_factor / rescale``)."""
    return np.asarray(block_mean(jnp.asarray(gt), factor)) if factor > 1 else gt


def pool_psf(psf: np.ndarray, factor: int, size: int | None = None) -> np.ndarray:
    """A PSF from the data grid on the model grid: ``(N, K, K) -> (N, size, size)``, sums to 1.

    Blocks of ``factor × factor`` taps are summed (the PSF is a probability over taps), with the
    blocks placed so that one of them is centred on the central tap (exact for odd ``factor``; an
    even ``factor`` shifts the result by half a data pixel). The result is then centre-cropped or
    zero-padded to ``size`` (default: as pooled) so it lines up with the model's kernel.
    """
    psf = np.asarray(psf, dtype=np.float64)
    k = psf.shape[-1]
    if factor > 1:
        centre_block_start = (k - 1) // 2 - (factor - 1) // 2
        left = (-centre_block_start) % factor
        right = (-(left + k)) % factor
        psf = np.pad(psf, [(0, 0), (left, right), (left, right)])
        n, kp = len(psf), psf.shape[-1] // factor
        psf = psf.reshape(n, kp, factor, kp, factor).sum(axis=(2, 4))
    if size is not None:
        k = psf.shape[-1]
        if k > size:
            lo = (k - size) // 2
            psf = psf[:, lo:lo + size, lo:lo + size]
        elif k < size:
            lo = (size - k) // 2
            psf = np.pad(psf, [(0, 0), (lo, size - k - lo), (lo, size - k - lo)])
    return (psf / psf.sum(axis=(-2, -1), keepdims=True)).astype(np.float32)


def affine_align(
    pred: np.ndarray, gt: np.ndarray, var: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Per-sample least-squares ``a·pred + b ≈ gt`` (axis 0 indexes samples).

    For a prediction without absolute scale (the self-supervised emitter). Returns the aligned
    prediction ``a·pred + b``, the matching variance ``a²·var`` (``None`` without ``var``) and the
    coefficients ``(N, 2)`` as ``[a, b]`` rows; arrays keep the input shapes.
    """
    n = len(pred)
    p = np.asarray(pred, dtype=np.float64).reshape(n, -1)
    g = np.asarray(gt, dtype=np.float64).reshape(n, -1)
    p_mean, g_mean = p.mean(axis=1, keepdims=True), g.mean(axis=1, keepdims=True)
    cov = ((p - p_mean) * (g - g_mean)).sum(axis=1, keepdims=True)
    p_ss = ((p - p_mean) ** 2).sum(axis=1, keepdims=True)
    a = np.where(p_ss > 0, cov / np.where(p_ss > 0, p_ss, 1.0), 0.0)
    b = g_mean - a * p_mean
    aligned = (a * p + b).reshape(np.shape(pred))
    scaled_var = None
    if var is not None:
        scaled_var = (a**2 * np.asarray(var, dtype=np.float64).reshape(n, -1)).reshape(np.shape(var))
    return aligned, scaled_var, np.concatenate([a, b], axis=1)


def widefield(x: np.ndarray, rescale: int) -> np.ndarray:
    """Widefield baseline: mean of the frames, bilinearly upsampled. ``(N, F, H, W) -> (N, rH, rW)``."""
    wf = x.mean(axis=1)
    n, h, w = wf.shape
    return np.asarray(jax.image.resize(jnp.asarray(wf), (n, h * rescale, w * rescale), "linear"))


def affine_fit_psnr(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Mean PSNR (dB) and NRMSE over samples after fitting ``a·pred + b`` to ``gt`` per sample
    by least squares; the data range is each GT's ``max − min``. ``(N, H, W)`` inputs."""
    psnrs, nrmses = [], []
    for p, g in zip(pred.reshape(len(pred), -1).astype(np.float64),
                    gt.reshape(len(gt), -1).astype(np.float64), strict=True):
        design = np.stack([p, np.ones_like(p)], axis=1)
        coef, *_ = np.linalg.lstsq(design, g, rcond=None)
        rmse = np.sqrt(np.mean((design @ coef - g) ** 2))
        rng = max(g.max() - g.min(), 1e-12)
        psnrs.append(20 * np.log10(rng / max(rmse, 1e-12)))
        nrmses.append(rmse / rng)
    return float(np.mean(psnrs)), float(np.mean(nrmses))


def _std_stats(name: str, var: np.ndarray) -> dict[str, float]:
    std = np.sqrt(var.reshape(len(var), -1))
    mean, p95 = std.mean(axis=1), np.percentile(std, 95, axis=1)
    return {f"{name}_std_mean": float(mean.mean()), f"{name}_std_p95": float(p95.mean()),
            f"{name}_std_p95_over_mean": float((p95 / np.maximum(mean, 1e-30)).mean())}


def evaluate(
    pred: dict[str, np.ndarray],
    x: np.ndarray,
    sigma: np.ndarray | None = None,
    emitter_gt: np.ndarray | None = None,
    lp_gt: np.ndarray | None = None,
    rescale: int = 2,
    latent: bool = False,
) -> dict[str, float]:
    """All metrics for predictions ``pred`` (from :func:`make_predictor`) on inputs ``x``.

    ``sigma``: true noise std ``(N, F, H, W)`` in the normalised units of ``x``; ``emitter_gt``
    ``(N, Hh, Wh)`` and ``lp_gt`` ``(N, F, Hh, Wh)`` on the model grid.
    """
    rec_all = calibration_metrics(pred["rec"], x, pred["var_rec"], component="rec")
    out = {f"rec_{k}": rec_all[f"rec_{k}"] for k in _REC_KEYS}
    out |= _std_stats("rec", pred["var_rec"])
    out |= _std_stats("deconv", pred["var_deconv"])
    for comp, key in (("emitter", "emitter_var"), ("lp", "lp_var"), ("psf", "psf_var")):
        if key in pred:
            out |= _std_stats(comp, pred[key])
    if sigma is not None:
        out["noise_corr"] = float(np.corrcoef(np.sqrt(pred["var_rec"]).ravel(),
                                              sigma.ravel())[0, 1])
        out["rec_std_over_sigma"] = float(np.sqrt(pred["var_rec"]).mean() / sigma.mean())
    if emitter_gt is not None:
        out["emitter_psnr"], out["emitter_nrmse"] = affine_fit_psnr(pred["emitter"], emitter_gt)
        wf_psnr, wf_nrmse = affine_fit_psnr(widefield(x, rescale), emitter_gt)
        out["widefield_psnr"], out["widefield_nrmse"] = wf_psnr, wf_nrmse
        out["psnr_gain"] = out["emitter_psnr"] - wf_psnr
    if latent:
        for comp, mean_key, var_key, gt in (("emitter", "emitter", "emitter_var", emitter_gt),
                                            ("lp", "light_pattern", "lp_var", lp_gt)):
            if gt is None or var_key not in pred:
                continue
            m = calibration_metrics(pred[mean_key], gt, pred[var_key], component=comp)
            out |= {f"{comp}_{k}": m[f"{comp}_{k}"] for k in _LATENT_KEYS}
    return out


def apply_gt_norm(emitter: np.ndarray, lp: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Supervised GT normalisation (the original's ``gt_norm``), per sample.

    ``none``: unchanged (our GT is already scaled: emitter max 1, LP mean 1); ``minmax``: emitter to
    [0, 1]; ``minmax_full``: emitter and LP each to [0, 1] (the original; the LP then has mean
    ≈ 0.5 and can never match the network's mean-1 LP: kept only as an ablation, docs/design.md §4.6);
    ``minmax_per_channel``: emitter to [0, 1] and every LP frame separately to [0, 1].
    """
    def mm(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        lo, hi = a.min(axis=axes, keepdims=True), a.max(axis=axes, keepdims=True)
        return (a - lo) / np.maximum(hi - lo, 1e-12)

    if mode == "none":
        return emitter, lp
    emitter = mm(emitter, (1, 2))
    if mode == "minmax_full":
        lp = mm(lp, (1, 2, 3))
    elif mode == "minmax_per_channel":
        lp = mm(lp, (2, 3))
    return emitter, lp
