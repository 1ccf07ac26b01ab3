"""Calibration report of a trained model on a split with known truth (docs/design.md §6).

Components, each only when the model predicts its variance and a reference exists:

- ``emitter``: the emitter against its GT (pooled to the model grid). A self-supervised emitter
  has no absolute scale, so it is first fitted to GT per sample by least squares (``a·pred + b``,
  variance ``a²·var``; ``emitter_affine_fit: true`` in the outputs);
- ``lp``: the light pattern against its GT (absolute scale, mean 1 over frames, in both modes);
- ``rec``: the reconstruction against the raw input frames under ``var_rec`` (what the
  self-supervised NLL trains);
- ``noise`` (not a prediction/reference pair, so no curve and no recalibration): how well
  ``var_rec`` explains the pure measurement noise. The metric suite runs on ``pred = raw``,
  ``gt = clean`` (the noise-free signal), ``var = var_rec``, i.e. on ``z = (raw − clean)/√var_rec``.
  ``var_rec`` should be ``σ²`` plus the variance of the model's own error, so ``noise_zms ≤ 1`` is
  expected and ``noise_zms ≈ 1`` means ``var_rec`` is pure noise. Beside it:
  ``noise_std_pearson`` / ``noise_std_spearman`` (correlation of ``√var_rec`` with the true σ over
  all pixels) and ``noise_std_ratio = mean(√var_rec) / mean(σ)``.

``metrics.json`` (DVC metrics; numbers and booleans only)::

    emitter_affine_fit   bool
    settings             n_bins, min_count, n_bootstrap, confidence, pit_bins, n_levels,
                         n_fractions, seed, n_test_samples, n_val_samples
    test                 {<comp>_<name>} for <name> in metrics.METRIC_NAMES, plus the noise_std_*
    recalibrated         {<comp>_<name>} on the test split after σ-scaling fitted on val
    sigma_scale          {<comp>: s²}, s² = mean(z²) on the val split

Beside it: ``curves/calib_<comp>.csv`` and ``calib_<comp>_recalibrated.csv`` (one row per bin:
``bin, mean_var, mean_sq_err, rmv, rmse, count, ci_low, ci_high, var_low, var_high``),
``figures/calib_<comp>.png``, ``pit_<comp>.png``, ``sparsification_<comp>.png``,
``uq_vs_noise.png``, and ``summary.md``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from simuq_core.config import CalibrateParams
from simuq_core.evaluation import calibration_curves as cc
from simuq_core.evaluation import metrics as m
from simuq_core.evaluation.sim_band import SimBand
from simuq_core.evaluation.synthetic import affine_align
from simuq_core.io import atomic_file, write_json
from simuq_core.reports import plots
from simuq_core.reports.debug import DebugReference

__all__ = [
    "CURVE_COLUMNS",
    "Component",
    "ComponentReport",
    "N_FRACTIONS",
    "N_LEVELS",
    "calibration_components",
    "component_report",
    "noise_metrics",
    "write_calibration_report",
]

#: Interval levels of the miscalibration area and removal fractions of AUSE (metrics defaults).
N_LEVELS = 100
N_FRACTIONS = 100
CONFIDENCE = 0.95
CURVE_COLUMNS = ("bin", "mean_var", "mean_sq_err", "rmv", "rmse", "count", "ci_low", "ci_high",
                 "var_low", "var_high")
_UNITS = {"emitter": "a.u.", "emitter_band": "a.u.", "lp": "relative illumination",
          "rec": "normalised a.u."}
_REFERENCES = {"emitter": "GT", "emitter_band": "SIM-band-limited GT", "lp": "GT",
               "rec": "raw input frames"}


@dataclass(frozen=True)
class Component:
    """One prediction, its predicted variance and its reference, all the same shape."""

    name: str
    pred: np.ndarray
    reference: np.ndarray
    var: np.ndarray

    @property
    def err(self) -> np.ndarray:
        return np.asarray(self.pred, np.float64) - np.asarray(self.reference, np.float64)


def calibration_components(pred: Mapping[str, np.ndarray], ref: DebugReference, *,
                           emitter_affine_fit: bool, band: SimBand | None = None,
                           variance: str = "") -> dict[str, Component]:
    """The ``emitter``, ``lp`` and ``rec`` components that have both a variance and a reference,
    and, with ``band`` (the samples' SIM passbands), ``emitter_band``: emitter and GT both
    restricted to the passband, with the variance propagated through that filter
    (:class:`simuq_core.evaluation.sim_band.SimBand`), i.e. the calibration of the error the raw frames can
    see at all.

    ``variance``: which variance of an ensemble prediction (:mod:`simuq_core.uncertainty.epistemic`) to judge:
    ``""`` the aleatoric part (single network), ``"_epi"`` or ``"_total"``.
    """
    out = {"rec": Component("rec", pred["rec"], ref.x, pred["var_rec" + variance])}
    if "emitter_var" in pred and ref.emitter is not None:
        mean, var = pred["emitter"], pred["emitter_var" + variance]
        if emitter_affine_fit:
            mean, var, _ = affine_align(mean, ref.emitter, var)
            var = np.maximum(var, np.finfo(np.float64).tiny)  # a = 0 only for a constant emitter
        out["emitter"] = Component("emitter", mean, ref.emitter, var)
        if band is not None:
            out["emitter_band"] = Component("emitter_band", band.limit(mean), band.limit(ref.emitter),
                                            np.maximum(band.limit_variance(var), np.finfo(np.float64).tiny))
    if "lp_var" in pred and ref.light_pattern is not None:
        out["lp"] = Component("lp", pred["light_pattern"], ref.light_pattern, pred["lp_var" + variance])
    order = ("emitter", "emitter_band", "lp", "rec")
    return {k: out[k] for k in order if k in out}


def _pearson_spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")
    return float(np.corrcoef(a, b)[0, 1]), float(stats.spearmanr(a, b).statistic)


def noise_metrics(x: np.ndarray, clean: np.ndarray, sigma: np.ndarray, var_rec: np.ndarray, *,
                  n_bins: int) -> dict[str, float]:
    """The ``noise`` component (see the module docstring); all inputs ``(N, F, H, W)``."""
    out = m.calibration_metrics(x, clean, var_rec, component="noise", n_bins=n_bins,
                                n_levels=N_LEVELS, n_fractions=N_FRACTIONS)
    std, s = np.sqrt(np.asarray(var_rec, np.float64)).ravel(), np.asarray(sigma, np.float64).ravel()
    out["noise_std_pearson"], out["noise_std_spearman"] = _pearson_spearman(std, s)
    out["noise_std_ratio"] = float(std.mean() / s.mean())
    return out


class ComponentReport(NamedTuple):
    """Everything the report holds for one component."""

    metrics: dict[str, float]
    """Test-split metrics, :func:`simuq_core.evaluation.metrics.calibration_metrics`."""
    recalibrated: dict[str, float] | None
    """The same after σ-scaling (``None`` without a val split)."""
    s2: float | None
    """σ-scaling factor fitted on val."""
    curve: cc.CalibrationCurve
    curve_recalibrated: cc.CalibrationCurve | None
    pit: cc.PITHistogram
    pit_recalibrated: cc.PITHistogram | None
    sparsification: cc.Sparsification


def component_report(test: Component, val: Component | None, cfg: CalibrateParams) -> ComponentReport:
    """Metrics, curve, PIT and sparsification of ``test``; σ-scaling fitted on ``val``."""
    name = test.name

    def suite(var: np.ndarray) -> dict[str, float]:
        return m.calibration_metrics(test.pred, test.reference, var, component=name,
                                     n_bins=cfg.n_bins, n_levels=N_LEVELS, n_fractions=N_FRACTIONS)

    def curve(var: np.ndarray) -> cc.CalibrationCurve:
        return cc.calibration_curve(test.err, var, n_bins=cfg.n_bins, binning=cfg.binning,
                                   min_count=cfg.min_count, n_bootstrap=cfg.n_bootstrap,
                                   confidence=CONFIDENCE, seed=cfg.seed)

    err = test.err
    s2 = recal = curve_recal = pit_recal = None
    if val is not None:
        s2 = m.fit_sigma_scale(val.err, val.var)
        var_recal = m.apply_sigma_scale(test.var, s2)
        recal = suite(var_recal)
        curve_recal = curve(var_recal)
        pit_recal = cc.pit_histogram(err, var_recal, n_bins=cfg.pit_bins)
    return ComponentReport(
        metrics=suite(test.var),
        recalibrated=recal,
        s2=s2,
        curve=curve(test.var),
        curve_recalibrated=curve_recal,
        pit=cc.pit_histogram(err, test.var, n_bins=cfg.pit_bins),
        pit_recalibrated=pit_recal,
        sparsification=cc.sparsification(err, test.var, n_fractions=N_FRACTIONS),
    )


def _write_curve_csv(path: Path, curve: cc.CalibrationCurve) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CURVE_COLUMNS)
    for b in range(len(curve.mean_var)):
        writer.writerow([b, *(repr(float(v)) for v in (
            curve.mean_var[b], curve.mean_sq_err[b], curve.rmv[b], curve.rmse[b])),
            int(curve.count[b]), repr(float(curve.ci_low[b])), repr(float(curve.ci_high[b])),
            repr(float(curve.edges[b])), repr(float(curve.edges[b + 1]))])
    with atomic_file(path) as tmp:
        tmp.write_text(buf.getvalue())


def _write_figures(fig_dir: Path, name: str, rep: ComponentReport, cfg: CalibrateParams,
                   mode: str, affine: bool) -> None:
    what = f"{name} vs {_REFERENCES[name]}"
    if name.startswith("emitter") and affine:
        what += " (affine fit per sample)"
    where = f"{mode} model, test split"
    curves = {f"test (ZMS {rep.metrics[f'{name}_zms']:.3g})": rep.curve}
    pits = {"test": rep.pit}
    if rep.curve_recalibrated is not None:
        label = f"σ-scaled, s² = {rep.s2:.3g} fitted on val (ZMS {rep.recalibrated[f'{name}_zms']:.3g})"
        curves[label] = rep.curve_recalibrated
        pits[f"σ-scaled (s² = {rep.s2:.3g})"] = rep.pit_recalibrated
    binning = "equal-count" if cfg.binning == "equal_count" else "log-spaced"
    plots.plot_calibration_curves(fig_dir / f"calib_{name}.png", curves,
                                  title=f"calibration: {what}, {where}", unit=_UNITS[name],
                                  confidence=CONFIDENCE, binning=binning)
    plots.plot_pit_histograms(fig_dir / f"pit_{name}.png", pits, title=f"PIT histogram: {what}, {where}")
    plots.plot_sparsification(fig_dir / f"sparsification_{name}.png", rep.sparsification,
                              title=f"sparsification: {what}, {where}")


_TABLE_COLUMNS = (
    ("calib_ratio", "calib ratio", "1"),
    ("zms", "ZMS", "1"),
    ("corr", "Pearson(v, e²)", "= ref."),
    ("corr_ref", "ref.", "–"),
    ("spearman", "Spearman", "> 0"),
    ("coverage_68", "cov. 68%", "0.683"),
    ("coverage_95", "cov. 95%", "0.950"),
    ("miscal_area", "miscal. area", "0"),
    ("ence", "ENCE", "≈ √(B/πN)"),
    ("ause", "AUSE", "0"),
    ("nll", "NLL", "–"),
    ("rmse", "RMSE", "–"),
    ("rmv", "RMV", "= RMSE"),
)


def _fmt(v: float) -> str:
    return "nan" if not np.isfinite(v) else f"{v:.4g}"


def _summary_markdown(reports: Mapping[str, ComponentReport], noise: dict[str, float] | None,
                      cfg: CalibrateParams, mode: str, affine: bool, n_test: int,
                      n_val: int | None) -> str:
    lines = [f"# Calibration report: {mode} model", ""]
    lines += [f"Test split: {n_test} samples. σ-scaling (s² = mean z²) fitted on the val split "
              f"({n_val} samples) and applied to the test split." if n_val else
              f"Test split: {n_test} samples (no val split: no recalibration).", ""]
    binning = "equal-count" if cfg.binning == "equal_count" else "log-spaced"
    lines += [f"Bins: B = {cfg.n_bins} {binning} bins of predicted variance (≥ {cfg.min_count} "
              f"pixels each) for ENCE and the curves; {cfg.n_bootstrap} bootstrap resamples, "
              f"{CONFIDENCE:.0%} intervals; {N_LEVELS} interval levels (miscalibration area); "
              f"{N_FRACTIONS} removal fractions (AUSE).", ""]
    if "emitter" in reports:
        lines += [f"Emitter affine fit: {'yes' if affine else 'no'}"
                  + (" (self-supervised: no absolute scale; a·pred + b fitted to GT per sample, "
                     "variance × a²)." if affine else "."), ""]
    head = ["component", "reference", *(c[1] for c in _TABLE_COLUMNS)]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rep in reports.items():
        rows = [(name, rep.metrics)]
        if rep.recalibrated is not None:
            rows.append((f"{name}, σ-scaled (s² = {rep.s2:.3g})", rep.recalibrated))
        for label, values in rows:
            cells = [_fmt(values[f"{name}_{key}"]) for key, _, _ in _TABLE_COLUMNS]
            lines.append("| " + " | ".join([label, _REFERENCES[name], *cells]) + " |")
    lines.append("| ideal | | " + " | ".join(c[2] for c in _TABLE_COLUMNS) + " |")
    lines += ["", "ref.: Pearson a perfect Gaussian model reaches with this variance map, "
              "CV/√(2 + 3CV²) ≤ 0.577 (docs/design.md §6). NLL in nats/pixel.", ""]
    if noise is not None:
        lines += ["## Predicted rec std against the true noise σ", "",
                  "| Pearson(std, σ) | Spearman(std, σ) | mean std / mean σ | "
                  "ZMS of (raw − clean) under var_rec | cov. 68% | cov. 95% |",
                  "|---|---|---|---|---|---|",
                  "| " + " | ".join(_fmt(noise[k]) for k in (
                      "noise_std_pearson", "noise_std_spearman", "noise_std_ratio", "noise_zms",
                      "noise_coverage_68", "noise_coverage_95")) + " |", "",
                  "var_rec = σ² + model-error variance when calibrated, so the noise ZMS should be "
                  "≤ 1 (1: var_rec is pure noise) and mean std / mean σ ≥ 1.", ""]
    lines += ["Figures: `figures/calib_<comp>.png`, `pit_<comp>.png`, `sparsification_<comp>.png`, "
              "`uq_vs_noise.png`; curve data: `curves/calib_<comp>*.csv`; numbers: `metrics.json`.", ""]
    return "\n".join(lines)


def write_calibration_report(
    test: Mapping[str, Component],
    val: Mapping[str, Component] | None,
    cfg: CalibrateParams,
    out_dir: str | os.PathLike,
    *,
    mode: str,
    emitter_affine_fit: bool,
    noise: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    names: Sequence[str] | None = None,
    n_val: int | None = None,
) -> dict:
    """Write the report (module docstring) to ``out_dir``; return the ``metrics.json`` content.

    ``test`` / ``val``: components of each split (:func:`calibration_components`); ``noise``:
    ``(raw, clean, sigma, var_rec)`` of the test split, ``(N, F, H, W)`` each; ``names``: test
    sample names for the figures.
    """
    out_dir = Path(out_dir)
    reports = {name: component_report(comp, (val or {}).get(name), cfg) for name, comp in test.items()}
    test_metrics: dict[str, float] = {}
    recal: dict[str, float] = {}
    scales: dict[str, float] = {}
    for name, rep in reports.items():
        test_metrics |= rep.metrics
        _write_curve_csv(out_dir / "curves" / f"calib_{name}.csv", rep.curve)
        if rep.recalibrated is not None:
            recal |= rep.recalibrated
            scales[name] = rep.s2
            _write_curve_csv(out_dir / "curves" / f"calib_{name}_recalibrated.csv",
                             rep.curve_recalibrated)
        _write_figures(out_dir / "figures", name, rep, cfg, mode, emitter_affine_fit)
    noise_values = None
    if noise is not None:
        raw, clean, sigma, var_rec = noise
        noise_values = noise_metrics(raw, clean, sigma, var_rec, n_bins=cfg.n_bins)
        test_metrics |= noise_values
        plots.plot_uq_vs_noise(out_dir / "figures" / "uq_vs_noise.png", sigma, np.sqrt(var_rec),
                               names=names, subtitle=f" ({mode} model, test split)")
    n_test = len(next(iter(test.values())).pred)
    result = {
        "emitter_affine_fit": bool(emitter_affine_fit),
        "settings": {"n_bins": cfg.n_bins, "min_count": cfg.min_count,
                     "n_bootstrap": cfg.n_bootstrap, "confidence": CONFIDENCE,
                     "pit_bins": cfg.pit_bins, "n_levels": N_LEVELS, "n_fractions": N_FRACTIONS,
                     "seed": cfg.seed, "n_test_samples": n_test, "n_val_samples": n_val or 0},
        "test": test_metrics,
        "recalibrated": recal,
        "sigma_scale": scales,
    }
    write_json(out_dir / "metrics.json", result)
    with atomic_file(out_dir / "summary.md") as tmp:
        tmp.write_text(_summary_markdown(reports, noise_values, cfg, mode, emitter_affine_fit,
                                         n_test, n_val))
    return result


# ----------------------------------------------------------------------------------------------
# Calibration curves from saved debug folders (the stand-alone tool)
# ----------------------------------------------------------------------------------------------


def _debug_folders(root: Path) -> list[Path]:
    if (root / "uq_uncertainty.npz").exists():
        return [root]
    return sorted(p.parent for p in root.glob("*/uq_uncertainty.npz"))


def _components_from_debug(folder: Path) -> dict[str, Component]:
    """Rebuild the components of one debug folder from its npz (variances = std²)."""
    import json

    summary_path = folder / "uq_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    with np.load(folder / "uq_uncertainty.npz") as npz:
        arrays = {k: npz[k].astype(np.float64) for k in npz.files}
    if "input" not in arrays:
        return {}
    pred = {k: arrays[k] for k in ("rec", "emitter", "light_pattern") if k in arrays}
    pred["var_rec"] = arrays["rec_std"] ** 2
    for comp in ("emitter", "lp"):
        if f"{comp}_std" in arrays:
            pred[f"{comp}_var"] = arrays[f"{comp}_std"] ** 2
    ref = DebugReference(x=arrays["input"], emitter=arrays.get("emitter_gt"),
                         light_pattern=arrays.get("lp_gt"))
    return calibration_components(pred, ref,
                                  emitter_affine_fit=bool(summary.get("emitter_affine_fit", False)))


def debug_calibration_curves(root: str | os.PathLike, out_dir: str | os.PathLike, *,
                             n_bins: int = 15, min_count: int = 30, n_bootstrap: int = 200,
                             seed: int = 0) -> list[Path]:
    """Calibration curves of every debug folder under ``root`` (or of ``root`` itself), one curve
    per folder (e.g. per epoch), written as ``<out_dir>/calib_<comp>.png``.

    Folders need the reference arrays (``input``, ``emitter_gt``, ``lp_gt``) that
    :func:`simuq_core.reports.debug.write_uncertainty_artifacts` stores when given a reference; folders
    without them, or with fewer than ``min_count`` pixels, are skipped.
    """
    root, out_dir = Path(root), Path(out_dir)
    folders = _debug_folders(root)
    if not folders:
        raise FileNotFoundError(f"{root}: no uq_uncertainty.npz in it or in its sub-folders")
    curves: dict[str, dict[str, cc.CalibrationCurve]] = {}
    for folder in folders:
        for name, comp in _components_from_debug(folder).items():
            if comp.err.size < min_count:
                continue
            curves.setdefault(name, {})[folder.name] = cc.calibration_curve(
                comp.err, comp.var, n_bins=n_bins, min_count=min_count, n_bootstrap=n_bootstrap,
                confidence=CONFIDENCE, seed=seed)
    if not curves:
        raise ValueError(f"{root}: no debug folder holds predictions with their reference "
                         "(input / emitter_gt / lp_gt); re-export them with a reference")
    written = []
    for name, by_folder in curves.items():
        title = f"calibration: {name} vs {_REFERENCES[name]}, {root.name} ({len(by_folder)} folder(s))"
        written.append(plots.plot_calibration_curves(out_dir / f"calib_{name}.png", by_folder,
                                                     title=title, unit=_UNITS[name],
                                                     confidence=CONFIDENCE))
    return written
