"""The ``predict`` command: tiling and blending, image-level context, input validation, outputs.

The session's tiny self-supervised model (tests/conftest.py, shared with the training and report
tests) is the trained network here; the other tests use a freshly initialised network or none.
"""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import tifffile
from flax import nnx

from simuq_core.config import UQParams
from simuq_core.inference.context import FROZEN, POOLED, get_path, set_mode, with_context_layers
from simuq_core.inference.files import read_input
from simuq_core.inference.predictor import TiledPredictor, resolve_tile
from simuq_core.inference.tiling import Blender, axis_window, make_grid, pad_image
from simuq_core.network.forward import build_model, predict
from simuq_core.network.store import load_model
from simuq_core.pattern.frame_order import frame_order_warnings
from simuq_core.realdata.checks import InputError, check_values
from simuq_core.realdata.normalise import frame_gains, normalise, resolve_offset
from simuq_core.realdata.reader import find_inputs, to_time_series
from simuq_core.simulation.samples import sample_rng, simulate_sample
from stages.predict import main as predict_main
from tests._tiny import tiny_params_file
from tests._tolerance import assert_f32_close, f32_tol
from tests.test_training import tiny_params

ROOT = Path(__file__).resolve().parents[1]
TINY = tiny_params_file()
PHASE_MAJOR = [3 * a + p for p in range(3) for a in range(3)]  # new frame 3·phase + angle


def _stack(size: int, index: int = 0, split: str = "test"):
    """A simulated acquisition ``size × size`` camera px (tiny-profile physics), raw ADU."""
    return simulate_sample(sample_rng(0, split, index), tiny_params(
        simulate={"lr_h": size, "lr_w": size}).simulate)


@pytest.fixture(scope="module")
def trained(selfsup_run):
    """``(model, spec, model_dir)`` of the session's tiny self-supervised model (read-only)."""
    model, spec = load_model(selfsup_run.model_dir)
    return model, spec, selfsup_run.model_dir


# -- tiling geometry and blending (no network) ------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 64), (50, 71), (16, 40), (9, 12)])
def test_grid_covers_the_image_and_blending_is_exact_for_a_pointwise_map(shape, rng):
    grid = make_grid(shape, 16, 6, multiple=4)
    assert grid.padded[0] >= max(shape[0], 16) and grid.padded[1] >= max(shape[1], 16)
    covered = np.zeros(grid.padded, bool)
    for y, x in grid.origins():
        covered[y:y + 16, x:x + 16] = True
    assert covered.all()
    image = rng.random((3, *shape)).astype(np.float32)
    padded = pad_image(image, grid)
    for scale in (1, 2):
        fine = np.kron(padded, np.ones((scale, scale), np.float32))
        blender = Blender(grid, (3,), scale)
        for y, x in grid.origins():
            blender.add(fine[:, y * scale:(y + 16) * scale, x * scale:(x + 16) * scale], y, x)
        np.testing.assert_allclose(blender.result(), np.kron(image, np.ones((scale, scale))),
                                   rtol=1e-6)


def test_raised_cosine_ramps_form_a_partition_of_unity():
    left, right = axis_window(16, 6, False, True), axis_window(16, 6, True, False)
    np.testing.assert_allclose(left[10:] + right[:6], 1.0, atol=1e-12)
    assert left[:10].min() == 1.0 and right[0] < 0.02 and np.all(np.diff(right[:6]) > 0)


def test_tile_margin_keeps_tile_edges_out_of_the_blend(rng):
    """With a margin the ramps are still a partition of unity, but the ``m`` pixels next to a shared
    edge weigh exactly 0: a tile whose edge pixels are wildly wrong (variance ×10⁶ there, as on
    real data) leaves no trace in the blend, while without the margin it shows as a seam. Image
    borders keep their edge pixels; margin 0 is the former window."""
    left, right = axis_window(16, 8, False, True, 2), axis_window(16, 8, True, False, 2)
    np.testing.assert_allclose(left[8:] + right[:8], 1.0, atol=1e-12)
    assert right[:2].max() == 0.0 and left[-2:].max() == 0.0 and right[2] > 0.0
    np.testing.assert_array_equal(axis_window(16, 8, True, True, 0), axis_window(16, 8, True, True))
    with pytest.raises(ValueError, match="tile margin 4"):
        make_grid((64, 64), 16, 8, margin=4)
    truth = rng.random((60, 60)).astype(np.float32) + 1.0
    for margin, seam in ((0, True), (2, False)):
        grid = make_grid(truth.shape, 16, 8, multiple=4, margin=margin)
        blender = Blender(grid, (), 1)
        for y, x in grid.origins():
            tile = truth[y:y + 16, x:x + 16].copy()
            tile[:, :2] *= 1e6 if x > 0 else 1.0  # a bad left edge on every shared side
            blender.add(tile, y, x)
        err = np.abs(blender.result() - truth).max()
        assert (err > 1.0) == seam, (margin, err)
        if not seam:
            assert err < 1e-5


def test_grid_rejects_tiles_the_unet_cannot_take():
    with pytest.raises(ValueError, match="multiple of 8"):
        make_grid((64, 64), 20, 4, multiple=8)
    with pytest.raises(ValueError, match="overlap 12 px must be in"):
        make_grid((64, 64), 16, 12, multiple=4)


def test_default_tile_is_the_training_crop_rounded_to_the_unet():
    spec = {"model": {"depth": 3}}
    assert resolve_tile(None, spec, fallback=30) == 24
    assert resolve_tile(None, spec) == 32
    assert resolve_tile(None, spec | {"train_crop": [48, 64]}, fallback=30) == 48
    assert resolve_tile(40, spec, fallback=30) == 40


# -- image-level context layers ---------------------------------------------------------------


def test_context_layers_reproduce_the_network_and_freeze_its_statistics(rng):
    p = tiny_params()
    model = build_model(p.model, p.uq, 9, 0)
    net, paths = with_context_layers(model)
    layers = [get_path(net, path) for path in paths]
    # GroupNorms + 2 PSF heads + the pattern modulation head
    assert len(paths) == 2 * (2 * p.model.depth + 1 + 1) + 3
    x = jnp.asarray(rng.random((2, 9, 16, 16)), jnp.float32)
    call = nnx.jit(lambda m, xb: m(xb))  # (variables set inside propagate back to the module)
    ref = call(model, x)
    out = call(net, x)  # PER_INPUT: exactly nnx.GroupNorm and the original PSF heads
    # Equal up to float32 round-off of other kernels (tests/_tolerance.py): the widest reduction is
    # a 3×3 convolution over width·2^depth channels (bottleneck, first decoder block), the chain
    # 2·(2·depth + 1) U-Net convolutions + depth up-sampling + to_hr + the head.
    n_terms, chain = 9 * p.model.width * 2**p.model.depth, 2 * (2 * p.model.depth + 1) + p.model.depth + 2
    for k in ref:
        assert_f32_close(out[k], ref[k], n_terms, chain, err_msg=k)
    # Pooled statistics of one input are that input's; frozen, they reproduce its prediction for
    # any batch.
    set_mode(layers, POOLED)
    call(net, x[:1])
    stats = [tuple(np.asarray(a) for a in layer.stats()) for layer in layers]
    set_mode(layers, FROZEN, stats)
    frozen = call(net, x)
    for k in ref:
        assert_f32_close(frozen[k][0], ref[k][0], n_terms, chain, scale=ref[k], err_msg=k)
    # (the tolerance is ~1e-4 of the emitter's scale; other statistics move it by ~0.3 of it)
    assert not np.allclose(np.asarray(frozen["emitter"][1]), np.asarray(ref["emitter"][1]))


def test_crop_mean_statistics_average_each_inputs_own(rng):
    """``CROP_MEAN`` normalises with the mean of the inputs' own means and variances: for inputs
    of different brightness its variance is the mean within-input variance, below the pooled one
    by exactly the spread of the inputs' means (what pooling adds); one input gives its own."""
    from simuq_core.inference.context import CROP_MEAN, ContextGroupNorm

    layer = ContextGroupNorm(nnx.GroupNorm(4, num_groups=2, rngs=nnx.Rngs(0)))
    x = jnp.asarray(rng.standard_normal((3, 8, 8, 4)) * [[[[1.0]]], [[[2.0]]], [[[0.5]]]]
                    + [[[[0.0]]], [[[5.0]]], [[[-3.0]]]], jnp.float32)
    xg = np.asarray(x, np.float64).reshape(3, 8, 8, 2, 2)
    own_mean, own_var = xg.mean(axis=(1, 2, 4)), xg.var(axis=(1, 2, 4))
    set_mode([layer], CROP_MEAN)
    layer(x)
    mean, var = (np.asarray(a) for a in layer.stats())
    np.testing.assert_allclose(mean, own_mean.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(var, own_var.mean(axis=0), rtol=1e-4)
    set_mode([layer], POOLED)
    layer(x)
    pooled_var = np.asarray(layer.stats()[1])
    np.testing.assert_allclose(pooled_var - var, own_mean.var(axis=0), rtol=1e-3)
    set_mode([layer], CROP_MEAN)
    layer(x[:1])
    np.testing.assert_allclose(np.asarray(layer.stats()[1]), own_var[0], rtol=1e-4)


# -- tiled against untiled --------------------------------------------------------------------


def _edge_distance(grid) -> np.ndarray:
    """Per camera pixel: the smallest distance to an internal edge of any tile covering it (the
    image border is shared with the untiled prediction, so it does not count)."""
    h, w = grid.padded
    dist = np.full((h, w), np.inf)
    t = grid.tile
    for y0, x0 in grid.origins():
        yy, xx = np.mgrid[y0:y0 + t, x0:x0 + t]
        d = np.full((t, t), np.inf)
        for internal, value in ((y0 > 0, yy - y0), (y0 + t < h, y0 + t - 1 - yy),
                                (x0 > 0, xx - x0), (x0 + t < w, x0 + t - 1 - xx)):
            if internal:
                d = np.minimum(d, value)
        dist[y0:y0 + t, x0:x0 + t] = np.minimum(dist[y0:y0 + t, x0:x0 + t], d)
    return dist


def _scale(name: str, rescale: int) -> int:
    return 1 if name.startswith("rec") else rescale


def _relative_rms(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    diff, ref = (a - b), b
    if mask is not None:
        diff, ref = diff[..., mask], ref[..., mask]
    return float(np.sqrt(np.mean(diff**2)) / np.sqrt(np.mean(ref**2)))


LARGE = 112
MAP_NAMES = ("emitter", "emitter_std", "lp", "lp_std", "rec", "rec_std", "deconv_std")
# Receptive-field radius of the tiny network (depth 2) in camera px, measured by perturbing one
# input pixel with the context frozen: 24 for the latent maps, 29 for rec (+ the PSF).
RECEPTIVE_RADIUS = 30


@pytest.fixture(scope="module")
def large_predictions(trained):
    """Untiled and tiled predictions of one 112×112 simulated stack."""
    model, spec, _ = trained
    x, _ = normalise(_stack(LARGE).raw, 100.0, 99.9, "large")
    run = {}
    run["untiled"] = TiledPredictor(model, spec, LARGE, 0, 1)(x)
    run["tile64"] = TiledPredictor(model, spec, 64, 16, 8)(x)
    run["tile16"] = TiledPredictor(model, spec, 16, 8, 8)(x)  # context from 64-px tiles
    run["tile16_whole"] = TiledPredictor(model, spec, 16, 8, 8, stat_scale=8)(x)
    run["tile16_per_tile"] = TiledPredictor(model, spec, 16, 8, 8, context="tile")(x)
    run["tile16_crops"] = TiledPredictor(model, spec, 16, 8, 8, context="crops")(x)
    run["tile16_hard"] = TiledPredictor(model, spec, 16, 0, 8)(x)
    return run


def test_image_level_pattern_estimate_is_reported_and_shared_by_the_tiles(large_predictions):
    """The light pattern is estimated once for the image: its summary matches the simulated
    pattern, and all tilings (same image-level estimate) draw the same pattern."""
    truth = _stack(LARGE).pattern
    info = large_predictions["tile16"][1]["light_pattern"]
    assert large_predictions["tile16_per_tile"][1]["light_pattern"].startswith("estimated per tile")
    for a, angle in enumerate(info["angles"]):
        k = truth.k[3 * a]
        assert angle["period_px"] == pytest.approx(1 / np.hypot(*k), rel=0.01)
        orient = np.degrees(np.arctan2(k[0], k[1])) % 180.0
        diff = abs(angle["orientation_deg"] - orient) % 180.0
        assert min(diff, 180.0 - diff) < 0.5 and angle["band_match"] > 0.9
    for name in ("tile64", "tile16", "tile16_hard"):
        lp = large_predictions[name][0]["lp"]
        ref = large_predictions["untiled"][0]["lp"]
        # m is per image (frozen context); the cosine itself is identical across tilings.
        assert np.sqrt(((lp - ref) ** 2).mean()) < 1e-3, name


def test_tiled_prediction_matches_untiled_away_from_tile_edges(large_predictions, trained):
    """Tolerances. With the image-level context (here from the whole image: 112 ≤ 4 × 64) the
    network is local: a tile differs from the untiled run only through the zero padding at its
    internal edges, felt within the receptive field (:data:`RECEPTIVE_RADIUS`).

    - Beyond the receptive field the two are the same computation: 1e-5 relative RMS allows
      float32 round-off only (FFT sizes differ between a tile and the whole image).
    - Closer, from 12 px on, the truncated field is felt but weakly (the effective receptive
      field of a CNN decays fast; measured ~1e-3): 1e-2 relative RMS, while per-tile statistics
      (below) are 20-50% off.
    """
    model, spec, _ = trained
    r = spec["model"]["rescale"]
    untiled, _ = large_predictions["untiled"]
    # One tile is the network itself, as trained (per-input statistics).
    x, _ = normalise(_stack(LARGE).raw, 100.0, 99.9, "large")
    direct = predict(model, jnp.asarray(x[None]), UQParams(**spec["uq"]))
    # (float32 round-off of two compilations, tests/_tolerance.py: the whole image's FFTs on the
    # model grid, then the network's 14 layers of 3×3 convolutions over ≤ 32 channels)
    ref = np.asarray(direct["emitter"][0])
    assert_f32_close(untiled["emitter"], ref, atol=f32_tol(ref, (r * LARGE) ** 2, 2)
                     + f32_tol(ref, 9 * 32, 14))
    tiled, info = large_predictions["tile64"]
    assert info["n_tiles"] == 4 and info["context_tiles"] == {"side": LARGE, "used": 1, "of": 1}
    dist = _edge_distance(make_grid((LARGE, LARGE), 64, 16, 4))
    for margin, tol in ((RECEPTIVE_RADIUS, 1e-5), (12, 1e-2)):
        far = dist >= margin
        assert 0.2 < far.mean() < 0.9
        for name in MAP_NAMES:
            mask = np.kron(far, np.ones((_scale(name, r),) * 2, bool))
            assert _relative_rms(tiled[name], untiled[name], mask) < tol, (name, margin)
    np.testing.assert_allclose(tiled["psf"], untiled["psf"], rtol=1e-5, atol=1e-8)


def test_sampled_image_context_stays_close_and_beats_per_tile_statistics(large_predictions):
    """Tolerance. Tiles of 16 px take their context from four 64-px statistics tiles (4 × 16 <
    112) instead of the whole image; the statistics then include those tiles' border features,
    a small bias: we allow 5% relative RMS against the same tiling with whole-image context
    (measured ~2% for the emitter, < 1% for every std map). Per-tile statistics (the training
    behaviour) are off by ~30% (emitter) and must be at least 5× worse on every map (measured
    14-18×)."""
    whole, _ = large_predictions["tile16_whole"]
    sampled, info = large_predictions["tile16"]
    per_tile, _ = large_predictions["tile16_per_tile"]
    assert info["context_tiles"] == {"side": 64, "used": 4, "of": 4}
    for name in MAP_NAMES:
        ours = _relative_rms(sampled[name], whole[name])
        theirs = _relative_rms(per_tile[name], whole[name])
        assert ours < 0.05 and theirs > 5 * ours, (name, ours, theirs)


def _boundary_gradient_ratio(m: np.ndarray, edges: list[int]) -> float:
    """Mean |finite difference| across the given columns and rows (±1 px) over the median
    elsewhere, on a map ``(..., H, W)``."""
    m = m.reshape(-1, *m.shape[-2:])
    ratios = []
    for axis in (-1, -2):
        g = np.abs(np.diff(m, axis=axis)).mean(axis=(0, 1) if axis == -1 else (0, 2))
        at = np.zeros(g.shape, bool)
        for e in edges:
            at[max(0, e - 2):e + 1] = True
        ratios.append(g[at].mean() / np.median(g[~at]))
    return max(ratios)


def _seam_excess(tiled: np.ndarray, untiled: np.ndarray, grid, scale: int) -> float:
    """How much more the tiled map changes across tile edges than the untiled map does at the
    same places (1 = no seam): the untiled map calibrates what the sample itself contributes."""
    edges = sorted({e * scale for s in grid.starts_x for e in (s, s + grid.tile)
                    if 0 < e < grid.shape[1]})
    return _boundary_gradient_ratio(tiled, edges) / _boundary_gradient_ratio(untiled, edges)


def test_no_seams_in_the_std_maps(large_predictions, trained):
    """Tiles of 64 px (larger than twice the receptive field) blend without any seam: the maps
    change across tile edges exactly as much as the untiled maps do (excess ≈ 1.00; < 1.05
    allowed). The tiny profile's 16-px training crop is smaller than the receptive field, so
    every tile is all border; the raised-cosine blend still keeps the std maps within 1.2 (measured
    ≤ 1.1), where abutting tiles without overlap show 5× and more."""
    _, spec, _ = trained
    r = spec["model"]["rescale"]
    untiled, _ = large_predictions["untiled"]
    std_maps = ("emitter_std", "lp_std", "rec_std", "deconv_std")
    for run, tile, overlap, limit, names in (("tile64", 64, 16, 1.05, (*std_maps, "emitter", "rec")),
                                             ("tile16", 16, 8, 1.2, std_maps)):
        tiled, _ = large_predictions[run]
        grid = make_grid((LARGE, LARGE), tile, overlap, 4)
        for name in names:
            excess = _seam_excess(tiled[name], untiled[name], grid, _scale(name, r))
            assert excess < limit, (run, name, excess)
    # The measure sees seams: abutting tiles without overlap (hard edges) show them.
    hard, _ = large_predictions["tile16_hard"]
    grid = make_grid((LARGE, LARGE), 16, 0, 4)
    assert _seam_excess(hard["rec_std"], untiled["rec_std"], grid, 1) > 2.0


# -- input validation -------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["9HW", "91HW", "19HW"])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
def test_accepted_layouts_and_dtypes(layout, dtype, rng):
    frames = (rng.random((9, 20, 24)) * 1000).astype(dtype)
    array = {"9HW": frames, "91HW": frames[:, None], "19HW": frames[None]}[layout]
    stack, found = to_time_series(array, 9, "f.tif")
    assert stack.shape == (1, 9, 20, 24) and stack.dtype == dtype
    np.testing.assert_array_equal(stack[0], frames)
    assert found == {"9HW": "(9,H,W)", "91HW": "(9,1,H,W)", "19HW": "(1,9,H,W)"}[layout]


@pytest.mark.parametrize("shape,expected", [
    ((15, 32, 32), "15 frames is not a multiple of 9.*15 frames is 3 angles × 5 phases"),
    ((32, 32, 9), "looks channel-last"),
    ((32, 32), "a single 32x32 image"),
    ((3, 3, 32, 32), r"not a 9-frame SIM stack; expected \(9,H,W\), \(9,1,H,W\), \(1,9,H,W\)"),
])
def test_wrong_layouts_are_named(shape, expected):
    with pytest.raises(InputError, match=f"^bad.tif: .*{expected}"):
        to_time_series(np.ones(shape, np.float32), 9, "bad.tif")


def test_bad_values_are_errors_and_suspicious_ones_warnings(rng):
    good = (rng.random((9, 32, 32)) * 100 + 100).astype(np.float32)
    nan = good.copy()
    nan[4, 3, 5], nan[0, 1, 1] = np.nan, np.inf
    with pytest.raises(InputError, match=r"f.tif: 1 NaN and 1 Inf value\(s\) \(first at frame 0"):
        check_values(nan, "f.tif")
    with pytest.raises(InputError, match="f.tif: the image is empty"):
        check_values(np.zeros_like(good), "f.tif")
    with pytest.raises(InputError, match=r"the image is constant \(every pixel = 7\)"):
        check_values(np.full_like(good, 7.0), "f.tif")
    dropped = good.copy()
    dropped[5] = 0
    with pytest.raises(InputError, match=r"frame\(s\) \[5\] of 9 are constant"):
        check_values(dropped, "f.tif")
    with pytest.raises(InputError, match="too small"):
        check_values(good[:, :4, :4], "f.tif")
    with pytest.raises(InputError, match="dtype complex64 is not supported"):
        to_time_series(good.astype(np.complex64), 9, "f.tif")
    assert check_values(good, "f.tif", np.dtype(np.float32), 100.0) == []
    saturated = good.astype(np.uint16)
    saturated[:, :4] = 65535
    warnings = check_values(saturated, "f.tif", np.dtype(np.uint16), 500.0)
    assert any("saturated" in w for w in warnings) and any("below the camera offset" in w
                                                           for w in warnings)
    with pytest.raises(InputError, match="percentile is .* wrong norm_offset"):
        normalise(good, 1000.0, 99.9, "f.tif")


def test_frame_order_check_passes_angle_major_and_flags_phase_major_and_noise(rng):
    raw = _stack(64).raw
    warnings, estimate = frame_order_warnings(raw, "f.tif")
    assert warnings == []
    spacing = np.sort(estimate.orientation_deg)
    np.testing.assert_allclose(np.diff(spacing), 60.0, atol=10.0)
    np.testing.assert_allclose(estimate.period_px, 5.0, rtol=0.1)  # the simulated period
    hot = raw.copy()
    hot[:, [3, 40, 51], [7, 22, 60]] = 65535.0  # hot pixels do not hide the pattern
    assert frame_order_warnings(hot, "f.tif")[0] == []
    warnings, _ = frame_order_warnings(raw[PHASE_MAJOR], "f.tif")
    assert len(warnings) == 1 and "look phase-major" in warnings[0]
    warnings, _ = frame_order_warnings(rng.random((9, 64, 64)), "f.tif")
    assert len(warnings) == 1 and "could not confirm the frame order" in warnings[0]
    warnings, estimate = frame_order_warnings(raw[:, :16, :16], "f.tif")
    assert estimate is None and "too small to check the frame order" in warnings[0]


def test_unreadable_files_and_offset_sources(tmp_path):
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"not a tiff at all" * 10)
    with pytest.raises(InputError, match="garbage.tif: cannot read as TIFF"):
        read_input(garbage, 9, 3, "angle_major")
    with pytest.raises(InputError, match="missing.tif: no such file"):
        read_input(tmp_path / "missing.tif", 9, 3, "angle_major")
    assert resolve_offset(12.0, garbage, {"camera_offset": 99}) == (12.0, "given (--norm-offset / "
                                                                          "predict.norm_offset)")
    assert resolve_offset(None, garbage, {"Camera_Offset": 99}) == (99.0, "TIFF metadata "
                                                                          "'camera_offset'")
    (tmp_path / "test").mkdir()
    (tmp_path / "test_meta").mkdir()
    np.savez(tmp_path / "test_meta" / "000003.npz", norm_offset=np.float64(100.0))
    offset, source = resolve_offset(None, tmp_path / "test" / "000003.tif", {})
    assert offset == 100.0 and "simuq dataset metadata" in source
    assert resolve_offset(None, garbage, {}) == (0.0, "none found: 0")


# -- the command end to end -------------------------------------------------------------------


def _write_inputs(folder: Path) -> dict[str, str]:
    """A mixed folder; returns ``{file name: expected outcome}``."""
    folder.mkdir()
    raw = _stack(32, 1).raw
    tifffile.imwrite(folder / "good_float.tif", raw)  # no metadata: offset 0 with a warning
    # Shaped (JSON description) metadata keeps the (1, 9, H, W) layout and carries the offset.
    counts = np.clip(np.round(raw), 0, 65535).astype(np.uint16)
    tifffile.imwrite(folder / "good_uint16.tif", counts[None], metadata={"camera_offset": 100.0})
    tifffile.imwrite(folder / "good_imagej.tif", counts, imagej=True,
                     metadata={"axes": "ZYX", "norm_offset": 100}, resolution=(1 / 0.0626,) * 2)
    tifffile.imwrite(folder / "good_91hw.tif", _stack(32, 2).raw[:, None])
    tifffile.imwrite(folder / "phase_major.tif", raw[PHASE_MAJOR])
    tifffile.imwrite(folder / "bad_frames.tif", np.concatenate([raw, raw[:6]]))
    nan = raw.copy()
    nan[2, 5, 5] = np.nan
    tifffile.imwrite(folder / "bad_nan.tif", nan)
    tifffile.imwrite(folder / "bad_constant.tif", np.zeros_like(raw))
    (folder / "bad_garbage.tif").write_bytes(b"\x00garbage" * 50)
    return {"good_float": "ok", "good_uint16": "ok", "good_imagej": "ok", "good_91hw": "ok",
            "phase_major": "ok",
            "bad_frames": "15 frames", "bad_nan": "NaN", "bad_constant": "empty",
            "bad_garbage": "cannot read as TIFF"}


@pytest.fixture(scope="module")
def mixed_run(trained, tmp_path_factory):
    _, _, model_dir = trained
    root = tmp_path_factory.mktemp("mixed")
    expected = _write_inputs(root / "in")
    rc = predict_main(["--params", TINY, "--model", str(model_dir), "--input",
                       str(root / "in" / "*.tif"), "--out", str(root / "out"), "--quiet",
                       "--tile", "16", "--epistemic", "2"])
    return rc, root / "out", expected


def test_mixed_folder_processes_the_good_files_and_names_the_bad(mixed_run):
    rc, out, expected = mixed_run
    assert rc == 1
    report = json.loads((out / "report.json").read_text())
    assert report["n_inputs"] == 9 and report["n_ok"] == 5 and report["n_failed"] == 4
    by_name = {Path(r["input"]).stem: r for r in report["inputs"]}
    for name, outcome in expected.items():
        entry = by_name[name]
        if outcome == "ok":
            assert entry["ok"] and (out / name / "summary.json").exists(), name
        else:
            assert not entry["ok"] and not (out / name).exists(), name
            assert f"{name}.tif" in entry["error"] and outcome in entry["error"], entry["error"]
    assert any("look phase-major" in w for w in by_name["phase_major"]["warnings"])
    assert any("no camera offset" in w for w in by_name["good_float"]["warnings"])
    assert by_name["good_uint16"]["warnings"] == [] and by_name["good_imagej"]["warnings"] == []
    layouts = {n: json.loads((out / n / "summary.json").read_text())["layout"]
               for n in ("good_float", "good_uint16", "good_91hw")}
    assert layouts == {"good_float": "(9,H,W)", "good_uint16": "(1,9,H,W)", "good_91hw": "(9,1,H,W)"}
    imagej = json.loads((out / "good_imagej" / "summary.json").read_text())["normalisation"]
    assert imagej["norm_offset"] == 100.0 and imagej["offset_source"] == "TIFF metadata 'norm_offset'"


def test_outputs_round_trip_with_axes_and_metadata(mixed_run, trained):
    _, spec, model_dir = trained
    _, out, _ = mixed_run
    summary = json.loads((out / "good_uint16" / "summary.json").read_text())
    assert summary["layout"] == "(1,9,H,W)" and summary["input_dtype"] == "uint16"
    norm = summary["normalisation"]
    assert norm["norm_offset"] == 100.0 and "camera_offset" in norm["offset_source"]
    assert summary["model"]["params_hash"] == spec["params_hash"]
    assert summary["tiling"]["tile"] == 16 and summary["tiling"]["n_tiles"] == 9
    r = spec["model"]["rescale"]
    expected = {"emitter": ("YX", (64, 64)), "emitter_std": ("YX", (64, 64)),
                "lp": ("ZYX", (9, 64, 64)), "lp_std": ("ZYX", (9, 64, 64)),
                "rec": ("ZYX", (9, 32, 32)), "rec_std": ("ZYX", (9, 32, 32)),
                "deconv_std": ("ZYX", (9, 64, 64)),
                "psf": ("YX", (spec["psf_size"],) * 2), "psf_std": ("YX", (spec["psf_size"],) * 2),
                "wiener": ("YX", (64, 64)), "wiener_std": ("YX", (64, 64)),  # predict.wiener
                # the tiny profile trains with dropout: MC-dropout epistemic maps with --epistemic
                "emitter_epi_std": ("YX", (64, 64)), "emitter_total_std": ("YX", (64, 64)),
                "rec_total_std": ("ZYX", (9, 32, 32))}
    assert set(summary["maps"]) == set(expected)
    assert set(summary["ood"]["scores"]) == {"epistemic", "misfit"} and summary["ood"]["flagged"] is None
    # The classical image beside the network's: its pattern is the simulated one (period 5 px).
    assert np.allclose(summary["wiener"]["period_px"], 5.0, rtol=0.03)
    assert summary["maps"]["wiener_std"]["min"] > 0
    for name, (axes, shape) in expected.items():
        with tifffile.TiffFile(out / "good_uint16" / f"{name}.tif") as tif:
            assert tif.is_imagej and tif.series[0].axes == axes and tif.series[0].shape == shape
            data = tif.asarray()
            meta = tif.imagej_metadata
            num, den = tif.pages.first.tags["XResolution"].value
        assert data.dtype == np.float32 and np.isfinite(data).all()
        info = json.loads(meta["simuq"])
        assert info["map"] == name and info["axes"] == axes
        assert info["model"] == {"dir": str(model_dir), "mode": "selfsup",
                                 "params_hash": spec["params_hash"]}
        assert info["normalisation"]["norm_offset"] == 100.0
        assert meta["norm_scale"] == pytest.approx(norm["norm_scale"])
        assert "params_hash" in meta["Info"] and meta["unit"] == "um"
        camera_nm = spec["model"]["optics"]["lr_pixel_nm"]
        pixel_nm = camera_nm if info["grid"] == "camera" else camera_nm / r
        assert 1000.0 * den / num == pytest.approx(pixel_nm, rel=1e-3)
        assert summary["maps"][name]["axes"] == axes and summary["maps"][name]["shape"] == list(shape)
        if name.endswith("_std"):
            assert data.min() >= 0
    lp = tifffile.imread(out / "good_uint16" / "lp.tif")
    np.testing.assert_allclose(lp.mean(axis=0), 1.0, atol=1e-4)
    # One OME-TIFF with the model-grid images as named channels, at the model grid's pixel size.
    ome = summary["ome_tiff"]
    assert ome["channels"] == ["emitter", "emitter_std", "emitter_epi_std", "emitter_total_std", "wiener",
                               "wiener_std"]
    with tifffile.TiffFile(out / "good_uint16" / ome["file"]) as tif:
        assert tif.is_ome and tif.series[0].axes == "CYX" and tif.series[0].shape == (6, 64, 64)
        stack = tif.asarray()
        size_um = float(tif.ome_metadata.split('PhysicalSizeX="')[1].split('"')[0])
        assert size_um == pytest.approx(spec["model"]["optics"]["lr_pixel_nm"] / r / 1000, rel=1e-6)
        assert all(f'Name="{name}"' in tif.ome_metadata for name in ome["channels"])
    np.testing.assert_array_equal(stack[0], tifffile.imread(out / "good_uint16" / "emitter.tif"))


def test_default_predict_runs_no_mc_passes_and_checks_ood_on_the_data_terms(trained, tmp_path):
    """MC-dropout passes are opt-in: by default the dropout model runs once, writes no epistemic
    maps, and its OOD check uses only the terms it has (the raw-frame misfit), never the
    reference's epistemic threshold: a tiny epistemic threshold does not flag, a tiny misfit one does."""
    _, _, model_dir = trained
    tifffile.imwrite(tmp_path / "a.tif", _stack(32, 1).raw)
    flags = {}
    for name, (epi, misfit) in {"epi_tiny": (1e-12, 1e12), "misfit_tiny": (1e12, 1e-12)}.items():
        ref = tmp_path / f"{name}.json"
        ref.write_text(json.dumps({"percentile": 99.0, "n_val": 4,
                                   "epistemic": {"threshold": epi, "median": 0.0},
                                   "misfit": {"threshold": misfit, "median": 1.0}}))
        rc = predict_main(["--params", TINY, "--model", str(model_dir), "--input", str(tmp_path / "a.tif"),
                           "--out", str(tmp_path / name), "--quiet", "--tile", "16",
                           "--ood-reference", str(ref)])
        summary = json.loads((tmp_path / name / "a" / "summary.json").read_text())
        assert rc == 0 and "emitter_epi_std" not in summary["maps"]
        assert summary["ood"]["terms"] == ["misfit"]
        flags[name] = summary["ood"]["flagged"]
    assert flags == {"epi_tiny": False, "misfit_tiny": True}


def test_a_second_predict_process_compiles_nothing_new(trained, tmp_path):
    """The persistent compilation cache: the first process fills it, an identical second process
    finds every program there and adds no entry."""
    import os
    import subprocess
    import sys

    _, _, model_dir = trained
    tifffile.imwrite(tmp_path / "a.tif", _stack(32, 1).raw)
    cache = tmp_path / "cache"
    env = {**os.environ, "SIMUQ_COMPILE_CACHE": str(cache)}

    def run(out: str) -> set[str]:
        subprocess.run([sys.executable, "-m", "stages.predict", "--params", TINY, "--model", str(model_dir),
                        "--input", str(tmp_path / "a.tif"), "--out", str(tmp_path / out), "--quiet",
                        "--tile", "16"], cwd=ROOT, env=env, check=True, capture_output=True)
        return {p.name for p in cache.iterdir()}

    first = run("one")
    assert first, "the first process wrote compiled programs"
    assert run("two") == first


def test_usage_errors_exit_with_status_2(trained, tmp_path, capsys):
    _, _, model_dir = trained
    assert predict_main(["--params", TINY, "--model", str(model_dir), "--input",
                         str(tmp_path / "nothing*.tif"), "--out", str(tmp_path / "o")]) == 2
    assert "no input matches" in capsys.readouterr().err
    tifffile.imwrite(tmp_path / "a.tif", _stack(16).raw)
    assert predict_main(["--params", TINY, "--model", str(tmp_path / "nomodel"), "--input",
                         str(tmp_path / "a.tif"), "--out", str(tmp_path / "o")]) == 2
    assert "no model.json" in capsys.readouterr().err
    assert predict_main(["--params", TINY, "--model", str(model_dir), "--input",
                         str(tmp_path / "a.tif"), "--out", str(tmp_path / "o"), "--tile", "18"]) == 2
    assert "multiple of 4" in capsys.readouterr().err


def test_find_inputs_takes_globs_folders_and_paths(tmp_path):
    for name in ("b.tif", "a.tiff", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in find_inputs([str(tmp_path)])] == ["a.tiff", "b.tif"]
    assert [p.name for p in find_inputs([str(tmp_path / "*.tif"), str(tmp_path / "b.tif")])] == [
        "b.tif"]
    assert [p.name for p in find_inputs([str(tmp_path / "missing.tif")])] == ["missing.tif"]


@pytest.mark.parametrize("shape", [(12, 10), (24, 56)])
def test_small_and_non_square_stacks(trained, shape):
    """Smaller than a tile: reflection-padded and cropped back; non-square: the context tiles are
    squares of the shorter side."""
    model, spec, _ = trained
    h, w = shape
    x, _ = normalise(_stack(56).raw[:, :h, :w], 100.0, 99.9, "small")
    maps, info = TiledPredictor(model, spec, 16, 8, 8)(x)
    assert info["padded_to"] == [max(h, 16), max(w, 16)]
    assert maps["emitter"].shape == (2 * h, 2 * w) and maps["rec"].shape == (9, h, w)
    assert maps["lp_std"].shape == (9, 2 * h, 2 * w)
    assert all(np.isfinite(v).all() for v in maps.values())
    if info["n_tiles"] > 1:
        assert info["context_tiles"]["side"] == min(h, w)


def test_normalise_equalize_frames_records_the_gains():
    raw = _stack(LARGE).raw.astype(np.float64)
    gain = np.repeat([0.9, 1.15, 0.95], 3)
    dimmed = (raw - 100.0) * gain[:, None, None] + 100.0
    x, norm = normalise(dimmed, 100.0, 99.9, "dimmed", equalize_frames=True)
    _, norm0 = normalise(raw, 100.0, 99.9, "raw")
    assert norm0.frame_gains is None and "frame_gains" not in norm0.as_dict()
    np.testing.assert_allclose(norm.frame_gains, frame_gains(raw, 100.0) * gain / np.mean(
        frame_gains(raw, 100.0) * gain), rtol=1e-6)
    assert norm.as_dict()["rule"].endswith("/ frame_gains[frame]")
    means = x.mean(axis=(-2, -1))
    np.testing.assert_allclose(means, means.mean(), rtol=1e-5)  # every frame at the stack mean
    with pytest.raises(ValueError, match="cannot equalise"):
        frame_gains(np.zeros((9, 8, 8)), 0.0)



def test_auto_context_is_crops_for_fine_tuned_models_only(trained):
    model, spec, _ = trained
    assert TiledPredictor(model, spec, 16, 8, 8, context="auto").context == "image"
    assert TiledPredictor(model, spec | {"mode": "finetune"}, 16, 8, 8, context="auto").context == "crops"
    with pytest.raises(ValueError, match="context must be one of"):
        TiledPredictor(model, spec, 16, 8, 8, context="global")


def test_crops_context_is_the_training_normalisation_without_per_tile_patchwork(large_predictions):
    """``context="crops"`` freezes the mean of 16 tile-sized crops' own statistics: the tiles then
    see the normalisation a network trained on such crops saw, so its maps stay near the per-tile
    (training) prediction, much nearer than with statistics pooled over the image (measured on
    this tiny model, relative RMS crops / image: rec 0.10 / 0.23, rec_std 0.006 / 0.041,
    deconv_std 0.12 / 1.33, lp_std 0.004 / 2.6; the emitter 0.30 / 0.28 either way), while one
    frozen context keeps every tile on one gain. Required: at least 2× nearer on those maps."""
    per_tile, _ = large_predictions["tile16_per_tile"]
    crops, info = large_predictions["tile16_crops"]
    image, _ = large_predictions["tile16_whole"]
    assert info["context_tiles"]["side"] == 16 and info["context"].startswith("mean of tile-sized")
    for name in ("rec", "rec_std", "deconv_std", "lp_std"):
        ours, pooled = _relative_rms(crops[name], per_tile[name]), _relative_rms(image[name], per_tile[name])
        assert ours < pooled / 2, (name, ours, pooled)
