"""MC dropout against a true deep ensemble: cost and quality of the epistemic uncertainty.

    python benchmarks/bench_epistemic.py [--mode sup] [--members 5] [--samples 256] [--epochs 4]

Side by side in one run, on the default profile's geometry and physics (``params.yaml``) at a
reduced training budget (``--samples`` training stacks, ``--epochs``; 16 val / 16 test stacks and
16 per OOD shift):

- ``single``: one network without dropout (aleatoric only);
- ``mc_dropout``: one network trained with ``model.dropout`` (the default), ``epistemic.n_samples``
  passes;
- ``ensemble``: ``--members`` networks without dropout, seeds 0 … M−1 (Lakshminarayanan et al.
  2017), one pass each.

Each is scored by the ``epistemic`` report (:mod:`simuq_core.reports.epistemic`): total emitter
ZMS / coverage95 on the in-distribution test split and on the pooled OOD splits, aleatoric-only
next to it, and the ROC AUC of the image-level OOD score. Costs: training wall time relative to
one network, and prediction time (the report's passes) relative to the single network. Writes
``reports/bench/epistemic.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml
from _common import ROOT, machine, write_report

from simuq_core.config import parse_params
from simuq_core.reports.epistemic import epistemic_report
from simuq_core.simulation.dataset import write_dataset
from simuq_core.simulation.ood import write_ood_splits
from simuq_core.workflows.train import run_training


def _params(args, dropout: float, seed: int):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["simulate"] |= {"n_samples": args.samples, "n_val": 16, "n_test": 16}
    raw["ood"]["n_test"] = 16
    raw["model"]["dropout"] = dropout
    section = "train_sup" if args.mode == "sup" else "train_selfsup"
    raw[section] |= {"epochs": args.epochs, "seed": seed, "debug_every_epochs": 1000,
                     "warmup_steps": min(raw[section]["warmup_steps"], args.samples // 8)}
    return parse_params(raw)


def _summary(result: dict) -> dict:
    test, ood = result["metrics"]["test"], result["metrics"]["ood/combined"]
    det = result["ood_detection"]["ood/combined"]
    return {
        "test_emitter_psnr": test.get("emitter_psnr"),
        "test_total_emitter_zms": test["total_emitter_zms"],
        "test_total_emitter_coverage_95": test["total_emitter_coverage_95"],
        "test_aleatoric_emitter_coverage_95": test["aleatoric_emitter_coverage_95"],
        "ood_total_emitter_zms": ood["total_emitter_zms"],
        "ood_total_emitter_coverage_95": ood["total_emitter_coverage_95"],
        "ood_aleatoric_emitter_coverage_95": ood["aleatoric_emitter_coverage_95"],
        "ood_auc_combined": det["auc_combined"],
        "ood_auc_epistemic": det["auc_epistemic"],
        "ood_auc_misfit": det["auc_misfit"],
        "per_split_auc": {k: v.get("auc_combined") for k, v in result["ood_detection"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("sup", "selfsup"), default="sup")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    base = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        p0 = _params(args, 0.0, 0)
        write_dataset(p0.simulate, tmp / "sim", progress=False)
        write_ood_splits(p0, tmp / "ood", progress=False)
        train_s: dict[str, float] = {}
        dirs: dict[str, Path] = {}
        for seed in range(args.members):
            dirs[f"member{seed}"] = tmp / f"member{seed}"
            t0 = time.perf_counter()
            run_training(args.mode, _params(args, 0.0, seed), tmp / "sim", dirs[f"member{seed}"],
                         progress=False)
            train_s[f"member{seed}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_training(args.mode, _params(args, base.model.dropout, 0), tmp / "sim", tmp / "mc",
                     progress=False)
        train_s["mc_dropout"] = time.perf_counter() - t0
        variants = {"single": [dirs["member0"]], "mc_dropout": [tmp / "mc"],
                    "ensemble": [dirs[f"member{s}"] for s in range(args.members)]}
        results, eval_s = {}, {}
        for name, members in variants.items():
            t0 = time.perf_counter()
            result = epistemic_report(members, tmp / "sim", tmp / "ood", tmp / f"report_{name}",
                                      base.epistemic)
            eval_s[name] = time.perf_counter() - t0
            results[name] = _summary(result)
    one = train_s["member0"]
    report = {
        "machine": machine(),
        "settings": {"mode": args.mode, "members": args.members, "samples": args.samples,
                     "epochs": args.epochs, "dropout": base.model.dropout,
                     "mc_passes": base.epistemic.n_samples, "n_test": 16, "n_ood_per_shift": 16},
        "train_seconds": train_s,
        "train_cost_vs_single": {"mc_dropout": train_s["mc_dropout"] / one,
                                 "ensemble": sum(train_s[f"member{s}"] for s in range(args.members)) / one},
        "report_seconds": eval_s,
        "report_cost_vs_single": {k: v / eval_s["single"] for k, v in eval_s.items()},
        "results": results,
    }
    path = write_report("epistemic", report)
    print(f"wrote {path}")
    for name, r in results.items():
        print(f"{name:11s} test ZMS {r['test_total_emitter_zms']:.3g} cov95 "
              f"{r['test_total_emitter_coverage_95']:.3f} | OOD cov95 total "
              f"{r['ood_total_emitter_coverage_95']:.3f} (alea {r['ood_aleatoric_emitter_coverage_95']:.3f}) "
              f"| AUC {r['ood_auc_combined']:.3f}")


if __name__ == "__main__":
    main()
