"""The ``epistemic`` report: aleatoric, epistemic and total calibration of a model (MC dropout or
an ensemble, :mod:`simuq_core.uncertainty.epistemic`) on the in-distribution test split and on every
out-of-distribution split (:mod:`simuq_core.simulation.ood`), and the image-level OOD score with its ROC AUC.

Written to ``out_dir`` (replaced atomically):

- ``metrics.json``: per split (``test``, ``ood/<shift>``, ``ood/combined`` = all OOD splits
  pooled) and per variance (``aleatoric`` / ``epistemic`` / ``total``): ZMS, coverage 68/95 and calib
  ratio of emitter (against GT and SIM-band-limited GT), light pattern and rec; the emitter PSNR
  (self-supervised: after the per-sample affine fit, whose scale also multiplies the std); the OOD
  scores' ROC AUC (test vs each OOD split, and vs the pooled OOD split) and the flagged fraction;
- ``reference.json``: the in-distribution thresholds of the OOD scores (val split), read by
  ``predict`` to flag inputs;
- ``summary.md``; ``figures/ood_samples.png`` (per OOD sample: |error| | aleatoric std | epistemic
  std) and ``figures/calib_emitter.png`` (calibration curves, aleatoric vs total, test vs pooled OOD).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simuq_core.config import EpistemicParams, UQParams
from simuq_core.evaluation import calibration_curves as cc
from simuq_core.evaluation import metrics as m
from simuq_core.evaluation.sim_band import SimBand
from simuq_core.evaluation.synthetic import affine_fit_psnr
from simuq_core.inference.ensemble import make_ensemble_predictor
from simuq_core.io import atomic_directory, read_json, write_json
from simuq_core.network.store import load_model
from simuq_core.optics.imaging import otf_cutoff_cycles_per_px
from simuq_core.reports import plots
from simuq_core.reports.calibration import calibration_components
from simuq_core.reports.synthetic import model_truth, sim_band
from simuq_core.simulation.dataset import load_split
from simuq_core.uncertainty.epistemic import (
    OOD_SCORES,
    check_members,
    fit_input_model,
    input_features,
    ood_flags,
    ood_reference,
    ood_scores,
    roc_auc,
)

__all__ = ["VARIANCES", "epistemic_report", "load_members", "split_metrics"]

log = logging.getLogger("simuq.epistemic")

#: Report name -> suffix of the variance keys (:mod:`simuq_core.uncertainty.epistemic`).
VARIANCES = {"aleatoric": "", "epistemic": "_epi", "total": "_total"}
_KEYS = ("zms", "coverage_68", "coverage_95", "calib_ratio")


def load_members(model_dirs: Sequence[str | os.PathLike]) -> tuple[list, list[dict[str, Any]]]:
    """Load every ensemble member and refuse a set that disagrees (:func:`check_members`)."""
    if not model_dirs:
        raise ValueError("at least one model folder is needed")
    # Check the members' specs before building anything: a mismatched member would otherwise fail
    # later with a less telling shape error.
    for d in model_dirs:
        if not (Path(d) / "model.json").exists():
            raise FileNotFoundError(f"ensemble member {d}: no model.json (train it first)")
    check_members([read_json(Path(d) / "model.json") for d in model_dirs], [str(d) for d in model_dirs])
    loaded = [load_model(d) for d in model_dirs]
    specs = [spec for _, spec in loaded]
    modes = {spec["mode"] for spec in specs}
    if len(modes) > 1:
        raise ValueError(f"ensemble members mix training modes {sorted(modes)}: {list(map(str, model_dirs))}")
    return [model for model, _ in loaded], specs


def total_scales(pred: Mapping[str, np.ndarray], ref, band: SimBand | None, *,
                 affine: bool) -> dict[str, float]:
    """σ-scaling of the total variance per component, fitted on this (val) split:
    ``s² = mean(z²)`` (:func:`simuq_core.evaluation.metrics.fit_sigma_scale`)."""
    comps = calibration_components(pred, ref, emitter_affine_fit=affine, band=band, variance="_total")
    return {name: m.fit_sigma_scale(c.err, np.maximum(np.asarray(c.var, np.float64), 1e-30))
            for name, c in comps.items()}


def split_metrics(pred: Mapping[str, np.ndarray], ref, band: SimBand | None, *,
                  affine: bool, scales: Mapping[str, float] | None = None) -> dict[str, float]:
    """``<variance>_<component>_<metric>`` for the three variances (and ``total_scaled``: the
    total variance × the val split's ``scales``), plus ``emitter_psnr``."""
    out: dict[str, float] = {}
    for label, suffix in VARIANCES.items():
        comps = calibration_components(pred, ref, emitter_affine_fit=affine, band=band,
                                       variance=suffix)
        for name, comp in comps.items():
            var = np.maximum(np.asarray(comp.var, np.float64), 1e-30)  # epistemic var is 0 without dropout
            variants = {label: var}
            if label == "total" and scales and name in scales:
                variants["total_scaled"] = var * scales[name]
            for tag, v in variants.items():
                values = m.calibration_metrics(comp.pred, comp.reference, v, component=name,
                                               n_levels=10, n_fractions=10)
                out |= {f"{tag}_{name}_{k}": values[f"{name}_{k}"] for k in _KEYS}
    if ref.emitter is not None:
        out["emitter_psnr"] = affine_fit_psnr(np.asarray(pred["emitter"]), ref.emitter)[0]
    return out


def training_input_model(data_dir: Path, spec: Mapping[str, Any], limit: int = 512) -> dict[str, Any]:
    """The in-distribution model of the classical input statistics (:func:`input_features` per
    block of the model's training-crop size, :func:`fit_input_model`) from up to ``limit`` stacks
    of the training split, with the block size and OTF cut-off it was fitted at."""
    optics = spec["model"]["optics"]
    cutoff = otf_cutoff_cycles_per_px(float(optics["na"]), float(optics["wavelength_nm"]),
                                      float(optics["lr_pixel_nm"]))
    split = load_split(data_dir, "train", limit=limit)
    window = int(min(spec.get("train_crop") or split.raw.shape[-2:]))
    model = fit_input_model(input_features(split.raw, window, cutoff))
    return model | {"window": window, "otf_cutoff": cutoff, "n_train": len(split)}


def _ood_splits(ood_dir: Path) -> list[str]:
    manifest = ood_dir / "ood.json"
    if not manifest.exists():
        raise FileNotFoundError(f"{ood_dir}: no ood.json (run `python -m stages.simulate_ood` first)")
    return list(read_json(manifest)["shifts"])


def epistemic_report(model_dirs: Sequence[str | os.PathLike], data_dir: str | os.PathLike,
                     ood_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: EpistemicParams,
                     batch_size: int = 8) -> dict[str, Any]:
    """Write the report (module docstring); return ``metrics.json``'s content."""
    models, specs = load_members(model_dirs)
    spec = specs[0]
    affine = spec["mode"] == "selfsup"
    run = make_ensemble_predictor([(mod, UQParams(**s["uq"])) for mod, s in zip(models, specs, strict=True)],
                                  cfg.n_samples, cfg.seed, batch_size)
    ood_dir = Path(ood_dir)
    sources = [("val", Path(data_dir)), ("test", Path(data_dir))]
    sources += [(f"ood/{name}", ood_dir / name) for name in _ood_splits(ood_dir)]
    results: dict[str, dict[str, float]] = {}
    scores: dict[str, dict[str, np.ndarray]] = {}
    kept: dict[str, tuple] = {}
    input_model = training_input_model(Path(data_dir), spec)
    for name, root in sources:
        split = load_split(root, "val" if name == "val" else "test")
        ref = model_truth(split, spec)
        pred = run(ref.x)
        band = sim_band(split, spec, root)
        scores[name] = ood_scores(pred, ref.x, input_model)
        if name == "val":
            scales = total_scales(pred, ref, band, affine=affine)
        else:
            results[name] = split_metrics(pred, ref, band, affine=affine, scales=scales)
            kept[name] = (ref, pred, band)
        log.info("%s: %d samples, total emitter ZMS %.3g", name, len(split),
                 results.get(name, {}).get("total_emitter_zms", float("nan")))
    reference = ood_reference(scores["val"], cfg.ood_percentile) | {"input_model": input_model}
    ood_names = [n for n in results if n.startswith("ood/")]
    pooled_ood = {s: np.concatenate([scores[n][s] for n in ood_names]) for s in OOD_SCORES}
    flags = {n: ood_flags(scores[n], reference) for n in ["test", *ood_names]}
    pooled_flags = ood_flags(pooled_ood, reference)
    detection: dict[str, dict[str, float]] = {}
    for n in [*ood_names, "ood/combined"]:
        f = pooled_flags if n == "ood/combined" else flags[n]
        detection[n] = {"auc_combined": roc_auc(flags["test"]["combined"], f["combined"]),
                        **{f"auc_{s}": roc_auc(flags["test"][s], f[s]) for s in OOD_SCORES},
                        "flagged_fraction": float(np.mean(f["flagged"]))}
    detection["test"] = {"flagged_fraction": float(np.mean(flags["test"]["flagged"]))}
    results["ood/combined"] = _pooled_metrics(kept, ood_names, affine, scales)
    members = [str(d) for d in model_dirs]
    dropout = [float(s["model"].get("dropout", 0.0)) for s in specs]
    method = ("ensemble" if len(members) > 1 else "mc_dropout" if dropout[0] > 0 else "none")
    result = {"method": method, "members": members, "n_samples": cfg.n_samples,
              "total_sigma_scale_val": scales,
              "mode": spec["mode"], "emitter_affine_fit": affine, "metrics": results,
              "ood_detection": detection, "reference": reference}
    with atomic_directory(out_dir) as work:
        write_json(work / "metrics.json", result)
        write_json(work / "reference.json", {**reference, "method": method, "members": members,
                                             "n_samples": cfg.n_samples, "seed": cfg.seed})
        _figures(work / "figures", kept, ood_names, cfg, affine, spec["mode"])
        (work / "summary.md").write_text(_summary(result))
    return result


def _pooled_metrics(kept: Mapping[str, tuple], names: Sequence[str], affine: bool,
                    scales: Mapping[str, float]) -> dict[str, float]:
    """Metrics of the pooled OOD split (pixels of every shift together)."""
    from simuq_core.reports.debug import DebugReference

    refs = [kept[n][0] for n in names]
    preds = [kept[n][1] for n in names]
    bands = [kept[n][2] for n in names]
    keys = set.intersection(*(set(p) for p in preds))
    pred = {k: np.concatenate([p[k] for p in preds]) for k in keys}

    def cat(attr: str):
        vals = [getattr(r, attr) for r in refs]
        return None if any(v is None for v in vals) else np.concatenate(vals)

    ref = DebugReference(x=cat("x"), emitter=cat("emitter"), light_pattern=cat("light_pattern"))
    band = None if any(b is None for b in bands) else SimBand(
        np.concatenate([b.k for b in bands]),
        np.concatenate([np.broadcast_to(b.cutoff, (len(b.k),)) for b in bands]))
    return split_metrics(pred, ref, band, affine=affine, scales=scales)


def _figures(fig_dir: Path, kept: Mapping[str, tuple], ood_names: Sequence[str],
             cfg: EpistemicParams, affine: bool, mode: str) -> None:
    # One sample from each of the first shifts: |error| | aleatoric std | epistemic std.
    rows = []
    for name in ood_names[: cfg.n_figure_samples]:
        ref, pred, _ = kept[name]
        comps = {label: calibration_components(pred, ref, emitter_affine_fit=affine, variance=suffix)
                 for label, suffix in VARIANCES.items()}
        if "emitter" not in comps["total"]:
            continue
        e = comps["aleatoric"]["emitter"]
        rows.append((name.removeprefix("ood/"), np.abs(e.err[0]),
                     np.sqrt(comps["aleatoric"]["emitter"].var[0]),
                     np.sqrt(comps["epistemic"]["emitter"].var[0])))
    if rows:
        plots.plot_error_std_rows(fig_dir / "ood_samples.png", rows,
                                  title=f"{mode} model on out-of-distribution samples (emitter)")
    curves = {}
    for split in ("test", "ood/" + ood_names[0].removeprefix("ood/")) if ood_names else ("test",):
        ref, pred, _ = kept[split]
        for label in ("aleatoric", "total"):
            comp = calibration_components(pred, ref, emitter_affine_fit=affine,
                                          variance=VARIANCES[label]).get("emitter")
            if comp is None:
                continue
            var = np.maximum(np.asarray(comp.var, np.float64), 1e-30)  # epistemic var is 0 without dropout
            curves[f"{split}, {label}"] = cc.calibration_curve(comp.err, var, n_bins=12, n_bootstrap=50)
    if curves:
        plots.plot_calibration_curves(fig_dir / "calib_emitter.png", curves,
                                      title=f"emitter calibration, {mode} model")


def _summary(result: Mapping[str, Any]) -> str:
    lines = [f"# Epistemic uncertainty and OOD check: {result['mode']} model", "",
             f"Method: {result['method']} ({len(result['members'])} model(s), "
             f"{result['n_samples']} passes per model with dropout). Total variance = aleatoric "
             "(mean of the members' variances) + epistemic (variance of their means).", ""]
    if result["emitter_affine_fit"]:
        lines += ["Self-supervised emitter: affine fit to GT per sample (its scale multiplies the "
                  "std).", ""]
    lines += ["| split | emitter PSNR | emitter ZMS alea / total / total σ-scaled | emitter cov95 alea / "
              "total / total σ-scaled | band-limited ZMS total | band-limited cov95 total | "
              "rec ZMS total | flagged | AUC |",
              "|---|---|---|---|---|---|---|---|---|"]
    det = result["ood_detection"]
    for split, v in result["metrics"].items():
        def g(key: str, v: Mapping[str, float] = v) -> str:
            val = v.get(key)
            return "–" if val is None else f"{val:.3g}"
        auc = det.get(split, {}).get("auc_combined")
        flagged = det.get(split, {}).get("flagged_fraction")
        lines.append(
            f"| {split} | {g('emitter_psnr')} | {g('aleatoric_emitter_zms')} / {g('total_emitter_zms')} / "
            f"{g('total_scaled_emitter_zms')} | {g('aleatoric_emitter_coverage_95')} / "
            f"{g('total_emitter_coverage_95')} / {g('total_scaled_emitter_coverage_95')} | "
            f"{g('total_emitter_band_zms')} | {g('total_emitter_band_coverage_95')} | "
            f"{g('total_rec_zms')} | {'–' if flagged is None else f'{flagged:.2f}'} | "
            f"{'–' if auc is None else f'{auc:.3f}'} |")
    ref = result["reference"]
    scales = ", ".join(f"{k} {v:.3g}" for k, v in result["total_sigma_scale_val"].items())
    lines += ["", f"σ-scaled: the total variance × s² fitted on the in-distribution val split ({scales}).",
              "", f"OOD score: per image, `epistemic` = mean epistemic emitter std / mean emitter, "
              f"`misfit` = raw-frame ZMS under the total rec variance, `input` = Mahalanobis "
              "distance of the classical input statistics (level, widefield band powers) to the "
              "training split's; each divided by its "
              f"{ref['percentile']:g}th percentile on the in-distribution val split "
              f"({ref['n_val']} images); combined = the largest ratio, flagged above 1. AUC: test "
              "(in distribution) vs that split, of the combined score.", "",
              "| split | AUC epistemic | AUC misfit | AUC input | AUC combined |", "|---|---|---|---|---|"]
    for split, d in det.items():
        if "auc_combined" in d:
            lines.append(f"| {split} | " + " | ".join(
                f"{d[k]:.3f}" if k in d else "–"
                for k in ("auc_epistemic", "auc_misfit", "auc_input", "auc_combined")) + " |")
    lines.append("")
    return "\n".join(lines)
