"""Predictions on real acquisitions scored against a reference reconstruction of the same field
(:mod:`simuq_core.evaluation.reference`): widefield, the Wiener SIM image and every model's
emitter by the same code, every std map calibrated, twins compared; a table and a figure.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from simuq_core.evaluation.reference import ReferenceMismatch, score_against_reference, twin_check
from simuq_core.evaluation.synthetic import widefield
from simuq_core.inference.files import read_input
from simuq_core.io import read_json, read_tiff
from simuq_core.realdata.normalise import Normalisation

__all__ = [
    "load_prediction",
    "numeric_metrics",
    "plot_reference_calibration",
    "read_reference",
    "reference_markdown",
    "reference_report",
]


def load_prediction(folder: str | os.PathLike) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]]:
    """One predict output folder: its ``summary.json``, the normalised raw frames ``(F, H, W)``
    (read as predict read them, with its recorded normalisation, in float64) and its maps."""
    folder = Path(folder)
    summary = read_json(folder / "summary.json")
    model = summary["model"]
    path = summary["input"].split(" (time point")[0]
    order = "phase_major" if summary["frame_order"].startswith("phase-major") else "angle_major"
    frames = read_input(path, int(model["n_frames"]), int(model["n_angles"]), order).frames
    raw = frames[int(summary.get("time_point", 0))]
    x = Normalisation.from_dict(summary["normalisation"]).apply(raw, np.float64)
    maps = {name: read_tiff(folder / entry["file"]) for name, entry in summary["maps"].items()}
    return summary, x, maps


def read_reference(path: str | os.PathLike) -> np.ndarray:
    """A reference image ``(H, W)`` float64 from a TIFF or MRC file (singleton axes dropped);
    :class:`ValueError` naming the file and its shape when it is not one 2-D image."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference {path}: no such file")
    if path.suffix.lower() in (".mrc", ".dv"):
        import mrcfile

        with mrcfile.open(path, permissive=True) as f:
            data = np.asarray(f.data)
    else:
        data = read_tiff(path)
    image = np.squeeze(np.asarray(data, np.float64))
    if image.ndim != 2:
        raise ValueError(f"reference {path}: shape {np.shape(data)}; expected one 2-D image on the "
                         "model grid")
    return image


def numeric_metrics(obj: Any, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested report as flat ``a_b_c`` names (lists indexed), for MLflow."""
    out: dict[str, float] = {}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        name = f"{prefix}{key}".replace("|", "_").replace(".", "_")
        if isinstance(value, dict | list):
            out |= numeric_metrics(value, f"{name}_")
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def _predictions(predict_dir: Path) -> dict[str, dict[str, Path]]:
    """``{model: {input name: output folder}}`` of the successful predictions under ``predict_dir``."""
    out: dict[str, dict[str, Path]] = {}
    for model_dir in sorted(p for p in predict_dir.iterdir() if (p / "report.json").is_file()):
        for item in read_json(model_dir / "report.json")["inputs"]:
            if item["ok"]:
                folder = Path(item["output"])
                out.setdefault(model_dir.name, {})[folder.name] = folder
    return out


def reference_report(predict_dir: str | os.PathLike, reference: np.ndarray | None, *, na: float,
                     wavelength_nm: float, twins: bool = False, max_shift: float = 8.0) -> dict[str, Any]:
    """Every input predicted under ``predict_dir`` (one folder per model, as the real pipeline's
    ``predict`` stage writes them) scored against ``reference`` ``(rH, rW)``, on the model grid:
    ``widefield`` (the frames' mean, bilinearly up-sampled), ``wiener`` (with ``wiener_std`` when
    predicted) and each model's ``emitter`` with its ``emitter_std``. ``twins``: the inputs are
    views of one field; each model's emitters of every pair are compared
    (:func:`~simuq_core.evaluation.reference.twin_check`). ``reference`` ``None``: the twins only
    (ground-truth-free). Returns ``{"inputs": {name: scores}, "twins": {model: {pair: metrics}},
    "warnings": [...]}``."""
    predictions = _predictions(Path(predict_dir))
    if not predictions:
        raise FileNotFoundError(f"{predict_dir}: no successful prediction (no <model>/report.json with "
                                "ok inputs)")
    reference = np.asarray(reference, np.float64) if reference is not None else None
    report: dict[str, Any] = {"inputs": {}, "twins": {}, "warnings": []}
    emitters: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for name in sorted({n for inputs in predictions.values() for n in inputs}):
        images: dict[str, np.ndarray] = {}
        stds: dict[str, np.ndarray] = {}
        k_wf = k_pattern = math.nan
        for model, inputs in predictions.items():
            if name not in inputs:
                continue
            summary, x, maps = load_prediction(inputs[name])
            r = int(summary["model"]["rescale"])
            camera_nm = summary["maps"]["rec"]["pixel_nm"]
            k_wf = 2.0 * na * camera_nm / wavelength_nm / r
            angles = (summary.get("light_pattern") or {}).get("angles", [])
            if angles:
                k_pattern = float(np.mean([np.hypot(*a["k_cycles_per_px"]) for a in angles])) / r
            if "widefield" not in images:
                images["widefield"] = widefield(x[None], r)[0]
                if "wiener" in maps:
                    images["wiener"] = maps["wiener"]
                    if "wiener_std" in maps:
                        stds["wiener"] = maps["wiener_std"]
            images[model] = maps["emitter"]
            if "emitter_std" in maps:
                stds[model] = maps["emitter_std"]
                emitters.setdefault(model, {})[name] = (maps["emitter"], maps["emitter_std"])
        if reference is None:
            continue
        if not math.isfinite(k_pattern):
            k_pattern = k_wf  # no pattern recorded: the ring up to twice the cut-off
        scores = score_against_reference(reference, images, k_wf=k_wf, k_pattern=k_pattern, stds=stds,
                                         max_shift=max_shift)
        report["warnings"] += [f"{name}: {w}" for w in scores.pop("warnings")]
        report["inputs"][name] = scores
    if twins:
        for model, by_input in emitters.items():
            for (n1, (e1, s1)), (n2, (e2, s2)) in itertools.combinations(sorted(by_input.items()), 2):
                try:
                    report["twins"].setdefault(model, {})[f"{n1}|{n2}"] = twin_check(e1, s1, e2, s2,
                                                                                    max_shift=max_shift)
                except ReferenceMismatch as exc:
                    report["warnings"].append(f"twins {n1} / {n2} ({model}): {exc}")
    return report


_METHOD_KEYS = ("psnr", "ssim", "spectral_corr_beyond")
_CALIBRATION_KEYS = ("zms", "coverage_68", "coverage_95", "spearman", "abs_z_q68", "abs_z_q95")


def reference_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: per input, one row per method (image quality, and the calibration
    of its std where it has one); then the twins; then the warnings."""
    lines = ["# Against the reference", ""]
    for name, scores in report["inputs"].items():
        lines += [f"## {name}", "", "| method | " + " | ".join(_METHOD_KEYS + _CALIBRATION_KEYS) + " |",
                  "|---|" + "---:|" * (len(_METHOD_KEYS) + len(_CALIBRATION_KEYS))]
        for method, m in scores["methods"].items():
            c = scores["calibration"].get(method, {})
            cells = [_fmt(m.get(k)) for k in _METHOD_KEYS] + [_fmt(c.get(k)) for k in _CALIBRATION_KEYS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if report["twins"]:
        lines += ["## Twins (GT-free: emitter difference against the combined std)", "",
                  "| model | pair | zms | coverage_68 | coverage_95 | overlap_corr |",
                  "|---|---|---:|---:|---:|---:|"]
        for model, pairs in report["twins"].items():
            for pair, t in pairs.items():
                lines.append(f"| {model} | {pair} | " + " | ".join(
                    _fmt(t[k]) for k in ("zms", "coverage_68", "coverage_95", "overlap_corr")) + " |")
        lines.append("")
    if report["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def plot_reference_calibration(path: str | os.PathLike, report: dict[str, Any]) -> Path:
    """One panel per input: RMSE against the reference vs the RMS predicted std, per bin of the
    std (log-log, ``y = x`` dashed), one line per method with a std."""
    from matplotlib.figure import Figure

    from simuq_core.reports.plots import save_figure

    names = [n for n, scores in report["inputs"].items() if scores["calibration"]] or list(report["inputs"])
    fig = Figure(figsize=(4.2 * max(1, len(names)), 4.0))
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, max(1, len(names)), i + 1)
        lo, hi = np.inf, 0.0
        for method, c in report["inputs"][name]["calibration"].items():
            rmv, rmse = np.asarray(c["curve"]["rmv"]), np.asarray(c["curve"]["rmse"])
            ax.loglog(rmv, rmse, "o-", ms=3, label=f"{method} (cov95 {c['coverage_95']:.2f})")
            lo, hi = min(lo, rmv.min(), rmse.min()), max(hi, rmv.max(), rmse.max())
        if hi > 0:
            ax.loglog([lo, hi], [lo, hi], "k--", lw=0.8, label="calibrated")
        ax.set_xlabel("RMS predicted std")
        ax.set_ylabel("RMS error vs reference")
        ax.set_title(name, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:  # nothing calibrated (e.g. the reference shows another field): say so
            ax.text(0.5, 0.5, "no std map scored", ha="center", va="center", transform=ax.transAxes)
    return save_figure(fig, path)
