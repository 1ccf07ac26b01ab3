"""Per-method summaries of image quality and resolution: every reconstruction (widefield,
classical SIM, networks) scored by the same code, as a JSON-ready table
(:func:`quality_table`) and its Markdown form (:func:`quality_markdown`).

The metrics are those of :mod:`simuq_core.evaluation.quality` (PSNR, SSIM, spectral correlation)
and :mod:`simuq_core.evaluation.resolution` (decorrelation, FRC).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from simuq_core.evaluation.quality import (
    as_batch,
    paired_batches,
    psnr_ssim,
    register_or_keep,
    spectral_correlation,
)
from simuq_core.evaluation.resolution import decorrelation_resolution, frc_resolution

__all__ = ["quality_markdown", "quality_table"]


def _finite_mean(values: Sequence[float]) -> float | None:
    """Mean of the finite values; ``None`` (JSON ``null``) when there are none or it is not finite."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return None
    m = float(v.mean())
    return m if math.isfinite(m) else None


def quality_table(
    methods: Mapping[str, np.ndarray],
    gt: np.ndarray,
    *,
    k_wf: float,
    k_pattern: float | np.ndarray,
    pixel_nm: float,
    second: Mapping[str, np.ndarray] | None = None,
    decorr_max_freq: Mapping[str, float] | None = None,
    frc_max_freq: Mapping[str, float] | None = None,
    register: bool = True,
    upsample: int = 20,
    max_shift: float = 2.0,
) -> dict[str, dict[str, float | int | None]]:
    """Per-method means of every quality metric, ready for a JSON metrics file.

    Parameters
    ----------
    methods : ``{name: (N, H, W)}`` reconstructions (widefield, classical SIM, networks) on the grid
        of ``gt``.
    gt : ``(N, H, W)`` ground truth.
    k_wf, k_pattern : as in :func:`~simuq_core.evaluation.quality.spectral_correlation` (cycles
        per pixel of this grid).
    pixel_nm : pixel size of this grid.
    second : ``{name: (N, H, W)}`` reconstructions of independent noise realisations of the same
        samples; gives ``frc_nm`` for the methods it names.
    decorr_max_freq : ``{name: max_freq}`` for
        :func:`~simuq_core.evaluation.resolution.decorrelation_resolution` (cycles/px of this
        grid; default 0.5): ``0.5 / r`` for a method up-sampled ``r``× from the camera grid, such as
        the bilinear widefield.
    frc_max_freq : ``{name: max_freq}`` for :func:`~simuq_core.evaluation.resolution.frc_resolution`
        (default 0.5).
    register, upsample, max_shift : registration
        (:func:`~simuq_core.evaluation.quality.register_subpixel`), done once per image.

    Returns
    -------
    ``{name: {"psnr", "ssim", "spectral_corr", "spectral_corr_wf", "decorr_nm", "decorr_valid",
    ["frc_nm", "frc_valid"]}}``: means over samples (PSNR in dB, resolutions in nm; ``*_valid``
    counts the samples whose resolution was defined: a decorrelation peak was found, the FRC crossed
    1/7 before Nyquist). A mean with no finite value is ``None``.
    """
    g3, _ = as_batch(gt, "gt")
    table: dict[str, dict[str, float | int | None]] = {}
    for name, images in methods.items():
        p3, _, _ = paired_batches(images, g3, (name, "gt"))
        unregistered = 0
        if register:
            p3, unregistered = register_or_keep(p3, g3, upsample, max_shift)
        psnr, ssim = psnr_ssim(p3, g3, register=False, max_shift=max_shift)
        spec = spectral_correlation(p3, g3, k_wf, k_pattern, register=False)
        max_freq = (decorr_max_freq or {}).get(name, 0.5)
        decorr = [decorrelation_resolution(p, pixel_nm, max_freq).resolution_nm for p in p3]
        row: dict[str, float | int | None] = {
            "psnr": _finite_mean(psnr) if np.all(np.isfinite(psnr)) else None,
            "ssim": _finite_mean(ssim),
            "spectral_corr": _finite_mean(spec.beyond),
            "spectral_corr_wf": _finite_mean(spec.widefield),
            "decorr_nm": _finite_mean(decorr),
            "decorr_valid": int(np.isfinite(decorr).sum()),
            "unregistered": unregistered,
        }
        if second is not None and name in second:
            s3, _, _ = paired_batches(second[name], g3, (f"second[{name}]", "gt"))
            fmax = (frc_max_freq or {}).get(name, 0.5)
            frc = [frc_resolution(a, b, pixel_nm, fmax)
                   for a, b in zip(as_batch(images, name)[0], s3, strict=True)]
            # samples that never cross count at the searched band's edge (an upper bound)
            row["frc_nm"] = _finite_mean([r.resolution_nm for r in frc])
            row["frc_valid"] = int(sum(r.crossed for r in frc))
        table[name] = row
    return table


_COLUMNS = (("psnr", "PSNR (dB)", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"),
            ("spectral_corr", "spectral corr. beyond cut-off", "{:.3f}"),
            ("spectral_corr_wf", "spectral corr. widefield band", "{:.3f}"),
            ("decorr_nm", "decorrelation res. (nm)", "{:.0f}"), ("frc_nm", "FRC res. (nm)", "{:.0f}"))


def quality_markdown(table: Mapping[str, Mapping[str, float | int | None]]) -> str:
    """A Markdown table of :func:`quality_table`'s output, one row per method; columns that no
    method has are left out, a missing or undefined value shows as ``–``."""
    cols = [c for c in _COLUMNS if any(c[0] in row for row in table.values())]
    lines = ["| method | " + " | ".join(title for _, title, _ in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for name, row in table.items():
        cells = []
        for key, _, fmt in cols:
            v = row.get(key)
            cells.append("–" if v is None else fmt.format(v))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
