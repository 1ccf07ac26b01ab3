"""Simulation throughput: samples per second for the default and GPU-profile geometries, and how
time per sample grows with the LR size (32 -> 64 -> 128 at hr_factor 2).

    python benchmarks/bench_simulate.py [--quick]

Writes reports/bench/simulate.json. Time excludes the one-off JIT compile (first sample).
"""

from __future__ import annotations

import argparse
import math
import time

from _common import machine, write_report

from simuq_core.config import SimulateParams
from simuq_core.simulation.samples import psf_size, sample_rng, simulate_sample


def samples_per_second(cfg: SimulateParams, n: int) -> dict[str, float]:
    simulate_sample(sample_rng(cfg.seed, "train", 0), cfg)  # compile
    t0 = time.perf_counter()
    for i in range(n):
        simulate_sample(sample_rng(cfg.seed, "train", i + 1), cfg)
    dt = time.perf_counter() - t0
    return {
        "samples": n,
        "seconds": dt,
        "samples_per_s": n / dt,
        "ms_per_sample": 1000 * dt / n,
        "lr_shape": [cfg.lr_h, cfg.lr_w],
        "hr_factor": cfg.hr_factor,
        "psf_size": psf_size(cfg.psf, cfg.hr_pixel_nm),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few samples (smoke run)")
    args = parser.parse_args()
    n = 3 if args.quick else 30
    geom = dict(n_samples=1, n_val=1, n_test=1)
    report: dict = {"machine": machine(), "geometries": {}, "scaling": {}}
    report["geometries"]["default"] = samples_per_second(
        SimulateParams(**geom, lr_h=32, lr_w=32, hr_factor=2), n)
    report["geometries"]["gpu_profile"] = samples_per_second(
        SimulateParams(**geom, lr_h=80, lr_w=80, hr_factor=6), max(2, n // 5))
    for size in (32, 64, 128):
        report["scaling"][str(size)] = samples_per_second(
            SimulateParams(**geom, lr_h=size, lr_w=size, hr_factor=2), max(2, n // (size // 32)))
    ms = [report["scaling"][str(s)]["ms_per_sample"] for s in (32, 64, 128)]
    # Exponent of time ~ pixels^alpha between 32 and 128 (1 = linear in pixel count).
    report["scaling"]["alpha_vs_pixels"] = math.log(ms[2] / ms[0]) / math.log(16.0)
    path = write_report("simulate", report)
    for k, v in report["geometries"].items():
        print(f"{k:12s} {v['samples_per_s']:8.1f} samples/s  ({v['ms_per_sample']:.1f} ms/sample)")
    print("scaling (ms/sample):", {s: round(m, 1) for s, m in zip((32, 64, 128), ms, strict=True)},
          f"alpha={report['scaling']['alpha_vs_pixels']:.2f}")
    print("wrote", path)


if __name__ == "__main__":
    main()
