"""Training-step cost of full uncertainty (all targets, exact propagation, per-frame NLL) against
the same network trained with a plain L1 loss on the mean reconstruction (target ≤ 1.3×), and of
the cross-frame likelihood (``uq.frame_covariance: full``) against that per-frame one
(target ≤ 1.3×); samples per second; compiled memory; compile time with a cold and a warm
persistent compilation cache.

    python benchmarks/bench_train.py [--quick] [--no-compile]

The three steps (``l1``, ``uq`` = per-frame NLL, ``full`` = cross-frame NLL) are timed in
alternation in one process, so load on a shared machine hits all alike; ratios use the minimum
over repetitions (least disturbed), the median ratio is reported beside it. ``--no-compile``
skips the (slow) compile-time subprocesses and keeps the last full run's compile times.
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
    from simuq_core.network.forward import batch_pattern, build_model, estimate_patterns, predict
    from simuq_core.training.engine import Trainer
    from simuq_core.training.objectives import selfsup_objective

    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    uq = params.uq.model_copy(update={"targets": ["emitter", "lp", "psf"], "pool_var": "exact",
                                      "frame_covariance": "diagonal"})
    if objective_kind == "full":
        uq = uq.model_copy(update={"frame_covariance": "full"})
    if objective_kind == "l1":
        uq = uq.model_copy(update={"targets": [], "obs_noise": "none"})
    cfg = params.train_selfsup
    sim = params.simulate
    model = build_model(params.model, uq, 9, 0)
    prior = np.full((model.psf_size,) * 2, 1.0 / model.psf_size**2)
    if objective_kind == "l1":
        def objective(m, batch, mean_only, key=None):
            extra = {} if key is None else {"dropout_key": key}  # the engine passes one with dropout
            rec = predict(m, batch["x"], uq, batch_pattern(batch), **extra)["rec"]
            loss = jnp.abs(batch["x"] - rec).mean()
            return loss, {"rec_mae": loss}
    else:
        objective = selfsup_objective(uq, cfg, prior)
    x = np.random.default_rng(0).random((cfg.batch_size, 9, sim.lr_h, sim.lr_w)).astype(np.float32)
    # As in training: the pattern estimates are computed once per dataset and batched with x.
    data = {"x": x} | estimate_patterns(model, x, cfg.batch_size)
    trainer = Trainer(model, objective, cfg, data, tempfile.mkdtemp(), progress=False)
    return trainer, trainer._shard(data), cfg


def _key_args(trainer) -> tuple:
    """The dropout-key argument of the step, where the engine's step takes one."""
    return (trainer._step_key(0),) if hasattr(trainer, "_step_key") else ()


def _step_runner(trainer, batch):
    import jax
    import jax.numpy as jnp

    def run():
        out = trainer._step_fn(trainer.params, trainer.opt_state, batch, jnp.float32(0.0),
                               *_key_args(trainer))
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


def _compile_times() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cache:
        return {
            "no_cache": _compile_in_subprocess(None),
            "cache_cold": _compile_in_subprocess(cache),
            "cache_warm": _compile_in_subprocess(cache),
        }


def _previous_compile_times() -> dict | None:
    """``--no-compile``: keep the compile times of the last full run (marked as such)."""
    path = ROOT / "reports" / "bench" / "train.json"
    old = json.loads(path.read_text()).get("compile_s") if path.exists() else None
    return None if old is None else {**old, "from_previous_run": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile-time runs")
    args = parser.parse_args()
    reps = 3 if args.quick else 15
    report: dict = {"machine": machine(), "target_uq_over_l1": 1.3, "target_full_over_uq": 1.3}
    timings = {}
    setups = {kind: _setup(kind) for kind in ("l1", "uq", "full")}
    runners = {kind: _step_runner(t, b) for kind, (t, b, _) in setups.items()}
    for run in runners.values():  # compile + warm up
        run(), run()
    # Interleave the three so machine-load drifts hit all equally (ratios side by side).
    samples = {kind: [] for kind in runners}
    for _ in range(reps):
        for kind, run in runners.items():
            samples[kind].append(time_call(run, reps=1, warmup=0)["median_s"])
    for kind, (trainer, batch, cfg) in setups.items():
        times = sorted(samples[kind])
        timings[kind] = {"median_s": times[len(times) // 2], "min_s": times[0], "reps": reps}
        compiled = trainer._step_fn.lower(trainer.params, trainer.opt_state, batch, 0.0,
                                            *_key_args(trainer)).compile()
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
    report["full_over_uq"] = timings["full"]["min_s"] / timings["uq"]["min_s"]
    report["full_over_uq_median"] = timings["full"]["median_s"] / timings["uq"]["median_s"]
    report["full_meets_target"] = report["full_over_uq"] <= 1.3
    report["compile_s"] = _previous_compile_times() if args.no_compile else _compile_times()
    import resource

    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    path = write_report("train", report)
    print(json.dumps({k: report[k] for k in ("uq_over_l1", "meets_target", "full_over_uq",
                                             "full_over_uq_median", "compile_s")},
                     indent=1))
    for k, v in timings.items():
        print(f"{k}: {1000 * v['median_s']:.1f} ms/step, {v['samples_per_s']:.1f} samples/s, "
              f"temp {v['temp_bytes'] / 2**20:.1f} MiB")
    print("wrote", path)


if __name__ == "__main__":
    main()
