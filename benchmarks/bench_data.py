"""Training-input throughput and memory of streamed raw acquisitions against the dataset size.

    python benchmarks/bench_data.py [--quick] [--sizes 10 100 1000] [--side 512] [--crop 64]

Writes reports/bench/bench_data.json. For every size ``N``: ``N`` synthetic acquisitions of
``9 × side²`` uint16 (ImageJ TIFF, one Poisson stack copied to every file) in a temporary folder;
one file is indexed for real (its cold indexing time is reported: read + validate + normalise +
blind full-field pattern estimate) and its entry is pointed at the other files (the stream does not
depend on the content). Then :class:`simuq_core.realdata.crops.CropStream` draws ``--crops`` random crops
per size (batches of ``--batch``, grain read-ahead threads ``--threads``) and the process's resident
set (RSS, sampled every 5 ms by a thread) is recorded: ``rss_peak_mb`` is the peak during the
stream, ``rss_growth_mb`` the peak minus the RSS just before it. Streaming holds only crops, so
both must stay flat from 10 to 1000 files (the files were just written: reads come from the page
cache, which is not part of the process's RSS once a crop's memory map is dropped).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import tifffile
from _common import machine, write_report

from simuq_core.realdata.crops import CropStream, DataIndex, index_acquisitions
from simuq_core.realdata.holdout import split_regions


def _stack(side: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    sample = (rng.random((side, side)) < 0.02) * 1000.0 + 20.0
    frames = []
    for a in range(3):
        ang = 0.3 + a * np.pi / 3
        ky, kx = np.sin(ang) / 5.0, np.cos(ang) / 5.0
        for p in range(3):
            frames.append(sample * (1 + 0.8 * np.cos(2 * np.pi * (ky * yy + kx * xx) + 2 * np.pi * p / 3)))
    return (rng.poisson(np.asarray(frames)) + 100).astype(np.uint16)


class _RssSampler:
    """Peak RSS of this process while the ``with`` block runs (5 ms polling thread)."""

    def __init__(self) -> None:
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> _RssSampler:
        self.before = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()


def bench_size(n: int, side: int, crop: int, n_crops: int, batch: int, threads: int, folder: Path) -> dict:
    stack = _stack(side)
    paths = []
    t0 = time.perf_counter()
    for i in range(n):
        path = folder / f"acq{i:05d}.tif"
        tifffile.imwrite(path, stack, imagej=True, resolution=(1e3 / 62.6, 1e3 / 62.6),
                         metadata={"axes": "ZYX", "unit": "um"})
        paths.append(path)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    entry = index_acquisitions(paths[:1], folder / "cache", na=1.3, wavelength_nm=488.0,
                               default_pixel_nm=62.6, norm_offset=100.0).acquisitions[0]
    index_s = time.perf_counter() - t0
    index = DataIndex(tuple(dataclasses.replace(entry, path=str(p)) for p in paths), (), 62.6, ())
    train, _ = split_regions(index, crop, val_fraction=0.0)
    stream = CropStream(index, train, crop, batch, n_crops, seed=0, process_index=0, process_count=1,
                        num_threads=threads, prefetch=4 * batch)
    next(iter(stream.epoch_batches(0)))  # warm-up: grain threads, imports
    with _RssSampler() as rss:
        t0 = time.perf_counter()
        count = sum(len(b["x"]) for b in stream.epoch_batches(1))
        stream_s = time.perf_counter() - t0
    return {"n_acquisitions": n, "dataset_mb": round(n * stack.nbytes / 2**20, 1), "crops": count,
            "crops_per_s": round(count / stream_s, 1), "stream_s": round(stream_s, 3),
            "rss_before_mb": round(rss.before / 2**20, 1), "rss_peak_mb": round(rss.peak / 2**20, 1),
            "rss_growth_mb": round((rss.peak - rss.before) / 2**20, 1), "write_s": round(write_s, 2),
            "index_one_file_s": round(index_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 and 100 files of 256² (CI-sized)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--crops", type=int, default=4096, help="crops streamed per size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.side, args.crops = [10, 100], 256, 1024
    rows = []
    for n in args.sizes:
        folder = Path(tempfile.mkdtemp(prefix="simuq_bench_data_"))
        try:
            rows.append(bench_size(n, args.side, args.crop, args.crops, args.batch, args.threads, folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(rows[-1], flush=True)
    growth = [r["rss_growth_mb"] for r in rows]
    peaks = [r["rss_peak_mb"] for r in rows]
    report = {"machine": machine(), "side": args.side, "crop": args.crop, "batch": args.batch,
              "threads": args.threads, "results": rows,
              "rss_flat": bool(max(peaks) - min(peaks) < 50), "rss_peak_range_mb": [min(peaks), max(peaks)],
              "rss_growth_range_mb": [min(growth), max(growth)]}
    print("wrote", write_report("bench_data", report))


if __name__ == "__main__":
    main()
