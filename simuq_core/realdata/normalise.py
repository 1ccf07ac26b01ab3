"""The intensity normalisation shared by fine-tuning, measurement and prediction.

A raw stack in camera counts becomes ``x = (raw − offset) / scale`` with ``scale`` the
``percentile``-th percentile of ``raw − offset`` over the whole acquisition (the rule the synthetic
training data follow), optionally with every frame divided by its relative illumination gain.
The offset is the one given, else the file's metadata, else a simuq dataset sidecar, else 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simuq_core.realdata.checks import InputError
from simuq_core.simulation.samples import normalisation_scale

__all__ = ['NORMALISATION_RULE', 'Normalisation', 'frame_gains', 'normalise', 'resolve_offset']


NORMALISATION_RULE = "x = (raw - norm_offset) / norm_scale; norm_scale = percentile(raw - norm_offset)"


_OFFSET_KEYS = ("norm_offset", "camera_offset", "offset_adu", "offset")


def resolve_offset(explicit: float | None, path: Path, metadata: dict[str, Any]) -> tuple[float, str]:
    """The camera offset to subtract and where it came from (module docstring)."""
    if explicit is not None:
        return float(explicit), "given (--norm-offset / predict.norm_offset)"
    lowered = {str(k).lower(): v for k, v in metadata.items()}
    for key in _OFFSET_KEYS:
        value = lowered.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
            return float(value), f"TIFF metadata '{key}'"
    sidecar = path.parent.parent / f"{path.parent.name}_meta" / f"{path.stem}.npz"
    if sidecar.exists():
        try:
            with np.load(sidecar) as npz:
                return float(npz["norm_offset"]), f"simuq dataset metadata {sidecar}"
        except (OSError, KeyError, ValueError):
            pass
    return 0.0, "none found: 0"


@dataclass(frozen=True)
class Normalisation:
    """``x = (raw − offset) / scale`` (the training rule), and where each number came from;
    ``frame_gains`` ``(F,)``: each frame also divided by its gain (:func:`frame_gains`), or ``None``."""

    offset: float
    scale: float
    percentile: float
    offset_source: str
    frame_gains: tuple[float, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"rule": NORMALISATION_RULE, "norm_offset": self.offset, "norm_scale": self.scale,
               "norm_percentile": self.percentile, "offset_source": self.offset_source}
        if self.frame_gains is not None:
            out["frame_gains"] = list(self.frame_gains)
            out["rule"] = NORMALISATION_RULE + " / frame_gains[frame]"
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalisation:
        """The inverse of :meth:`as_dict` (e.g. a prediction's ``summary.json``)."""
        gains = d.get("frame_gains")
        return cls(float(d["norm_offset"]), float(d["norm_scale"]), float(d["norm_percentile"]),
                   str(d["offset_source"]), None if gains is None else tuple(float(g) for g in gains))

    def apply(self, raw: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """``(…, F, H, W)`` raw counts -> normalised frames, computed in ``dtype`` (float32: what
        the network was given; float64 for reports that measure small differences)."""
        x = ((raw.astype(dtype) - dtype(self.offset)) / dtype(self.scale)).astype(dtype)
        if self.frame_gains is not None:
            x = (x / np.asarray(self.frame_gains, dtype)[:, None, None]).astype(dtype)
        return x


def frame_gains(raw: np.ndarray, offset: float) -> np.ndarray:
    """Relative illumination intensity of every frame: ``g_f = mean(raw_f − offset) / mean_f'(…)``
    over the whole field, ``(..., F)`` of ``(..., F, H, W)`` counts (mean 1 over the frames).

    The forward model's light pattern has mean 1 over the phases of every angle, so a microscope
    whose angles (or frames: laser drift, bleaching) differ in total intensity leaves a residual
    the network cannot fit (MT.mrc: 0.88 / 1.15 / 0.97 per angle). Over a field of many pattern
    periods the pattern averages out of a frame's mean, so dividing frame ``f`` by ``g_f``
    equalises the illumination and nothing else (fairSIM's intensity equalisation). Small crops
    must take the gains of their whole field, never their own.
    """
    means = (np.asarray(raw, np.float64) - offset).mean(axis=(-2, -1))
    if np.any(means <= 0):
        raise ValueError(f"frame means {np.round(means, 3).tolist()} ≤ 0 after the offset {offset:g}: "
                         "cannot equalise frame intensities (wrong norm_offset?)")
    return means / means.mean(axis=-1, keepdims=True)


def normalise(raw: np.ndarray, offset: float, percentile: float, source: str, offset_source: str = "given",
              equalize_frames: bool = False) -> tuple[np.ndarray, Normalisation]:
    """``(F, H, W)`` raw counts -> normalised float32 frames and the :class:`Normalisation`;
    ``equalize_frames``: each frame also divided by its :func:`frame_gains` gain."""
    level = float(np.percentile(np.asarray(raw, np.float64) - offset, percentile))
    if level <= 0:
        raise InputError(f"{source}: after subtracting the camera offset {offset:g}, the "
                         f"{percentile:g}th percentile is {level:g} ≤ 0: wrong norm_offset?")
    scale = normalisation_scale(raw, offset, percentile)
    gains = tuple(float(g) for g in frame_gains(raw, offset)) if equalize_frames else None
    norm = Normalisation(offset, scale, percentile, offset_source, gains)
    return norm.apply(raw), norm
