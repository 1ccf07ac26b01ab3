"""Real raw SIM acquisitions as training data: index a glob of files once, stream random crops.

Self-supervised fine-tuning needs only raw frames, so a lab's own acquisitions can train the
network. This module turns a set of files into batches without ever holding the dataset in RAM:

1. **Index** (:func:`index_acquisitions`), once per file: :func:`~simuq_core.realdata.reader.read_acquisition`
   validates it (bad files are reported with the reason and skipped, or stop the run with
   ``strict``), the *whole-acquisition* normalisation ``x = (raw − offset)/scale`` is fixed
   (``scale`` = the ``norm_percentile`` percentile of ``raw − offset`` over every frame and time
   point, as :func:`simuq_core.realdata.normalise.normalise` does for one stack) and the illumination is
   estimated blind on the full field of view (:func:`~simuq_core.pattern.blind.estimate_pattern_blind`:
   one wave vector per angle shared by all time points, one phase per time point). The result
   and where the raw array lies in the file (byte offset, dtype, shape) are cached as one small
   JSON per file in the given cache folder, keyed by the file's path, size, modification time and
   the settings, so a second run reads no pixel at indexing. Mixed pixel sizes are refused with
   the files named: one network has one camera grid.
2. **Stream** (:class:`CropStream`): every epoch draws ``crops_per_epoch`` random crops
   ``(acquisition, time point, y0, x0)`` from the training regions, deterministically for
   ``(seed, epoch)``; process ``p`` of ``P`` (:func:`jax.process_index`) takes crops
   ``p, p + P, …`` (disjoint shares whose union is the single-process epoch). A crop is read
   through a fresh ``numpy.memmap`` of the file (only its ``F × c × c`` pixels are touched; the
   map is dropped after the read, so nothing accumulates with the number of files), normalised
   with its acquisition's numbers, and carries the acquisition's pattern with the reference point
   moved to the crop (:data:`~simuq_core.network.forward.PATTERN_KEYS` arrays, as
   :func:`~simuq_core.pattern.estimate.shift_pattern_origin`). Batching and read-ahead threads are
   ``grain`` (``MapDataset`` → ``batch`` → ``to_iter_dataset(ReadOptions)``).
3. **Hold out** (:mod:`simuq_core.realdata.holdout`): whole acquisitions (a fraction chosen with
   the seed, or named files), or a strip of each acquisition (``val_block_fraction`` of its side)
   on an edge that holds structure like the rest of the field (a fixed strip can be
   empty background, and then validates nothing), which no training crop overlaps.

TIFFs that cannot be memory-mapped (compressed, tiled) are read page by page: still one frame
at a time, never the whole stack.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from simuq_core.io import write_json
from simuq_core.optics.imaging import otf_cutoff_cycles_per_px
from simuq_core.pattern.blind import estimate_pattern_blind
from simuq_core.pattern.estimate import PATTERN_KEYS
from simuq_core.pattern.instrument import (
    InstrumentPattern,
    SessionEstimate,
    fit_pattern_phases,
    pool_wave_vectors,
)
from simuq_core.realdata.checks import InputError, angle_major_order
from simuq_core.realdata.normalise import frame_gains, resolve_offset
from simuq_core.realdata.reader import MRC_SUFFIXES, measured_otf, read_acquisition
from simuq_core.simulation.samples import normalisation_scale

__all__ = [
    "CropStream",
    "DataIndex",
    "IndexedAcquisition",
    "Region",
    "index_acquisitions",
    "read_crop",
    "without_unknown_patterns",
]

log = logging.getLogger("simuq.raw_data")
_CACHE_VERSION = 1
# Pixel sizes within this relative difference are one camera grid (metadata rounding).
_PIXEL_TOLERANCE = 0.01


@dataclass(frozen=True)
class IndexedAcquisition:
    """One indexed file. ``shape``: ``(T, F, H, W)`` angle-major; ``frame_index``: the file's
    frame for each angle-major frame; ``raw_offset`` / ``raw_dtype`` / ``raw_shape``: where the
    pixel array lies in the file (``raw_offset`` ``None``: not memory-mappable, read by page);
    ``pattern_k`` ``(T, A, 2)`` cycles/px, ``pattern_phase`` / ``pattern_contrast`` ``(T, A)``,
    phase referred to the field centre ``(H/2, W/2)``; ``pattern`` the estimate's summary
    (periods, orientations, detection z, messages); ``frame_gain`` ``(T, F)``: the frames' relative
    intensities (:func:`~simuq_core.realdata.normalise.frame_gains`) that crops are divided by,
    or ``None``."""

    path: str
    shape: tuple[int, int, int, int]
    pixel_nm: float | None
    wavelength_nm: float | None
    otf_cutoff: float
    frame_index: tuple[int, ...]
    raw_offset: int | None
    raw_dtype: str
    raw_shape: tuple[int, ...]
    norm_offset: float
    norm_scale: float
    norm_percentile: float
    pattern_k: list
    pattern_phase: list
    pattern_contrast: list
    pattern: dict[str, Any]
    warnings: tuple[str, ...] = ()
    frame_gain: list | None = None

    def pattern_arrays(self, t: int, origin: tuple[int, int], crop: tuple[int, int]) -> dict[str, np.ndarray]:
        """The :data:`PATTERN_KEYS` arrays of time point ``t`` for the crop of shape ``crop`` at
        ``origin`` ``(y0, x0)``: ``k`` ``(A, 2)``, ``phase`` / ``contrast`` ``(A,)`` unchanged,
        ``origin = (H/2 − (y0 + h/2), W/2 − (x0 + w/2))`` (the field centre seen from the crop's
        centre, as :func:`~simuq_core.pattern.estimate.shift_pattern_origin`)."""
        _, _, h, w = self.shape
        shift = (h / 2.0 - (origin[0] + crop[0] / 2.0), w / 2.0 - (origin[1] + crop[1] / 2.0))
        values = (np.asarray(self.pattern_k[t], np.float32), np.asarray(self.pattern_phase[t], np.float32),
                  np.asarray(self.pattern_contrast[t], np.float32), np.asarray(shift, np.float32))
        return dict(zip(PATTERN_KEYS, values, strict=True))


@dataclass(frozen=True)
class DataIndex:
    """Every usable acquisition of the inputs, the skipped files ``(path, reason)``, the common
    pixel size (``None`` if no file records one) and notes for the user."""

    acquisitions: tuple[IndexedAcquisition, ...]
    skipped: tuple[tuple[str, str], ...]
    pixel_nm: float | None
    messages: tuple[str, ...]
    instrument: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        return {"n_acquisitions": len(self.acquisitions), "n_skipped": len(self.skipped),
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "pixel_nm": self.pixel_nm, "messages": list(self.messages), "instrument": self.instrument,
                "acquisitions": [{"path": a.path, "shape": list(a.shape), "norm_scale": a.norm_scale,
                                  "norm_offset": a.norm_offset, "pattern": a.pattern}
                                 for a in self.acquisitions]}


# ----------------------------------------------------------------------------------------------
# Indexing
# ----------------------------------------------------------------------------------------------


def _raw_layout(path: Path) -> tuple[int | None, str, tuple[int, ...]]:
    """Byte offset, dtype and shape of the pixel array in the file, from the readers' own
    memory maps (``offset`` ``None`` when the file cannot be mapped)."""
    if path.suffix.lower() in MRC_SUFFIXES:
        import mrcfile

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the DeltaVision header defects read_acquisition vetted
            with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
                data = mrc.data
                return int(data.offset), data.dtype.str, tuple(int(s) for s in data.shape)
    import tifffile

    try:
        data = tifffile.memmap(path, mode="r")
        layout = int(data.offset), data.dtype.str, tuple(int(s) for s in data.shape)
        del data
        return layout
    except ValueError:  # compressed, tiled or non-contiguous: read by page
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return None, np.dtype(page.dtype).str, (len(tif.pages), *page.shape)


def _cache_key(path: Path, settings: dict[str, Any]) -> str:
    stat = path.stat()
    blob = json.dumps({"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                       "version": _CACHE_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _index_one(path: Path, settings: dict[str, Any]) -> IndexedAcquisition:
    """Read, validate, normalise and estimate one file (module docstring, step 1)."""
    n_angles, n_phases = settings["n_angles"], settings["n_phases"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acq = read_acquisition(path, n_angles, n_phases, settings["frame_order"])
    notes = list(acq.warnings) + [str(w.message) for w in caught if str(w.message) not in acq.warnings]
    offset, offset_source = resolve_offset(settings["norm_offset"], path, acq.metadata)
    frames = acq.frames  # (T, F, H, W)
    level = float(np.percentile(frames.astype(np.float64) - offset, settings["norm_percentile"]))
    if level <= 0:
        raise InputError(f"{path}: after subtracting the camera offset {offset:g} ({offset_source}), the "
                         f"{settings['norm_percentile']:g}th percentile is {level:g} ≤ 0: wrong norm_offset?")
    scale = normalisation_scale(frames, offset, settings["norm_percentile"])
    pixel = acq.pixel_nm or settings["default_pixel_nm"]
    wavelength = (acq.wavelength_nm if settings["use_file_wavelength"] and acq.wavelength_nm
                  else settings["wavelength_nm"])
    cutoff = otf_cutoff_cycles_per_px(settings["na"], wavelength, pixel)
    otf = measured_otf(settings["otf_file"], pixel) if settings.get("otf_file") else None
    blind = estimate_pattern_blind(frames, n_angles, cutoff, period_hint=settings["period_hint"], otf=otf)
    notes += [f"{path}: {m}" for m in blind.messages]
    if blind.weak.any():
        notes.append(f"{path}: pattern weak for angle(s) {np.flatnonzero(blind.weak).tolist()}: its crops "
                     "train with an unreliable pattern")
    n_frames = n_angles * n_phases
    order = (list(range(n_frames)) if settings["frame_order"] == "angle_major"
             else angle_major_order(n_angles, n_phases))
    raw_offset, raw_dtype, raw_shape = _raw_layout(path)
    est = blind.estimate
    return IndexedAcquisition(
        path=str(path), shape=tuple(int(s) for s in frames.shape), pixel_nm=acq.pixel_nm,
        wavelength_nm=acq.wavelength_nm, otf_cutoff=float(cutoff), frame_index=tuple(order),
        raw_offset=raw_offset, raw_dtype=raw_dtype, raw_shape=raw_shape, norm_offset=float(offset),
        norm_scale=float(scale), norm_percentile=float(settings["norm_percentile"]),
        pattern_k=np.asarray(est.k, np.float64).tolist(),
        pattern_phase=np.asarray(est.phase, np.float64).tolist(),
        pattern_contrast=np.asarray(est.contrast, np.float64).tolist(),
        pattern=blind.as_dict() | {"offset_source": offset_source}, warnings=tuple(notes),
        frame_gain=(frame_gains(frames, offset).tolist() if settings.get("equalize_frames") else None))


def _from_cache(data: dict[str, Any]) -> IndexedAcquisition:
    data = dict(data)
    for key in ("shape", "frame_index", "raw_shape", "warnings"):
        data[key] = tuple(data[key])
    return IndexedAcquisition(**data)


def index_acquisitions(
    paths: Iterable[str | os.PathLike],
    cache_dir: str | os.PathLike,
    *,
    na: float,
    wavelength_nm: float,
    default_pixel_nm: float,
    n_angles: int = 3,
    n_phases: int = 3,
    frame_order: Literal["angle_major", "phase_major"] = "angle_major",
    use_file_wavelength: bool = True,
    period_hint: float | None = None,
    norm_offset: float | None = None,
    norm_percentile: float = 99.9,
    equalize_frames: bool = False,
    strict: bool = False,
    otf_file: str | os.PathLike | None = None,
    instrument: InstrumentPattern | None = None,
    session_pattern: bool = True,
) -> DataIndex:
    """Index raw acquisitions (module docstring, step 1).

    Parameters
    ----------
    paths : the files (e.g. :func:`simuq_core.realdata.reader.find_inputs` of the user's globs).
    cache_dir : folder for the per-file JSON cache (created; nothing is written beside the data).
    na, wavelength_nm : the microscope's NA and emission wavelength (the file's wavelength wins when
        it records one and ``use_file_wavelength``); with the pixel size they give the OTF cut-off
        ``2NA/λ·pixel`` (cycles/px) of the blind pattern search.
    default_pixel_nm : pixel size assumed for files that record none.
    period_hint : restrict the search to ``|k|`` within 5 % of ``1/period_hint`` (camera px).
    norm_offset : camera offset; ``None``: the TIFF's metadata
        (:func:`~simuq_core.realdata.normalise.resolve_offset`), else 0.
    equalize_frames : divide every frame by its relative intensity over the whole field
        (:func:`~simuq_core.realdata.normalise.frame_gains`), computed here once per acquisition.
    strict : raise on the first bad file instead of skipping it.
    otf_file : measured radial OTF (:func:`measured_otf`) for the blind pattern search; ``None``:
        the ideal Airy OTF of ``na`` / ``wavelength_nm``.
    instrument : the instrument's wave vectors (e.g. measured on a bright acquisition); default
        with ``session_pattern``: pooled over the files whose blind estimate is clear
        (:func:`~simuq_core.pattern.instrument.pool_wave_vectors`). A file whose own estimate is
        weak or irregular gets the instrument's wave vectors with its own phases
        (:func:`~simuq_core.pattern.instrument.fit_pattern_phases`); a clear file that disagrees
        with them keeps its own, and is named (``messages``).

    Raises
    ------
    InputError : no usable file; a bad file with ``strict``; files of different pixel sizes (all
        named, grouped by size).
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    settings = {"na": na, "wavelength_nm": wavelength_nm, "default_pixel_nm": default_pixel_nm,
                "n_angles": n_angles, "n_phases": n_phases, "frame_order": frame_order,
                "use_file_wavelength": use_file_wavelength, "period_hint": period_hint,
                "norm_offset": norm_offset, "norm_percentile": norm_percentile}
    if equalize_frames:  # absent otherwise: the cache keys of earlier indexes stay valid
        settings["equalize_frames"] = True
    if otf_file:  # likewise
        settings["otf_file"] = str(otf_file)
        measured_otf(otf_file, default_pixel_nm)  # an unreadable OTF stops here, before any file
    found, skipped = _index_files(paths, cache, settings, strict)
    if not found:
        raise InputError("no usable acquisition among the inputs" + "".join(
            f"\n  {reason}" for _, reason in skipped))
    pixel = _common_pixel(found)
    messages = [f"{a.path}: no pixel size recorded: assumed {default_pixel_nm:g} nm"
                for a in found if a.pixel_nm is None]
    if instrument is None and session_pattern:
        instrument = pool_wave_vectors([_session_estimate(a) for a in found])
    if instrument is not None:
        messages += list(instrument.disagreements)
        found = [a if _session_estimate(a).clear else _with_instrument_pattern(a, instrument, settings)
                 for a in found]
    if pixel is not None and abs(pixel / default_pixel_nm - 1.0) > 0.1:
        messages.append(f"the acquisitions' pixel size {pixel:.2f} nm differs from the model's "
                        f"{default_pixel_nm:.2f} nm by more than 10 %: PSF and pattern scales differ")
    for m in messages:
        log.warning("%s", m)
    return DataIndex(tuple(found), tuple(skipped), pixel, tuple(messages),
                     instrument.as_dict() if instrument is not None else None)


def without_unknown_patterns(index: DataIndex) -> DataIndex:
    """``index`` without the acquisitions whose pattern was detected at no angle (blind search and,
    where the session's wave vectors exist, the phase fit at them): they move to ``skipped`` with
    the reason. Self-supervised training compares the frames with the forward model under the
    given pattern; with an unknown one it can only learn to ignore the pattern. Raises
    :class:`InputError` when nothing is left."""
    keep, dropped = [], []
    for a in index.acquisitions:
        quality = np.asarray(a.pattern["quality_z"], np.float64)
        if (quality < a.pattern["threshold_z"]).all():
            zs = ", ".join(f"{q:.1f}" for q in quality)
            dropped.append((a.path, f"{a.path}: pattern detected at no angle (z {zs} < "
                                    f"{a.pattern['threshold_z']:.1f}): left out of fine-tuning, whose crops "
                                    "need the right pattern (predict still reconstructs it)"))
        else:
            keep.append(a)
    for _, reason in dropped:
        log.warning("%s", reason)
    if not keep:
        raise InputError("no acquisition with a detectable pattern to fine-tune on" + "".join(
            f"\n  {reason}" for _, reason in dropped))
    return dataclasses.replace(index, acquisitions=tuple(keep), skipped=index.skipped + tuple(dropped))


def _session_estimate(entry: IndexedAcquisition) -> SessionEstimate:
    quality = np.asarray(entry.pattern["quality_z"], np.float64)
    clear = bool((quality >= entry.pattern["threshold_z"]).all() and not entry.pattern["messages"])
    return SessionEstimate(entry.path, np.asarray(entry.pattern_k[0], np.float64), quality, clear,
                           int(min(entry.shape[-2:])))


def _with_instrument_pattern(entry: IndexedAcquisition, instrument: InstrumentPattern,
                             settings: dict[str, Any]) -> IndexedAcquisition:
    """``entry`` with the instrument's wave vectors and its own phases fitted at them; the blind
    estimate is kept under ``pattern["blind"]``."""
    frames = read_acquisition(entry.path, settings["n_angles"], settings["n_phases"],
                              settings["frame_order"]).frames
    pixel = entry.pixel_nm or settings["default_pixel_nm"]
    otf = measured_otf(settings["otf_file"], pixel) if settings.get("otf_file") else None
    fit = fit_pattern_phases(frames, instrument.k, entry.otf_cutoff, otf)
    est = fit.estimate
    note = (f"{entry.path}: its own pattern estimate is weak or irregular: the instrument's wave vectors "
            f"(periods {', '.join(f'{p:.3f}' for p in instrument.period_px)} px, pooled over "
            f"{len(instrument.sources)} file(s)) are used, with phases fitted to this file"
            + (" (" + "; ".join(fit.messages) + ")" if fit.messages else ""))
    log.warning("%s", note)
    return dataclasses.replace(
        entry, pattern_k=np.asarray(est.k, np.float64).tolist(),
        pattern_phase=np.asarray(est.phase, np.float64).tolist(),
        pattern_contrast=np.asarray(est.contrast, np.float64).tolist(),
        pattern=fit.as_dict() | {"source": "instrument", "offset_source": entry.pattern.get("offset_source"),
                                 "blind": entry.pattern},
        warnings=entry.warnings + (note,))


def _index_files(paths: Iterable[str | os.PathLike], cache: Path, settings: dict[str, Any], strict: bool
                 ) -> tuple[list[IndexedAcquisition], list[tuple[str, str]]]:
    """Every file indexed (from the cache when it holds it), or skipped with the reason naming it;
    with ``strict`` the first bad file stops the run."""
    found: list[IndexedAcquisition] = []
    skipped: list[tuple[str, str]] = []
    for raw_path in paths:
        path = Path(raw_path)
        try:
            if not path.is_file():
                raise InputError(f"{path}: no such file")
            entry_file = cache / f"{_cache_key(path, settings)}.json"
            if entry_file.is_file():
                entry = _from_cache(json.loads(entry_file.read_text()))
            else:
                entry = _index_one(path, settings)
                write_json(entry_file, asdict(entry))
        except (InputError, ValueError, OSError) as exc:
            reason = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            if strict:
                raise InputError(f"{reason} (strict: stopping; without it the file is skipped)") from exc
            log.warning("skipped %s", reason)
            skipped.append((str(path), reason))
            continue
        for note in entry.warnings:
            log.warning("%s", note)
        found.append(entry)
    return found, skipped


def _common_pixel(found: Sequence[IndexedAcquisition]) -> float | None:
    groups: dict[float, list[str]] = {}
    for a in found:
        if a.pixel_nm is None:
            continue
        key = next((g for g in groups if abs(a.pixel_nm / g - 1.0) <= _PIXEL_TOLERANCE), a.pixel_nm)
        groups.setdefault(key, []).append(a.path)
    if len(groups) > 1:
        listing = "; ".join(f"{size:.3f} nm: {', '.join(files)}" for size, files in groups.items())
        raise InputError(f"mixed pixel sizes in one training set ({listing}); one network has one camera "
                         "grid: fine-tune on files of one pixel size")
    return next(iter(groups), None)


# ----------------------------------------------------------------------------------------------
# Regions and crops
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """A rectangle ``[y0, y1) × [x0, x1)`` of time point ``t`` of acquisition ``acq``."""

    acq: int
    t: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def read_crop(entry: IndexedAcquisition, t: int, y0: int, x0: int, size: tuple[int, int]) -> np.ndarray:
    """Normalised frames ``(F, h, w)`` float32 of one crop (each frame also divided by its
    ``frame_gain`` when the index has them), read through a memory map of the file (only the
    crop's pixels are touched) or, for unmappable TIFFs, page by page."""
    h, w = size
    n_frames = entry.shape[1]
    pages = [t * n_frames + f for f in entry.frame_index]
    if entry.raw_offset is not None:
        data = np.memmap(entry.path, dtype=np.dtype(entry.raw_dtype), mode="r", offset=entry.raw_offset,
                         shape=entry.raw_shape)
        stack = data.reshape(-1, *entry.raw_shape[-2:])
        raw = np.array(stack[pages, y0:y0 + h, x0:x0 + w], dtype=np.float32)
        del stack, data  # unmapped here: nothing stays mapped between crops
    else:
        import tifffile

        with tifffile.TiffFile(entry.path) as tif:
            raw = np.stack([tif.pages[p].asarray()[y0:y0 + h, x0:x0 + w] for p in pages]).astype(np.float32)
    x = (raw - np.float32(entry.norm_offset)) / np.float32(entry.norm_scale)
    if entry.frame_gain is not None:
        x /= np.asarray(entry.frame_gain[t], np.float32)[:, None, None]
    return x


def _draw_plan(regions: Sequence[Region], crop: int, n: int, seed: int, epoch: int) -> np.ndarray:
    """``(n, 4)`` int64 rows ``(region, y0, x0, 0)``: a region uniformly at random, then a crop
    position uniformly inside it; a function of ``(seed, epoch)`` only."""
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    region = rng.integers(0, len(regions), size=n)
    spans = np.asarray([(r.shape[0] - crop + 1, r.shape[1] - crop + 1) for r in regions])
    y = (rng.random(n) * spans[region, 0]).astype(np.int64)
    x = (rng.random(n) * spans[region, 1]).astype(np.int64)
    starts = np.asarray([(r.y0, r.x0) for r in regions])
    return np.stack([region, starts[region, 0] + y, starts[region, 1] + x, np.zeros(n, np.int64)], axis=1)


class CropStream:
    """Random training crops of raw acquisitions, streamed from disk (module docstring, step 2);
    a :class:`~simuq_core.training.engine.BatchSource`.

    Parameters
    ----------
    index : the :class:`DataIndex`.
    regions : the training :class:`Region` list (:func:`~simuq_core.realdata.holdout.split_regions`).
    crop : crop side (camera px), the model's training crop.
    batch_size : crops per step over all processes (this process yields ``batch_size / P``).
    crops_per_epoch : crops drawn per epoch over all processes (rounded down to whole steps).
    seed : the plan of an epoch depends on ``(seed, epoch)`` only.
    process_index, process_count : this process's share (default :func:`jax.process_index` /
        :func:`jax.process_count`).
    num_threads, prefetch : grain read-ahead threads and buffered crops (0 threads: read inline).

    Each batch is ``{"x": (b, F, c, c), "pattern_k": (b, A, 2), "pattern_phase": (b, A),
    "pattern_contrast": (b, A), "pattern_origin": (b, 2)}``.
    """

    def __init__(self, index: DataIndex, regions: Sequence[Region], crop: int, batch_size: int,
                 crops_per_epoch: int, seed: int = 0, process_index: int | None = None,
                 process_count: int | None = None, num_threads: int = 2, prefetch: int = 16):
        if process_index is None or process_count is None:
            import jax

            process_index, process_count = jax.process_index(), jax.process_count()
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} does not split over {process_count} processes")
        if not regions:
            raise ValueError("no training region")
        self.index, self.regions, self.crop = index, list(regions), int(crop)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.local_batch = self.batch_size // self.process_count
        self.steps_per_epoch = int(crops_per_epoch) // self.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"crops_per_epoch {crops_per_epoch} < batch_size {batch_size}")
        self.crops_per_epoch = self.steps_per_epoch * self.batch_size
        self.num_threads, self.prefetch = int(num_threads), int(prefetch)

    def plan(self, epoch: int) -> np.ndarray:
        """This process's crops of ``epoch``: ``(n, 4)`` rows ``(acq, t, y0, x0)``."""
        rows = _draw_plan(self.regions, self.crop, self.crops_per_epoch, self.seed, epoch)
        acq = np.asarray([self.regions[i].acq for i in rows[:, 0]], np.int64)
        t = np.asarray([self.regions[i].t for i in rows[:, 0]], np.int64)
        full = np.stack([acq, t, rows[:, 1], rows[:, 2]], axis=1)
        return full[self.process_index::self.process_count]

    def read(self, row: Sequence[int]) -> dict[str, np.ndarray]:
        """One crop ``{"x": (F, c, c), pattern arrays}`` for a plan row ``(acq, t, y0, x0)``."""
        acq, t, y0, x0 = (int(v) for v in row)
        entry = self.index.acquisitions[acq]
        size = (self.crop, self.crop)
        return {"x": read_crop(entry, t, y0, x0, size)} | entry.pattern_arrays(t, (y0, x0), size)

    def dataset(self, epoch: int):
        """The epoch as a ``grain.MapDataset`` of batches (random access, lazy reads)."""
        import grain

        return (grain.MapDataset.source(list(map(tuple, self.plan(epoch).tolist())))
                .map(self.read).batch(self.local_batch, drop_remainder=True))

    def epoch_batches(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        ds = self.dataset(epoch)
        if self.num_threads == 0:
            yield from (ds[i] for i in range(len(ds)))
            return
        import grain

        # grain prefetches whole batches: the buffer is in batches, at least one.
        options = grain.ReadOptions(num_threads=self.num_threads,
                                    prefetch_buffer_size=max(1, self.prefetch // self.local_batch))
        yield from ds.to_iter_dataset(options)
