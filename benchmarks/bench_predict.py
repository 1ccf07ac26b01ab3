"""What a user runs, end to end: ``python -m stages.predict`` against napari-sim-processor.

    python benchmarks/bench_predict.py --model MODEL [--params PARAMS] [--sizes 512 2048]
                                       [--period-hint 2.87] [--repeats 1]

Writes reports/bench/predict_cli.json. Inputs: square stacks of ``size²`` camera pixels made by
tiling the shipped real acquisition (``examples/rdl_sim_microtubules/MT.mrc``, 9 × 256²) with
mirrored copies, written as uint16 TIFFs with their pixel size; every tool sees the same file.

For each size, each measured in its own process (``os.wait4`` gives that process's peak RSS):

- ``simuq``: the predict command with the given model and params, the way a user calls it
  (read, blind pattern, Wiener image, network, OOD check, writing every map), first in a process
  with an empty compilation cache (``cold``: what a first run pays) and then again (``warm``:
  every later run). Wall time, throughput in camera megapixels per second, peak RSS, and the time
  per phase from the output's ``summary.json`` (``timings_s``).
- ``napari_sim_processor``: its ``ConvSimProcessor`` (``calibrate``: pattern estimation, then
  ``reconstruct_rfftw``: classical SIM), with the period hint, in a fresh process; the time counts
  from reading the file to the reconstruction in memory (the tool writes nothing).

``ratio_warm``: simuq's warm throughput over napari-sim-processor's (≥ 1: simuq is as fast).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from _common import ROOT, machine, write_report

MT = ROOT / "examples" / "rdl_sim_microtubules" / "MT.mrc"
PIXEL_NM, NA, EMISSION_NM = 62.6, 1.47, 525.0

_NAPARI = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np, tifffile
sys.path.insert(0, {bench!r})
from crosscheck_classical import Optics, run_napari
raw = tifffile.imread(sys.argv[1]).astype(np.float64)
res = run_napari(raw, 0.0, Optics({na}, {emission}, {pixel}), float(sys.argv[2]))
print(json.dumps({{"seconds": time.perf_counter() - t0, "shape": list(res.recon.shape)}}))
"""


def make_stack(size: int, folder: Path) -> Path:
    """``size²`` camera px tiled from MT.mrc with mirrored copies (no seam jumps), uint16 TIFF."""
    from simuq_core.realdata.reader import read_acquisition

    frames = read_acquisition(MT).frames[0]  # (9, 256, 256)
    f, h, w = frames.shape
    reps = (size + h - 1) // h
    tiled = np.concatenate([np.concatenate([frames if (i + j) % 2 == 0 else frames[:, ::-1, ::-1]
                                            for j in range(reps)], axis=2) for i in range(reps)], axis=1)
    stack = np.clip(tiled[:, :size, :size], 0, 65535).astype(np.uint16)
    path = folder / f"stack_{size}.tif"
    tifffile.imwrite(path, stack, imagej=True, resolution=(1000.0 / PIXEL_NM,) * 2,
                     metadata={"axes": "ZYX", "unit": "um"})
    return path


_LAUNCH = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
           "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
           "sys.exit(r.returncode)")


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GB) and stdout of one process (run under a launcher whose
    ``RUSAGE_CHILDREN`` is that process alone)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _LAUNCH, *cmd], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rss_kb = int(next(line.split()[1] for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")))
    return seconds, rss_kb / 1e6, proc.stdout


def bench_simuq(stack: Path, model: str, params: str, folder: Path, cache: Path, label: str) -> dict:
    env = {**os.environ, "SIMUQ_COMPILE_CACHE": str(cache)}
    out = folder / f"out_{label}"
    cmd = [sys.executable, "-m", "stages.predict", "--model", model, "--params", params,
           "--input", str(stack), "--out", str(out), "--quiet", "--pattern", "blind"]
    seconds, rss, _ = run_measured(cmd, env)
    summary = json.loads((out / stack.stem / "summary.json").read_text())
    mp = float(np.prod(summary["input_shape"][-2:])) / 1e6
    return {"seconds": seconds, "mp_per_s": mp / seconds, "peak_rss_gb": rss,
            "phases_s": summary.get("timings_s"), "tiling": {k: summary["tiling"][k] for k in
                                                             ("tile", "n_tiles", "batch_size", "context")},
            "maps": sorted(summary["maps"]), "ood": (summary.get("ood") or {}).get("terms")}


def bench_napari(stack: Path, period_hint: float) -> dict:
    script = _NAPARI.format(bench=str(ROOT / "benchmarks"), na=NA, emission=EMISSION_NM, pixel=PIXEL_NM)
    seconds, rss, out = run_measured([sys.executable, "-c", script, str(stack), str(period_hint)],
                                     dict(os.environ))
    inner = json.loads(out.strip().splitlines()[-1])
    size = tifffile.imread(stack).shape[-1]
    return {"seconds": seconds, "seconds_in_process": inner["seconds"], "mp_per_s": size**2 / 1e6 / seconds,
            "peak_rss_gb": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder (e.g. pipelines/real/finetuned)")
    parser.add_argument("--params", default=str(ROOT / "pipelines" / "real" / "params.yaml"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--period-hint", type=float, default=2.87, help="napari-sim-processor's search hint")
    args = parser.parse_args()
    report: dict = {"machine": machine(), "model": args.model, "params": args.params, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for size in args.sizes:
            stack = make_stack(size, folder)
            cache = folder / f"cache_{size}"
            row = {"napari_sim_processor": bench_napari(stack, args.period_hint),
                   "simuq_cold": bench_simuq(stack, args.model, args.params, folder, cache, f"{size}_cold"),
                   "simuq_warm": bench_simuq(stack, args.model, args.params, folder, cache, f"{size}_warm")}
            row["ratio_warm"] = row["simuq_warm"]["mp_per_s"] / row["napari_sim_processor"]["mp_per_s"]
            row["compile_s"] = row["simuq_cold"]["seconds"] - row["simuq_warm"]["seconds"]
            report["sizes"][str(size)] = row
            print(json.dumps({size: {k: (v if not isinstance(v, dict) else
                                         {kk: vv for kk, vv in v.items() if kk in ("seconds", "mp_per_s",
                                                                                   "peak_rss_gb")})
                                     for k, v in row.items()}}, indent=1), flush=True)
    print("wrote", write_report("predict_cli", report))


if __name__ == "__main__":
    main()
