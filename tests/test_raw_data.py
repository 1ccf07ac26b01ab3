"""Streaming raw acquisitions (simuq_core/realdata/crops.py): indexing, cache, bad files, pixel sizes,
crops with their pattern, determinism, held-out parts, bounded memory, process sharding."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import tifffile

from simuq_core.optics.imaging import otf_cutoff_cycles_per_px
from simuq_core.pattern.blind import airy_camera_otf
from simuq_core.pattern.estimate import PatternEstimate, shift_pattern_origin
from simuq_core.pattern.maps import pattern_maps
from simuq_core.realdata import crops as raw_data
from simuq_core.realdata import holdout
from simuq_core.realdata.checks import InputError
from simuq_core.realdata.crops import CropStream, index_acquisitions, read_crop
from simuq_core.realdata.holdout import split_regions

NA, WAVELENGTH, PIXEL = 1.3, 488.0, 62.6
PERIOD = 5.0
REPO = Path(__file__).resolve().parents[1]


def synthetic_stack(rng: np.random.Generator, size: int = 64, period: float = PERIOD, t: int = 1,
                    photons: float = 2000.0) -> np.ndarray:
    """``(T·9, size, size)`` uint16: sparse emitters × ``1 + 0.8 cos(2π k·x + φ + 2πp/3)``
    (3 angles 60° apart), blurred by the Airy camera OTF, Poisson photons + offset 100."""
    cutoff = otf_cutoff_cycles_per_px(NA, WAVELENGTH, PIXEL)
    otf = airy_camera_otf(cutoff)(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    base = rng.uniform(0, np.pi)
    frames = []
    for _ in range(t):
        sample = (rng.random((size, size)) < 0.03) * rng.uniform(0.5, 1.0, (size, size)) + 0.02
        for a in range(3):
            ang = base + a * np.pi / 3
            k = np.array([np.sin(ang), np.cos(ang)]) / period
            phi = rng.uniform(0, 2 * np.pi)
            for p in range(3):
                theta = 2 * np.pi * (k[0] * yy + k[1] * xx) + phi + 2 * np.pi * p / 3
                lit = sample * (1 + 0.8 * np.cos(theta))
                frames.append(np.real(np.fft.ifft2(np.fft.fft2(lit) * otf)))
    clean = np.clip(np.asarray(frames), 0, None)
    clean = photons * clean / clean.max()
    return (rng.poisson(clean) + 100).astype(np.uint16)


def write_tiff(path: Path, stack: np.ndarray, pixel_nm: float = PIXEL) -> Path:
    tifffile.imwrite(path, stack, imagej=True, resolution=(1e3 / pixel_nm, 1e3 / pixel_nm),
                     metadata={"axes": "ZYX", "unit": "um"})
    return path


def index(paths, cache, **kw):
    return index_acquisitions(paths, cache, na=NA, wavelength_nm=WAVELENGTH, default_pixel_nm=PIXEL,
                              norm_offset=100.0, **kw)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    return [write_tiff(folder / f"acq{i}.tif", synthetic_stack(rng, 64, t=2 if i == 0 else 1))
            for i in range(3)]


@pytest.fixture(scope="module")
def indexed(files, tmp_path_factory):
    return index(files, tmp_path_factory.mktemp("cache"))


def test_index_estimates_pattern_and_normalisation(indexed, files):
    assert [a.path for a in indexed.acquisitions] == [str(f) for f in files]
    assert indexed.acquisitions[0].shape == (2, 9, 64, 64)
    assert indexed.pixel_nm == pytest.approx(PIXEL, rel=1e-4)
    for entry, path in zip(indexed.acquisitions, files, strict=True):
        # 64-px fields: the blind estimate's period error is well below 1 % (test_pattern_blind).
        np.testing.assert_allclose(entry.pattern["period_px"], PERIOD, rtol=0.01)
        raw = tifffile.imread(path).astype(np.float64) - 100.0
        assert entry.norm_scale == pytest.approx(np.percentile(raw, 99.9), rel=1e-6)
        assert entry.raw_offset is not None  # plain ImageJ TIFF: memory-mapped


def test_bad_files_reported_and_skipped(files, tmp_path):
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"not a tiff at all" * 10)
    eight = write_tiff(tmp_path / "eight.tif", np.ones((8, 64, 64), np.uint16))
    missing = tmp_path / "missing.tif"
    found = index([files[1], garbage, eight, missing], tmp_path / "cache")
    assert [a.path for a in found.acquisitions] == [str(files[1])]
    reasons = dict(found.skipped)
    assert set(reasons) == {str(garbage), str(eight), str(missing)}
    assert "cannot read as TIFF" in reasons[str(garbage)]
    assert "not a multiple of 9" in reasons[str(eight)]
    assert "no such file" in reasons[str(missing)]
    with pytest.raises(InputError, match="garbage.tif.*strict"):
        index([files[1], garbage], tmp_path / "cache", strict=True)


def test_cache_is_used_and_keyed_on_the_file(files, tmp_path, monkeypatch):
    first = index(files[:2], tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2

    def no_reading(*_a, **_k):
        raise AssertionError("indexed again despite the cache")

    monkeypatch.setattr(raw_data, "_index_one", no_reading)
    assert index(files[:2], tmp_path) == first
    os.utime(files[1], ns=(0, 0))  # a changed file (mtime) is indexed again
    with pytest.raises(AssertionError, match="indexed again"):
        index(files[:2], tmp_path, strict=True)


def test_mixed_pixel_sizes_refused(tmp_path):
    rng = np.random.default_rng(1)
    a = write_tiff(tmp_path / "a.tif", synthetic_stack(rng), 62.6)
    b = write_tiff(tmp_path / "b.tif", synthetic_stack(rng), 80.0)
    with pytest.raises(InputError, match=r"mixed pixel sizes.*a\.tif.*b\.tif"):
        index([a, b], tmp_path / "cache")


def test_crops_carry_the_full_frame_pattern(indexed, files):
    entry = indexed.acquisitions[0]
    t, (y0, x0), c, r = 1, (11, 23), 16, 2
    crop = read_crop(entry, t, y0, x0, (c, c))
    full = tifffile.imread(files[0]).reshape(2, 9, 64, 64)[t].astype(np.float32)
    np.testing.assert_allclose(crop, (full[:, y0:y0 + c, x0:x0 + c] - 100.0) / entry.norm_scale, rtol=1e-6)
    arrays = entry.pattern_arrays(t, (y0, x0), (c, c))
    whole = PatternEstimate(jnp.asarray(entry.pattern_k[t])[None], jnp.asarray(entry.pattern_phase[t])[None],
                            jnp.asarray(entry.pattern_contrast[t])[None], jnp.zeros((1, 2)))
    m = jnp.full((1, 3), 0.8)
    full_maps = np.asarray(pattern_maps(whole, m, 3, (64, 64), r))[0]
    crop_est = PatternEstimate(*(jnp.asarray(arrays[k])[None] for k in raw_data.PATTERN_KEYS))
    crop_maps = np.asarray(pattern_maps(crop_est, m, 3, (c, c), r))[0]
    np.testing.assert_allclose(crop_maps, full_maps[:, r * y0:r * (y0 + c), r * x0:r * (x0 + c)], atol=2e-4)
    shifted = shift_pattern_origin(whole, (y0, x0), (c, c), (64, 64))
    np.testing.assert_allclose(arrays["pattern_origin"], np.asarray(shifted.origin)[0], atol=1e-6)


def _stream(indexed, regions, **kw):
    args = {"crop": 16, "batch_size": 4, "crops_per_epoch": 16, "seed": 3, "process_index": 0,
            "process_count": 1} | kw
    return CropStream(indexed, regions, **args)


def test_stream_is_deterministic(indexed):
    train, _ = split_regions(indexed, 16, val_fraction=0.0)
    a = list(_stream(indexed, train, num_threads=2).epoch_batches(1))
    b = list(_stream(indexed, train, num_threads=0).epoch_batches(1))
    assert len(a) == 4
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    s = _stream(indexed, train)
    assert not np.array_equal(s.plan(1), s.plan(2))
    assert not np.array_equal(s.plan(1), _stream(indexed, train, seed=4).plan(1))
    assert {int(a) for a in s.plan(1)[:, 0]} | {int(a) for a in s.plan(2)[:, 0]} == {0, 1, 2}


def test_held_out_parts_never_train(indexed):
    train, val = split_regions(indexed, 16, val_fraction=0.34, seed=0)
    held = {r.acq for r in val}
    assert len(held) == 1 and held.isdisjoint({r.acq for r in train})
    plans = np.concatenate([_stream(indexed, train).plan(e) for e in range(5)])
    assert held.isdisjoint(set(plans[:, 0].tolist()))
    # One acquisition: an edge strip is held out and no training crop reaches into it.
    single = raw_data.DataIndex(indexed.acquisitions[:1], (), PIXEL, ())
    train, val = split_regions(single, 16, val_block_fraction=0.25, multiple=4)
    _assert_strips_disjoint(single, train, val, 16)
    # Views of one field (val_split strips): a strip of every acquisition, none held out whole.
    train, val = split_regions(indexed, 16, val_block_fraction=0.25, multiple=4, val_split="strips")
    assert {r.acq for r in val} == {r.acq for r in train} == set(range(len(indexed.acquisitions)))
    _assert_strips_disjoint(indexed, train, val, 16)


def _assert_strips_disjoint(index, train, val, crop):
    held = {(r.acq, r.t): r for r in val}
    for r in val:  # a quarter of one side, at an edge
        h, w = index.acquisitions[r.acq].shape[2:]
        assert sorted(r.shape) == [16, 64] and (r.y0 in (0, h - 16) or r.x0 in (0, w - 16))
    plans = np.concatenate([_stream(index, train).plan(e) for e in range(20)])
    for acq, t, y0, x0 in plans[:, :4].astype(int):
        r = held[(acq, t)]
        assert y0 + crop <= r.y0 or y0 >= r.y1 or x0 + crop <= r.x0 or x0 >= r.x1


def _field_with_structure_left(h: int = 64, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(7)
    img = 10.0 + rng.normal(0.0, 0.5, (h, w))
    yy, xx = np.mgrid[:h, :w]
    for k in range(6):  # thin bright lines in the left half only
        img += 20.0 * np.exp(-0.5 * ((xx - 4 - 5 * k) - 0.3 * (yy - h / 2)) ** 2 / 1.2**2) * (xx < w / 2)
    return img


def test_structure_score_sees_lines_not_background():
    img = _field_with_structure_left()
    cutoff = 0.35
    assert holdout.structure_score(img[:, :16], cutoff) > 20 * holdout.structure_score(img[:, 48:], cutoff)
    # Background as bright as the lines, with 10x their noise variance: what is left of it is the
    # noise floor's own error (~150 out-of-band bins of a 64x16 strip: ~20 % of the 0.38·σ² in band).
    bright_empty = 1000.0 + np.random.default_rng(1).normal(0.0, 5.0, (64, 16))
    lines = holdout.structure_score(img[:, :16], cutoff)
    assert holdout.structure_score(bright_empty, cutoff) < 0.15 * lines


def test_held_out_strip_avoids_empty_background(tmp_path):
    """The right quarter is empty background: the held-out strip goes to an edge with structure,
    and the report says how much it holds."""
    img = _field_with_structure_left()
    frames = np.repeat(img[None], 9, axis=0)
    path = write_tiff(tmp_path / "left.tif", (frames * 10).astype(np.uint16))
    idx = index([path], tmp_path / "cache")
    train, val = split_regions(idx, 16, val_block_fraction=0.25, multiple=4)
    assert val[0].x0 != 48  # not the empty right strip
    report = holdout.held_out_structure(idx, val)
    assert report["min_structure_share"] >= 0.7
    right = raw_data.Region(0, 0, 0, 64, 48, 64)
    assert holdout.held_out_structure(idx, [right])["min_structure_share"] < 0.05


def _peak_bytes(stream: CropStream, epochs: int = 2) -> int:
    list(stream.epoch_batches(0))  # warm-up: grain's thread pool, imports
    tracemalloc.start()
    try:
        for e in range(1, epochs + 1):
            for _ in stream.epoch_batches(e):
                pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_dataset(tmp_path):
    """Streaming reads only crops: the traced peak stays far below one acquisition's frames and
    does not grow with the number of files (4 vs 16 acquisitions of 9 × 256²)."""
    rng = np.random.default_rng(2)
    stack = synthetic_stack(rng, 256)
    paths = [write_tiff(tmp_path / f"s{i:02d}.tif", stack) for i in range(16)]
    # The files are identical: index one, point copies of its entry at the others (indexing reads
    # each file whole, one at a time; streaming must never).
    entry = index(paths[:1], tmp_path / "cache").acquisitions[0]
    idx16 = raw_data.DataIndex(tuple(dataclasses.replace(entry, path=str(p)) for p in paths), (), PIXEL, ())
    idx4 = raw_data.DataIndex(idx16.acquisitions[:4], (), PIXEL, ())
    one_acquisition = 9 * 256 * 256 * 4  # float32 frames: 2.4 MB
    peaks = []
    for idx in (idx4, idx16):
        train, _ = split_regions(idx, 16, val_fraction=0.0)
        peaks.append(_peak_bytes(_stream(idx, train, crops_per_epoch=64, num_threads=2, prefetch=8)))
    print("traced peak bytes (4, 16 acquisitions):", peaks)
    assert max(peaks) < one_acquisition / 4, peaks
    assert peaks[1] < 1.5 * peaks[0] + 64_000, peaks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_WORKER = textwrap.dedent("""
    import json, sys
    import jax
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                               process_id=int(sys.argv[2]), initialization_timeout=60)
    from simuq_core.realdata.crops import CropStream, index_acquisitions
    from simuq_core.realdata.holdout import split_regions
    paths = json.loads(sys.argv[3])
    idx = index_acquisitions(paths, sys.argv[4], na=1.3, wavelength_nm=488.0, default_pixel_nm=62.6,
                             norm_offset=100.0)
    train, _ = split_regions(idx, 16, val_fraction=0.0)
    s = CropStream(idx, train, 16, 4, 16, seed=3)  # process index / count from JAX
    xs = [b["x"].tolist() for b in s.epoch_batches(1)]
    with open(sys.argv[5], "w") as fh:  # a file, not stdout: a full pipe would block the barrier
        json.dump({"index": jax.process_index(), "count": jax.process_count(),
                   "plan": s.plan(1).tolist(), "x": xs}, fh)
    jax.distributed.shutdown()
""")


def test_two_processes_read_disjoint_shares(files, tmp_path, indexed):
    cache = tmp_path / "cache"
    index(files, cache)  # the workers find every file in the cache
    address = f"127.0.0.1:{_free_port()}"
    env = os.environ | {"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "XLA_FLAGS": ""}
    names = json.dumps([str(f) for f in files])
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]  # noqa: SIM115 (closed below)
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, address, str(i), names, str(cache),
                               str(tmp_path / f"out{i}.json")], stdout=logs[i], stderr=subprocess.STDOUT,
                              env=env, cwd=REPO) for i in range(2)]
    try:
        for i, p in enumerate(procs):
            code = p.wait(timeout=180)  # bounded: a hung coordinator fails the test
            assert code == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]
    finally:
        for p, fh in zip(procs, logs, strict=True):
            if p.poll() is None:
                p.kill()
                p.wait()
            fh.close()
    results = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    assert sorted((r["index"], r["count"]) for r in results) == [(0, 2), (1, 2)]
    train, _ = split_regions(indexed, 16, val_fraction=0.0)
    single = _stream(indexed, train)
    full = single.plan(1)
    by_index = {r["index"]: r for r in results}
    for p in (0, 1):
        np.testing.assert_array_equal(by_index[p]["plan"], full[p::2])  # disjoint positions, union = all
    # The crops themselves: process p reads crops p, p + 2, … of the single-process epoch, in
    # local batches of batch_size / 2.
    single_crops = np.concatenate([b["x"] for b in single.epoch_batches(1)])
    for p in (0, 1):
        got = np.concatenate([np.asarray(xb, np.float32) for xb in by_index[p]["x"]])
        np.testing.assert_allclose(got, single_crops[p::2], rtol=1e-6)


def test_equalize_frames_divides_crops_by_the_whole_field_gains(files, tmp_path):
    """Per-angle illumination differences (0.8 / 1.2 / 1.0) are measured on the whole field and
    divided out of every crop; without the option crops are unchanged (MT.mrc)."""
    from simuq_core.realdata.normalise import frame_gains

    stack = tifffile.imread(files[1]).astype(np.float64) - 100.0
    gain = np.repeat([0.8, 1.2, 1.0], 3)
    dimmed = np.round(stack * gain[:, None, None]) + 100
    path = write_tiff(tmp_path / "dimmed.tif", dimmed.astype(np.uint16))
    plain = index([path], tmp_path / "c").acquisitions[0]
    equal = index([path], tmp_path / "c", equalize_frames=True).acquisitions[0]
    assert plain.frame_gain is None
    np.testing.assert_allclose(equal.frame_gain[0], frame_gains(dimmed, 100.0), rtol=1e-6)
    expected = frame_gains(stack, 0.0) * gain
    np.testing.assert_allclose(equal.frame_gain[0], expected / expected.mean(), rtol=0.01)
    crop_plain, crop_equal = (read_crop(e, 0, 8, 16, (32, 32)) for e in (plain, equal))
    divisor = np.asarray(equal.frame_gain[0], np.float32)[:, None, None]
    np.testing.assert_allclose(crop_equal, crop_plain / divisor, rtol=1e-6)
