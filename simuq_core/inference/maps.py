"""The maps a prediction writes: what each is, which grid it lives on, how it is described.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from simuq_core.realdata.normalise import NORMALISATION_RULE, Normalisation

__all__ = ['MAPS', 'map_metadata', 'map_stats']


# name -> (prediction key, variance?, grid: "model" | "camera" | "psf", ImageJ axes, description)
MAPS: dict[str, tuple[str, bool, str, str, str]] = {
    "emitter": ("emitter", False, "model", "YX", "emitter mean (relative density)"),
    "emitter_std": ("emitter_var", True, "model", "YX", "emitter std"),
    "lp": ("light_pattern", False, "model", "ZYX", "light pattern mean (Z = frame; mean 1)"),
    "lp_std": ("lp_var", True, "model", "ZYX", "light pattern std (Z = frame)"),
    "rec": ("rec", False, "camera", "ZYX", "reconstructed raw frames (normalised units)"),
    "rec_std": ("var_rec", True, "camera", "ZYX", "std of the reconstructed frames (latent + noise)"),
    "deconv_std": ("var_deconv", True, "model", "ZYX", "std of S = emitter * lp, before the PSF"),
    "psf": ("psf", False, "psf", "YX", "PSF of the image (model grid)"),
    "psf_std": ("psf_var", True, "psf", "YX", "PSF std"),
    # epistemic uncertainty (MC dropout; simuq_core/uncertainty/epistemic.py), with ``epistemic.n_samples``
    "emitter_epi_std": ("emitter_var_epi", True, "model", "YX",
                        "emitter epistemic std (spread of the MC-dropout passes)"),
    "emitter_total_std": ("emitter_var_total", True, "model", "YX",
                          "emitter total std (aleatoric + epistemic)"),
    "rec_total_std": ("var_rec_total", True, "camera", "ZYX",
                      "std of the reconstructed frames, aleatoric + epistemic"),
    # classical generalised Wiener SIM beside the network's maps (``predict.wiener``)
    "wiener": ("wiener", False, "model", "YX", "classical Wiener SIM (normalised units)"),
    "wiener_std": ("wiener_var", True, "model", "YX",
                   "exact noise std of the Wiener SIM image, propagated from rec_std²"),
}


def map_metadata(name: str, grid_kind: str, axes: str, model: dict[str, Any],
                  norm: Normalisation, source: str, pixel_nm: float) -> dict[str, Any]:
    units = ("normalised raw units: ADU = value * norm_scale + norm_offset (std: * norm_scale)"
             if grid_kind == "camera" else "model units (normalised input)")
    info = {"map": name, "description": MAPS[name][4], "axes": axes, "grid": grid_kind,
            "pixel_nm": pixel_nm, "units": units, "input": source,
            "model": {k: model[k] for k in ("dir", "mode", "params_hash")},
            "normalisation": norm.as_dict()}
    text = "\n".join([f"simuq map: {name} ({MAPS[name][4]})", f"input: {source}",
                      f"model: {model['dir']} (mode {model['mode']}, params_hash "
                      f"{model['params_hash']})",
                      f"normalisation: {NORMALISATION_RULE}",
                      f"norm_offset: {norm.offset:g} ({norm.offset_source})",
                      f"norm_scale: {norm.scale:g} (percentile {norm.percentile:g})",
                      f"axes: {axes}; grid: {grid_kind}; pixel: {pixel_nm:g} nm", f"units: {units}"])
    return {"simuq": json.dumps(info, sort_keys=True), "norm_offset": norm.offset,
            "norm_scale": norm.scale, "Info": text}


def map_stats(array: np.ndarray) -> dict[str, float]:
    return {"mean": float(array.mean()), "p95": float(np.percentile(array, 95)),
            "min": float(array.min()), "max": float(array.max())}
