"""Which light pattern a prediction uses: the instrument's wave vectors with the file's own phases,
the blind full-field estimate for real acquisitions, or the network's own estimate.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from simuq_core.optics.imaging import otf_cutoff_cycles_per_px
from simuq_core.pattern.blind import PatternDiagnosis, diagnose_pattern
from simuq_core.pattern.estimate import PatternEstimate
from simuq_core.pattern.instrument import InstrumentPattern, fit_pattern_phases
from simuq_core.realdata.reader import MRC_SUFFIXES, measured_otf

__all__ = [
    'PATTERN_SOURCES',
    'blind_image_pattern',
    'diagnosis_summary',
    'instrument_image_pattern',
    'model_instrument',
    'pattern_source',
]


PATTERN_SOURCES = ("auto", "model", "blind", "instrument")


def pattern_source(mode: str, path: str | os.PathLike, has_instrument: bool = False) -> str:
    """``"instrument"``, ``"blind"`` or ``"model"`` for ``mode`` in :data:`PATTERN_SOURCES`:
    ``auto`` takes the instrument's wave vectors when the model carries them
    (``has_instrument``), else the blind full-field estimate for MRC / DeltaVision files (real
    acquisitions) and the network's own estimate for TIFFs (the simulated test stacks it was
    trained on)."""
    if mode not in PATTERN_SOURCES:
        raise ValueError(f"pattern source must be one of {PATTERN_SOURCES}, got {mode!r}")
    if mode == "instrument" and not has_instrument:
        raise ValueError("pattern source 'instrument': the model carries no instrument pattern (a model "
                         "fine-tuned on acquisitions with a clear pattern does)")
    if mode != "auto":
        return mode
    if has_instrument:
        return "instrument"
    return "blind" if Path(path).suffix.lower() in MRC_SUFFIXES else "model"


def model_instrument(spec: dict[str, Any]) -> tuple[InstrumentPattern, float] | None:
    """The instrument's wave vectors a fine-tuned model carries, with the camera pixel (nm) they
    are in cycles per pixel of; ``None`` if it carries none."""
    d = (spec.get("finetune") or {}).get("instrument_pattern")
    if not d:
        return None
    return InstrumentPattern.from_dict(d), float(d["pixel_nm"])


def instrument_image_pattern(x: np.ndarray, spec: dict[str, Any], pixel_nm: float | None,
                             wavelength_nm: float | None, source: str,
                             otf_file: str | os.PathLike | None = None
                             ) -> tuple[tuple[PatternEstimate, tuple[float, float]], PatternDiagnosis, float]:
    """As :func:`blind_image_pattern`, with the model's instrument wave vectors
    (:func:`model_instrument`) and the phases of ``x`` fitted at them
    (:func:`~simuq_core.pattern.instrument.fit_pattern_phases`): no search, so a dim file gets the
    pattern of the bright ones. ``ok`` is false (with the reason) when no angle's phase is
    detected, e.g. a file of another instrument setting; a file of another pixel size is refused."""
    instrument, inst_pixel = model_instrument(spec)
    optics = spec["model"]["optics"]
    camera_nm = float(pixel_nm or optics["lr_pixel_nm"])
    if abs(camera_nm / inst_pixel - 1.0) > 0.01:
        raise ValueError(f"{source}: pixel size {camera_nm:.2f} nm, but the model's instrument pattern was "
                         f"measured at {inst_pixel:.2f} nm: use --pattern blind")
    cutoff = otf_cutoff_cycles_per_px(float(optics["na"]), float(wavelength_nm or optics["wavelength_nm"]),
                                      camera_nm)
    f, h, w = x.shape
    otf = measured_otf(otf_file, camera_nm) if otf_file else None
    fit = fit_pattern_phases(x, instrument.k, cutoff, otf)
    found = (f"the instrument's wave vectors (periods {', '.join(f'{p:.3f}' for p in fit.period_px)} px, "
             f"orientations {', '.join(f'{o:.1f}°' for o in fit.orientation_deg)}), phase z "
             f"{', '.join(f'{z:.1f}' for z in fit.quality)} (threshold {fit.threshold:.1f})")
    detected = fit.quality >= fit.threshold
    if detected.all():
        msg = f"{source}: pattern phases found at {found}"
    elif detected.any():
        msg = f"{source}: some phases are weak at {found}: " + "; ".join(fit.messages)
    else:
        msg = (f"{source}: no pattern phase detected at {found}: the file does not show the pattern of "
               "the instrument the model was fine-tuned on: too little signal, or another instrument setting "
               "(then try --pattern blind)")
    diag = PatternDiagnosis(bool(detected.all()), False, msg, fit, fit)
    image = PatternEstimate(*(np.asarray(a) for a in fit.estimate))
    return (image, (h / 2.0, w / 2.0)), diag, cutoff


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


def diagnosis_summary(diag: PatternDiagnosis, method: str = "blind") -> dict[str, Any]:
    name = ("the instrument's wave vectors, phases fitted (simuq_core.pattern.instrument)"
            if method == "instrument"
            else "blind full-field estimate (simuq_core.pattern.blind.diagnose_pattern)")
    return {"method": name, "ok": diag.ok,
            "frame_order_suspect": diag.frame_order_suspect, "message": diag.message,
            "angle_major": diag.angle_major.as_dict(), "phase_major": diag.phase_major.as_dict()}
