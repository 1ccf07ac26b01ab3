"""Overlapping tiles with smooth blending: predicting images larger than the training crop.

Pure NumPy geometry: where the tiles lie, how each is weighted and how predictions are blended
back. (What the network sees of the rest of the image while predicting a tile, its GroupNorm
statistics and PSF, is :mod:`simuq_core.inference.context`.)

**Grid.** Along each axis (length ``L``, tile ``t``, overlap ``o``) tiles start at ``0, s, 2s, …``
with stride ``s = t − o``; the last tile is shifted to end exactly at the image edge, so it may
share more than ``o`` pixels with its neighbour. An axis shorter than one tile is reflection-padded
to ``t`` (centred) and the outputs are cropped back.

**Window.** Separable, ``w(y, x) = w_y(y) · w_x(x)``. Along an axis a tile's weight is 1, except on
a side it shares with a neighbour, where it rises over the ``o`` pixels of the overlap as a raised
cosine ``w(i) = sin²(π/2 · (i + ½)/o)``, ``i = 0 … o−1`` counted from that edge. Sides on the image
border are not tapered. Two tiles overlapping by exactly ``o`` pixels have weights
``sin² + cos² = 1`` (a partition of unity); everywhere the blend divides by ``Σ w`` anyway. The
weight is smooth and falls to ≈ 0 at a tile's edge, where its prediction is worst, so neither the
mean nor the std maps show a seam. A ``margin`` ``m`` (``2m < o``) sets the weight to exactly 0 on
the ``m`` pixels next to a shared edge and ramps over the ``o − 2m`` pixels after them (still a
partition of unity): a tile's edge then never enters the blend. Near its edges a tile's emitter is
genuinely undetermined (the PSF there reaches outside the tile), so its variance can be orders of
magnitude above the interior's; a weight of 10⁻³ is not small enough to keep that out of the
weighted mean of variances (seen on real data). Sides on the image border keep their
edge pixels: there the uncertainty is the image's own.

**Blending.** A map at ``scale`` pixels per camera pixel (1: camera grid; ``rescale``: model grid)
uses the same window sampled on its own grid. Means: ``m = Σ_t w_t m_t / Σ_t w_t``. Variances:
``v = Σ_t w_t v_t / Σ_t w_t`` (a weighted mean of the *variances*; the std map is ``sqrt(v)``).
The tile predictions are not independent measurements (they see the same noisy pixels), so the
variance is not reduced by averaging (``Σ w² v / (Σ w)²`` would be over-confident); averaging
variances rather than stds gives ``sqrt(v) ≥ Σ w σ / Σ w`` (Jensen), the conservative choice.
The spread *between* tiles is not added: it is a tiling (context) error, not data uncertainty,
and adding it would draw the seams into the std maps.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Blender", "TileGrid", "axis_window", "extract_tiles", "make_grid", "pad_image",
           "tile_starts", "tile_window"]


def tile_starts(length: int, tile: int, overlap: int) -> np.ndarray:
    """Start offsets of the tiles along one axis of ``length ≥ tile`` pixels (module docstring)."""
    if length < tile:
        raise ValueError(f"axis of {length} px is shorter than the tile ({tile} px): pad it first")
    stride = tile - overlap
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return np.asarray(starts, dtype=int)


def axis_window(tile: int, overlap: int, taper_start: bool, taper_end: bool,
                margin: int = 0) -> np.ndarray:
    """1-D weights ``(tile,)``: 1, with a raised-cosine ramp over ``overlap`` px on tapered sides
    (its first ``margin`` px exactly 0, the ramp over the ``overlap − 2·margin`` px after them)."""
    if margin < 0 or (overlap > 0 and 2 * margin >= overlap) or (overlap == 0 and margin):
        raise ValueError(f"tile margin {margin} px must be in [0, overlap/2) (overlap {overlap} px)")
    w = np.ones(tile)
    if overlap > 0:
        n = overlap - 2 * margin
        ramp = np.sin(0.5 * np.pi * (np.arange(overlap) - margin + 0.5) / n) ** 2
        ramp[:margin] = 0.0
        ramp[overlap - margin:] = 1.0
        if taper_start:
            w[:overlap] *= ramp
        if taper_end:
            w[tile - overlap:] *= ramp[::-1]
    return w


class TileGrid(NamedTuple):
    """Where the tiles of one image lie (camera pixels).

    shape : ``(H, W)`` of the image as given; padded : ``(Hp, Wp)`` after reflection padding;
    pad : ``(top, left)`` offsets of the image inside the padded one; tile, overlap : pixels;
    starts_y, starts_x : tile start offsets in the padded image (row-major order of tiles).
    """

    shape: tuple[int, int]
    padded: tuple[int, int]
    pad: tuple[int, int]
    tile: int
    overlap: int
    starts_y: np.ndarray
    starts_x: np.ndarray
    margin: int = 0

    @property
    def n_tiles(self) -> int:
        return len(self.starts_y) * len(self.starts_x)

    def origins(self) -> list[tuple[int, int]]:
        """``(y0, x0)`` of every tile, row-major."""
        return [(int(y), int(x)) for y in self.starts_y for x in self.starts_x]


def make_grid(shape: tuple[int, int], tile: int, overlap: int, multiple: int = 1,
              margin: int = 0) -> TileGrid:
    """The tile grid for an image of ``shape`` ``(H, W)``.

    ``tile`` must be a multiple of ``multiple`` (the U-Net needs ``2**depth``) and at least twice
    the ``overlap`` (the two ramps of a tile must not cross); ``margin`` (module docstring) below
    half the overlap.
    """
    axis_window(tile, overlap, True, True, margin)  # validates the margin
    if tile < 1 or tile % multiple:
        raise ValueError(f"tile {tile} px must be a positive multiple of {multiple} "
                         f"(the U-Net halves its input {int(np.log2(multiple))} times)")
    if overlap < 0 or 2 * overlap > tile:
        raise ValueError(f"overlap {overlap} px must be in [0, tile/2 = {tile // 2}]")
    h, w = shape
    hp, wp = max(h, tile), max(w, tile)
    pad = ((hp - h) // 2, (wp - w) // 2)
    return TileGrid((h, w), (hp, wp), pad, tile, overlap,
                    tile_starts(hp, tile, overlap), tile_starts(wp, tile, overlap), margin)


def pad_image(image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Reflection-pad the last two axes of ``image`` ``(..., H, W)`` to the grid's padded shape."""
    (h, w), (hp, wp), (top, left) = grid.shape, grid.padded, grid.pad
    if (hp, wp) == (h, w):
        return image
    widths = [(0, 0)] * (image.ndim - 2) + [(top, hp - h - top), (left, wp - w - left)]
    return np.pad(image, widths, mode="reflect" if min(h, w) > 1 else "edge")


def extract_tiles(image: np.ndarray, grid: TileGrid, indices: range | list[int]) -> np.ndarray:
    """Tiles ``indices`` (row-major) of the padded ``image`` ``(C, Hp, Wp)`` -> ``(n, C, t, t)``."""
    origins = grid.origins()
    t = grid.tile
    return np.stack([image[:, y:y + t, x:x + t] for y, x in (origins[i] for i in indices)])


def tile_window(grid: TileGrid, y0: int, x0: int, scale: int = 1) -> np.ndarray:
    """The blending window ``(t·scale, t·scale)`` of the tile at ``(y0, x0)`` on a grid ``scale``×
    finer: sides that touch a neighbouring tile are tapered over ``overlap·scale`` pixels."""
    t, o = grid.tile, grid.overlap
    (hp, wp) = grid.padded
    m = grid.margin * scale
    wy = axis_window(t * scale, o * scale, y0 > 0, y0 + t < hp, m)
    wx = axis_window(t * scale, o * scale, x0 > 0, x0 + t < wp, m)
    return np.outer(wy, wx).astype(np.float32)


class Blender:
    """Accumulates weighted tile predictions of one map and returns the blended image.

    ``lead`` is the map's shape in front of its two spatial axes (``()`` for the emitter, ``(F,)``
    for frame stacks); ``scale`` its pixels per camera pixel. Means and variances blend with the
    same weights (module docstring); ``result`` crops the reflection padding away.
    """

    def __init__(self, grid: TileGrid, lead: tuple[int, ...], scale: int):
        self.grid, self.scale = grid, scale
        hp, wp = grid.padded
        self._sum = np.zeros((*lead, hp * scale, wp * scale), np.float32)
        self._weight = np.zeros((hp * scale, wp * scale), np.float32)
        self._windows: dict[tuple[bool, ...], np.ndarray] = {}  # at most 9 kinds of tile

    def add(self, tile: np.ndarray, y0: int, x0: int) -> None:
        """Add one tile prediction ``(*lead, t·scale, t·scale)`` whose camera origin is ``(y0, x0)``."""
        s, t = self.scale, self.grid.tile
        n = t * s
        hp, wp = self.grid.padded
        kind = (y0 > 0, y0 + t < hp, x0 > 0, x0 + t < wp)
        if kind not in self._windows:
            self._windows[kind] = tile_window(self.grid, y0, x0, s)
        w = self._windows[kind]
        sl = (slice(y0 * s, y0 * s + n), slice(x0 * s, x0 * s + n))
        self._sum[(..., *sl)] += w * tile
        self._weight[sl] += w

    def result(self) -> np.ndarray:
        """The blended map ``(*lead, H·scale, W·scale)`` of the unpadded image."""
        s = self.scale
        (h, w), (top, left) = self.grid.shape, self.grid.pad
        out = self._sum / self._weight
        return out[..., top * s:(top + h) * s, left * s:(left + w) * s]
