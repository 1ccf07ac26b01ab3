"""Reading real SIM acquisitions: TIFF (ImageJ / OME) and MRC / DeltaVision stacks (docs/design.md §9).

:func:`read_acquisition` returns every time point as ``(T, F, H, W)`` float32 frames in the
project's angle-major order (``frame = P·angle + phase``), the pixel size from the file's metadata
and the checks' warnings; every error is an :class:`~simuq_core.realdata.checks.InputError` (a
``ValueError``) naming the file and what was expected.

Formats and readers:

- TIFF via ``tifffile``: ``(F, H, W)``, ``(F, 1, H, W)``, ``(1, F, H, W)``, time series
  ``(T, F, H, W)`` and ``(T·F, H, W)`` (leading singleton axes of OME/ImageJ hyperstacks are
  dropped). Pixel size: OME ``PhysicalSizeX`` (+ unit), ImageJ ``unit`` with the X resolution, or
  a TIFF resolution in cm / inch.
- MRC (``.mrc``, ``.dv``) via ``mrcfile`` (the CCP-EM reader, NumPy only): strict MRC2014 files
  are read as they are; a DeltaVision / Priism file (its DV magic ``0xC0A0`` at byte 96 in place
  of the ``MAP `` id, e.g. rDL-SIM's ``MT.mrc``) is read in ``mrcfile``'s permissive mode. Pixel
  size: the MRC2014 voxel size is in Å, DeltaVision's in µm; DeltaVision also records the
  emission wavelength (``wave1``, nm). (The ``mrc`` package reads DeltaVision only and rejects
  MRC2014; ``bioio-dv`` wraps ``mrc`` and pulls in xarray/dask.)
"""

from __future__ import annotations

import functools
import glob
import os
import struct
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from simuq_core.pattern.blind import radial_otf
from simuq_core.realdata.checks import InputError, check_values

__all__ = [
    "Acquisition",
    "MRC_SUFFIXES",
    "SaturationWarning",
    "TIFF_SUFFIXES",
    "find_inputs",
    "measured_otf",
    "read_acquisition",
    "read_otf_profile",
    "to_time_series",
]

TIFF_SUFFIXES = (".tif", ".tiff")
MRC_SUFFIXES = (".mrc", ".dv")
# Above this fraction of pixels at the integer dtype's maximum the stack is refused: the pattern
# modulation and the noise model are both destroyed where the camera clipped. Between
# validation.SATURATION_FRACTION (0.1 %) and this, a SaturationWarning is issued.
SATURATION_ERROR_FRACTION = 0.05
_DV_MAGIC = -16224  # int16 at byte 96 of a DeltaVision / Priism header (0xC0A0)
_UM_PER_UNIT = {"um": 1.0, "µm": 1.0, "\\u00B5m": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
                "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "å": 1e-4, "a": 1e-4}


class SaturationWarning(UserWarning):
    """Part of the stack sits at the camera's maximum value."""


@dataclass(frozen=True)
class Acquisition:
    """A raw SIM acquisition as read.

    frames : ``(T, F, H, W)`` float32, angle-major; pixel_nm : camera pixel at the sample (nm) from
    the metadata, or ``None``; wavelength_nm : emission wavelength from the metadata (DeltaVision),
    or ``None``; layout : the array layout found (e.g. ``"(T,9,H,W)"``); frame_order : the order
    of the file (frames are always returned angle-major); warnings : the value checks' warnings;
    metadata : the file's key-value metadata (ImageJ and tifffile's JSON description, merged; for
    MRC / DV the emission wavelength), where e.g. a camera offset is looked up; file_shape : the
    array's shape as stored.
    """

    frames: np.ndarray
    pixel_nm: float | None
    path: str
    source_format: str
    layout: str
    frame_order: str
    dtype: str
    wavelength_nm: float | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)
    metadata: dict[str, Any] = field(default_factory=dict)
    file_shape: tuple[int, ...] = ()

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[1])


# -- TIFF ----------------------------------------------------------------------------------------


def _tiff_pixel_nm(tif) -> float | None:
    """Pixel size (nm) from OME ``PhysicalSizeX``, ImageJ ``unit`` + resolution, or the TIFF
    resolution unit (cm / inch); ``None`` when the file does not state one."""
    if tif.is_ome and tif.ome_metadata:
        root = ET.fromstring(tif.ome_metadata)
        for el in root.iter():
            if el.tag.endswith("Pixels") and el.get("PhysicalSizeX"):
                unit = el.get("PhysicalSizeXUnit", "µm").lower()
                if unit in _UM_PER_UNIT:
                    return float(el.get("PhysicalSizeX")) * _UM_PER_UNIT[unit] * 1e3
    page = tif.pages[0]
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    num, den = tag.value
    if num == 0 or den == 0:
        return None
    per_unit = den / num  # size of one pixel in the resolution's unit
    if tif.is_imagej:
        unit = str((tif.imagej_metadata or {}).get("unit", "")).lower()
        return per_unit * _UM_PER_UNIT[unit] * 1e3 if unit in _UM_PER_UNIT else None
    res_unit = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 2
    if res_unit == 3:  # centimetre
        return per_unit * 1e7
    if res_unit == 2 and (num, den) != (1, 1) and per_unit < 1e-3:  # inch; 72 dpi etc. is no size
        return per_unit * 2.54e7
    return None


def _tiff_metadata(tif) -> dict[str, Any]:
    """ImageJ metadata and tifffile's shaped (JSON description) metadata, merged."""
    meta: dict[str, Any] = {}
    for source in (tif.imagej_metadata or {}, *(tif.shaped_metadata or ())):
        if isinstance(source, dict):
            meta.update(source)
    return meta


def _read_tiff(path: Path) -> tuple[np.ndarray, float | None, float | None, dict[str, Any]]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.asarray()
            pixel_nm = _tiff_pixel_nm(tif)
            meta = _tiff_metadata(tif)
    except Exception as exc:  # tifffile raises several types for corrupt files
        raise InputError(f"{path}: cannot read as TIFF ({type(exc).__name__}: {exc})") from exc
    return data, pixel_nm, None, meta


# -- MRC / DeltaVision ---------------------------------------------------------------------------


def _deltavision_wavelength(path: Path) -> float | None:
    """``None`` for a file without the DeltaVision magic; else its first emission wavelength
    (``wave1``, int16 at byte 198 of the Priism header; 0 = not set)."""
    with open(path, "rb") as fh:
        head = fh.read(1024)
    if len(head) < 1024:
        raise InputError(f"{path}: {len(head)} bytes, shorter than the 1024-byte MRC header "
                         "(truncated or not an MRC file)")
    for e in "<>":
        if struct.unpack(f"{e}h", head[96:98])[0] == _DV_MAGIC:
            return float(struct.unpack(f"{e}h", head[198:200])[0])
    return None


def _is_deltavision(path: Path) -> bool:
    return _deltavision_wavelength(path) is not None


def _read_mrc(path: Path) -> tuple[np.ndarray, float | None, float | None, dict[str, Any]]:
    import mrcfile

    wave = _deltavision_wavelength(path)
    dv = wave is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with mrcfile.open(path, mode="r", permissive=dv) as mrc:
                data = None if mrc.data is None else np.array(mrc.data)
                voxel = float(mrc.voxel_size.x)
        except Exception as exc:
            raise InputError(f"{path}: cannot read MRC ({exc}); expected an MRC2014 or DeltaVision "
                             "file with a complete data block") from exc
    # Permissive mode turns defects into warnings: for a DeltaVision file the missing MAP id and
    # machine stamp are expected; anything else (e.g. a short data block) is an error.
    expected = ("Map ID string not found", "Unrecognised machine stamp")
    problems = [str(w.message) for w in caught if not str(w.message).startswith(expected)]
    if data is None or problems:
        raise InputError(f"{path}: unreadable MRC/DeltaVision data ({'; '.join(problems) or 'no data'}); "
                         "expected a complete data block (is the file truncated?)")
    # DeltaVision stores µm, MRC2014 Å; 0 (or the default 1 Å) means "not set".
    if dv:
        pixel_nm = voxel * 1e3 if voxel > 0 else None
    else:
        pixel_nm = voxel / 10.0 if voxel > 0 and voxel != 1.0 else None
    wavelength = wave if dv and 200.0 < wave < 2000.0 else None  # type: ignore[operator]
    return data, pixel_nm, wavelength, ({} if wavelength is None else {"wavelength_nm": wavelength})


def read_otf_profile(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """A Priism/DeltaVision radial OTF file (e.g. ``TIRF488_cam1_0_z30_OTF2d.mrc``): the ``(K,)``
    complex profile and its radial step in µm⁻¹ (header ``dx``), for
    :func:`simuq_core.pattern.blind.radial_otf`."""
    path = Path(path)
    data, step_nm, _, _ = _read_mrc(path)
    if step_nm is None or not _is_deltavision(path):
        raise InputError(f"{path}: expected a DeltaVision OTF file with its frequency step in the header")
    return np.asarray(data).ravel().astype(np.complex64), step_nm / 1e3


def measured_otf(path: str | os.PathLike, pixel_nm: float):
    """See :func:`_measured_otf` (cached per resolved path and pixel size: one read per run)."""
    return _measured_otf(str(Path(path).resolve()), float(pixel_nm))


@functools.lru_cache(maxsize=16)
def _measured_otf(path: str | os.PathLike, pixel_nm: float):
    """The measured OTF in ``path`` (:func:`read_otf_profile`) as ``H(fy, fx)`` in cycles per camera
    pixel of ``pixel_nm`` (:func:`simuq_core.pattern.blind.radial_otf`), for the blind pattern search;
    a missing or unusable file raises :class:`InputError` naming it."""

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such OTF file (microscope.otf_file)")
    profile, dk = read_otf_profile(path)
    try:
        return radial_otf(profile, dk, pixel_nm)
    except ValueError as exc:
        raise InputError(f"{path}: not a usable OTF: {exc}") from exc


# -- layout --------------------------------------------------------------------------------------


def to_time_series(data: np.ndarray, n_frames: int, source: str) -> tuple[np.ndarray, str]:
    """``(T, F, H, W)`` from the accepted layouts (module docstring) and the layout's name, e.g.
    ``"(9,H,W)"``, ``"(1,9,H,W)"``, ``"(T,9,H,W)"``. Anything else is an :class:`InputError`
    naming ``source``, the shape found and the layouts expected, with a hint where one applies
    (channel-last, 15 frames, a single image)."""
    shape = tuple(data.shape)
    expected = (f"({n_frames},H,W), ({n_frames},1,H,W), (1,{n_frames},H,W), (T,{n_frames},H,W) or "
                f"(T·{n_frames},H,W)")
    dtype = np.dtype(data.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(f"{source}: dtype {dtype} is not supported (expected integer or real camera counts)")
    if data.size == 0:
        raise InputError(f"{source}: empty image (shape {shape}); expected {expected}")
    if data.ndim == 2:
        raise InputError(f"{source}: a single {shape[0]}x{shape[1]} image; SIM needs every raw frame "
                         f"(not a reconstruction or a widefield sum): expected {expected}")
    if data.ndim == 3 and shape[-1] in (3, 4) and shape[-3] > 4:
        raise InputError(f"{source}: shape {shape} looks like an RGB(A) image; expected {expected}")
    lead = [s for s in shape[:-2] if s != 1]
    h, w = shape[-2:]
    if len(lead) == 1:
        n = lead[0]
        if n % n_frames:
            hint = (f" (looks channel-last: transpose to ({n_frames}, H, W))"
                    if data.ndim == 3 and shape[-1] % n_frames == 0 and shape[0] % n_frames else
                    f" ({n} frames is 3 angles × 5 phases or 5 × 3: this model takes {n_frames})"
                    if n == 15 else "")
            raise InputError(f"{source}: {n} frames is not a multiple of {n_frames} (shape {shape}); "
                             f"expected {expected}{hint}")
        t = n // n_frames
        layout = (f"({n_frames},H,W)" if t == 1 and data.ndim == 3 else
                  f"(T·{n_frames},H,W)" if data.ndim == 3 else "(" + ",".join(
                      str(s) if s == 1 else (str(n_frames) if t == 1 else "N") for s in shape[:-2]) + ",H,W)")
        return data.reshape(t, n_frames, h, w), layout
    if len(lead) == 2 and lead[1] == n_frames:
        return data.reshape(lead[0], n_frames, h, w), f"(T,{n_frames},H,W)"
    raise InputError(f"{source}: shape {shape} is not a {n_frames}-frame SIM stack; expected {expected}")


def _reorder(frames: np.ndarray, n_angles: int, n_phases: int, order: str) -> np.ndarray:
    """Phase-major ``(frame = A·phase + angle)`` → angle-major ``(frame = P·angle + phase)``."""
    if order == "angle_major":
        return frames
    idx = [n_angles * p + a for a in range(n_angles) for p in range(n_phases)]
    return frames[:, idx]


def read_acquisition(
    path: str | os.PathLike,
    n_angles: int = 3,
    n_phases: int = 3,
    frame_order: Literal["angle_major", "phase_major"] = "angle_major",
    min_size: int = 32,
) -> Acquisition:
    """Read a raw SIM stack (module docstring) as angle-major ``(T, A·P, H, W)`` float32.

    Errors (:class:`InputError`, a ``ValueError``, naming the file and the expectation): unknown
    extension, unreadable or truncated file, a frame count that is not a multiple of ``A·P``,
    frames smaller than ``min_size`` px (pattern estimation needs several periods), NaN / Inf,
    empty or constant frames, more than :data:`SATURATION_ERROR_FRACTION` of the pixels at the
    integer dtype's maximum. A smaller saturated fraction gives a :class:`SaturationWarning` (also
    kept in ``Acquisition.warnings``).
    """
    path = Path(path)
    if frame_order not in ("angle_major", "phase_major"):
        raise ValueError(f"frame_order must be 'angle_major' or 'phase_major', got {frame_order!r}")
    suffix = path.suffix.lower()
    if suffix not in TIFF_SUFFIXES + MRC_SUFFIXES:
        raise InputError(f"{path}: unknown extension {path.suffix!r}; expected one of "
                         f"{', '.join(TIFF_SUFFIXES + MRC_SUFFIXES)}")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    is_tiff = suffix in TIFF_SUFFIXES
    data, pixel_nm, wavelength, metadata = (_read_tiff if is_tiff else _read_mrc)(path)
    fmt = ("ome-tiff" if str(path).lower().endswith((".ome.tif", ".ome.tiff")) else "tiff") if is_tiff \
        else ("deltavision" if _is_deltavision(path) else "mrc2014")
    dtype = np.dtype(data.dtype)
    n_frames = n_angles * n_phases
    frames, layout = to_time_series(np.asarray(data), n_frames, str(path))
    h, w = frames.shape[-2:]
    if min(h, w) < min_size:
        raise InputError(f"{path}: frames of {h}x{w} px are smaller than the minimum "
                         f"{min_size}x{min_size} px")
    found: list[str] = []
    for t in range(frames.shape[0]):
        src = str(path) if frames.shape[0] == 1 else f"{path} (time point {t})"
        found += check_values(frames[t], src, dtype)
    if np.issubdtype(dtype, np.integer):
        frac = float((frames >= np.iinfo(dtype).max).mean())
        if frac > SATURATION_ERROR_FRACTION:
            raise InputError(f"{path}: {100 * frac:.1f}% of pixels are saturated (= {np.iinfo(dtype).max}); "
                             f"expected at most {100 * SATURATION_ERROR_FRACTION:g}%: lower the exposure")
    for msg in found:
        warnings.warn(msg, SaturationWarning if "saturated" in msg else UserWarning, stacklevel=2)
    frames = _reorder(frames, n_angles, n_phases, frame_order).astype(np.float32)
    return Acquisition(frames, pixel_nm, str(path), fmt, layout, frame_order, str(dtype), wavelength,
                       tuple(found), metadata, tuple(data.shape))


def find_inputs(patterns: Iterable[str]) -> list[Path]:
    """Files matching glob patterns, plain paths or folders (their ``*.tif`` / ``*.tiff`` /
    ``*.mrc`` / ``*.dv``),
    sorted and de-duplicated. A plain path is kept even if missing (it is reported later)."""

    found: dict[str, Path] = {}
    for pattern in patterns:
        p = Path(pattern)
        if p.is_dir():
            matches = sorted([*p.glob("*.tif"), *p.glob("*.tiff"), *p.glob("*.mrc"), *p.glob("*.dv")])
        elif glob.has_magic(pattern):
            matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
        else:
            matches = [p]
        for m in matches:
            found.setdefault(str(m.resolve()) if m.exists() else str(m), m)
    return list(found.values())
