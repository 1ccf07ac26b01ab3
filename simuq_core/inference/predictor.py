"""The tiled predictor: a trained network applied to a normalised stack of any size.

:class:`TiledPredictor` runs one image ``(F, H, W)`` in five steps, each a method:

1. **plan** (:meth:`~TiledPredictor.plan`): the tile grid (:mod:`simuq_core.inference.tiling`),
   the reflection-padded image and the batch size, capped by the memory the device has free;
2. **freeze the context** (:meth:`~TiledPredictor.freeze_context`): the network's input-global
   parts (GroupNorm statistics, the pooled PSF features) computed once for the image and frozen,
   so that every tile sees the same normalisation (:mod:`simuq_core.inference.context`);
3. **condition** (:meth:`~TiledPredictor.condition`): one light-pattern estimate for the image
   (one illumination) and, for a network that reads it, one Wiener SIM input image;
4. **loop** (:meth:`~TiledPredictor.run_tiles`): batches of tiles through the jitted network
   (optionally MC-dropout passes), each tile given the image's pattern and its slice of the
   Wiener image, accumulated into blenders;
5. **blend** (:meth:`~TiledPredictor.blend`): the weighted means (variances: weighted mean of
   variances, then square-rooted) and the tile-weighted PSF.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from simuq_core.config import UQParams
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
from simuq_core.inference.maps import MAPS
from simuq_core.inference.tiling import Blender, TileGrid, extract_tiles, make_grid, pad_image, tile_window
from simuq_core.network.forward import predict
from simuq_core.pattern.estimate import PatternEstimate
from simuq_core.realdata.checks import InputError
from simuq_core.uncertainty.epistemic import EnsembleAccumulator

__all__ = ["CONTEXTS", "DEFAULT_TILE", "PATTERN_CROP", "TiledPredictor", "pattern_summary", "resolve_tile"]


# Side of the centred crop the image-level pattern is estimated on (camera pixels).
PATTERN_CROP = 256


DEFAULT_TILE = 32


# Fraction of the free device memory one batch of tiles may use (the rest: weights, XLA buffers).
_MEMORY_FRACTION = 0.5


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


# How a tiled image's input-global network parts are computed (:class:`TiledPredictor`).
CONTEXTS = ("image", "crops", "tile")


def _resolve_context(context: str, spec: dict[str, Any]) -> str:
    """``auto``: a model fine-tuned on crops of real stacks normalises like a crop."""
    if context == "auto":
        context = "crops" if spec.get("mode") == "finetune" else "image"
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS} or 'auto', got {context!r}")
    return context


@dataclass
class _Plan:
    """How one image is cut: its grid, the padded frames and the batch of tiles per pass."""

    grid: TileGrid
    padded: np.ndarray
    batch: int


@dataclass
class _Accumulator:
    """Blended maps under construction: one :class:`Blender` per image map, and the tile-weighted
    sums of the PSF maps (a PSF belongs to no pixel)."""

    blenders: dict[str, Blender] = field(default_factory=dict)
    psf_sum: dict[str, np.ndarray] = field(default_factory=dict)
    psf_weight: float = 0.0


class TiledPredictor:
    """A trained network applied to normalised stacks of any size ``(F, H, W)`` (module docstring).

    ``__call__`` returns the blended maps of :data:`~simuq_core.inference.maps.MAPS` present for
    the model's UQ targets, as ``{name: np.ndarray}`` (``*_std`` already square-rooted), plus the
    tiling description.

    ``context``: how the input-global parts of the network see a tiled image:

    - ``"image"``: computed once for the image in one extra network pass over statistics tiles up
      to ``stat_scale × tile`` per side (at most ``stat_tiles`` of them, an even sub-grid) and
      frozen for every tile;
    - ``"crops"``: computed once from statistics tiles of the prediction tile's size, averaging
      each one's own statistics (``CROP_MEAN``): what a network trained on crops of that size saw
      for a typical crop, and so the right choice for a model fine-tuned on crops of real stacks;
    - ``"tile"``: each tile its own (the training behaviour, but tiles then get different feature
      gains and PSFs);
    - ``"auto"``: ``"crops"`` for a fine-tuned model, else ``"image"``.

    An image that fits in one tile is one pass either way.
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
        self.context = _resolve_context(context, spec)
        self.stat_scale = 1 if self.context == "crops" else int(stat_scale)
        self.stat_tiles = int(stat_tiles)
        make_grid((self.tile, self.tile), self.tile, self.overlap, self.multiple, self.margin)  # validates
        self.device = jax.devices()[0]
        self._budget_batches(batch_size)
        self.progress = progress
        # MC dropout: one jitted pass per key, pooled on the host: mean and aleatoric maps
        # averaged over the passes, plus the passes' variance. (Passes inside one trace would
        # touch the context layers from an inner trace, which NNX refuses.)
        self._mc_keys = (member_keys(epistemic_seed, epistemic_samples, float(getattr(model, "dropout", 0.0)))
                         if epistemic_samples > 0 else None)
        self.epistemic_samples = 0 if self._mc_keys is None else int(epistemic_samples)
        self._compile(model)

    # -- set-up ---------------------------------------------------------------------------------

    def _budget_batches(self, batch_size: int) -> None:
        """Tiles per pass: ``batch_size``, capped by :data:`_MEMORY_FRACTION` of the device's
        free memory over :func:`_tile_bytes`. The statistics pass runs the network only (no
        variance propagation, about half the memory of a prediction): it may use twice the pixels
        of a batch of tiles."""
        free = _free_bytes(self.device)
        per_tile = _tile_bytes(self.tile, self.rescale, self.n_frames, int(self.spec["model"]["width"]),
                               int(self.spec["psf_size"]))
        cap = max(1, int(_MEMORY_FRACTION * free) // per_tile) if free else batch_size
        self.batch_size = max(1, min(batch_size, cap))
        self._stat_pixels = 2 * max(cap, self.batch_size) * self.tile**2

    def _compile(self, model: nnx.Module) -> None:
        """The jitted functions: the forward pass with every map, the statistics recorder of the
        context layers, the network's own pattern estimate and its Wiener input image."""
        keys = [key for key, *_ in MAPS.values()]
        self._net, paths = with_context_layers(model)
        self._layers = [get_path(self._net, p) for p in paths]
        graphdef, _ = nnx.split(self._net)
        uq = self.uq

        @jax.jit
        def forward(state, x, pattern, wiener, key=None):
            out = predict(nnx.merge(graphdef, state), x, uq, pattern, wiener, dropout_key=key)
            return {k: out[k] for k in keys if k in out}

        @jax.jit
        def record(state, x):
            net = nnx.merge(graphdef, state)
            net(x)  # only the statistics are returned; XLA drops the unused heads
            return [get_path(net, p).stats() for p in paths]

        self._forward, self._record = forward, record
        self._estimate = (jax.jit(lambda x: model.estimate_pattern(x))
                          if getattr(model, "lp_mode", "free") == "parametric" else None)
        self._wiener = (jax.jit(lambda x, p: model.wiener_image(x, p))
                        if getattr(model, "wiener_input", False) else None)

    # -- the five steps -------------------------------------------------------------------------

    def __call__(self, x: np.ndarray, desc: str = "", pattern=None
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Blended maps for normalised frames ``x`` ``(F, H, W)`` and the tiling description.
        ``pattern``: an image-level ``(PatternEstimate, (cy, cx))`` to use instead of the
        network's own estimate (e.g. :func:`~simuq_core.inference.image_pattern.blind_image_pattern`)."""
        plan = self.plan(x, desc)
        stat_grid = self.freeze_context(plan)
        image_pattern, wiener = self.condition(x, plan, pattern)
        acc = self.run_tiles(plan, image_pattern, wiener, desc)
        info = self.tiling(plan.grid, plan.batch, stat_grid)
        if image_pattern is not None:
            info["light_pattern"] = pattern_summary(image_pattern)
        elif getattr(self._net, "lp_mode", "free") == "parametric":
            info["light_pattern"] = "estimated per tile (context='tile')"
        return self.blend(acc), info

    def plan(self, x: np.ndarray, desc: str = "") -> _Plan:
        f, h, w = x.shape
        if f != self.n_frames:
            raise InputError(f"{desc}: {f} frames, the model expects {self.n_frames}")
        grid = make_grid((h, w), self.tile, self.overlap, self.multiple, self.margin)
        return _Plan(grid, pad_image(x, grid), min(self.batch_size, grid.n_tiles))

    def freeze_context(self, plan: _Plan) -> dict[str, Any] | None:
        """Image-level context (``image`` / ``crops`` with more than one tile): one ``POOLED`` (or
        ``CROP_MEAN``) pass over the statistics tiles, then frozen; otherwise every input its own.
        Returns the statistics tiles' description, or ``None``."""
        if not (self.context in ("image", "crops") and plan.grid.n_tiles > 1):
            set_mode(self._layers, PER_INPUT)
            return None
        stat_grid, idx = self.context_sample(plan.grid)
        set_mode(self._layers, CROP_MEAN if self.context == "crops" else POOLED)
        stats = jax.device_get(self._record(nnx.state(self._net),
                                            jnp.asarray(extract_tiles(plan.padded, stat_grid, idx))))
        set_mode(self._layers, FROZEN, [tuple(np.asarray(a) for a in s) for s in stats])
        return {"side": stat_grid.tile, "used": len(idx), "of": stat_grid.n_tiles}

    def condition(self, x: np.ndarray, plan: _Plan, pattern=None):
        """The image's pattern (the one given, else the network's estimate on the image unless
        each tile is its own context) and the Wiener input image computed with it."""
        image_pattern = (pattern if pattern is not None
                         else self.image_pattern(x) if self.context == "image" else None)
        return image_pattern, self.image_wiener(x, image_pattern, plan.grid)

    def run_tiles(self, plan: _Plan, image_pattern, wiener: np.ndarray | None,
                  desc: str = "") -> _Accumulator:
        grid, acc = plan.grid, _Accumulator()
        state = nnx.state(self._net)
        bar = tqdm(total=grid.n_tiles, desc=desc or "tiles", unit="tile", leave=False,
                   disable=(not self.progress or grid.n_tiles <= plan.batch) or None)
        with bar:
            for idx, tiles in self._batches(plan.padded, grid, plan.batch):
                # one pattern per tile of the batch, including the repeats that pad it
                padded_idx = idx + [idx[-1]] * (len(tiles) - len(idx))
                pattern = (self.tile_patterns(image_pattern, grid, padded_idx)
                           if image_pattern is not None else None)
                out = self._passes(state, tiles, pattern, self.tile_wiener(wiener, grid, padded_idx))
                self._accumulate(acc, grid, idx, out)
                bar.update(len(idx))
        return acc

    def _accumulate(self, acc: _Accumulator, grid: TileGrid, idx: list[int], out: dict[str, Any]) -> None:
        origins = grid.origins()
        for j, t in enumerate(idx):
            y0, x0 = origins[t]
            weight = float(tile_window(grid, y0, x0).sum())
            acc.psf_weight += weight
            for name, (key, _, grid_kind, *_rest) in MAPS.items():
                if key not in out:
                    continue
                value = np.asarray(out[key][j], np.float32)
                if grid_kind == "psf":
                    acc.psf_sum[name] = acc.psf_sum.get(name, 0.0) + weight * value
                    continue
                if name not in acc.blenders:
                    scale = self.rescale if grid_kind == "model" else 1
                    acc.blenders[name] = Blender(grid, value.shape[:-2], scale)
                acc.blenders[name].add(value, y0, x0)

    @staticmethod
    def blend(acc: _Accumulator) -> dict[str, np.ndarray]:
        maps = {name: b.result() for name, b in acc.blenders.items()}
        maps |= {name: total / acc.psf_weight for name, total in acc.psf_sum.items()}
        return {name: (np.sqrt(np.maximum(v, 0.0)) if MAPS[name][1] else v).astype(np.float32)
                for name, v in maps.items()}

    # -- parts of the steps ---------------------------------------------------------------------

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
