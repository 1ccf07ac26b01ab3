"""Reconstruct users' raw SIM stacks with a trained model: read, validate, normalise, tile, write.

One input is processed as follows:

1. **Read** the TIFF (:func:`read_stack`): ``(9, H, W)``, ``(9, 1, H, W)`` or ``(1, 9, H, W)``,
   uint16 or float, frames angle-major (``frame = 3·angle + phase``); unreadable files and bad
   layouts are :class:`~simuq_core.realdata.checks.InputError` naming the file. MRC / DeltaVision
   files go through :func:`~simuq_core.realdata.reader.read_acquisition`, and by default
   (:func:`pattern_source`) their pattern is the blind full-field estimate with its frame-order
   diagnosis (:func:`blind_image_pattern`), also used for the Wiener map (:func:`blind_wiener_maps`).
2. **Validate** (:mod:`simuq_core.realdata.checks`): NaN / Inf, empty or constant frames are errors;
   saturation, a suspicious offset, a pixel size far from the model's and a failed frame-order
   check are warnings (kept in the summary).
3. **Normalise** exactly as the training data: ``x = (raw − offset) / scale`` with ``scale`` the
   ``norm_percentile`` percentile of ``raw − offset`` over the whole stack
   (:func:`simuq_core.simulation.samples.normalisation_scale`). The camera offset comes from, in order:
   the caller (``--norm-offset`` / ``predict.norm_offset``), the TIFF's metadata (ImageJ or JSON
   keys ``norm_offset``, ``camera_offset``, ``offset_adu``, ``offset``), the simuq dataset
   side-car ``<split>_meta/<name>.npz`` of a simulated stack, else 0 (with a warning).
4. **Predict** in overlapping tiles (:mod:`simuq_core.inference.tiling`: raised-cosine blending of means,
   weighted mean of variances), batches of tiles capped by the memory available on the device
   (GPU when JAX has one, else CPU). The network's input-global parts (GroupNorm statistics,
   the per-sample PSF heads) are computed once for the whole image and shared by every tile
   (:mod:`simuq_core.inference.context`), so tiles agree with each other and with an untiled
   prediction away from their edges.
5. **Write** one folder per input (atomically: it appears complete or not at all).

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

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tifffile
from flax import nnx
from tqdm.auto import tqdm

from simuq_core.baselines.wiener import (
    OtfSpec,
    equal_step_phases,
    reconstruct_stack,
    wiener_noise_variance,
    wiener_sim,
)
from simuq_core.config import PredictParams, UQParams
from simuq_core.inference.context import (
    CROP_MEAN,
    FROZEN,
    PER_INPUT,
    POOLED,
    get_path,
    set_mode,
    with_context_layers,
)
from simuq_core.inference.ensemble import member_keys
from simuq_core.inference.tiling import Blender, TileGrid, extract_tiles, make_grid, pad_image, tile_window
from simuq_core.io import atomic_directory, write_json, write_tiff
from simuq_core.network.forward import predict
from simuq_core.optics.imaging import otf_cutoff_cycles_per_px
from simuq_core.pattern.estimate import PatternDiagnosis, PatternEstimate, diagnose_pattern
from simuq_core.pattern.frame_order import frame_order_warnings
from simuq_core.realdata.checks import InputError, angle_major_order, check_values, to_frame_stack
from simuq_core.realdata.normalise import NORMALISATION_RULE, Normalisation, normalise, resolve_offset
from simuq_core.realdata.reader import MRC_SUFFIXES, measured_otf, read_acquisition
from simuq_core.uncertainty.epistemic import EnsembleAccumulator, ood_flags, ood_scores

__all__ = [
    "DEFAULT_TILE",
    "FileResult",
    "OOD_REFERENCE_FILE",
    "PATTERN_SOURCES",
    "PredictReport",
    "StackInfo",
    "TiledPredictor",
    "blind_image_pattern",
    "blind_wiener_maps",
    "pattern_source",
    "predict_file",
    "predict_files",
    "read_stack",
    "resolve_tile",
]

log = logging.getLogger("simuq.predict")
# Side of the centred crop the image-level pattern is estimated on (camera pixels).
PATTERN_CROP = 256

DEFAULT_TILE = 32
# Fraction of the free device memory one batch of tiles may use (the rest: weights, XLA buffers).
_MEMORY_FRACTION = 0.5
_PIXEL_SIZE_TOLERANCE = 0.1

# name -> (prediction key, variance?, grid: "model" | "camera" | "psf", ImageJ axes, description)
_MAPS: dict[str, tuple[str, bool, str, str, str]] = {
    "emitter": ("emitter", False, "model", "YX", "emitter mean (relative density)"),
    "emitter_std": ("emitter_var", True, "model", "YX", "emitter std"),
    "lp": ("light_pattern", False, "model", "ZYX", "light pattern mean (Z = frame; mean 1)"),
    "lp_std": ("lp_var", True, "model", "ZYX", "light pattern std (Z = frame)"),
    "rec": ("rec", False, "camera", "ZYX", "reconstructed raw frames (normalised units)"),
    "rec_std": ("var_rec", True, "camera", "ZYX", "std of the reconstructed frames (latent + noise)"),
    "deconv_std": ("var_deconv", True, "model", "ZYX", "std of S = emitter * lp, before the PSF"),
    "psf": ("psf", False, "psf", "YX", "PSF of the image (model grid)"),
    "psf_std": ("psf_var", True, "psf", "YX", "PSF std"),
    # epistemic uncertainty (MC dropout; simuq_core/epistemic.py), with ``epistemic.n_samples``
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


# ----------------------------------------------------------------------------------------------
# Reading and normalisation
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackInfo:
    """What the file says about itself: dtype, pixel size (nm, if recorded) and metadata keys."""

    dtype: np.dtype
    shape: tuple[int, ...]
    pixel_nm: float | None
    metadata: dict[str, Any]


def _tiff_metadata(tif: tifffile.TiffFile) -> tuple[dict[str, Any], float | None]:
    meta: dict[str, Any] = {}
    for source in (tif.imagej_metadata or {}, *(tif.shaped_metadata or ())):
        if isinstance(source, dict):
            meta.update(source)
    pixel_nm = None
    page = tif.pages.first
    unit = str(meta.get("unit", "")).lower().replace("\\u00b5", "u").replace("µ", "u")
    tag = page.tags.get("XResolution")
    if tag is not None and unit in ("um", "micron", "microns", "micrometer"):
        num, den = tag.value
        if num > 0 and den > 0:
            pixel_nm = 1000.0 * den / num
    return meta, pixel_nm


def read_stack(path: str | os.PathLike) -> tuple[np.ndarray, StackInfo]:
    """The array stored in ``path`` (as is) and its :class:`StackInfo`; unreadable or missing
    files raise :class:`InputError` naming the file."""
    path = Path(path)
    if path.suffix.lower() in MRC_SUFFIXES:
        return _read_mrc_stack(path)
    try:
        with tifffile.TiffFile(path) as tif:
            array = tif.asarray()
            meta, pixel_nm = _tiff_metadata(tif)
    except Exception as exc:  # tifffile raises several types for corrupt or non-TIFF files
        raise InputError(f"{path}: cannot read as TIFF ({type(exc).__name__}: {exc})") from exc
    return array, StackInfo(array.dtype, tuple(array.shape), pixel_nm, meta)


def _read_mrc_stack(path: Path) -> tuple[np.ndarray, StackInfo]:
    """An MRC / DeltaVision stack via :func:`~simuq_core.realdata.reader.read_acquisition` (angle-major
    ``(T, F, H, W)`` float32 holding the camera's values); the file's emission wavelength, when
    recorded, is kept in the metadata as ``wavelength_nm``."""
    import warnings

    with warnings.catch_warnings():
        # The value checks run again in predict_file and are reported there as warnings.
        warnings.simplefilter("ignore")
        acq = read_acquisition(path)
    meta: dict[str, Any] = {"source_format": acq.source_format}
    if acq.wavelength_nm is not None:
        meta["wavelength_nm"] = acq.wavelength_nm
    return acq.frames, StackInfo(np.dtype(acq.dtype), tuple(acq.frames.shape), acq.pixel_nm, meta)


def resolve_tile(requested: int | None, spec: dict[str, Any], fallback: int | None = None) -> int:
    """Tile size in camera pixels: ``requested``, else the training crop recorded in the model
    spec (``train_crop``), else ``fallback`` (e.g. the ``simulate`` crop), else
    :data:`DEFAULT_TILE`; rounded down to a multiple of ``2**depth`` unless given explicitly."""
    multiple = 2 ** int(spec["model"]["depth"])
    if requested is not None:
        return int(requested)
    crop = spec.get("train_crop")
    tile = int(min(crop)) if crop else int(fallback or DEFAULT_TILE)
    return max(multiple, tile - tile % multiple)


# ----------------------------------------------------------------------------------------------
# Tiled prediction
# ----------------------------------------------------------------------------------------------


def _tile_bytes(tile: int, rescale: int, n_frames: int, width: int, psf_size: int) -> int:
    """Upper estimate of one tile's working memory (bytes) for the forward pass + variance
    propagation, as if nothing were fused: U-Net activations ~24·width·t², model-grid features
    ~10·width·(r t)², ~17 frame-stack maps (means, variances, FFT buffers) of ``F·(r t + K)²``.
    XLA's own analysis of the default network on CPU needs 5-10× less, so batches sized with it
    leave ample room."""
    hr = rescale * tile
    floats = 24 * width * tile**2 + 10 * width * hr**2 + 17 * n_frames * (hr + psf_size) ** 2
    return 4 * floats


def _free_bytes(device: jax.Device) -> int | None:
    try:
        stats = device.memory_stats()
    except Exception:  # some backends do not implement it
        stats = None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def pattern_summary(image_pattern) -> dict[str, Any]:
    """The image-level pattern estimate in the terms of a SIM user: per angle, period (camera
    pixels), orientation (degrees), phase at the reference point and the band-match strength."""
    est, (cy, cx) = image_pattern
    k = np.asarray(est.k[0], np.float64)
    return {
        "reference_point_px": [float(cy), float(cx)],
        "angles": [
            {"period_px": float(1.0 / np.hypot(*kk)),
             "orientation_deg": float(np.degrees(np.arctan2(kk[0], kk[1])) % 180.0),
             "k_cycles_per_px": [float(kk[0]), float(kk[1])],
             "phase_rad": float(est.phase[0][a]), "band_match": float(est.contrast[0][a])}
            for a, kk in enumerate(k)
        ],
    }


# Beside a fine-tuned model: the thresholds of its out-of-distribution check (:func:`ood_check`;
# written by :func:`simuq_core.workflows.finetune.ood_reference_from_data`, read by default by ``predict``).
OOD_REFERENCE_FILE = "ood_reference.json"

# How a tiled image's input-global network parts are computed (:class:`TiledPredictor`).
CONTEXTS = ("image", "crops", "tile")


class TiledPredictor:
    """A trained network applied to normalised stacks of any size ``(F, H, W)``.

    ``__call__`` returns the blended maps of :data:`_MAPS` present for the model's UQ targets, as
    ``{name: np.ndarray}`` (``*_std`` already square-rooted), plus the tiling description.

    ``context``: how the input-global parts of the network (GroupNorm statistics, the per-sample
    PSF heads) see a tiled image (:mod:`simuq_core.inference.context`): ``"image"`` (default) =
    computed once for the image in one extra network pass over statistics tiles up to
    ``stat_scale × tile`` per side (at most ``stat_tiles`` of them, an even sub-grid) and frozen
    for every tile (``"auto"``: ``"crops"`` for a fine-tuned model, else ``"image"``);
    ``"crops"`` = computed once from statistics tiles of the prediction tile's size, averaging
    each one's own statistics (``CROP_MEAN``: what a network trained on crops of
    that size saw for a typical crop; the shipped real-data model on MT.mrc: full-field rec ZMS
    0.91 against 2.65 with ``"image"``); ``"tile"`` = each tile its own (the training behaviour, but
    tiles then get different feature gains and PSFs). An image that fits in one tile is one pass
    either way.
    """

    def __init__(self, model: nnx.Module, spec: dict[str, Any], tile: int, overlap: int,
                 batch_size: int, progress: bool = False, context: str = "image",
                 stat_scale: int = 4, stat_tiles: int = 16, epistemic_samples: int = 0,
                 epistemic_seed: int = 0, margin: int = 0):
        self.spec = spec
        self.uq = UQParams(**spec["uq"])
        self.rescale = int(spec["model"]["rescale"])
        self.n_frames = int(spec["n_frames"])
        self.multiple = 2 ** int(spec["model"]["depth"])
        self.tile, self.overlap, self.margin = int(tile), int(overlap), int(margin)
        if context == "auto":  # fine-tuned on crops of real stacks: normalise like a crop
            context = "crops" if spec.get("mode") == "finetune" else "image"
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS} or 'auto', got {context!r}")
        if context == "crops":
            stat_scale = 1
        self.context, self.stat_scale, self.stat_tiles = context, int(stat_scale), int(stat_tiles)
        make_grid((self.tile, self.tile), self.tile, self.overlap, self.multiple,
                  self.margin)  # validates
        self.device = jax.devices()[0]
        free = _free_bytes(self.device)
        per_tile = _tile_bytes(self.tile, self.rescale, self.n_frames, int(spec["model"]["width"]),
                               int(spec["psf_size"]))
        cap = max(1, int(_MEMORY_FRACTION * free) // per_tile) if free else batch_size
        self.batch_size = max(1, min(batch_size, cap))
        # The statistics pass runs the network only (no variance propagation, about half the
        # memory of a prediction): it may use twice the pixels of a batch of tiles.
        self._stat_pixels = 2 * max(cap, self.batch_size) * self.tile**2
        self.progress = progress
        keys = [key for key, *_ in _MAPS.values()]
        self._net, paths = with_context_layers(model)
        self._layers = [get_path(self._net, p) for p in paths]
        graphdef, _ = nnx.split(self._net)

        # MC dropout: one jitted pass per key, pooled on the host (simuq_core/epistemic.py):
        # mean and aleatoric maps averaged over the passes, plus the passes' variance. (Passes
        # inside one trace would touch the context layers from an inner trace, which NNX refuses.)
        self._mc_keys = (member_keys(epistemic_seed, epistemic_samples,
                                     float(getattr(model, "dropout", 0.0)))
                         if epistemic_samples > 0 else None)
        self.epistemic_samples = 0 if self._mc_keys is None else int(epistemic_samples)

        @jax.jit
        def forward(state, x, pattern, wiener, key=None):
            out = predict(nnx.merge(graphdef, state), x, self.uq, pattern, wiener, dropout_key=key)
            return {k: out[k] for k in keys if k in out}

        self._estimate = (jax.jit(lambda x: model.estimate_pattern(x))
                          if getattr(model, "lp_mode", "free") == "parametric" else None)
        self._wiener = (jax.jit(lambda x, p: model.wiener_image(x, p))
                        if getattr(model, "wiener_input", False) else None)

        @jax.jit
        def record(state, x):
            net = nnx.merge(graphdef, state)
            net(x)  # only the statistics are returned; XLA drops the unused heads
            return [get_path(net, p).stats() for p in paths]

        self._forward, self._record = forward, record

    def _passes(self, state, tiles, pattern, wiener) -> dict[str, np.ndarray]:
        """The deterministic prediction of a batch of tiles, or the MC-dropout mixture."""
        if self._mc_keys is None:
            return jax.device_get(self._forward(state, tiles, pattern, wiener))
        acc = EnsembleAccumulator()
        for key in self._mc_keys:
            out = jax.device_get(self._forward(state, tiles, pattern, wiener, key))
            acc.add({k: np.asarray(v)[None] for k, v in out.items()})
        return acc.result()

    def tiling(self, grid: TileGrid, batch: int, stat_grid: dict | None) -> dict[str, Any]:
        return {"tile": grid.tile, "overlap": grid.overlap, "margin": grid.margin,
                "n_tiles": grid.n_tiles,
                "grid": [len(grid.starts_y), len(grid.starts_x)], "padded_to": list(grid.padded),
                "batch_size": batch, "device": str(self.device),
                "context": (("mean of tile-sized crops' own GroupNorm statistics, pooled PSF "
                             "features" if self.context == "crops" else
                             "image-level (GroupNorm statistics and PSF features)")
                            if stat_grid else "per input" if grid.n_tiles == 1 else "per tile"),
                "context_tiles": stat_grid,
                "blend": "separable raised-cosine ramps over the overlap (weight 0 on the margin "
                         "next to a shared edge); means: weighted mean; "
                         "std maps: sqrt of the weighted mean of variances"}

    def image_pattern(self, x: np.ndarray) -> tuple[PatternEstimate, tuple[float, float]] | None:
        """The pattern estimate of the whole image ``(F, H, W)`` (a centred crop of at most
        :data:`PATTERN_CROP` pixels per side: plenty for sub-bin accuracy) and the point its phase
        refers to, in image pixels; ``None`` for a free light pattern."""
        if self._estimate is None:
            return None
        _, h, w = x.shape
        ch, cw = min(h, PATTERN_CROP), min(w, PATTERN_CROP)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        est = jax.device_get(self._estimate(jnp.asarray(x[None, :, y0:y0 + ch, x0:x0 + cw])))
        return PatternEstimate(*(np.asarray(a) for a in est)), (y0 + ch / 2.0, x0 + cw / 2.0)

    def image_wiener(self, x: np.ndarray, image_pattern, grid: TileGrid) -> np.ndarray | None:
        """The Wiener SIM input of the whole image ``(F, H, W)``, computed once with the image's
        pattern and reflection-padded like the frames, on the model grid ``(r·Hp, r·Wp)``: every
        tile reads its slice (a per-tile Wiener image would differ near each tile's edges, and
        through the global Fourier steps, everywhere)."""
        if self._wiener is None or image_pattern is None:
            return None
        est, (cy, cx) = image_pattern
        _, h, w = x.shape
        whole = PatternEstimate(jnp.asarray(est.k), jnp.asarray(est.phase),
                                jnp.asarray(est.contrast),
                                jnp.asarray([[cy - h / 2.0, cx - w / 2.0]], jnp.float32))
        image = np.asarray(jax.device_get(self._wiener(jnp.asarray(x[None]), whole)))[0]
        r = self.rescale
        (hp, wp), (top, left) = grid.padded, grid.pad
        if (hp, wp) == (h, w):
            return image
        widths = [(r * top, r * (hp - h - top)), (r * left, r * (wp - w - left))]
        return np.pad(image, widths, mode="reflect" if min(h, w) > 1 else "edge")

    def tile_wiener(self, wiener: np.ndarray | None, grid: TileGrid, idx: list[int]):
        """Model-grid slices ``(n, r·t, r·t)`` of :meth:`image_wiener` for tiles ``idx``."""
        if wiener is None:
            return None
        r, t = self.rescale, grid.tile
        origins = grid.origins()
        return jnp.asarray(np.stack([wiener[r * y:r * (y + t), r * x:r * (x + t)]
                                     for y, x in (origins[i] for i in idx)]))

    @staticmethod
    def tile_patterns(image_pattern, grid: TileGrid, idx: list[int]) -> PatternEstimate:
        """The image-level pattern for tiles ``idx``: its reference point given relative to each
        tile's centre, so that every tile draws the same pattern and pattern variance."""
        est, (cy, cx) = image_pattern
        origins = grid.origins()
        top, left = grid.pad
        centres = np.asarray([(y0 - top + grid.tile / 2.0, x0 - left + grid.tile / 2.0)
                              for y0, x0 in (origins[i] for i in idx)])  # (n, 2)
        n = len(idx)
        return PatternEstimate(
            jnp.asarray(np.repeat(est.k, n, axis=0)), jnp.asarray(np.repeat(est.phase, n, axis=0)),
            jnp.asarray(np.repeat(est.contrast, n, axis=0)),
            jnp.asarray(np.asarray([cy, cx])[None] - centres, jnp.float32))

    def _batches(self, padded: np.ndarray, grid: TileGrid, batch: int):
        """``(tile indices, (batch, F, t, t) tiles)``; the last batch is padded by repetition so
        one compiled shape serves every batch."""
        for i0 in range(0, grid.n_tiles, batch):
            idx = list(range(i0, min(i0 + batch, grid.n_tiles)))
            tiles = extract_tiles(padded, grid, idx)
            if len(idx) < batch:
                tiles = np.concatenate([tiles, np.repeat(tiles[-1:], batch - len(idx), 0)])
            yield idx, jnp.asarray(tiles)

    def context_sample(self, grid: TileGrid) -> tuple[TileGrid, list[int]]:
        """The statistics tiles: a non-overlapping grid of squares of side ``min(image,
        stat_scale·tile)`` (a multiple of ``2**depth``) and the indices used, all of them or an
        even sub-grid within the pixel budget (at most ``stat_tiles``)."""
        side = min(*grid.padded, self.stat_scale * self.tile)
        side -= side % self.multiple
        stat_grid = make_grid(grid.padded, side, 0, self.multiple)
        ny, nx = len(stat_grid.starts_y), len(stat_grid.starts_x)
        limit = max(1, min(self.stat_tiles, self._stat_pixels // side**2))
        if ny * nx <= limit:
            return stat_grid, list(range(ny * nx))
        ry = min(ny, max(1, round(np.sqrt(limit * ny / nx))))
        rx = min(nx, max(1, limit // ry))
        rows = ((np.arange(ry) + 0.5) * ny / ry).astype(int)  # evenly spread, centred
        cols = ((np.arange(rx) + 0.5) * nx / rx).astype(int)
        return stat_grid, [int(r * nx + c) for r in rows for c in cols]

    def _freeze_image_context(self, padded: np.ndarray, grid: TileGrid) -> dict[str, Any]:
        """One ``POOLED`` pass over the statistics tiles, then freeze (module docstring of
        :mod:`simuq_core.inference.context`)."""
        stat_grid, idx = self.context_sample(grid)
        set_mode(self._layers, CROP_MEAN if self.context == "crops" else POOLED)
        stats = jax.device_get(self._record(nnx.state(self._net),
                                            jnp.asarray(extract_tiles(padded, stat_grid, idx))))
        set_mode(self._layers, FROZEN, [tuple(np.asarray(a) for a in s) for s in stats])
        return {"side": stat_grid.tile, "used": len(idx), "of": stat_grid.n_tiles}

    def __call__(self, x: np.ndarray, desc: str = "", pattern=None
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Blended maps for normalised frames ``x`` ``(F, H, W)`` and the tiling description.
        ``pattern``: an image-level ``(PatternEstimate, (cy, cx))`` to use instead of the
        network's own estimate (e.g. :func:`blind_image_pattern`)."""
        f, h, w = x.shape
        if f != self.n_frames:
            raise InputError(f"{desc}: {f} frames, the model expects {self.n_frames}")
        grid = make_grid((h, w), self.tile, self.overlap, self.multiple, self.margin)
        padded = pad_image(x, grid)
        batch = min(self.batch_size, grid.n_tiles)
        image_context = self.context in ("image", "crops") and grid.n_tiles > 1
        origins = grid.origins()
        blenders: dict[str, Blender] = {}
        psf_sum: dict[str, np.ndarray] = {}
        psf_weight = 0.0
        bar = tqdm(total=grid.n_tiles, desc=desc or "tiles", unit="tile", leave=False,
                   disable=(not self.progress or grid.n_tiles <= batch) or None)
        with bar:
            stat_grid = None
            # One pattern for the image (it is one illumination), unless each tile is its own.
            image_pattern = (pattern if pattern is not None
                             else self.image_pattern(x) if self.context == "image" else None)
            if image_context:
                stat_grid = self._freeze_image_context(padded, grid)
            else:
                set_mode(self._layers, PER_INPUT)
            state = nnx.state(self._net)
            wiener = self.image_wiener(x, image_pattern, grid)
            for idx, tiles in self._batches(padded, grid, batch):
                # (one pattern per tile of the batch, including the repeats that pad it)
                padded_idx = idx + [idx[-1]] * (len(tiles) - len(idx))
                pattern = (self.tile_patterns(image_pattern, grid, padded_idx)
                           if image_pattern is not None else None)
                out = self._passes(state, tiles, pattern, self.tile_wiener(wiener, grid, padded_idx))
                for j, t in enumerate(idx):
                    y0, x0 = origins[t]
                    weight = float(tile_window(grid, y0, x0).sum())
                    psf_weight += weight
                    for name, (key, _, grid_kind, *_rest) in _MAPS.items():
                        if key not in out:
                            continue
                        value = np.asarray(out[key][j], np.float32)
                        if grid_kind == "psf":
                            psf_sum[name] = psf_sum.get(name, 0.0) + weight * value
                            continue
                        if name not in blenders:
                            scale = self.rescale if grid_kind == "model" else 1
                            blenders[name] = Blender(grid, value.shape[:-2], scale)
                        blenders[name].add(value, y0, x0)
                bar.update(len(idx))
        maps = {name: b.result() for name, b in blenders.items()}
        maps |= {name: total / psf_weight for name, total in psf_sum.items()}
        maps = {name: (np.sqrt(np.maximum(v, 0.0)) if _MAPS[name][1] else v).astype(np.float32)
                for name, v in maps.items()}
        info = self.tiling(grid, batch, stat_grid)
        if image_pattern is not None:
            info["light_pattern"] = pattern_summary(image_pattern)
        elif getattr(self._net, "lp_mode", "free") == "parametric":
            info["light_pattern"] = "estimated per tile (context='tile')"
        return maps, info


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


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
            "n_frames": spec["n_frames"], "uq_targets": list(spec["uq"]["targets"]),
            "obs_noise": spec["uq"]["obs_noise"], "psf_size": spec["psf_size"]}


def _map_metadata(name: str, grid_kind: str, axes: str, model: dict[str, Any],
                  norm: Normalisation, source: str, pixel_nm: float) -> dict[str, Any]:
    units = ("normalised raw units: ADU = value * norm_scale + norm_offset (std: * norm_scale)"
             if grid_kind == "camera" else "model units (normalised input)")
    info = {"map": name, "description": _MAPS[name][4], "axes": axes, "grid": grid_kind,
            "pixel_nm": pixel_nm, "units": units, "input": source,
            "model": {k: model[k] for k in ("dir", "mode", "params_hash")},
            "normalisation": norm.as_dict()}
    text = "\n".join([f"simuq map: {name} ({_MAPS[name][4]})", f"input: {source}",
                      f"model: {model['dir']} (mode {model['mode']}, params_hash "
                      f"{model['params_hash']})",
                      f"normalisation: {NORMALISATION_RULE}",
                      f"norm_offset: {norm.offset:g} ({norm.offset_source})",
                      f"norm_scale: {norm.scale:g} (percentile {norm.percentile:g})",
                      f"axes: {axes}; grid: {grid_kind}; pixel: {pixel_nm:g} nm", f"units: {units}"])
    return {"simuq": json.dumps(info, sort_keys=True), "norm_offset": norm.offset,
            "norm_scale": norm.scale, "Info": text}


def _stats(array: np.ndarray) -> dict[str, float]:
    return {"mean": float(array.mean()), "p95": float(np.percentile(array, 95)),
            "min": float(array.min()), "max": float(array.max())}


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

    :func:`~simuq_core.pattern.estimate.diagnose_pattern` estimates the pattern over the whole field
    (:func:`~simuq_core.pattern.estimate.estimate_pattern_blind`; the network's own estimate searches only
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


def ood_check(x: np.ndarray, maps: dict[str, np.ndarray], reference: dict[str, Any] | None,
              source: str) -> dict[str, Any]:
    """The image-level OOD scores of one prediction (:func:`simuq_core.uncertainty.epistemic.ood_scores`,
    from the blended maps) and, with a ``reference``, the flag: ``{"scores", "ratios",
    "flagged", "message"}``."""
    # The same scores as the epistemic stage's (:func:`simuq_core.uncertainty.epistemic.ood_scores`), from the
    # blended std maps of this one image.
    pred = {"emitter": maps["emitter"][None], "rec": maps["rec"][None],
            "emitter_var_epi": np.square(maps.get("emitter_epi_std", np.zeros_like(maps["emitter"])))[None],
            "var_rec_total": np.maximum(np.square(np.asarray(
                maps.get("rec_total_std", maps["rec_std"]), np.float64)), 1e-30)[None]}
    input_model = (reference or {}).get("input_model")
    scores = {k: float(v[0]) for k, v in ood_scores(pred, np.asarray(x)[None], input_model).items()}
    out: dict[str, Any] = {"scores": scores}
    if reference is None:
        out["flagged"] = None
        out["message"] = "no in-distribution reference given: not checked"
        return out
    if "epistemic" in reference and ("emitter_epi_std" not in maps or "rec_total_std" not in maps):
        raise InputError(f"{source}: OOD scores unavailable for this model (needs MC-dropout passes)")
    flags = ood_flags({k: np.asarray([v]) for k, v in scores.items()}, reference)
    ratios = {k: float(v[0]) for k, v in flags.items() if k != "flagged"}
    flagged = bool(flags["flagged"][0])
    out |= {"ratios": ratios, "flagged": flagged, "percentile": reference["percentile"]}
    parts = ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items() if k != "combined")
    out["message"] = (
        f"{source}: outside the training distribution (OOD score {ratios['combined']:.2f}x the "
        f"in-distribution {reference['percentile']:g}th percentile; {parts}): the uncertainty maps "
        "may not be trustworthy; fine-tune on data like this (python -m stages.finetune)" if flagged else
        f"{source}: within the training distribution (OOD score {ratios['combined']:.2f}x the "
        f"{reference['percentile']:g}th percentile)")
    return out


def _diagnosis_summary(diag: PatternDiagnosis) -> dict[str, Any]:
    return {"method": "blind full-field estimate (simuq_core.pattern.estimate.diagnose_pattern)", "ok": diag.ok,
            "frame_order_suspect": diag.frame_order_suspect, "message": diag.message,
            "angle_major": diag.angle_major.as_dict(), "phase_major": diag.phase_major.as_dict()}


def predict_file(path: str | os.PathLike, out_dir: str | os.PathLike, name: str,
                 predictor: TiledPredictor, cfg: PredictParams, model: dict[str, Any],
                 wiener=None, pattern: str = "model", period_hint: float | None = None,
                 ood_reference: dict[str, Any] | None = None) -> FileResult:
    """Process one input into ``out_dir/name/`` (module docstring); errors are raised, warnings
    returned in the :class:`FileResult`. ``pattern``: :func:`pattern_source` mode (``blind``: the
    full-field estimate and its diagnosis, :func:`blind_image_pattern`, in place of the network's
    estimate and of the quick frame-order check); ``period_hint``: its period prior (camera px);
    ``ood_reference``: the in-distribution thresholds of the OOD score (``reference.json`` of the
    ``epistemic`` stage): an input above them is flagged (:func:`ood_check`)."""
    t0 = time.perf_counter()
    path = Path(path)
    source = str(path)
    spec = predictor.spec
    array, info = read_stack(path)
    raw, layout = to_frame_stack(array, predictor.n_frames, source)
    if cfg.frame_order == "phase_major":  # frame = A·phase + angle -> angle-major P·angle + phase
        n_angles = int(spec["model"]["light_pattern"]["n_angles"])
        raw = raw[angle_major_order(n_angles, predictor.n_frames // n_angles)]
    offset, offset_source = resolve_offset(cfg.norm_offset, path, info.metadata)
    warnings = check_values(raw, source, info.dtype, offset)
    if offset_source.startswith("none"):
        warnings.append(f"{source}: no camera offset given or recorded: assumed 0 (set "
                        "--norm-offset / predict.norm_offset if the camera adds one)")
    model_pixel_nm = float(spec["model"]["optics"]["lr_pixel_nm"])
    if info.pixel_nm is not None and abs(info.pixel_nm / model_pixel_nm - 1) > _PIXEL_SIZE_TOLERANCE:
        warnings.append(f"{source}: pixel size {info.pixel_nm:.1f} nm differs from the model's "
                        f"{model_pixel_nm:.1f} nm: the PSF and pattern scale will not match")
    blind = pattern_source(pattern, path) == "blind"
    order = (frame_order_warnings(raw, source) if predictor.n_frames == 9 and not blind
             else ([], None))
    warnings += order[0]
    x, norm = normalise(raw, offset, cfg.norm_percentile, source, offset_source, cfg.equalize_frames)
    image_pattern = diag = None
    if blind:
        image_pattern, diag, cutoff = blind_image_pattern(x, spec, info.pixel_nm,
                                                          info.metadata.get("wavelength_nm"), source,
                                                          period_hint, cfg.otf_file)
        if not diag.ok:
            warnings.append(diag.message)
    maps, tiling = predictor(x, desc=path.name, pattern=image_pattern)
    ood = (ood_check(x, maps, ood_reference, source)
           if predictor.epistemic_samples or (ood_reference and "epistemic" not in ood_reference) else None)
    if ood is not None and ood.get("flagged"):
        warnings.append(ood["message"])
    wiener_info = None
    if wiener is not None and diag is not None:
        extra, wiener_info = blind_wiener_maps(x, diag.angle_major, cutoff, predictor.rescale, wiener,
                                               maps.get("rec_std"))
        maps |= extra
    elif wiener is not None:
        extra, wiener_info = wiener_maps(x, spec, wiener, maps.get("rec_std"))
        maps |= extra

    camera_nm = info.pixel_nm or model_pixel_nm
    pixel = {"camera": camera_nm, "model": camera_nm / predictor.rescale,
             "psf": camera_nm / predictor.rescale}
    summary: dict[str, Any] = {
        "input": source, "input_shape": list(info.shape), "input_dtype": str(info.dtype),
        "layout": layout,
        "frame_order": ("phase-major as read (frame = A*phase + angle), reordered to angle-major"
                        if cfg.frame_order == "phase_major" else "angle-major: frame = P*angle + phase"),
        "model": model, "normalisation": norm.as_dict(), "tiling": tiling,
        "pattern": (_diagnosis_summary(diag) if diag is not None
                    else order[1].as_dict() if order[1] is not None else None),
        "light_pattern": tiling.pop("light_pattern", None),
        "warnings": warnings, "maps": {},
    }
    if wiener_info is not None:
        summary["wiener"] = wiener_info
    if ood is not None:
        summary["ood"] = ood
    with atomic_directory(Path(out_dir) / name) as work:
        for map_name, array_out in maps.items():
            _, _, grid_kind, axes, description = _MAPS[map_name]
            write_tiff(work / f"{map_name}.tif", array_out, axes,
                       _map_metadata(map_name, grid_kind, axes, model, norm, source,
                                     pixel[grid_kind]),
                       resolution=(1000.0 / pixel[grid_kind],) * 2)
            summary["maps"][map_name] = {"file": f"{map_name}.tif", "axes": axes,
                                         "shape": list(array_out.shape), "grid": grid_kind,
                                         "pixel_nm": pixel[grid_kind], "description": description,
                                         **_stats(array_out)}
        summary["seconds"] = time.perf_counter() - t0
        write_json(work / "summary.json", summary)
    return FileResult(source, True, str(Path(out_dir) / name), None, warnings, summary)


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
            result = predict_file(path, out_dir, name, predictor, cfg, info, wiener, pattern,
                                  period_hint, ood_reference)
        except InputError as exc:
            result = FileResult(str(path), False, error=str(exc))
        except Exception as exc:  # one unexpected failure must not lose the other files
            log.debug("failure on %s", path, exc_info=True)
            result = FileResult(str(path), False, error=f"{path}: {type(exc).__name__}: {exc}")
        if not result.ok:  # no stale maps from an earlier run may pass for this input's
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for w in result.warnings:
            log.warning("%s", w)
        if not result.ok:
            log.error("%s", result.error)
        if on_result is not None:
            on_result(result)
        results.append(result)
    report = PredictReport(info | {"tile": predictor.tile, "overlap": predictor.overlap,
                                   "batch_size": predictor.batch_size,
                                   "device": str(predictor.device)}, results)
    write_json(out_dir / "report.json", report.as_dict())
    return report
