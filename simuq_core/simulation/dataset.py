"""The synthetic dataset on disk: writing it and loading it back (docs/design.md §3).

Layout under ``root`` (one folder per split, names ``000000`` …)::

    <split>/<name>.tif         (F, H, W)   raw frames, float32 ADU, ImageJ axes ZYX
    <split>_gt/<name>.tif      (Hh, Wh)    emitter GT, ImageJ axes YX
    <split>_gt/<name>_lp.tif   (F, Hh, Wh) light-pattern GT, mean 1 over frames
    <split>_meta/<name>.npz    noise σ (F, H, W) in ADU, noise mask, clean signal (ADU), PSF and its
                               NA, pattern k / phase / modulation per frame, photon scale,
                               normalisation (norm_offset, norm_scale)
    dataset.json               params, counts, seed, geometry, format version, content digest

The loader normalises ``x = (raw - norm_offset) / norm_scale`` and the true noise std to
``sigma / norm_scale``: the same affine map, so calibration against ``sigma`` is exact.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from simuq_core.config import SimulateParams
from simuq_core.io import (
    atomic_directory,
    directory_digest,
    read_tiff,
    write_json,
    write_npz,
    write_tiff,
)
from simuq_core.simulation.samples import SPLITS, psf_size, sample_rng, simulate_sample

__all__ = ["DATASET_FORMAT_VERSION", "DatasetSplit", "load_split", "write_dataset"]

DATASET_FORMAT_VERSION = 1
NORMALISATION_RULE = "x = (raw - norm_offset) / norm_scale; sigma_x = noise_sigma / norm_scale"


def _split_sizes(cfg: SimulateParams) -> dict[str, int]:
    return {"train": cfg.n_samples, "val": cfg.n_val, "test": cfg.n_test}


def write_dataset(
    cfg: SimulateParams,
    out_dir: str | os.PathLike,
    progress: bool = True,
    *,
    sizes: Mapping[str, int] | None = None,
) -> dict:
    """Simulate every split and write it to ``out_dir`` atomically; return the manifest.

    The folder appears only once complete: an interrupted run leaves the previous dataset (if any)
    in place. Sample ``i`` of a split depends only on ``(seed, split, i)``. ``sizes`` (split ->
    count, e.g. ``{"test": 32}``) writes only those splits; default: ``n_samples``, ``n_val``,
    ``n_test`` of ``cfg``.
    """
    if sizes is None:
        sizes = _split_sizes(cfg)
    elif unknown := set(sizes) - set(SPLITS):
        raise ValueError(f"sizes: unknown split(s) {sorted(unknown)}; expected some of {SPLITS}")
    sizes = {split: int(sizes[split]) for split in SPLITS if split in sizes}
    lr_um = cfg.psf.lr_pixel_nm / 1000.0
    hr_um = lr_um / cfg.hr_factor
    with atomic_directory(out_dir) as work, tqdm(
        total=sum(sizes.values()), desc="simulate", unit="sample", disable=not progress or None
    ) as bar:
        for split in sizes:
            for i in range(sizes[split]):
                bar.set_postfix_str(split)
                s = simulate_sample(sample_rng(cfg.seed, split, i), cfg)
                name = f"{i:06d}"
                write_tiff(work / split / f"{name}.tif", s.raw, "ZYX",
                           resolution=(1 / lr_um, 1 / lr_um))
                write_tiff(work / f"{split}_gt" / f"{name}.tif", s.emitter, "YX",
                           resolution=(1 / hr_um, 1 / hr_um))
                write_tiff(work / f"{split}_gt" / f"{name}_lp.tif", s.light_pattern, "ZYX",
                           resolution=(1 / hr_um, 1 / hr_um))
                write_npz(work / f"{split}_meta" / f"{name}.npz", **s.meta())
                bar.update()
        manifest = _manifest(cfg, sizes, directory_digest(work))
        write_json(work / "dataset.json", manifest)
    return manifest


def _manifest(cfg: SimulateParams, sizes: dict[str, int], digest: str) -> dict[str, Any]:
    return {
        "format_version": DATASET_FORMAT_VERSION,
        "seed": cfg.seed,
        "counts": sizes,
        "params": cfg.model_dump(mode="json"),
        "geometry": {
            "n_frames": cfg.n_frames,
            "frame_order": "angle-major: frame = n_phases * angle + phase",
            "lr_shape": [cfg.lr_h, cfg.lr_w],
            "hr_shape": [cfg.lr_h * cfg.hr_factor, cfg.lr_w * cfg.hr_factor],
            "hr_factor": cfg.hr_factor,
            "lr_pixel_nm": cfg.psf.lr_pixel_nm,
            "hr_pixel_nm": cfg.hr_pixel_nm,
            "psf_size": psf_size(cfg.psf, cfg.hr_pixel_nm),
            "pattern_period_lr": cfg.period_lr,
        },
        "units": {
            "raw": "ADU (gain * electrons + offset), float32, not clipped",
            "noise_sigma": "ADU, exact std of raw - clean",
            "emitter_gt": "relative density, max 1 per sample",
            "lp_gt": "relative illumination, mean 1 over frames",
        },
        "normalisation": {
            "rule": NORMALISATION_RULE,
            "norm_offset": "camera offset (ADU)",
            "norm_scale": f"per sample: percentile {cfg.noise.norm_percentile} of raw - offset",
        },
        "content_sha256": digest,
    }


@dataclass(frozen=True)
class DatasetSplit:
    """A split in memory, normalised as the loader promises.

    raw, clean, sigma : ``(N, F, H, W)`` float32, normalised units (``sigma`` = true noise std).
    emitter : ``(N, Hh, Wh)``; light_pattern : ``(N, F, Hh, Wh)`` (``None`` without GT).
    norm_offset, norm_scale : ``(N,)`` what was applied to each sample.
    psf : ``(N, K, K)`` the true PSF on the data's HR grid, sums to 1 (``None`` if not stored).
    pattern_k : ``(N, F, 2)`` true pattern wave vectors ``(ky, kx)``, cycles per LR pixel;
    psf_na : ``(N,)`` the PSF's numerical aperture (``None`` if not stored).
    """

    names: list[str]
    raw: np.ndarray
    clean: np.ndarray
    sigma: np.ndarray
    noise_mask: np.ndarray
    emitter: np.ndarray | None
    light_pattern: np.ndarray | None
    norm_offset: np.ndarray
    norm_scale: np.ndarray
    psf: np.ndarray | None = None
    pattern_k: np.ndarray | None = None
    psf_na: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)


def load_split(root: str | os.PathLike, split: str, limit: int | None = None) -> DatasetSplit:
    """Load ``<root>/<split>`` with its metadata (required) and ground truth (when present)."""
    root = Path(root)
    raw_dir = root / split
    files = sorted(raw_dir.glob("*.tif"))
    if not files:
        raise FileNotFoundError(f"{raw_dir}: no .tif stacks found (expected <split>/<name>.tif)")
    files = files[:limit] if limit else files
    out: dict[str, list] = {k: [] for k in ("raw", "clean", "sigma", "mask", "em", "lp", "off", "sc",
                                       "psf", "k", "na")}
    for f in files:
        meta_path = root / f"{split}_meta" / f"{f.stem}.npz"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path}: missing metadata (normalisation) for {f}")
        with np.load(meta_path) as meta:
            off, scale = float(meta["norm_offset"]), float(meta["norm_scale"])
            out["sigma"].append(meta["noise_sigma"] / scale)
            out["clean"].append((meta["clean"] - off) / scale)
            out["mask"].append(meta["noise_mask"])
            if "psf" in meta.files:
                out["psf"].append(meta["psf"])
            if "pattern_k" in meta.files and "psf_na" in meta.files:
                out["k"].append(meta["pattern_k"])
                out["na"].append(float(meta["psf_na"]))
        out["raw"].append((read_tiff(f).astype(np.float32) - off) / scale)
        out["off"].append(off)
        out["sc"].append(scale)
        gt = root / f"{split}_gt" / f"{f.stem}.tif"
        if gt.exists():
            out["em"].append(read_tiff(gt))
            out["lp"].append(read_tiff(gt.with_name(f"{f.stem}_lp.tif")))
    has_gt = len(out["em"]) == len(files)
    return DatasetSplit(
        names=[f.stem for f in files],
        raw=np.stack(out["raw"]).astype(np.float32),
        clean=np.stack(out["clean"]).astype(np.float32),
        sigma=np.stack(out["sigma"]).astype(np.float32),
        noise_mask=np.stack(out["mask"]).astype(np.float32),
        emitter=np.stack(out["em"]).astype(np.float32) if has_gt else None,
        light_pattern=np.stack(out["lp"]).astype(np.float32) if has_gt else None,
        norm_offset=np.asarray(out["off"]),
        norm_scale=np.asarray(out["sc"]),
        psf=np.stack(out["psf"]).astype(np.float32) if len(out["psf"]) == len(files) else None,
        pattern_k=np.stack(out["k"]).astype(np.float64) if len(out["k"]) == len(files) else None,
        psf_na=np.asarray(out["na"]) if len(out["na"]) == len(files) else None,
    )
