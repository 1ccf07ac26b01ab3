"""Epistemic uncertainty: MC dropout and deep ensembles, total predictive variance, and the
image-level out-of-distribution (OOD) score.

A *member prediction* is one forward pass of one network: a network trained with
``model.dropout > 0`` gives ``n_samples`` passes with independent dropout masks (MC dropout, Gal &
Ghahramani 2016); a network without dropout gives its one deterministic pass; an ensemble
(Lakshminarayanan et al. 2017) pools the passes of several networks trained from different seeds.
With ``M`` member predictions ``(μ_m, σ²_m)`` of a component (emitter, light pattern, rec), the
predictive distribution is the equal-weight mixture, whose mean and variance are

    μ = (1/M) Σ μ_m,
    Var = (1/M) Σ σ²_m  +  (1/M) Σ (μ_m − μ)²
        = aleatoric     +  epistemic                 (law of total variance).

The outputs keep the single-network names for the mean and the aleatoric part (``emitter``,
``emitter_var``; ``light_pattern``, ``lp_var``; ``rec``, ``var_rec``) and add ``<var>_epi`` and
``<var>_total``. Every other array is averaged over the members.

**OOD score** (:func:`ood_scores`), per image, needing no ground truth:

- ``epistemic``: ``mean(√emitter_var_epi) / mean(emitter)``, the members' relative disagreement
  on the emitter (scale-free, so it also applies to the self-supervised emitter, whose scale is
  arbitrary);
- ``misfit``: ``mean((x − rec)² / var_rec_total)``, the raw-frame ZMS: the reconstruction does not
  explain the frames within its own predicted variance (≈ 1 in distribution);

- ``input``: how unlike the training inputs the raw frames look, by classical image statistics
  (:func:`input_features`: mean level and the widefield power in radial bands of the OTF, per
  training-crop-sized window), as the Mahalanobis distance to their training-split distribution
  (:func:`fit_input_model`, Ledoit–Wolf shrinkage; the median over an image's windows). It needs
  no network pass and catches shifts the network is confidently wrong about (smooth blobs instead
  of filaments, where neither the members' spread nor the misfit grows);

each is divided by its ``ood_percentile`` quantile on the in-distribution val split
(:func:`ood_reference`), and the combined score is the largest ratio: above 1 = flagged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu

__all__ = [
    "COMPONENTS",
    "EnsembleAccumulator",
    "INPUT_BANDS",
    "check_members",
    "combine_members",
    "fit_input_model",
    "input_distance",
    "input_features",
    "ood_flags",
    "ood_reference",
    "ood_scores",
    "roc_auc",
]

#: (component, mean key, aleatoric variance key) of the total-variance rule.
COMPONENTS = (("emitter", "emitter", "emitter_var"), ("lp", "light_pattern", "lp_var"),
              ("rec", "rec", "var_rec"))
#: What must agree between ensemble members (``model.json`` entries) for their mixture to mean
#: anything: the same geometry, optics, pattern model and variance model.
_MEMBER_KEYS = (("n_frames",), ("psf_size",), ("model_pixel_nm",), ("model", "rescale"),
                ("model", "optics"), ("model", "light_pattern"), ("model", "wiener_input"),
                ("uq", "targets"), ("uq", "obs_noise"), ("uq", "pool_var"))
OOD_SCORES = ("epistemic", "misfit", "input")
#: Radial bands of the widefield power spectrum (:func:`input_features`) in units of the OTF
#: cut-off ``k_c``; the last, beyond ``1.15 k_c``, holds only noise (dropped when it lies past
#: Nyquist).
INPUT_BANDS = ((0.0, 0.08), (0.08, 0.2), (0.2, 0.4), (0.4, 0.65), (0.65, 1.0), (1.15, np.inf))


def combine_members(stacked: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Mixture moments (module docstring) of member predictions stacked on axis 0."""
    out = {k: np.asarray(v, np.float64).mean(axis=0) for k, v in stacked.items()}
    for _, mean_key, var_key in COMPONENTS:
        if mean_key in stacked and var_key in stacked:
            epi = np.asarray(stacked[mean_key], np.float64).var(axis=0)
            out[f"{var_key}_epi"] = epi
            out[f"{var_key}_total"] = out[var_key] + epi
    return out


class EnsembleAccumulator:
    """Running mixture moments over member predictions that arrive in groups (one network's
    passes at a time), so an ensemble never holds every pass in memory.

    ``add(stacked)`` takes ``{key: (S, …)}``; ``result()`` returns what :func:`combine_members`
    returns for all passes added (same keys; float64).
    """

    def __init__(self) -> None:
        self.count = 0
        self.sums: dict[str, np.ndarray] = {}
        self.squares: dict[str, np.ndarray] = {}

    def add(self, stacked: Mapping[str, Any]) -> None:
        n = None
        for k, v in stacked.items():
            v = np.asarray(v, np.float64)
            n = len(v) if n is None else n
            if len(v) != n:
                raise ValueError(f"member predictions disagree in count: {k} has {len(v)}, expected {n}")
            self.sums[k] = self.sums.get(k, 0.0) + v.sum(axis=0)
            if any(k == mean_key for _, mean_key, _ in COMPONENTS):
                self.squares[k] = self.squares.get(k, 0.0) + (v * v).sum(axis=0)
        self.count += n or 0

    def result(self) -> dict[str, np.ndarray]:
        if not self.count:
            raise ValueError("no member predictions were added")
        out = {k: s / self.count for k, s in self.sums.items()}
        for _, mean_key, var_key in COMPONENTS:
            if mean_key in out and var_key in out:
                # E[μ²] − E[μ]², clipped at 0 against round-off (float64 sums).
                epi = np.maximum(self.squares[mean_key] / self.count - out[mean_key] ** 2, 0.0)
                out[f"{var_key}_epi"] = epi
                out[f"{var_key}_total"] = out[var_key] + epi
        return out


def _lookup(spec: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(spec, Mapping) or key not in spec:
            return None
        spec = spec[key]
    return spec


def check_members(specs: Sequence[Mapping[str, Any]], names: Sequence[str]) -> None:
    """Refuse an ensemble whose members differ in geometry, optics, pattern or variance model
    (``model.json`` entries :data:`_MEMBER_KEYS`); the message names the member and the entry."""
    if len(specs) != len(names):
        raise ValueError("one name per ensemble member expected")
    for spec, name in zip(specs[1:], names[1:], strict=True):
        for path in _MEMBER_KEYS:
            ref, got = _lookup(specs[0], path), _lookup(spec, path)
            if ref != got:
                raise ValueError(
                    f"ensemble member {name}: {'.'.join(path)} = {got!r} differs from "
                    f"{names[0]}'s {ref!r}; members must share geometry, optics and uncertainty "
                    "model (train them from the same params, changing only the seed)")


def input_features(x: np.ndarray, window: int, otf_cutoff: float) -> np.ndarray:
    """Classical statistics of raw frames ``x`` ``(N, F, H, W)`` (normalised as the loader does),
    per non-overlapping ``window``² block of the widefield image (``mean`` over frames): ``(N, B, D)``.

    ``D`` features per block: ``log`` of its mean level and ``log`` of the widefield power (block
    mean removed, Hann window) in each band of :data:`INPUT_BANDS` × ``otf_cutoff`` (cycles/px)
    that lies below Nyquist. Power per frequency bin is independent of the block size, so blocks of
    a large image and training crops of ``window``² share one distribution. An image smaller than
    ``window`` is one block of its own size.
    """
    x = np.asarray(x, np.float64)
    wf = x.mean(axis=1)  # (N, H, W)
    n, h, w = wf.shape
    s = min(window, h, w)
    by, bx = h // s, w // s
    blocks = wf[:, :by * s, :bx * s].reshape(n, by, s, bx, s).transpose(0, 1, 3, 2, 4)
    blocks = blocks.reshape(n, by * bx, s, s)
    level = blocks.mean(axis=(-2, -1))
    hann = np.outer(np.hanning(s), np.hanning(s))
    spec = np.abs(np.fft.fft2((blocks - level[..., None, None]) * hann)) ** 2 / np.sum(hann**2)
    f = np.fft.fftfreq(s)
    radius = np.hypot(f[:, None], f[None, :]) / otf_cutoff
    feats = [np.log(np.maximum(level, 1e-6))]
    for lo, hi in INPUT_BANDS:
        sel = (radius >= lo) & (radius < hi) & (np.hypot(f[:, None], f[None, :]) <= 0.5)
        if sel.sum() >= 2:
            feats.append(np.log(np.maximum(spec[..., sel].mean(axis=-1), 1e-12)))
    return np.stack(feats, axis=-1)


def fit_input_model(features: np.ndarray) -> dict[str, Any]:
    """Mean and shrunk precision of in-distribution feature vectors ``(M, D)`` (every block of the
    training split) for :func:`input_distance`.

    The covariance is the Ledoit–Wolf (2004) shrinkage ``(1 − α)·S + α·(tr S / D)·I`` with the
    optimal ``α`` estimated from the data, so it stays invertible and well conditioned for small
    ``M``; JSON-safe (stored in ``reference.json``)."""
    z = np.asarray(features, np.float64).reshape(-1, np.shape(features)[-1])
    m, d = z.shape
    if m < 2:
        raise ValueError(f"fit_input_model needs at least 2 feature vectors, got {m}")
    mean = z.mean(axis=0)
    c = z - mean
    cov = c.T @ c / m
    target = np.trace(cov) / d
    # Ledoit–Wolf: α = min(1, β² / δ²), δ² = ||S − μI||², β² = (1/M²) Σ_i ||z_i z_iᵀ − S||².
    delta = np.sum((cov - target * np.eye(d)) ** 2)
    beta = np.sum([np.sum((np.outer(v, v) - cov) ** 2) for v in c]) / m**2
    # Floor 1/M: with few vectors the estimate of β can vanish (e.g. two points: zᵢzᵢᵀ = S) while
    # S is singular; 1/M leaves large samples (M = 512: 0.2 %) practically unshrunk.
    alpha = float(min(1.0, max(beta / max(delta, 1e-300), 1.0 / m)))
    shrunk = (1.0 - alpha) * cov + alpha * target * np.eye(d)
    return {"mean": mean.tolist(), "precision": np.linalg.inv(shrunk).tolist(), "shrinkage": alpha,
            "n_blocks": int(m)}


def input_distance(features: np.ndarray, model: Mapping[str, Any]) -> np.ndarray:
    """Per image ``(N,)``: the median over its blocks of the Mahalanobis distance
    ``√((f − μ)ᵀ P (f − μ))`` of block features ``(N, B, D)`` (:func:`input_features`) under a
    :func:`fit_input_model` model."""
    diff = np.asarray(features, np.float64) - np.asarray(model["mean"])
    d2 = np.einsum("nbi,ij,nbj->nb", diff, np.asarray(model["precision"]), diff)
    return np.median(np.sqrt(np.maximum(d2, 0.0)), axis=1)


def ood_scores(pred: Mapping[str, np.ndarray], x: np.ndarray,
               input_model: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Image-level scores ``(N,)`` (module docstring) of combined predictions for frames
    ``x`` ``(N, F, H, W)``; ``input`` only with an ``input_model`` (:func:`fit_input_model` plus its
    ``window`` and ``otf_cutoff``)."""
    axes_e = tuple(range(1, np.ndim(pred["emitter"])))
    spread = np.sqrt(np.asarray(pred["emitter_var_epi"], np.float64)).mean(axis=axes_e)
    level = np.maximum(np.abs(np.asarray(pred["emitter"], np.float64)).mean(axis=axes_e), 1e-12)
    axes_r = tuple(range(1, np.ndim(x)))
    resid = (np.asarray(x, np.float64) - pred["rec"]) ** 2 / np.asarray(pred["var_rec_total"])
    out = {"epistemic": spread / level, "misfit": resid.mean(axis=axes_r)}
    if input_model is not None:
        feats = input_features(x, int(input_model["window"]), float(input_model["otf_cutoff"]))
        out["input"] = input_distance(feats, input_model)
    return out


def ood_reference(val_scores: Mapping[str, np.ndarray], percentile: float) -> dict[str, Any]:
    """Thresholds from the in-distribution val split: the ``percentile`` quantile of each score
    present (plus its median and the sample count, for the reports)."""
    ref = {"percentile": float(percentile), "n_val": int(len(next(iter(val_scores.values()))))}
    for name in OOD_SCORES:
        if name not in val_scores:
            continue
        v = np.asarray(val_scores[name], np.float64)
        ref[name] = {"threshold": float(np.percentile(v, percentile)), "median": float(np.median(v))}
    return ref


def ood_flags(scores: Mapping[str, np.ndarray], reference: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{name: score / threshold}`` for each score that has a threshold, ``combined`` (their
    maximum) and ``flagged`` (``combined > 1``: outside the training distribution)."""
    names = [n for n in OOD_SCORES if n in scores and n in reference]
    ratios = {name: np.asarray(scores[name], np.float64) / max(reference[name]["threshold"], 1e-300)
              for name in names}
    combined = np.maximum.reduce([ratios[name] for name in names])
    return {**ratios, "combined": combined, "flagged": combined > 1.0}


def roc_auc(in_dist: np.ndarray, out_dist: np.ndarray) -> float:
    """Area under the ROC curve of a score that should be higher out of distribution:
    ``P(score_out > score_in) + ½ P(tie)`` (Mann–Whitney U / (n_in · n_out))."""
    a, b = np.asarray(out_dist, np.float64).ravel(), np.asarray(in_dist, np.float64).ravel()
    if not len(a) or not len(b):
        raise ValueError("roc_auc needs at least one score on each side")
    return float(mannwhitneyu(a, b).statistic / (len(a) * len(b)))


