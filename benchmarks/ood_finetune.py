"""Does fine-tuning on the user's data bring it back into the model's distribution?

    python benchmarks/ood_finetune.py [--shift objects_dense] [--model models/selfsup]
        [--reference reports/epistemic/selfsup/reference.json] [--epochs 3]

The stacks of one OOD split (``data/ood/<shift>/test``, built by ``dvc repro``) play a lab's own
acquisitions: the first 3/4 fine-tune the self-supervised model (``stages.finetune`` machinery, no
ground truth), the last 1/4 are held out. ``predict`` with MC dropout scores the held-out stacks
with the pre-trained and with the fine-tuned model against the same in-distribution reference (the
``epistemic`` stage's ``reference.json``, val split of the training distribution): the OOD score
ratios (score / in-distribution 99th percentile) and the flagged fraction, before and after.
Writes ``reports/bench/ood_finetune.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from _common import ROOT, machine, write_report

from simuq_core.config import FinetuneParams, parse_params
from simuq_core.inference.files import predict_files
from simuq_core.io import read_json
from simuq_core.network.store import load_model
from simuq_core.workflows.finetune import run_finetuning


def _scores(model_dir: Path, files: list[Path], out: Path, params, reference: dict) -> dict:
    model, spec = load_model(model_dir)
    report = predict_files(files, out, model, spec, model_dir, params.predict, params.simulate.lr_h,
                           progress=False, epistemic_samples=params.epistemic.n_samples,
                           epistemic_seed=params.epistemic.seed, ood_reference=reference)
    oods = [r.summary["ood"] for r in report.results if r.ok]
    ratios = {k: [o["ratios"][k] for o in oods] for k in oods[0]["ratios"]}
    return {"n": len(oods), "flagged_fraction": float(np.mean([o["flagged"] for o in oods])),
            **{f"median_ratio_{k}": float(np.median(v)) for k, v in ratios.items()},
            "ratios_combined": ratios["combined"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shift", default="objects_dense")
    parser.add_argument("--model", default="models/selfsup")
    parser.add_argument("--reference", default="reports/epistemic/selfsup/reference.json")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    params = params.model_copy(update={"predict": params.predict.model_copy(update={"wiener": False})})
    files = sorted((ROOT / "data" / "ood" / args.shift / "test").glob("*.tif"))
    if len(files) < 4:
        raise SystemExit(f"data/ood/{args.shift}/test: need >= 4 stacks (run dvc repro)")
    n_ft = 3 * len(files) // 4
    tune, held = files[:n_ft], files[n_ft:]
    reference = read_json(ROOT / args.reference)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before = _scores(ROOT / args.model, held, tmp / "before", params, reference)
        ft = FinetuneParams(epochs=args.epochs, crops_per_epoch=256,
                            norm_offset=params.simulate.noise.offset_adu, val_fraction=0.2,
                            optics=params.model.optics)
        t0 = time.perf_counter()
        metrics = run_finetuning(ROOT / args.model, [str(f) for f in tune], tmp / "ft", ft,
                                 tmp / "cache", progress=False)
        seconds = time.perf_counter() - t0
        after = _scores(tmp / "ft", held, tmp / "after", params, reference)
    report = {"machine": machine(), "shift": args.shift, "model": args.model,
              "n_finetune_stacks": len(tune), "n_held_out": len(held), "finetune_epochs": args.epochs,
              "finetune_seconds": seconds,
              "finetune_validation": {"pretrained_rec_zms": metrics["pretrained"]["rec_zms"],
                                      "finetuned_rec_zms": metrics["finetuned"]["rec_zms"]},
              "before": before, "after": after}
    path = write_report("ood_finetune", report)
    b, a = before, after
    print(f"wrote {path}: flagged {b['flagged_fraction']:.2f} -> {a['flagged_fraction']:.2f}, "
          f"median combined ratio {b['median_ratio_combined']:.2f} -> {a['median_ratio_combined']:.2f}")


if __name__ == "__main__":
    main()
