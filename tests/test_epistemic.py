"""Epistemic uncertainty: the total-variance rule, MC dropout, ensembles, the OOD score."""

import numpy as np
import pytest

from simuq_core.inference.ensemble import make_ensemble_predictor
from simuq_core.network.forward import build_model
from simuq_core.uncertainty.epistemic import (
    EnsembleAccumulator,
    check_members,
    combine_members,
    fit_input_model,
    input_distance,
    input_features,
    ood_flags,
    ood_reference,
    ood_scores,
    roc_auc,
)
from tests.test_training import _trainer, _x, tiny_params


def _members(rng, m=5, shape=(3, 4, 4)):
    return {"emitter": rng.random((m, *shape)), "emitter_var": rng.random((m, *shape)) * 0.1,
            "psf": rng.random((m, 2, 5, 5))}


def test_mixture_variance_matches_sampling_from_the_mixture(rng):
    # Draw from the equal-weight mixture of M Gaussians; the empirical variance must match
    # aleatoric + epistemic. With n draws the relative SE of a variance is about sqrt(2/n)
    # (plus the mixture's excess kurtosis, < 3 here): 4 SE with n = 200_000 is < 1.5 %.
    stacked = _members(rng, m=4, shape=(6,))
    out = combine_members(stacked)
    n = 200_000
    comp = rng.integers(0, 4, size=(n, 6))
    draws = rng.normal(np.take_along_axis(stacked["emitter"], comp, 0),
                       np.sqrt(np.take_along_axis(stacked["emitter_var"], comp, 0)))
    np.testing.assert_allclose(draws.var(axis=0), out["emitter_var_total"], rtol=0.03)
    np.testing.assert_allclose(out["emitter_var_total"],
                               out["emitter_var"] + out["emitter_var_epi"], rtol=1e-12)
    # Without the epistemic term the mixture variance is underestimated wherever means differ.
    assert np.all(draws.var(axis=0) > 1.05 * out["emitter_var"])


def test_accumulator_equals_one_shot_combination(rng):
    stacked = _members(rng, m=7)
    acc = EnsembleAccumulator()
    for lo, hi in ((0, 3), (3, 4), (4, 7)):
        acc.add({k: v[lo:hi] for k, v in stacked.items()})
    got, want = acc.result(), combine_members(stacked)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="no member"):
        EnsembleAccumulator().result()


def test_ensemble_members_must_share_geometry_and_optics():
    base = {"n_frames": 9, "psf_size": 11, "model_pixel_nm": 31.3,
            "model": {"rescale": 2, "optics": {"na": 1.3}, "light_pattern": {}, "wiener_input": True},
            "uq": {"targets": ["emitter"], "obs_noise": "none", "pool_var": "exact"}}
    check_members([base, base], ["a", "b"])
    other = {**base, "model": {**base["model"], "optics": {"na": 1.1}}}
    with pytest.raises(ValueError, match=r"ensemble member models/b: model\.optics"):
        check_members([base, base, other], ["models/a", "models/c", "models/b"])


def test_roc_auc_known_values():
    assert roc_auc([0, 1, 2], [3, 4]) == 1.0
    assert roc_auc([3, 4], [0, 1, 2]) == 0.0
    assert roc_auc([1, 1], [1, 1]) == 0.5
    assert roc_auc([0, 2], [1, 3]) == 0.75


def test_ood_flags_use_the_val_quantile():
    val = {"epistemic": np.linspace(0.0, 1.0, 101), "misfit": np.linspace(1.0, 2.0, 101)}
    ref = ood_reference(val, 99.0)
    assert ref["epistemic"]["threshold"] == pytest.approx(0.99)
    flags = ood_flags({"epistemic": np.array([0.5, 1.5, 0.1]), "misfit": np.array([1.0, 1.0, 2.5])}, ref)
    assert flags["flagged"].tolist() == [False, True, True]
    np.testing.assert_allclose(flags["combined"][1], 1.5 / 0.99)


def test_mc_dropout_gives_epistemic_variance_and_a_deterministic_mean_network():
    p = tiny_params(model={"dropout": 0.2})
    x = _x(3)
    model = build_model(p.model, p.uq, 9, 0)
    run = make_ensemble_predictor([(model, p.uq)], n_samples=4, seed=0, batch_size=2)
    a, b = run(x), run(x)
    for key in ("emitter_var_epi", "lp_var_epi", "var_rec_epi"):
        assert a[key].shape == a[key.replace("_epi", "")].shape
        np.testing.assert_array_equal(a[key], b[key])  # masks fixed by the seed
    # (The untrained modulation head has zero weights, so only emitter and rec vary yet.)
    assert float(a["emitter_var_epi"].mean()) > 0.0 and float(a["var_rec_epi"].mean()) > 0.0
    np.testing.assert_allclose(a["emitter_var_total"], a["emitter_var"] + a["emitter_var_epi"])
    scores = ood_scores(a, x)
    assert scores["epistemic"].shape == scores["misfit"].shape == (3,)
    assert np.all(scores["epistemic"] > 0)
    # Without dropout: one deterministic member, zero epistemic variance.
    q = tiny_params(model={"dropout": 0.0})
    plain = make_ensemble_predictor([(build_model(q.model, q.uq, 9, 0), q.uq)], 4, 0, 2)(x)
    assert float(np.abs(plain["emitter_var_epi"]).max()) == 0.0
    # Two different networks: an ensemble disagrees.
    pair = make_ensemble_predictor([(build_model(q.model, q.uq, 9, 0), q.uq),
                                    (build_model(q.model, q.uq, 9, 1), q.uq)], 4, 0, 2)(x)
    assert float(pair["emitter_var_epi"].mean()) > 0.0


# Raw network outputs each dropout site may change (every other output must stay bit-identical to
# the deterministic pass): feats and mid reach everything computed from the U-Net features, hr only
# the model-grid heads, bottleneck only the pooled / background heads.
_POOLED = {"background", "psf", "psf_logvar", "pattern_logvar", "light_pattern", "lp_logvar"}
_SITE_REACH = {
    "feats": {"emitter", "emitter_logvar", "obs_logvar", "obs_features"},
    "mid": {"emitter", "emitter_logvar", "obs_logvar", "obs_features"},
    "hr": {"emitter", "emitter_logvar"},
    "bottleneck": _POOLED,
}
_SITE_SHOWS = {"feats": "obs_features", "mid": "emitter", "hr": "emitter", "bottleneck": "background"}


@pytest.mark.parametrize("sites", [["feats"], ["mid"], ["hr"], ["bottleneck"], ["mid", "bottleneck"]])
def test_dropout_acts_only_through_the_configured_sites(sites):
    import jax

    p = tiny_params(model={"dropout": 0.3, "dropout_at": sites})
    model = build_model(p.model, p.uq, 9, 0)
    x = jax.numpy.asarray(_x(2))
    det = model(x)
    noisy = model(x, dropout_key=jax.random.PRNGKey(1))
    reach = set().union(*(_SITE_REACH[s] for s in sites))
    assert set(noisy) == set(det)
    for name in det:
        if name not in reach:
            np.testing.assert_array_equal(noisy[name], det[name], err_msg=f"{sites} changed {name}")
    for site in sites:
        assert not np.array_equal(noisy[_SITE_SHOWS[site]], det[_SITE_SHOWS[site]]), site


def test_a_sites_mask_does_not_depend_on_the_other_sites():
    import jax

    key, x = jax.random.PRNGKey(3), jax.numpy.asarray(_x(2))
    outs = {}
    for sites in (["bottleneck"], ["feats", "bottleneck", "hr"]):
        p = tiny_params(model={"dropout": 0.3, "dropout_at": sites})
        outs[len(sites)] = build_model(p.model, p.uq, 9, 0)(x, dropout_key=key)
    np.testing.assert_array_equal(outs[1]["background"], outs[3]["background"])
    # the default sites keep the masks of the former three-way split
    np.testing.assert_array_equal(jax.random.split(key, 4)[:3], jax.random.split(key, 3))


def test_dropout_sites_are_validated():
    from pydantic import ValidationError

    from simuq_core.config import ModelParams

    # the schema default is the former placement (models saved before the option load unchanged);
    # the profiles choose the U-Net bottleneck only
    assert ModelParams().dropout_at == ["feats", "bottleneck", "hr"]
    assert tiny_params().model.dropout_at == ["mid", "bottleneck"]
    for bad, match in ((["head"], "dropout_at"), ([], "dropout_at"), (["hr", "hr"], "twice")):
        with pytest.raises((ValidationError, ValueError), match=match):
            tiny_params(model={"dropout_at": bad})
    # stored with the model, so a loaded network drops where it was trained to
    from simuq_core.network.forward import model_spec

    p = tiny_params(model={"dropout_at": ["mid", "bottleneck"]})
    assert ModelParams(**model_spec(p.model, p.uq, 9)["model"]).dropout_at == ["mid", "bottleneck"]


def test_training_with_dropout_draws_new_masks_each_step(tmp_path):
    p = tiny_params(model={"dropout": 0.3})
    trainer = _trainer(p, _x(8), tmp_path)
    k0, k1 = trainer._step_key(0), trainer._step_key(1)
    assert not np.array_equal(np.asarray(k0), np.asarray(k1))
    result = trainer.fit()
    assert np.isfinite([r["loss"] for r in result.history if "loss" in r]).all()
    assert _trainer(tiny_params(model={"dropout": 0.0}), _x(8), tmp_path / "plain")._step_key(0) is None


def test_mahalanobis_input_model_is_chi_distributed_in_distribution(rng):
    """Gaussian features (D = 5, known covariance): fitted on 4000 draws, the squared distance of
    2000 new in-distribution draws has mean D (chi² with D dof; its sample mean has standard error
    √(2D/2000) = 0.071, tolerance 5 SE = 0.35, which also covers the ~D/M estimation bias); a
    3σ shift along one factor makes the squared distance non-central chi² (λ = 9): its median
    distance ≈ 3.5 against ≈ 2.1 (the medians of 2000 draws are within ±0.05)."""
    d = 5
    a = rng.normal(size=(d, d))
    cov = a @ a.T + d * np.eye(d)
    chol = np.linalg.cholesky(cov)
    mean = rng.normal(size=d)
    model = fit_input_model(mean + rng.normal(size=(4000, d)) @ chol.T)
    new = mean + rng.normal(size=(2000, d)) @ chol.T
    dist = input_distance(new[:, None, :], model)
    assert abs(np.mean(dist**2) - d) < 0.35
    shifted = new + 3.0 * chol[:, 0]  # 3 standard deviations along the first factor
    assert np.median(input_distance(shifted[:, None, :], model)) > np.median(dist) + 1.0
    # Fewer vectors than dimensions: the shrunk covariance stays invertible.
    small = fit_input_model(rng.normal(size=(4, 8)))
    assert small["shrinkage"] > 0 and np.all(np.isfinite(small["precision"]))


def test_input_features_are_block_size_free_and_separate_blobs_from_filaments(rng):
    """White noise of variance v per frame (v/9 in the widefield mean): the power of the bands
    away from DC is v/9 whatever the block size (log within ±0.25: ≥ 16 bins per band, 16 blocks
    of 16² or one 64², each bin ~ (v/9)·χ²₂/2); the bands next to DC are biased low by the mean
    removal and differ between block sizes, so an image is always scored with the block size of
    its reference. Smooth blobs are far outside the statistics of filament samples."""
    from simuq_core.simulation.samples import sample_rng, simulate_sample

    v = 4.0
    x = 1.0 + np.sqrt(v) * rng.normal(size=(1, 9, 64, 64))
    for window in (16, 64):
        feats = input_features(x, window, otf_cutoff=0.2)
        assert feats.shape[1] == (64 // window) ** 2
        np.testing.assert_allclose(np.median(feats[0, :, -2:], axis=0), np.log(v / 9), atol=0.25)
    def stack(objects, i):
        cfg = tiny_params(simulate={"objects": objects}).simulate
        s = simulate_sample(sample_rng(0, "train", i), cfg)
        return (s.raw - cfg.noise.offset_adu) / np.percentile(s.raw - cfg.noise.offset_adu, 99.9)

    fil = {"curves": [3, 6], "tubes": [0, 0], "rings": [0, 0], "blobs": [0, 0]}
    blob = {"curves": [0, 0], "tubes": [0, 0], "rings": [0, 0], "blobs": [2, 4],
            "blob_sigma_nm": [200.0, 400.0]}
    train = np.stack([stack(fil, i) for i in range(24)])
    model = fit_input_model(input_features(train, 16, 0.33))
    ind = input_distance(input_features(np.stack([stack(fil, 100 + i) for i in range(6)]), 16, 0.33), model)
    out = input_distance(input_features(np.stack([stack(blob, 200 + i) for i in range(6)]), 16, 0.33), model)
    assert out.min() > ind.max(), (ind, out)


def test_tiled_prediction_writes_epistemic_maps_and_flags_out_of_distribution_inputs(rng):
    from simuq_core.inference.ood import ood_check
    from simuq_core.inference.predictor import TiledPredictor
    from simuq_core.network.forward import model_spec

    p = tiny_params(model={"dropout": 0.2})
    model = build_model(p.model, p.uq, 9, 0)
    spec = model_spec(p.model, p.uq, 9)
    x = _x(1, seed=3)[0]
    mc = TiledPredictor(model, spec, tile=16, overlap=4, batch_size=2, epistemic_samples=3)
    maps, _ = mc(x)
    for name in ("emitter_epi_std", "emitter_total_std", "rec_total_std"):
        assert name in maps and np.all(np.isfinite(maps[name]))
    assert float(maps["emitter_epi_std"].mean()) > 0
    np.testing.assert_allclose(maps["emitter_total_std"] ** 2,
                               maps["emitter_std"] ** 2 + maps["emitter_epi_std"] ** 2, rtol=1e-4)
    plain, _ = TiledPredictor(model, spec, tile=16, overlap=4, batch_size=2)(x)
    assert "emitter_epi_std" not in plain
    # Flagging: thresholds from an in-distribution reference; a tiny one flags, a huge one does not.
    ood = ood_check(x, maps, None, "a.tif")
    assert ood["flagged"] is None and set(ood["scores"]) == {"epistemic", "misfit"}
    low = {"percentile": 99.0, "epistemic": {"threshold": 1e-9}, "misfit": {"threshold": 1e9}}
    high = {"percentile": 99.0, "epistemic": {"threshold": 1e9}, "misfit": {"threshold": 1e9}}
    flagged = ood_check(x, maps, low, "a.tif")
    assert flagged["flagged"] and "outside the training distribution" in flagged["message"]
    assert "a.tif" in flagged["message"]
    assert ood_check(x, maps, high, "a.tif")["flagged"] is False
    # With an input-statistics model in the reference, its score joins (and here decides) the flag.
    feats = input_features(x[None], 16, 0.33)
    far = fit_input_model(feats[0] + 10.0 + rng.normal(size=(32, feats.shape[-1])))
    by_input = high | {"input": {"threshold": 3.0}, "input_model": far | {"window": 16, "otf_cutoff": 0.33}}
    checked = ood_check(x, maps, by_input, "a.tif")
    assert set(checked["scores"]) == {"epistemic", "misfit", "input"}
    assert checked["flagged"] and "input" in checked["message"] and checked["ratios"]["input"] > 1


@pytest.mark.slow
def test_epistemic_report_end_to_end_and_member_check(tmp_path):
    import json

    from simuq_core.reports.epistemic import epistemic_report, load_members
    from simuq_core.simulation.dataset import write_dataset
    from simuq_core.simulation.ood import write_ood_splits
    from simuq_core.workflows.train import run_training

    # two OOD shifts keep it short; the pooled split still pools several
    p = tiny_params(train_sup={"epochs": 1, "debug_every_epochs": 100},
                    ood={"shifts": {"psf_na": {"psf": {"na": 1.1}},
                                    "photons_low": {"noise": {"photons": 2.0, "photon_range": 1.0}}}})
    write_dataset(p.simulate, tmp_path / "sim", progress=False)
    write_ood_splits(p, tmp_path / "ood", progress=False)
    run_training("sup", p, tmp_path / "sim", tmp_path / "m0", progress=False)
    result = epistemic_report([tmp_path / "m0"], tmp_path / "sim", tmp_path / "ood",
                              tmp_path / "rep", p.epistemic, batch_size=2)
    assert result["method"] == "mc_dropout"
    splits = set(result["metrics"])
    assert {"test", "ood/combined"} <= splits and {f"ood/{s}" for s in p.ood.shifts} <= splits
    test = result["metrics"]["test"]
    for kind in ("aleatoric", "epistemic", "total", "total_scaled"):
        assert np.isfinite(test[f"{kind}_emitter_zms"])
    # total = aleatoric + epistemic, so its z² can only be smaller
    assert test["total_emitter_zms"] <= test["aleatoric_emitter_zms"] + 1e-12
    for split, det in result["ood_detection"].items():
        assert 0.0 <= det["flagged_fraction"] <= 1.0
        if split != "test":
            assert 0.0 <= det["auc_combined"] <= 1.0
    ref = json.loads((tmp_path / "rep" / "reference.json").read_text())
    assert ref["percentile"] == p.epistemic.ood_percentile and ref["epistemic"]["threshold"] > 0
    assert ref["input"]["threshold"] > 0 and ref["input_model"]["window"] == p.simulate.lr_h
    assert all("auc_input" in d for k, d in result["ood_detection"].items() if k != "test")
    assert (tmp_path / "rep" / "figures" / "ood_samples.png").exists()
    assert "| test |" in (tmp_path / "rep" / "summary.md").read_text()
    # An ensemble member with other optics is refused, by name.
    import shutil

    shutil.copytree(tmp_path / "m0", tmp_path / "m_other")
    spec = json.loads((tmp_path / "m_other" / "model.json").read_text())
    spec["model"]["optics"]["na"] = 1.1
    (tmp_path / "m_other" / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"m_other: model\.optics"):
        load_members([tmp_path / "m0", tmp_path / "m_other"])
