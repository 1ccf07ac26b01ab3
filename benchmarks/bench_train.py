"""Training-step cost of full uncertainty (all targets, exact propagation, NLL) against the same
network trained with a plain L1 loss on the mean reconstruction (target ≤ 1.3×); samples per
second; compiled memory; compile time with a cold and a warm persistent compilation cache.

    python benchmarks/bench_train.py [--quick]

Writes reports/bench/train.json. Geometry: the default profile (params.yaml: 32×32 LR, ×2,
batch 8, U-Net width/depth from params.yaml).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from _common import ROOT, machine, time_call, write_report


def _setup(objective_kind: str):
    import jax.numpy as jnp
    import numpy as np
    import yaml

    from simuq_core.config import parse_params
    from simuq_core.objectives import selfsup_objective
    from simuq_core.reconstruction import batch_pattern, build_model, estimate_patterns, predict
    from simuq_core.training import Trainer

    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    uq = params.uq.model_copy(update={"targets": ["emitter", "lp", "psf"], "pool_var": "exact"})
    if objective_kind == "l1":
        uq = uq.model_copy(update={"targets": [], "obs_noise": "none"})
    cfg = params.train_selfsup
    sim = params.simulate
    model = build_model(params.model, uq, 9, 0)
    prior = np.full((model.psf_size,) * 2, 1.0 / model.psf_size**2)
    if objective_kind == "l1":
        def objective(m, batch, mean_only):
            rec = predict(m, batch["x"], uq, batch_pattern(batch))["rec"]
            loss = jnp.abs(batch["x"] - rec).mean()
            return loss, {"rec_mae": loss}
    else:
        objective = selfsup_objective(uq, cfg, prior)
    x = np.random.default_rng(0).random((cfg.batch_size, 9, sim.lr_h, sim.lr_w)).astype(np.float32)
    # As in training: the pattern estimates are computed once per dataset and batched with x.
    data = {"x": x} | estimate_patterns(model, x, cfg.batch_size)
    trainer = Trainer(model, objective, cfg, data, tempfile.mkdtemp(), progress=False)
    return trainer, trainer._shard(data), cfg


def _step_runner(trainer, batch):
    import jax
    import jax.numpy as jnp

    def run():
        out = trainer._step_fn(trainer.params, trainer.opt_state, batch, jnp.float32(0.0))
        jax.block_until_ready(out)
        trainer.params, trainer.opt_state = out[0], out[1]

    return run


def measure_compile(kind: str) -> float:
    """Seconds of the first step (compile + one run) in this process."""
    trainer, batch, _ = _setup(kind)
    run = _step_runner(trainer, batch)
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    steady = time_call(run, reps=3, warmup=0)["median_s"]
    return first - steady


def _compile_in_subprocess(cache_dir: str | None) -> float:
    env = {**os.environ}
    code = ("import sys, jax; sys.path.insert(0, 'benchmarks');"
            + (f"jax.config.update('jax_compilation_cache_dir', {cache_dir!r});"
               "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0);"
               if cache_dir else "")
            + "import bench_train; print(bench_train.measure_compile('uq'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    reps = 3 if args.quick else 15
    report: dict = {"machine": machine(), "target_uq_over_l1": 1.3}
    timings = {}
    setups = {kind: _setup(kind) for kind in ("l1", "uq")}
    runners = {kind: _step_runner(t, b) for kind, (t, b, _) in setups.items()}
    for run in runners.values():  # compile + warm up
        run(), run()
    # Interleave the two so machine-load drifts hit both equally (ratios side by side).
    samples = {kind: [] for kind in runners}
    for _ in range(reps):
        for kind, run in runners.items():
            samples[kind].append(time_call(run, reps=1, warmup=0)["median_s"])
    for kind, (trainer, batch, cfg) in setups.items():
        times = sorted(samples[kind])
        timings[kind] = {"median_s": times[len(times) // 2], "min_s": times[0], "reps": reps}
        compiled = trainer._step_fn.lower(trainer.params, trainer.opt_state, batch, 0.0).compile()
        mem = compiled.memory_analysis()
        timings[kind]["temp_bytes"] = int(getattr(mem, "temp_size_in_bytes", -1)) if mem else -1
        timings[kind]["argument_bytes"] = (int(getattr(mem, "argument_size_in_bytes", -1))
                                           if mem else -1)
        timings[kind]["samples_per_s"] = cfg.batch_size / timings[kind]["median_s"]
    report["step"] = timings
    ratio = timings["uq"]["min_s"] / timings["l1"]["min_s"]  # min: least disturbed by load
    report["uq_over_l1_median"] = timings["uq"]["median_s"] / timings["l1"]["median_s"]
    report["uq_over_l1"] = ratio
    report["meets_target"] = ratio <= 1.3
    with tempfile.TemporaryDirectory() as cache:
        report["compile_s"] = {
            "no_cache": _compile_in_subprocess(None),
            "cache_cold": _compile_in_subprocess(cache),
            "cache_warm": _compile_in_subprocess(cache),
        }
    import resource

    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    path = write_report("train", report)
    print(json.dumps({k: report[k] for k in ("uq_over_l1", "meets_target", "compile_s")},
                     indent=1))
    for k, v in timings.items():
        print(f"{k}: {1000 * v['median_s']:.1f} ms/step, {v['samples_per_s']:.1f} samples/s, "
              f"temp {v['temp_bytes'] / 2**20:.1f} MiB")
    print("wrote", path)


if __name__ == "__main__":
    main()
