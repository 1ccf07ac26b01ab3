"""Which light pattern a prediction uses, and the blind full-field estimate for real acquisitions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from simuq_core.optics.imaging import otf_cutoff_cycles_per_px
from simuq_core.pattern.blind import PatternDiagnosis, diagnose_pattern
from simuq_core.pattern.estimate import PatternEstimate
from simuq_core.realdata.reader import MRC_SUFFIXES, measured_otf

__all__ = ['PATTERN_SOURCES', 'blind_image_pattern', 'diagnosis_summary', 'pattern_source']


PATTERN_SOURCES = ("auto", "model", "blind")


def pattern_source(mode: str, path: str | os.PathLike) -> str:
    """``"model"`` or ``"blind"`` for ``mode`` in :data:`PATTERN_SOURCES`: ``auto`` takes the
    blind full-field estimate for MRC / DeltaVision files (real acquisitions) and the network's
    own estimate for TIFFs (the simulated test stacks it was trained on)."""
    if mode not in PATTERN_SOURCES:
        raise ValueError(f"pattern source must be one of {PATTERN_SOURCES}, got {mode!r}")
    if mode != "auto":
        return mode
    return "blind" if Path(path).suffix.lower() in MRC_SUFFIXES else "model"


def blind_image_pattern(x: np.ndarray, spec: dict[str, Any], pixel_nm: float | None,
                        wavelength_nm: float | None, source: str, period_hint: float | None = None,
                        otf_file: str | os.PathLike | None = None
                        ) -> tuple[tuple[PatternEstimate, tuple[float, float]], PatternDiagnosis, float]:
    """The blind, full-field pattern of normalised frames ``x`` ``(F, H, W)`` for a real acquisition.

    :func:`~simuq_core.pattern.blind.diagnose_pattern` estimates the pattern over the whole field
    (:func:`~simuq_core.pattern.blind.estimate_pattern_blind`; the network's own estimate searches only
    ``period_lr × (1 ∓ tolerance)`` on a centred crop with a cross-correlation that fails near the
    OTF cut-off, e.g. TIRF-SIM) under the angle-major and the phase-major reading, so a weak
    pattern is not blamed on the frame order. The OTF cut-off ``k_c = 2NA/λ·pixel`` uses the
    model's NA and the file's pixel size and emission wavelength when it records them (else the
    model's). Returns the image-level pattern for :class:`TiledPredictor` (phase referred to the
    field centre ``(H/2, W/2)``), the diagnosis and ``k_c`` (cycles per camera pixel).
    ``otf_file``: a measured radial OTF (:func:`~simuq_core.realdata.reader.measured_otf`) for the
    search's band weights; default the ideal Airy OTF of ``k_c``.
    """
    optics, lp = spec["model"]["optics"], spec["model"]["light_pattern"]
    n_angles = int(lp["n_angles"])
    camera_nm = float(pixel_nm or optics["lr_pixel_nm"])
    cutoff = otf_cutoff_cycles_per_px(float(optics["na"]), float(wavelength_nm or optics["wavelength_nm"]),
                                      camera_nm)
    f, h, w = x.shape
    otf = measured_otf(otf_file, camera_nm) if otf_file else None
    diag = diagnose_pattern(x, n_angles, f // n_angles, cutoff, source=source, period_hint=period_hint,
                            otf=otf)
    est = diag.angle_major.estimate
    image = PatternEstimate(*(np.asarray(a) for a in est))
    return (image, (h / 2.0, w / 2.0)), diag, cutoff


def diagnosis_summary(diag: PatternDiagnosis) -> dict[str, Any]:
    return {"method": "blind full-field estimate (simuq_core.pattern.blind.diagnose_pattern)", "ok": diag.ok,
            "frame_order_suspect": diag.frame_order_suspect, "message": diag.message,
            "angle_major": diag.angle_major.as_dict(), "phase_major": diag.phase_major.as_dict()}
