"""Held-out parts of a lab's acquisitions for GT-free validation of fine-tuning: whole files, or a
strip of each field on an edge that holds structure like the rest of it (a strip of empty
background would validate nothing). Step 3 of :mod:`simuq_core.realdata.crops`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from simuq_core.realdata.crops import DataIndex, IndexedAcquisition, Region, read_crop

__all__ = ["held_out_structure", "split_regions", "structure_score"]


def structure_score(image: np.ndarray, otf_cutoff: float) -> float:
    """How much imaged structure a widefield ``image`` ``(h, w)`` holds, per pixel: its Hann-windowed
    spectral power in the detection band ``0.1·k_c < |f| < k_c`` (``otf_cutoff``, cycles/px) minus
    the noise floor measured beyond ``1.15·k_c`` (zero where the camera leaves no such band).
    Empty background scores ≈ 0 whatever its brightness or noise."""
    img = np.asarray(image, np.float64)
    h, w = img.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2((img - img.mean()) * win)) ** 2 / (win**2).sum()
    radius = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :])
    band = (radius > 0.1 * otf_cutoff) & (radius < otf_cutoff)
    beyond = radius > 1.15 * otf_cutoff
    floor = float(power[beyond].mean()) if beyond.any() else 0.0
    return float(max(power[band].sum() - floor * band.sum(), 0.0) / (h * w))


# A held-out strip holds "structure like the field" when its score is at least this share of the
# whole field's: the first candidate that does is taken, else the one with most structure.
_STRIP_STRUCTURE_SHARE = 0.7
_STRIP_SIDES = ("right", "left", "bottom", "top")


def _strip(entry: IndexedAcquisition, crop: int, fraction: float, multiple: int
           ) -> tuple[str, tuple[int, int, int, int], tuple[int, int, int, int], float]:
    """The held-out strip of one acquisition: ``(side, training rectangle, held-out rectangle,
    structure share)``, rectangles as ``(y0, y1, x0, x1)``, chosen among the four edges
    (:func:`structure_score` of the time-averaged widefield image, share of the whole field's)."""
    t_count, _, h, w = entry.shape
    wide = np.mean([read_crop(entry, t, 0, 0, (h, w)).mean(axis=0) for t in range(t_count)], axis=0)
    whole = structure_score(wide, entry.otf_cutoff)
    candidates = []
    for side in _STRIP_SIDES:
        size = w if side in ("right", "left") else h
        strip = int(np.ceil(fraction * size / multiple) * multiple)
        strip = min(strip, size - crop)
        if strip < multiple:
            continue
        rects = {"right": ((0, h, 0, w - strip), (0, h, w - strip, w)),
                 "left": ((0, h, strip, w), (0, h, 0, strip)),
                 "bottom": ((0, h - strip, 0, w), (h - strip, h, 0, w)),
                 "top": ((strip, h, 0, w), (0, strip, 0, w))}[side]
        y0, y1, x0, x1 = rects[1]
        share = structure_score(wide[y0:y1, x0:x1], entry.otf_cutoff) / whole if whole > 0 else 1.0
        candidates.append((side, rects[0], rects[1], share))
    if not candidates:
        raise ValueError(f"{entry.path}: {h}×{w} px is too small for {crop}-px training crops and a "
                         "held-out strip: lower val_block_fraction or the crop size")
    good = [c for c in candidates if c[3] >= _STRIP_STRUCTURE_SHARE]
    return good[0] if good else max(candidates, key=lambda c: c[3])


def split_regions(index: DataIndex, crop: int, *, val_fraction: float = 0.2,
                  val_files: Sequence[str] = (), val_block_fraction: float = 0.25, multiple: int = 1,
                  seed: int = 0, val_split: Literal["auto", "files", "strips"] = "auto"
                  ) -> tuple[list[Region], list[Region]]:
    """Training and held-out regions (module docstring, step 3), one per time point.

    ``val_split``: ``files`` holds out whole acquisitions: ``val_files`` (matched by path or file
    name; overrides ``val_fraction``), else ``round(val_fraction·N)`` of them (at least 1 when
    ``N ≥ 2`` and ``val_fraction > 0``), drawn with ``seed``. ``strips`` holds out a strip of every
    acquisition, ``val_block_fraction`` of its width or height (rounded up to ``multiple`` px), on
    the edge that holds structure (:func:`_strip`); no training crop overlaps it. Use it when the
    files are views of one field (SNR levels, repeats): a whole held-out file would then be seen
    anyway. ``auto``: strips for a single acquisition, files otherwise. Each held-out
    :class:`Region` of a strip records nothing more; :func:`held_out_structure` reports the
    strips' structure. Raises ``ValueError`` when no training crop of side ``crop`` fits.
    """
    acqs = index.acquisitions
    n = len(acqs)
    strips = val_split == "strips" or (val_split == "auto" and n == 1)
    held: set[int] = set()
    if strips:
        pass
    elif val_files:
        wanted = {str(v) for v in val_files}
        held = {i for i, a in enumerate(acqs) if a.path in wanted or Path(a.path).name in wanted}
        missing = wanted - {acqs[i].path for i in held} - {Path(acqs[i].path).name for i in held}
        if missing:
            raise ValueError(f"val_files not among the indexed acquisitions: {sorted(missing)}")
    elif n >= 2 and val_fraction > 0:
        k = min(n - 1, max(1, round(val_fraction * n)))
        held = {int(i) for i in np.random.default_rng([seed, n]).permutation(n)[:k]}
    train, val = [], []
    for i, a in enumerate(acqs):
        t_count = a.shape[0]
        if strips:
            _, (ty0, ty1, tx0, tx1), (vy0, vy1, vx0, vx1), _ = _strip(a, crop, val_block_fraction,
                                                                      multiple)
            for t in range(t_count):
                train.append(Region(i, t, ty0, ty1, tx0, tx1))
                val.append(Region(i, t, vy0, vy1, vx0, vx1))
            continue
        h, w = a.shape[2:]
        for t in range(t_count):
            (val if i in held else train).append(Region(i, t, 0, h, 0, w))
    for r in train:
        if min(r.shape) < crop:
            raise ValueError(f"{acqs[r.acq].path}: training region {r.shape} is smaller than the crop {crop}")
    return train, val


def held_out_structure(index: DataIndex, regions: Sequence[Region]) -> dict[str, Any]:
    """How much structure the held-out ``regions`` hold: per region, :func:`structure_score` of its
    widefield image as a share of its acquisition's whole field, with the side of a strip; and the
    smallest share. A share near 0 means the held-out numbers measure background only."""
    rows = []
    for r in regions:
        entry = index.acquisitions[r.acq]
        _, _, h, w = entry.shape
        wide = read_crop(entry, r.t, 0, 0, (h, w)).mean(axis=0)
        whole = structure_score(wide, entry.otf_cutoff)
        part = structure_score(wide[r.y0:r.y1, r.x0:r.x1], entry.otf_cutoff)
        rows.append({"path": entry.path, "t": r.t, "rect_yx": [r.y0, r.y1, r.x0, r.x1],
                     "structure_share": part / whole if whole > 0 else float("nan")})
    shares = [row["structure_share"] for row in rows if np.isfinite(row["structure_share"])]
    return {"regions": rows, "min_structure_share": min(shares) if shares else float("nan")}
