"""Debug artifacts of a few samples: the uncertainty maps and their summary (DESIGN.md §3).

Written by training every ``debug_every_epochs`` to
``<model_dir>/debug_samples/epoch_XXX_step_XXXXXXX/``:

- ``uq_uncertainty.npz``: ``rec_std`` ``(N, F, H, W)``, ``deconv_std`` ``(N, F, Hh, Wh)``, and for
  every enabled component its ``<comp>_logvar`` (bounded) and ``<comp>_std``, plus the means
  (``rec``, ``emitter``, ``light_pattern``, ``psf``);
- ``uq_summary.json``: mean and p95 of every std map (and the raw-frame NLL when given).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simuq_core.io import write_json, write_npz

__all__ = ["debug_dir_name", "uncertainty_maps", "write_uncertainty_artifacts"]

_COMPONENTS = (("emitter", "emitter_var"), ("lp", "lp_var"), ("psf", "psf_var"))


def debug_dir_name(epoch: int, step: int) -> str:
    return f"epoch_{epoch:03d}_step_{step:07d}"


def uncertainty_maps(pred: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Std / log-variance maps of every enabled component, plus rec and deconv std."""
    maps = {"rec_std": np.sqrt(pred["var_rec"]), "deconv_std": np.sqrt(pred["var_deconv"])}
    for comp, key in _COMPONENTS:
        if key in pred:
            var = np.maximum(pred[key], 1e-30)
            maps[f"{comp}_std"] = np.sqrt(var)
            maps[f"{comp}_logvar"] = np.log(var)
    return maps


def write_uncertainty_artifacts(pred: dict[str, np.ndarray], out_dir: str | Path,
                                extra_summary: dict | None = None) -> dict:
    """Write ``uq_uncertainty.npz`` and ``uq_summary.json`` into ``out_dir``; return the summary."""
    out_dir = Path(out_dir)
    maps = uncertainty_maps(pred)
    means = {k: pred[k] for k in ("rec", "emitter", "light_pattern", "psf") if k in pred}
    write_npz(out_dir / "uq_uncertainty.npz", **{k: v.astype(np.float32) for k, v in
                                                 {**maps, **means}.items()})
    summary = {}
    for name, arr in maps.items():
        if name.endswith("_std"):
            summary[name] = {"mean": float(arr.mean()), "p95": float(np.percentile(arr, 95))}
    summary |= extra_summary or {}
    write_json(out_dir / "uq_summary.json", summary)
    return summary
