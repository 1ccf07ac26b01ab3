"""Stage ``real_report``: ground-truth-free validation report of predictions on real acquisitions.

    python -m stages.real_report --predict pipelines/real/predict --finetuned pipelines/real/finetuned \\
        --out pipelines/real/report --figure docs/figures/real_walkthrough.png \\
        [--params pipelines/real/params.yaml] [--zoom 64]

Reads ``<predict>/<model>/report.json`` for every model folder (e.g. ``pretrained``,
``finetuned``), scores every reconstructed input over its full field
(:func:`simuq_core.workflows.finetune.field_metrics`) and adds the held-out validation of the fine-tuning
run (``<finetuned>/metrics.json``). Writes ``<out>/metrics.json`` (DVC metrics),
``<out>/summary.md`` and the figure (widefield | Wiener SIM | simuq emitter | emitter std, with a
zoom in the held-out region) of the first input predicted by the ``finetuned`` model, and logs it
all into the fine-tuning run's MLflow run (``report_*`` metrics, artifacts). Exit status: 0 done,
2 nothing to report.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from stages._common import base_parser, setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--predict", required=True, help="folder with one predict output per model")
    parser.add_argument("--finetuned", required=True, help="fine-tuned model folder (metrics, MLflow run)")
    parser.add_argument("--out", required=True, help="report folder")
    parser.add_argument("--figure", required=True, help="PNG of the walkthrough figure")
    parser.add_argument("--zoom", type=int, default=64, help="zoom side in camera px (default: %(default)s)")
    args = parser.parse_args(argv)
    from simuq_core.config import OpticsPrior
    from simuq_core.evaluation.gtfree import brightest_window, field_metrics
    from simuq_core.io import read_json, write_json, write_text
    from simuq_core.reports.real import plot_real_walkthrough
    from simuq_core.reports.reference import load_prediction
    from simuq_core.tracking import flatten_params
    from stages._common import model_run, read_sections

    _, ft = read_sections(args.params, "finetune")
    # The microscope of the acquisitions: the finetune section's, else the fine-tuned model's.
    optics = ft.optics or OpticsPrior(**read_json(Path(args.finetuned) / "model.json")["model"]["optics"])
    setup_logging()
    report: dict[str, Any] = {"full_field": {}}
    figure_input = None
    for model_dir in sorted(p for p in Path(args.predict).iterdir() if (p / "report.json").is_file()):
        for item in read_json(model_dir / "report.json")["inputs"]:
            if not item["ok"]:
                continue
            folder = Path(item["output"])
            summary, x, maps = load_prediction(folder)
            pattern = summary["pattern"] or {}
            angles = (summary.get("light_pattern") or {}).get("angles", [])
            k = np.asarray([a["k_cycles_per_px"] for a in angles]) if angles else np.zeros((1, 2))
            camera_nm = summary["maps"]["rec"]["pixel_nm"]
            metrics = field_metrics(x, maps, camera_nm, int(summary["model"]["rescale"]), optics.na,
                                    optics.wavelength_nm, k, ft.noise_band_margin)
            metrics["pattern_ok"] = float(bool(pattern.get("ok", True)))
            ood = summary.get("ood") or {}
            if ood.get("flagged") is not None:  # the fine-tuned model's own reference (data-only scores)
                metrics["ood_flagged"] = float(ood["flagged"])
                metrics |= {f"ood_{k}_ratio": float(v) for k, v in ood["ratios"].items()}
            metrics["period_px_mean"] = float(np.mean(1.0 / np.linalg.norm(k, axis=-1))) if angles else np.nan
            report["full_field"].setdefault(model_dir.name, {})[folder.name] = metrics
            if model_dir.name == "finetuned" and figure_input is None:
                figure_input = (x, maps, folder.name, int(summary["model"]["rescale"]), camera_nm,
                                metrics["period_px_mean"])
    if not report["full_field"]:
        print(f"error: {args.predict}: no successful prediction to report", file=sys.stderr)
        return 2
    ft_metrics = read_json(Path(args.finetuned) / "metrics.json")
    report["heldout"] = {k: ft_metrics[k] for k in ("pretrained", "finetuned")}
    held = (ft_metrics.get("train") or {}).get("held_out") or {}
    for k in ("pretrained", "finetuned"):
        report["heldout"][k] = report["heldout"][k] | {
            "min_structure_share": held.get("min_structure_share", float("nan"))}
    out = Path(args.out)
    write_json(out / "metrics.json", report)
    write_text(out / "summary.md", _markdown(report))
    if figure_input is not None:
        from simuq_core.evaluation.synthetic import widefield

        x, maps, name, r, camera_nm, period = figure_input
        cutoff = 2.0 * optics.na * camera_nm / optics.wavelength_nm  # cycles per camera px
        circles = [("widefield cut-off 2NA/λ", cutoff / r)]
        if np.isfinite(period):
            circles.append(("SIM limit 2NA/λ + 1/period", (cutoff + 1.0 / period) / r))
        wf = widefield(x[None], r)[0]
        y0, x0 = brightest_window(wf, args.zoom * r, _held_out_rect(ft_metrics, name, r))
        panels = [("widefield", wf)] + [(t, maps[key]) for t, key in
                                         (("Wiener SIM", "wiener"), ("simuq emitter", "emitter"),
                                          ("emitter std", "emitter_std")) if key in maps]
        plot_real_walkthrough(args.figure, panels, (y0, x0, args.zoom * r),
                              f"{name}: fine-tuned simuq (zoom in the held-out region)", camera_nm / r,
                              circles)
    with model_run(args.finetuned, stage="real_report", mode="finetune") as tracker:
        flat = flatten_params(report)
        tracker.log_metrics({f"report_{k}".replace(".", "_"): float(v) for k, v in flat.items()
                             if v not in ("None", "nan")})
        for path in (out / "metrics.json", out / "summary.md", Path(args.figure)):
            tracker.log_artifact(path, "real_report")
    print(_markdown(report))
    return 0


def _held_out_rect(ft_metrics: dict[str, Any], name: str, r: int) -> tuple[int, int, int, int] | None:
    """The held-out rectangle (model grid) of the input whose prediction folder is ``name``, from
    the fine-tuning run's metrics; ``None`` (the whole field) if that input was not split."""
    for row in ((ft_metrics.get("train") or {}).get("held_out") or {}).get("regions", []):
        if Path(row["path"]).stem == name or Path(row["path"]).name == name:
            return tuple(int(v) * r for v in row["rect_yx"])
    return None


def _markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables, one row per number and one column per model (and input):
    the full field, then the held-out strip."""
    lines = ["# Real-data report (no ground truth)", "", "## Full field (training area included)", ""]
    keys = ["rec_zms", "rec_coverage_68", "rec_coverage_95", "noise_std_classical", "rec_std_hann",
            "widefield_resolution_nm", "wiener_resolution_nm", "emitter_resolution_nm", "sim_limit_nm",
            "widefield_limit_nm", "emitter_std_p95_over_mean", "emitter_std_p95_over_mean_interior",
            "wiener_std_p95_over_mean_interior", "emitter_grid_index", "wiener_grid_index",
            "emitter_carrier_db_max", "wiener_carrier_db_max", "period_px_mean",
            "ood_combined_ratio", "ood_flagged"]
    columns = [(f"{model} / {name}", m) for model, inputs in report["full_field"].items()
               for name, m in inputs.items()]
    lines += _table(keys, columns)
    held = ["rec_zms", "rec_coverage_68", "rec_coverage_95", "noise_std_pred", "noise_std_classical",
            "widefield_resolution_nm", "emitter_resolution_nm", "sim_limit_nm", "emitter_std_p95_over_mean",
            "emitter_grid_index", "min_structure_share"]
    lines += ["", "## Held-out strip (fine-tuning validation)", ""]
    lines += _table(held, list(report["heldout"].items()))
    return "\n".join(lines) + "\n"


def _table(keys: list[str], columns: list[tuple[str, dict[str, Any]]]) -> list[str]:
    out = ["| | " + " | ".join(name for name, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
    return out + [f"| {k} | " + " | ".join(_fmt(m.get(k)) for _, m in columns) + " |" for k in keys]


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.4g}"


if __name__ == "__main__":
    sys.exit(main())
