"""The ``microscope`` section: what a lab knows about its instrument, typed once, and where each
fact is copied to in the sections that use it.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field

from simuq_core.config.base import _Strict

__all__ = ['MICROSCOPE_KEYS', 'MicroscopeParams', 'apply_microscope']


class MicroscopeParams(_Strict):
    """The ``microscope`` section: what a lab knows about its instrument, typed once.

    ``simulate``, ``model``, ``finetune`` and ``predict`` read their copies of these facts from here
    (:data:`MICROSCOPE_KEYS`): a copy left out of ``params.yaml`` is filled in, a copy that is set
    must agree (else a :class:`ParamsError` names both keys). A ``null`` entry fills nothing in.
    """

    na: float = Field(..., gt=0.0, le=1.7, description="detection numerical aperture (the effective "
                      "NA of a measured OTF when known)")
    emission_nm: float = Field(..., gt=100.0, lt=2000.0, description="emission wavelength")
    pixel_nm: float = Field(..., gt=1.0, lt=1000.0, description="camera pixel at the sample")
    n_angles: int = Field(3, ge=1, le=8, description="pattern orientations")
    n_phases: int = Field(3, ge=2, le=8, description="phase steps per orientation")
    frame_order: Literal["angle_major", "phase_major"] = Field(
        "angle_major", description="angle_major: frame = n_phases·angle + phase; phase_major: "
        "frame = n_angles·phase + angle")
    pattern_period_px: float | None = Field(
        None, gt=2.0, lt=100.0, description="pattern period in camera pixels if known (a search hint "
        "for the real data, the period of the simulated data); null = blind search")
    camera_offset_adu: float | None = Field(None, ge=0.0, description="camera offset (ADU); null = "
                                            "from the files' metadata, else 0")
    camera_gain_adu_per_e: float | None = Field(None, gt=0.0, description="camera gain, if known")
    otf_file: str | None = Field(None, description="measured radial OTF (Priism / DeltaVision "
                                 "*_OTF2d.mrc), relative to the repo root: used by the blind "
                                 "pattern search; null = the ideal Airy OTF of na / emission_nm")
    equalize_frames: bool | None = Field(
        None, description="the frames (angles) differ in total intensity (lamp / laser power per "
        "angle): divide every frame by its whole-field mean relative to the stack's, in fine-tuning "
        "and predict alike; null = as those sections say")


# Where each microscope fact is copied to: (microscope key, dotted target, condition). A condition
# names a sibling key that, when set to a non-null value, takes the target's place (the simulated
# pattern may be given as pattern_k_frac instead of a period).
MICROSCOPE_KEYS: tuple[tuple[str, str, str | None], ...] = (
    ("na", "simulate.psf.na", None),
    ("na", "model.optics.na", None),
    ("na", "finetune.optics.na", None),
    ("emission_nm", "simulate.psf.wavelength_nm", None),
    ("emission_nm", "model.optics.wavelength_nm", None),
    ("emission_nm", "finetune.optics.wavelength_nm", None),
    ("pixel_nm", "simulate.psf.lr_pixel_nm", None),
    ("pixel_nm", "model.optics.lr_pixel_nm", None),
    ("pixel_nm", "finetune.optics.lr_pixel_nm", None),
    ("n_angles", "simulate.n_angles", None),
    ("n_angles", "model.light_pattern.n_angles", None),
    ("n_phases", "simulate.n_phases", None),
    ("frame_order", "finetune.frame_order", None),
    ("frame_order", "predict.frame_order", None),
    ("pattern_period_px", "simulate.pattern_period_lr", "simulate.pattern_k_frac"),
    ("pattern_period_px", "model.light_pattern.period_lr", None),
    ("pattern_period_px", "finetune.period_hint", None),
    ("pattern_period_px", "predict.period_hint", None),
    ("camera_offset_adu", "simulate.noise.offset_adu", None),
    ("camera_offset_adu", "predict.norm_offset", None),
    ("camera_offset_adu", "finetune.norm_offset", None),
    ("camera_gain_adu_per_e", "simulate.noise.gain_adu_per_e", None),
    ("otf_file", "finetune.otf_file", None),
    ("otf_file", "predict.otf_file", None),
    ("equalize_frames", "finetune.equalize_frames", None),
    ("equalize_frames", "predict.equalize_frames", None),
)


def _lookup(raw: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    return a == b


def apply_microscope(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (a parsed ``params.yaml``) with the ``microscope`` section's facts copied into every
    place that uses them (:data:`MICROSCOPE_KEYS`); a copy set to another value is an error naming
    both keys. Raw dicts only: validation happens afterwards."""
    micro = raw.get("microscope")
    if not isinstance(micro, dict):
        return raw


    out = copy.deepcopy(raw)
    problems = []
    for key, target, instead in MICROSCOPE_KEYS:
        value = micro.get(key)
        if value is None:
            continue
        found, current = _lookup(out, target)
        if instead is not None:
            found_other, other = _lookup(out, instead)
            if found_other and other is not None:  # given the other way: the copy must stay null
                if not found:
                    value = None
                else:
                    continue
        if found and current is not None and not _same(current, value):
            problems.append(f"  {target}: {current!r} contradicts microscope.{key}: {value!r} (type the "
                            f"microscope once, in the microscope section, and delete {target})")
            continue
        node = out
        *parents, last = target.split(".")
        for part in parents:
            if node.get(part) is None:  # absent, or null (e.g. finetune.optics: null = "the default")
                node[part] = {}
            if not isinstance(node[part], dict):
                break  # not a mapping: validation reports it
            node = node[part]
        else:
            node[last] = value
    if problems:
        raise ValueError("\n".join(problems))
    return out
