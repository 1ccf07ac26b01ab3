"""Reconstruct users' raw SIM stacks with a trained model: read, validate, normalise, tile, write.

One input is processed as follows:

1. **Read** with the project's one reader, :func:`~simuq_core.realdata.reader.read_acquisition`
   (TIFF / OME-TIFF / ImageJ / MRC / DeltaVision; the same axes, time points and pixel size as
   fine-tuning and measurement see): ``(T, F, H, W)`` frames, angle-major (``frame = P·angle +
   phase``; ``predict.frame_order: phase_major`` reorders). Each time point is reconstructed on
   its own (outputs ``<name>_t000`` …). Unreadable files and bad layouts are
   :class:`~simuq_core.realdata.checks.InputError` naming the file.
2. **Validate** (:mod:`simuq_core.realdata.checks`): NaN / Inf, empty or constant frames are
   errors; saturation, a suspicious offset, a pixel size far from the model's and a failed
   frame-order check are warnings (kept in the summary).
3. **Normalise** exactly as the training data (:mod:`simuq_core.realdata.normalise`):
   ``x = (raw − offset) / scale`` with ``scale`` the ``norm_percentile`` percentile of
   ``raw − offset``. The camera offset comes from, in order: the caller (``--norm-offset`` /
   ``predict.norm_offset``), the file's metadata (keys ``norm_offset``, ``camera_offset``,
   ``offset_adu``, ``offset``), the simuq dataset side-car ``<split>_meta/<name>.npz`` of a
   simulated stack, else 0 (with a warning).
4. **Pattern** (:mod:`simuq_core.inference.image_pattern`): the blind full-field estimate with
   its frame-order diagnosis, or the network's own estimate.
5. **Predict** in overlapping tiles (:class:`~simuq_core.inference.predictor.TiledPredictor`),
   with the classical Wiener image beside it (:mod:`simuq_core.inference.wiener`) and the OOD
   check (:mod:`simuq_core.inference.ood`).
6. **Write** one folder per input (atomically: it appears complete or not at all).

Output layout (``<name>`` = the input's file stem; a repeated stem gets ``-2``, ``-3`` …)::

    <out>/<name>/emitter.tif      (Hh, Wh)     YX   emitter mean, model grid (Hh = rescale·H)
    <out>/<name>/emitter_std.tif  (Hh, Wh)     YX   its std             [uq target "emitter"]
    <out>/<name>/lp.tif           (F, Hh, Wh)  ZYX  light pattern mean (Z = frame, mean 1)
    <out>/<name>/lp_std.tif       (F, Hh, Wh)  ZYX  its std             [uq target "lp"]
    <out>/<name>/rec.tif          (F, H, W)    ZYX  reconstructed raw frames, camera grid
    <out>/<name>/rec_std.tif      (F, H, W)    ZYX  sqrt(Var rec): latent + camera noise
    <out>/<name>/deconv_std.tif   (F, Hh, Wh)  ZYX  std of S = emitter · lp (before the PSF)
                                                    [uq target "emitter" or "lp"]
    <out>/<name>/psf.tif          (K, K)       YX   PSF of the image (model grid; with per-tile
                                                    context: the tile-weighted average)
    <out>/<name>/psf_std.tif      (K, K)       YX   its std             [uq target "psf"]
    <out>/<name>/maps.ome.tif     (C, Hh, Wh)  CYX  the model-grid images above as named channels
                                                    (emitter, emitter_std, …, wiener, wiener_std),
                                                    with the physical pixel size (Fiji, napari)
    <out>/<name>/summary.json     input, layout, normalisation, model, tiling, frame-order check
                                  (``pattern``), the light-pattern estimate the model used
                                  (``light_pattern``: period, orientation, phase, band match per
                                  angle), warnings, per-map file / axes / shape / mean / p95
    <out>/report.json             every input: ok or failed (with the reason), warnings

Every TIFF is float32 ImageJ (Fiji) with the pixel size set (camera grid: the input's pixel size
when it records one, else the model's ``optics.lr_pixel_nm``; model grid: that / ``rescale``),
and ImageJ metadata: ``simuq`` (one-line JSON: map, axes, grid, units, model dir / mode /
``params_hash``, normalisation), ``norm_offset``, ``norm_scale``, and a readable ``Info`` text
(Fiji: Image ▸ Show Info). All maps are in the model's normalised units: raw-frame values
(``rec``, ``rec_std``) convert back to ADU as ``value · norm_scale (+ norm_offset for means)``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings as pywarnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from simuq_core.config import PredictParams
from simuq_core.inference.image_pattern import (
    blind_image_pattern,
    diagnosis_summary,
    instrument_image_pattern,
    model_instrument,
    pattern_source,
)
from simuq_core.inference.maps import MAPS, map_metadata, map_stats
from simuq_core.inference.ood import ood_check
from simuq_core.inference.predictor import TiledPredictor
from simuq_core.inference.wiener import blind_wiener_maps, wiener_maps
from simuq_core.io import atomic_directory, write_json, write_ome_tiff, write_tiff
from simuq_core.pattern.frame_order import frame_order_warnings
from simuq_core.realdata.checks import InputError, offset_warnings
from simuq_core.realdata.normalise import normalise, resolve_offset
from simuq_core.realdata.reader import Acquisition, read_acquisition

__all__ = ["FileResult", "PredictReport", "predict_file", "predict_files", "read_input"]

log = logging.getLogger("simuq.predict")

_PIXEL_SIZE_TOLERANCE = 0.1
# Smallest frames predict accepts (camera px): the checks' own minimum. Pattern estimation needs
# more, and says so in its diagnosis.
_MIN_SIZE = 8


class _Clock:
    """Wall time per phase of one prediction (``summary.json``'s ``timings_s``): the time since
    the previous lap, under the lap's name."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 4)
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.start


def read_input(path: str | os.PathLike, n_frames: int, n_angles: int, frame_order: str) -> Acquisition:
    """``path`` through :func:`~simuq_core.realdata.reader.read_acquisition` for a model of
    ``n_frames`` frames; the value checks' warnings are kept in ``Acquisition.warnings`` (not
    re-issued as Python warnings)."""
    with pywarnings.catch_warnings():
        pywarnings.simplefilter("ignore")
        return read_acquisition(path, n_angles, n_frames // n_angles, frame_order,  # type: ignore[arg-type]
                                min_size=_MIN_SIZE)


@dataclass
class FileResult:
    """One input: ``ok`` with its output folder and summary, or the error that stopped it."""

    input: str
    ok: bool
    output: str | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None


@dataclass
class PredictReport:
    """Every input of a run (``report.json``)."""

    model: dict[str, Any]
    results: list[FileResult]

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if not r.ok]

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "n_inputs": len(self.results),
                "n_ok": len(self.results) - len(self.failed), "n_failed": len(self.failed),
                "n_out_of_distribution": sum(bool(((r.summary or {}).get("ood") or {}).get("flagged"))
                                             for r in self.results),
                "inputs": [{"input": r.input, "ok": r.ok, "output": r.output, "error": r.error,
                            "warnings": r.warnings, "ood": (r.summary or {}).get("ood")}
                           for r in self.results]}


def _unique_names(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        stem = p.name.split(".")[0] or p.name
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def _model_info(model_dir: str | os.PathLike, spec: dict[str, Any]) -> dict[str, Any]:
    return {"dir": str(model_dir), "mode": spec.get("mode"), "params_hash": spec.get("params_hash"),
            "dataset_sha256": spec.get("dataset_sha256"), "rescale": spec["model"]["rescale"],
            "n_frames": spec["n_frames"], "n_angles": spec["model"]["light_pattern"]["n_angles"],
            "uq_targets": list(spec["uq"]["targets"]),
            "obs_noise": spec["uq"]["obs_noise"], "psf_size": spec["psf_size"]}


#: Draws of the unknown phases of angles whose phase was not detected (:func:`phase_marginalised`).
PHASE_DRAWS = 8


def phase_marginalised(predictor: TiledPredictor, x: np.ndarray, desc: str, image_pattern, angles: np.ndarray,
                       draws: int = PHASE_DRAWS, seed: int = 0
                       ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The maps of ``x`` with the phases of ``angles`` unknown: ``draws`` passes with those phases
    drawn uniformly (the others as fitted), mixed as a uniform mixture: every mean map averaged,
    every std map ``√(mean var + var of its mean)`` (the spread the unknown phase causes is part
    of the error). Wave vectors known but phases not (a dim file of a known instrument): one
    fitted phase would be a guess, and its stripes would be read as structure."""
    pattern, centre = image_pattern
    rng = np.random.default_rng(seed)
    runs = []
    tiling: dict[str, Any] = {}
    for _ in range(draws):
        phase = np.array(pattern.phase, np.float32, copy=True)
        phase[..., angles] = rng.uniform(-np.pi, np.pi, phase[..., angles].shape)
        maps, tiling = predictor(x, desc=desc, pattern=(pattern._replace(phase=phase), centre))
        runs.append(maps)
    out = {}
    for name in runs[0]:
        stack = np.stack([np.asarray(r[name], np.float64) for r in runs])
        base = name.removesuffix("_std")
        if name.endswith("_std") and base in runs[0]:
            means = np.stack([np.asarray(r[base], np.float64) for r in runs])
            out[name] = np.sqrt((stack**2).mean(axis=0) + means.var(axis=0)).astype(np.float32)
        else:
            out[name] = stack.mean(axis=0).astype(np.float32)
    return out, tiling | {"phase_draws": draws, "phase_marginalised_angles": np.asarray(angles).tolist()}


def predict_file(path: str | os.PathLike, out_dir: str | os.PathLike, name: str,
                 predictor: TiledPredictor, cfg: PredictParams, model: dict[str, Any],
                 wiener=None, pattern: str = "model", period_hint: float | None = None,
                 ood_reference: dict[str, Any] | None = None) -> list[FileResult]:
    """Process one input file into ``out_dir/name/`` (one time point) or ``out_dir/name_tNNN/``
    (each of a time series); errors are raised, warnings returned in the :class:`FileResult`\ s.
    ``pattern``: :func:`~simuq_core.inference.image_pattern.pattern_source` mode (``blind``: the
    full-field estimate and its diagnosis in place of the network's estimate and of the quick
    frame-order check); ``period_hint``: its period prior (camera px); ``ood_reference``: the
    in-distribution thresholds of the OOD score: an input above them is flagged."""
    path = Path(path)
    n_angles = int(predictor.spec["model"]["light_pattern"]["n_angles"])
    t0 = time.perf_counter()
    acq = read_input(path, predictor.n_frames, n_angles, cfg.frame_order)
    read_s = time.perf_counter() - t0
    n_t = acq.frames.shape[0]
    results = []
    for t in range(n_t):
        source = str(path) if n_t == 1 else f"{path} (time point {t})"
        out_name = name if n_t == 1 else f"{name}_t{t:03d}"
        results.append(_predict_time_point(acq, t, source, Path(out_dir) / out_name, predictor, cfg, model,
                                           wiener, pattern, period_hint, ood_reference, read_s / n_t))
    return results


def _predict_time_point(acq: Acquisition, t: int, source: str, out: Path, predictor: TiledPredictor,
                        cfg: PredictParams, model: dict[str, Any], wiener, pattern: str,
                        period_hint: float | None, ood_reference: dict[str, Any] | None,
                        read_s: float = 0.0) -> FileResult:
    clock = _Clock()
    clock.laps["read"] = round(read_s, 4)
    path, spec, raw = Path(acq.path), predictor.spec, acq.frames[t]
    offset, offset_source = resolve_offset(cfg.norm_offset, path, acq.metadata)
    warnings = [w for w in acq.warnings if acq.frames.shape[0] == 1 or f"(time point {t})" in w]
    warnings += offset_warnings(raw, source, offset)
    if offset_source.startswith("none"):
        warnings.append(f"{source}: no camera offset given or recorded: assumed 0 (set "
                        "--norm-offset / predict.norm_offset if the camera adds one)")
    model_pixel_nm = float(spec["model"]["optics"]["lr_pixel_nm"])
    if acq.pixel_nm is not None and abs(acq.pixel_nm / model_pixel_nm - 1) > _PIXEL_SIZE_TOLERANCE:
        warnings.append(f"{source}: pixel size {acq.pixel_nm:.1f} nm differs from the model's "
                        f"{model_pixel_nm:.1f} nm: the PSF and pattern scale will not match")
    mode = pattern_source(pattern, path, model_instrument(spec) is not None)
    blind = mode in ("blind", "instrument")
    order = (frame_order_warnings(raw, source) if predictor.n_frames == 9 and not blind
             else ([], None))
    warnings += order[0]
    x, norm = normalise(raw, offset, cfg.norm_percentile, source, offset_source, cfg.equalize_frames)
    clock.lap("checks_and_normalise")
    image_pattern = diag = None
    if blind:
        image_pattern, diag, cutoff = (
            instrument_image_pattern(x, spec, acq.pixel_nm, acq.wavelength_nm, source, cfg.otf_file)
            if mode == "instrument" else
            blind_image_pattern(x, spec, acq.pixel_nm, acq.wavelength_nm, source, period_hint, cfg.otf_file))
        if not diag.ok:
            warnings.append(diag.message)
    clock.lap("pattern")
    undetected = (np.flatnonzero(diag.angle_major.weak) if mode == "instrument" and diag is not None
                  else np.zeros(0, int))
    if undetected.size:
        maps, tiling = phase_marginalised(predictor, x, path.name, image_pattern, undetected)
        warnings.append(f"{source}: no phase detected for angle(s) {undetected.tolist()} at the instrument's "
                        f"wave vectors: the maps average {PHASE_DRAWS} draws of their unknown phases (std "
                        "included); expect little or no resolution beyond widefield there")
    else:
        maps, tiling = predictor(x, desc=path.name, pattern=image_pattern)
    clock.lap("network")
    ood = ood_check(x, maps, ood_reference, source) if predictor.epistemic_samples or ood_reference else None
    if ood is not None and ood.get("flagged"):
        warnings.append(ood["message"])
    wiener_info = None
    if wiener is not None:
        extra, wiener_info = (blind_wiener_maps(x, diag.angle_major, cutoff, predictor.rescale, wiener,
                                                maps.get("rec_std")) if diag is not None
                              else wiener_maps(x, spec, wiener, maps.get("rec_std")))
        maps |= extra
    clock.lap("ood_and_wiener")
    summary: dict[str, Any] = {
        "input": source, "input_shape": list(acq.file_shape), "input_dtype": acq.dtype,
        "layout": acq.layout, "time_point": t,
        "frame_order": ("phase-major as read (frame = A*phase + angle), reordered to angle-major"
                        if cfg.frame_order == "phase_major" else "angle-major: frame = P*angle + phase"),
        "model": model, "normalisation": norm.as_dict(), "tiling": tiling,
        "pattern": (diagnosis_summary(diag, mode) if diag is not None
                    else order[1].as_dict() if order[1] is not None else None),
        "light_pattern": tiling.pop("light_pattern", None),
        "warnings": warnings, "maps": {},
    }
    if wiener_info is not None:
        summary["wiener"] = wiener_info
    if ood is not None:
        summary["ood"] = ood
    camera_nm = acq.pixel_nm or model_pixel_nm
    summary["timings_s"] = clock.laps
    _write_maps(out, maps, summary, model, norm, source, camera_nm, predictor.rescale, clock)
    return FileResult(source, True, str(out), None, warnings, summary)


def _write_maps(out: Path, maps: dict[str, np.ndarray], summary: dict[str, Any], model: dict[str, Any],
                norm, source: str, camera_nm: float, rescale: int, clock: _Clock) -> None:
    """Every map as an ImageJ TIFF with its pixel size and metadata, and ``summary.json``, in a
    folder that appears complete or not at all."""
    pixel = {"camera": camera_nm, "model": camera_nm / rescale, "psf": camera_nm / rescale}
    with atomic_directory(out) as work:
        for map_name, array_out in maps.items():
            _, _, grid_kind, axes, description = MAPS[map_name]
            write_tiff(work / f"{map_name}.tif", array_out, axes,
                       map_metadata(map_name, grid_kind, axes, model, norm, source, pixel[grid_kind]),
                       resolution=(1000.0 / pixel[grid_kind],) * 2)
            summary["maps"][map_name] = {"file": f"{map_name}.tif", "axes": axes,
                                         "shape": list(array_out.shape), "grid": grid_kind,
                                         "pixel_nm": pixel[grid_kind], "description": description,
                                         **map_stats(array_out)}
        _write_ome(work, maps, summary, norm, pixel["model"])
        clock.lap("write")
        summary["seconds"] = clock.total()
        write_json(work / "summary.json", summary)


# The model-grid images a viewer shows side by side, in this order: one OME-TIFF, one channel each.
OME_CHANNELS = ("emitter", "emitter_std", "emitter_epi_std", "emitter_total_std", "wiener", "wiener_std")
OME_FILE = "maps.ome.tif"


def _write_ome(work: Path, maps: dict[str, np.ndarray], summary: dict[str, Any], norm,
               model_nm: float) -> None:
    """The 2-D model-grid maps as named channels of one OME-TIFF (``OME_FILE``); the frame stacks
    and the PSF stay per-map TIFFs (other shapes, other grids)."""
    channels = {name: maps[name] for name in OME_CHANNELS if name in maps}
    write_ome_tiff(work / OME_FILE, channels, model_nm,
                   f"simuq maps of {summary['input']}; model-grid units: the normalised input "
                   f"(raw = value * {norm.scale:g} + {norm.offset:g} for the frame maps)")
    summary["ome_tiff"] = {"file": OME_FILE, "axes": "CYX", "channels": list(channels),
                           "pixel_nm": model_nm}


def predict_files(
    inputs: list[Path],
    out_dir: str | os.PathLike,
    model: nnx.Module,
    spec: dict[str, Any],
    model_dir: str | os.PathLike,
    cfg: PredictParams,
    tile: int,
    progress: bool = True,
    on_result: Callable[[FileResult], None] | None = None,
    context: str = "image",
    wiener=None,
    pattern: str = "model",
    period_hint: float | None = None,
    epistemic_samples: int = 0,
    epistemic_seed: int = 0,
    ood_reference: dict[str, Any] | None = None,
) -> PredictReport:
    """Process every input; a bad file is reported (``FileResult.ok = False``) and skipped, the
    rest are processed. Writes ``out_dir/report.json`` and returns the report. ``context``: see
    :class:`TiledPredictor`. ``wiener``: :class:`~simuq_core.baselines.wiener.WienerOptions` to
    also write the classical Wiener SIM image and its noise std (:func:`wiener_maps`).
    ``pattern`` / ``period_hint`` / ``ood_reference``: see :func:`predict_file`;
    ``epistemic_samples``: MC-dropout passes (0 = the deterministic network only)."""
    out_dir = Path(out_dir)
    predictor = TiledPredictor(model, spec, tile, cfg.overlap, cfg.batch_size, progress=progress,
                               context=context, epistemic_samples=epistemic_samples,
                               epistemic_seed=epistemic_seed, margin=cfg.tile_margin)
    info = _model_info(model_dir, spec)
    results = []
    for path, name in tqdm(list(zip(inputs, _unique_names(inputs), strict=True)), desc="predict",
                           unit="file", disable=not progress or None):
        try:
            file_results = predict_file(path, out_dir, name, predictor, cfg, info, wiener, pattern,
                                        period_hint, ood_reference)
        except InputError as exc:
            file_results = [FileResult(str(path), False, error=str(exc))]
        except Exception as exc:  # one unexpected failure must not lose the other files
            log.debug("failure on %s", path, exc_info=True)
            file_results = [FileResult(str(path), False, error=f"{path}: {type(exc).__name__}: {exc}")]
        for result in file_results:
            if not result.ok:  # no stale maps from an earlier run may pass for this input's
                shutil.rmtree(out_dir / name, ignore_errors=True)
                log.error("%s", result.error)
            for w in result.warnings:
                log.warning("%s", w)
            if on_result is not None:
                on_result(result)
        results += file_results
    report = PredictReport(info | {"tile": predictor.tile, "overlap": predictor.overlap,
                                   "batch_size": predictor.batch_size,
                                   "device": str(predictor.device)}, results)
    write_json(out_dir / "report.json", report.as_dict())
    return report
