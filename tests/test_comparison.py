"""The classical baseline stage's report and the side-by-side comparison."""

import numpy as np
import pytest

from simuq_core.reports import comparison as cmp
from simuq_core.simulation.dataset import write_dataset
from tests.test_training import tiny_params

_params = tiny_params


@pytest.fixture(scope="module")
def data32(tmp_path_factory):
    """Tiny profile at 32² camera pixels (the Wiener edge fade needs room) with 4 test stacks."""
    p = _params(simulate={"lr_h": 32, "lr_w": 32, "n_test": 4, "n_val": 2, "n_samples": 1})
    root = tmp_path_factory.mktemp("data") / "sim"
    write_dataset(p.simulate, root, progress=False)
    return p, root


def test_baseline_report_noise_std_is_exact_and_bias_is_reported_apart(data32):
    p, root = data32
    m = cmp.baseline_report(str(root), p.model, p.baseline)["metrics"]
    # wiener(raw) - wiener(clean) is exactly the propagated noise: with 4 x 64² correlated pixels
    # the effective sample is far smaller than 16384; 10 % still rejects a variance off by 1.2×.
    assert m["noise_zms"] == pytest.approx(1.0, abs=0.1)
    assert 0.90 < m["noise_coverage_95"] < 0.99
    assert m["wiener_w"] in p.baseline.wiener_w
    assert {f"val_psnr_w={w:g}" for w in p.baseline.wiener_w} <= set(m)
    # Against GT the error is mostly bias, which the noise std does not cover.
    assert m["gt_mse"] == pytest.approx(m["noise_mse"] + m["bias_mse"], rel=0.3)
    assert m["gt_zms"] > m["noise_zms"]
    assert m["psnr_wiener"] > m["psnr_widefield"]


def test_baseline_summary_names_both_parts(data32):
    p, root = data32
    md = cmp.baseline_summary(cmp.baseline_report(str(root), p.model, p.baseline)["metrics"])
    assert "noise part" in md and "bias" in md and "ZMS" in md


def test_checkerboard_index_sees_a_fixed_subpixel_pattern():
    rng = np.random.default_rng(0)
    smooth = np.repeat(np.repeat(rng.random((2, 32, 32)), 2, axis=1), 2, axis=2) + 1.0
    assert cmp.checkerboard_index(smooth, 2) < 1e-2
    board = smooth * (1 + 0.2 * np.indices((64, 64)).sum(axis=0) % 2)[None]
    assert cmp.checkerboard_index(board, 2) > 0.05


def test_benchmark_set_levels_share_the_scene_and_twins_differ_only_by_noise():
    p = _params()
    hi = cmp.make_benchmark_set(p.simulate, p.quality, 1.0, p.model.rescale)
    lo = cmp.make_benchmark_set(p.simulate, p.quality, 0.1, p.model.rescale)
    assert hi.x.shape == (p.quality.n_samples, 9, p.quality.size, p.quality.size)
    np.testing.assert_array_equal(hi.gt, lo.gt)
    assert lo.photons == pytest.approx(0.1 * hi.photons)
    z = (hi.x_twin - hi.clean) / hi.sigma
    assert np.mean(z**2) == pytest.approx(1.0, abs=5 * np.sqrt(2 / z.size))
    assert not np.allclose(hi.x, hi.x_twin)
    val = cmp.make_benchmark_set(p.simulate, p.quality, 1.0, p.model.rescale, split="val")
    assert not np.allclose(val.gt[0], hi.gt[0])


def test_quality_report_scores_every_method_with_a_network(tmp_path):
    from simuq_core.inference.predictor import TiledPredictor
    from simuq_core.network.forward import build_model, model_spec

    p = _params()
    model = build_model(p.model, p.uq, 9, 0)
    spec = model_spec(p.model, p.uq, 9)
    net = TiledPredictor(model, spec, 16, 4, 4)
    res = cmp.quality_report(p, {"simuq_untrained": net}, tmp_path)
    for level in ("photons_x1", "photons_x0.1"):
        table = res["metrics"][level]["methods"]
        assert set(table) >= {"widefield", "wiener_sim", "simuq_untrained", "gt"}
        for name in ("widefield", "wiener_sim", "simuq_untrained"):
            assert np.isfinite(table[name]["psnr"]) and -1 <= table[name]["ssim"] <= 1
            assert "frc_nm" in table[name]
        assert "simuq_untrained_psnr_minus_wiener" in res["metrics"][level]
    assert (tmp_path / "panels" / "photons_x1_0.png").exists()
    assert "wiener_sim" in res["markdown"] and all(np.isfinite(list(res["flat"].values())))
