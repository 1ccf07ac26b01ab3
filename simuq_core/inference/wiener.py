"""The classical Wiener SIM image written beside the network's maps, with its exact noise std.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from simuq_core.baselines.wiener import (
    OtfSpec,
    equal_step_phases,
    reconstruct_stack,
    wiener_noise_variance,
    wiener_sim,
)

__all__ = ['blind_wiener_maps', 'wiener_maps']


def wiener_maps(x: np.ndarray, spec: dict[str, Any], options, rec_std: np.ndarray | None
                ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Classical Wiener SIM of normalised frames ``(F, H, W)`` with the model's optics and pattern
    prior, on the model grid, and its exact noise std when the camera-noise variance is known: the
    network's ``rec_std²`` (camera noise plus the small latent share, so a slight over-estimate).
    Returns the maps (variances under ``*_std`` keys already square-rooted) and the pattern used."""

    optics, lp = spec["model"]["optics"], spec["model"]["light_pattern"]
    r = int(spec["model"]["rescale"])
    rec = reconstruct_stack(x, optics["na"], optics["wavelength_nm"], optics["lr_pixel_nm"], r=r,
                            options=options, n_angles=int(lp["n_angles"]), period_lr=lp["period_lr"],
                            period_tolerance=lp["period_tolerance"])
    maps = {"wiener": rec.image.astype(np.float32)}
    if rec_std is not None:
        var = wiener_noise_variance(np.asarray(rec_std, np.float64) ** 2, rec.k, rec.phases,
                                    rec.modulation, rec.otf, r, options)
        maps["wiener_std"] = np.sqrt(np.maximum(var, 0.0)).astype(np.float32)
    period = 1.0 / np.linalg.norm(rec.k, axis=-1)
    info = {"w": options.wiener_w, "period_px": period.tolist(),
            "modulation": rec.modulation.tolist(), "band_match": rec.contrast.tolist()}
    return maps, info


def blind_wiener_maps(x: np.ndarray, blind_pattern, otf_cutoff: float, r: int, options,
                      rec_std: np.ndarray | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Classical Wiener SIM of normalised frames ``(F, H, W)`` with the blind pattern
    (:func:`blind_image_pattern`'s ``diag.angle_major``) and the ideal OTF of cut-off
    ``otf_cutoff``, and its exact noise std from ``rec_std²`` as :func:`wiener_maps`. The blind
    band-ratio modulation is clipped to [0.3, 1]: below it the Wiener filter amplifies the shifted
    bands' noise (MT.mrc measures 0.09-0.39)."""

    n_angles = len(blind_pattern.period_px)
    k = np.asarray(blind_pattern.estimate.k[0], np.float64)
    phases = equal_step_phases(np.asarray(blind_pattern.estimate.phase[0]), x.shape[0] // n_angles)
    modulation = np.clip(np.asarray(blind_pattern.modulation, np.float64), 0.3, 1.0)
    otf = OtfSpec(otf_cutoff)  # ideal Airy × pixel sinc
    image = wiener_sim(x, k, phases, modulation, otf, r, options)
    maps = {"wiener": image.astype(np.float32)}
    if rec_std is not None:
        var = wiener_noise_variance(np.asarray(rec_std, np.float64) ** 2, k, phases, modulation, otf, r,
                                    options)
        maps["wiener_std"] = np.sqrt(np.maximum(var, 0.0)).astype(np.float32)
    info = {"w": options.wiener_w, "pattern": "blind",
            "period_px": (1.0 / np.linalg.norm(k, axis=-1)).tolist(), "modulation": modulation.tolist(),
            "band_match": np.asarray(blind_pattern.estimate.contrast[0]).tolist()}
    return maps, info
