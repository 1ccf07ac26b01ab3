"""The network, the training engine and both training modes on tiny data."""

import csv
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from simuq_core.config import Params
from simuq_core.evaluation.synthetic import apply_gt_norm
from simuq_core.network.forward import build_model, predict
from simuq_core.network.store import load_model
from simuq_core.training.engine import Trainer, TrainingDiverged
from simuq_core.training.objectives import selfsup_objective
from tests._tiny import tiny_params  # (other test modules import it from here too)
from tests._tolerance import assert_f32_close, f32_tol


def _trainer(params: Params, x: np.ndarray, out: Path, devices=None, **kw) -> Trainer:
    model = build_model(params.model, params.uq, 9, params.train_selfsup.seed)
    prior = np.full((model.psf_size,) * 2, 1.0 / model.psf_size**2)
    return Trainer(model, selfsup_objective(params.uq, params.train_selfsup, prior),
                   params.train_selfsup, {"x": x}, out, devices=devices, progress=False, **kw)


def _x(n=4, seed=0):
    return np.random.default_rng(seed).random((n, 9, 16, 16)).astype(np.float32)


# -- network ---------------------------------------------------------------------------------


def test_network_outputs_obey_their_constraints():
    p = tiny_params()
    model = build_model(p.model, p.uq, 9, 0)
    out = predict(model, jax.numpy.asarray(_x(2)), p.uq)
    assert out["emitter"].shape == (2, 32, 32) and float(out["emitter"].min()) >= 0
    np.testing.assert_allclose(np.asarray(out["light_pattern"]).mean(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["psf"]).sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert out["rec"].shape == out["var_rec"].shape == (2, 9, 16, 16)
    assert float(out["var_rec"].min()) >= p.uq.var_floor
    # Heads start at uq.logvar_init (their last layer has tiny weights and that bias).
    bounded = np.log(np.asarray(out["emitter_var"]))
    assert np.abs(bounded - p.uq.logvar_init).max() < 0.1
    # Log-variances come from decoder features (width channels), not from the output values.
    assert model.emitter_logvar_head.conv.in_features == p.model.width


@pytest.mark.parametrize("upsample", ["icnr", "pixel_shuffle", "resize_conv"])
def test_upsampling_to_the_model_grid(upsample):
    """ICNR starts the sub-pixel convolution as a nearest-neighbour upsampling: the r² sub-pixels
    of every block are equal (no checkerboard at the model-grid period); the plain initialisation
    is not, and resize-convolution has the same output shape."""
    p = tiny_params(model={"upsample": upsample})
    model = build_model(p.model, p.uq, 9, 0)
    feats = jax.random.normal(jax.random.key(1), (2, 16, 16, p.model.width))
    hr = np.asarray(model._to_model_grid(feats))
    r = p.model.rescale
    assert hr.shape == (2, 16 * r, 16 * r, p.model.width)
    blocks = hr.reshape(2, 16, r, 16, r, -1)
    spread = np.abs(blocks - blocks[:, :, :1, :, :1]).max()
    if upsample == "icnr":
        assert spread < 1e-6
    else:
        assert spread > 1e-2 * np.abs(hr).max()
    out = predict(model, jax.numpy.asarray(_x(2)), p.uq)
    assert np.isfinite(np.asarray(out["emitter"])).all()


@pytest.mark.parametrize("up", ["transpose", "resize_conv"])
def test_unet_decoder_upsampling_grid(up):
    """A constant input far from the borders: the transposed-convolution decoder returns a pattern
    periodic at its strides (its 2×2 kernels differ per output pixel), resize-convolution a
    constant (one kernel at every pixel), the grid artefact of removed by construction.
    (The real pipeline trains and predicts with resize_conv: tests/test_real_pipeline.py.)"""
    from simuq_core.network.simnet import UNet

    unet = UNet(9, 8, 2, up=up, rngs=nnx.Rngs(0))
    feats, _ = unet(jax.numpy.ones((1, 128, 128, 9)))
    inner = np.asarray(feats[0, 48:80, 48:80])  # beyond the reach of the zero padding
    spread = inner.std(axis=(0, 1)).max() / np.abs(inner).mean()
    if up == "transpose":
        assert spread > 1e-2
        period4 = inner[:-4] - inner[4:]  # ... and periodic at the 4-px stride of two levels
        assert np.abs(period4).max() < 1e-4 * np.abs(inner).max()
    else:
        assert spread < 1e-4
    with pytest.raises(ValueError, match="U-Net up-sampling"):
        UNet(9, 8, 2, up="nearest", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("targets", [[], ["emitter"], ["lp", "psf"]])
def test_disabled_targets_have_no_head_and_no_output(targets):
    p = tiny_params(uq={"targets": targets})
    model = build_model(p.model, p.uq, 9, 0)
    out = predict(model, jax.numpy.asarray(_x(1)), p.uq)
    # (the parametric light pattern's variance head is ``pattern_logvar_head``)
    heads = {"emitter": "emitter_logvar_head", "lp": "pattern_logvar_head",
             "psf": "psf_logvar_head"}
    for comp, key in (("emitter", "emitter_var"), ("lp", "lp_var"), ("psf", "psf_var")):
        assert (key in out) == (comp in targets)
        assert (getattr(model, heads[comp]) is not None) == (comp in targets)


def test_full_frame_covariance_objective_gives_finite_loss_and_gradients(tmp_path):
    """``uq.frame_covariance = full`` trains through the cross-frame NLL: finite loss and
    gradients, a loss different from the per-frame one (the off-diagonal terms matter), and, with
    no pattern uncertainty (whose coherent errors the per-frame rule treats as independent per
    pixel), exactly the per-frame ``var_rec`` on the diagonal: camera noise incl. the residual-aware
    map, emitter and PSF terms are all wired in."""
    from simuq_core.uncertainty.frame_covariance import covariance_diagonal, covariance_of_prediction

    # (batch of 4 on 2 devices: the diagonal case is then the same program as the two-device
    # trainer below, compiled once)
    x = _x(4)
    losses = {}
    for mode in ("diagonal", "full"):
        p = tiny_params(uq={"frame_covariance": mode}, train_selfsup={"batch_size": 4})
        trainer = _trainer(p, x, tmp_path / mode)
        loss, _, grads = trainer.loss_and_grads({"x": jax.numpy.asarray(x)})
        assert np.isfinite(float(loss))
        leaves = jax.tree_util.tree_leaves(grads)
        assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
        assert any(float(np.abs(np.asarray(g)).max()) > 0 for g in leaves)
        losses[mode] = float(loss)
    assert losses["full"] != pytest.approx(losses["diagonal"], rel=1e-4)
    p = tiny_params(uq={"frame_covariance": "full", "targets": ["emitter", "psf"]})
    model = build_model(p.model, p.uq, 9, 0)
    pred = predict(model, jax.numpy.asarray(x), p.uq)
    diag = np.asarray(covariance_diagonal(covariance_of_prediction(pred, 3, p.model.rescale, p.uq)))
    np.testing.assert_allclose(diag, np.asarray(pred["var_rec"]), rtol=1e-4)


def test_gt_norm_modes():
    rng = np.random.default_rng(0)
    em, lp = rng.random((2, 8, 8)) * 3 + 1, rng.random((2, 9, 8, 8)) + 0.5
    e0, l0 = apply_gt_norm(em, lp, "none")
    assert e0 is em and l0 is lp
    e1, l1 = apply_gt_norm(em, lp, "minmax")
    assert e1.min() == 0 and e1.max() == pytest.approx(1) and l1 is lp
    _, l2 = apply_gt_norm(em, lp, "minmax_full")
    assert l2.min() == 0 and l2.max() == pytest.approx(1)
    _, l3 = apply_gt_norm(em, lp, "minmax_per_channel")
    np.testing.assert_allclose(l3.max(axis=(2, 3)), 1.0)


# -- engine ----------------------------------------------------------------------------------


def test_two_devices_give_the_same_loss_and_gradients_as_one(tmp_path):
    if len(jax.devices()) < 2:
        pytest.skip("needs 2 (simulated) devices; conftest sets XLA_FLAGS")
    p = tiny_params(train_selfsup={"batch_size": 4})
    x = _x(4)
    one = _trainer(p, x, tmp_path / "a", devices=jax.devices()[:1])
    two = _trainer(p, x, tmp_path / "b", devices=jax.devices()[:2])
    assert two.mesh.devices.size == 2 and one.mesh.devices.size == 1
    l1, t1, g1 = one.loss_and_grads({"x": x})
    l2, t2, g2 = two.loss_and_grads({"x": x})
    # Two devices run other kernels and sum the batch in another order (tests/_tolerance.py): the
    # network's 14 layers (3×3 convolutions over ≤ 32 channels) and the loss, forward (loss) and
    # back (gradients), then the sum over the batch's frames or model-grid pixels. An analytically
    # zero gradient (a convolution's bias before a GroupNorm) is pure cancellation of the same
    # back-propagated terms its kernel's gradient sums: each leaf takes its module's largest
    # gradient as scale.
    fan_in, chain = 9 * 32, 14 + 2
    assert_f32_close(l2, l1, atol=f32_tol(l1, fan_in, chain) + f32_tol(l1, x.size), err_msg="loss")
    pixels = x.shape[0] * (2 * x.shape[-2]) * (2 * x.shape[-1])  # model grid: rescale 2
    leaves = jax.tree_util.tree_leaves_with_path(g1)

    def module(path):  # ['dec'][0]['conv1']['bias'].value -> ('dec', 0, 'conv1')
        return tuple(str(k) for k in path if not isinstance(k, jax.tree_util.GetAttrKey))[:-1]

    scale: dict[tuple, float] = {}
    for path, g in leaves:
        scale[module(path)] = max(scale.get(module(path), 0.0), float(np.abs(np.asarray(g)).max()))
    for (path, a), b in zip(leaves, jax.tree.leaves(g2), strict=True):
        s = scale[module(path)]
        assert_f32_close(b, a, atol=f32_tol(s, fan_in, 2 * chain) + f32_tol(s, pixels),
                         err_msg=jax.tree_util.keystr(path))


def _params_of(trainer: Trainer) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree.leaves(jax.device_get(trainer.params))]


# Both engine tests below train with these settings: the learning-rate schedule is part of the
# compiled step, so equal settings let the second test load the first one's program from the
# persistent compilation cache.
_ENGINE = {"epochs": 3, "batch_size": 2, "keep_checkpoints": 2}


def test_training_is_deterministic_and_resume_matches_an_uninterrupted_run(tmp_path):
    p = tiny_params(train_selfsup=_ENGINE)
    x = _x(4)
    a = _trainer(p, x, tmp_path / "a")
    a.fit()
    b = _trainer(p, x, tmp_path / "b")
    b.fit()
    for u, v in zip(_params_of(a), _params_of(b), strict=True):
        np.testing.assert_array_equal(u, v)

    def interrupt(epoch):
        if epoch == 0:
            raise KeyboardInterrupt

    c = _trainer(p, x, tmp_path / "c", on_epoch_end=interrupt)
    with pytest.raises(KeyboardInterrupt):
        c.fit()
    assert [f.name for f in sorted((tmp_path / "c" / "checkpoints").glob("*.npz"))] == [
        "ckpt_epoch_0000.npz"]
    resumed = _trainer(tiny_params(train_selfsup={**p.train_selfsup.model_dump(), "resume": True}),
                       x, tmp_path / "c")
    result = resumed.fit()
    assert result.epochs_run == 2 and result.steps == 6
    for u, v in zip(_params_of(a), _params_of(resumed), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)
    # Only the last `keep_checkpoints` survive; metrics.csv holds the whole history.
    kept = sorted(f.name for f in (tmp_path / "c" / "checkpoints").glob("*.npz"))
    assert kept == ["ckpt_epoch_0001.npz", "ckpt_epoch_0002.npz"]
    rows = list(csv.DictReader((tmp_path / "c" / "metrics.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows if r["kind"] == "epoch"] == [0, 1, 2]
    assert [int(r["step"]) for r in rows if r["kind"] == "step"] == [1, 2, 3, 4, 5, 6]


def test_non_finite_loss_stops_naming_step_and_terms_and_keeps_checkpoint(tmp_path):
    p = tiny_params(train_selfsup=_ENGINE)
    x = _x(4)
    good = _trainer(p, x, tmp_path / "m", on_epoch_end=lambda e: (_ for _ in ()).throw(
        KeyboardInterrupt) if e == 0 else None)
    with pytest.raises(KeyboardInterrupt):
        good.fit()
    ckpt = tmp_path / "m" / "checkpoints" / "ckpt_epoch_0000.npz"
    before = ckpt.read_bytes()
    bad_x = x.copy()
    bad_x[:, 0, 0, 0] = np.nan
    resumed = _trainer(tiny_params(train_selfsup={**p.train_selfsup.model_dump(), "resume": True}),
                       bad_x, tmp_path / "m")
    with pytest.raises(TrainingDiverged) as info:
        resumed.fit()
    msg = str(info.value)
    assert "non-finite loss at step 2 (epoch 1)" in msg
    assert "rec_nll=nan" in msg and "loss=nan" in msg and str(ckpt) in msg
    assert ckpt.read_bytes() == before


# -- both modes end to end -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["selfsup", "sup"])
def test_run_training_writes_model_metrics_and_debug_samples(request, mode):
    # The session's tiny model of this mode (tests/conftest.py): `run_training` with the tiny
    # profile on the tiny dataset (4 epochs of 2 steps, debug every 2 epochs), trained once and
    # shared with the report and predict tests, which only read it.
    trained = request.getfixturevalue(f"{mode}_run")
    out, metrics = trained.model_dir, trained.metrics
    for key in ("rec_zms", "rec_coverage_95", "noise_corr", "emitter_psnr", "widefield_psnr",
                "psnr_gain", "emitter_std_p95_over_mean"):
        assert np.isfinite(metrics[key]), key
    if mode == "sup":
        for key in ("emitter_zms", "lp_zms", "emitter_calib_ratio", "lp_calib_ratio",
                    "emitter_corr", "lp_corr", "emitter_coverage_95"):
            assert np.isfinite(metrics[key]), key
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    wanted = ["kind", "epoch", "step", "loss", "rec_nll", "rec_mse", "rec_mae",
              "rec_std_mean", "emitter_std_mean", "lp_std_mean", "psf_std_mean"]
    if mode == "selfsup":
        wanted += ["psnr"]
    else:
        wanted += ["val_emitter_calib_ratio", "val_lp_calib_ratio", "val_emitter_corr",
                   "val_lp_corr", "val_emitter_zms"]
    assert not set(wanted) - set(header), set(wanted) - set(header)
    debug = sorted((out / "debug_samples").iterdir())
    assert [d.name for d in debug] == ["epoch_001_step_0000004", "epoch_003_step_0000008"]
    with np.load(debug[-1] / "uq_uncertainty.npz") as npz:
        for key in ("rec_std", "deconv_std", "emitter_std", "emitter_logvar", "lp_std", "psf_std"):
            assert key in npz.files, key
        assert npz["rec_std"].shape == (2, 9, 16, 16)
    summary = json.loads((debug[-1] / "uq_summary.json").read_text())
    assert set(summary["emitter_std"]) == {"mean", "p95"}
    # The saved model reloads and predicts exactly what the trained one did.
    model, spec = load_model(out)
    assert spec["mode"] == mode and spec["psf_size"] == model.psf_size
    assert isinstance(model, nnx.Module)


def test_make_optimizer_freezes_parameters_by_path_prefix():
    """``freeze``: frozen parameters get zero updates (no weight decay either), the rest train."""
    import jax.numpy as jnp

    from simuq_core.config import TrainParams
    from simuq_core.training.engine import make_optimizer

    params = {"emitter_logvar_head": {"out": {"kernel": jnp.ones((2, 2))}}, "emitter_head": jnp.ones((2, 2))}
    grads = jax.tree.map(jnp.ones_like, params)
    cfg = TrainParams(lr=0.1, warmup_steps=0, weight_decay=0.1, freeze=["emitter_logvar_head"])
    tx = make_optimizer(cfg, total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.abs(updates["emitter_logvar_head"]["out"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(updates["emitter_head"]).min()) > 0.0


# -- re-simulation (the emitter std after fine-tuning) ------------------------------------------


def test_resimulated_frames_have_the_forward_mean_and_the_camera_noise():
    """``x* = rec + √var_obs·n``: over many draws its mean is ``rec`` and its variance
    ``var_obs`` (to their sampling errors), and the target is the network's own emitter."""
    from simuq_core.training.objectives import resimulated

    p = tiny_params()
    model = build_model(p.model, p.uq, 9, 0)
    x = jax.numpy.asarray(_x(1))
    pred = predict(model, x, p.uq)
    n = 400
    noise = jax.random.normal(jax.random.key(3), (n, 9, 16, 16))
    target, frames = resimulated(model, jax.numpy.repeat(x, n, axis=0), noise, p.uq)
    rec, var = np.asarray(pred["rec"][0], np.float64), np.asarray(pred["var_obs"][0], np.float64)
    frames = np.asarray(frames, np.float64)
    # the same network on a batch of 400 copies against one: another XLA program, round-off only
    # (3x3 convolutions of up to 32 channels, about 14 layers deep, as the engine tests count)
    assert_f32_close(np.asarray(target[0]), np.asarray(pred["emitter"][0]), n_terms=9 * 32, depth=16)
    # per pixel: mean within 5 standard errors √(var/n); variance ratio within 5·√(2/n) (pooled)
    assert np.all(np.abs(frames.mean(axis=0) - rec) < 5 * np.sqrt(var / n) + 1e-6)
    assert np.mean(frames.var(axis=0) / var) == pytest.approx(1.0, abs=5 * np.sqrt(2 / n) / np.sqrt(var.size))


def test_resim_objective_trains_the_emitter_std_towards_the_resimulated_error(tmp_path):
    """With everything but the emitter variance head frozen, the re-simulation objective moves the
    emitter std only, and towards calibration on re-simulated data: a head started 10× too wide
    (log-variance +4.6) ends with a re-simulated ZMS much closer to 1."""
    from simuq_core.training.objectives import RESIM_NOISE_KEY, resim_objective
    from simuq_core.workflows.finetune import resim_calibration

    p = tiny_params(train_selfsup={"epochs": 20, "batch_size": 4, "lr": 5e-2, "mean_first_epochs": 0,
                                   "warmup_steps": 1})
    model = build_model(p.model, p.uq, 9, 0)
    head = model.emitter_logvar_head.out
    head.bias[...] = head.bias[...] + 4.6  # std 10x what the head started with
    groups = {str(getattr(k[0], "key", k[0])) for k, _ in
              jax.tree_util.tree_flatten_with_path(nnx.split(model, nnx.Param)[1])[0]}
    frozen = sorted(g for g in groups if g != "emitter_logvar_head")
    cfg = p.train_selfsup.model_copy(update={"freeze": frozen})
    x = _x(8, seed=2)
    rng = np.random.default_rng(0)
    tiles = {"x": x}
    before = resim_calibration(model, p.uq, tiles | _patterns(model, x), batch_size=4)
    data = {"x": x, RESIM_NOISE_KEY: rng.standard_normal(x.shape).astype(np.float32)}
    params_before = {k: np.asarray(v) for k, v in _flat_params(model).items()}
    prior = np.full((model.psf_size,) * 2, 1.0 / model.psf_size**2)
    trained = Trainer(model, resim_objective(p.uq, cfg, prior), cfg, data, tmp_path,
                      progress=False).fit().model
    after = resim_calibration(trained, p.uq, tiles | _patterns(trained, x), batch_size=4)
    changed = {k for k, v in _flat_params(trained).items()
               if not np.array_equal(np.asarray(v), params_before[k])}
    assert changed and all(k.startswith("emitter_logvar_head") for k in changed)
    assert before["emitter_resim_zms"] < 0.3, before
    distance = {k: abs(np.log(v["emitter_resim_zms"])) for k, v in (("before", before), ("after", after))}
    assert distance["after"] < 0.5 * distance["before"], (before, after)


def _flat_params(model) -> dict[str, jax.Array]:
    leaves = jax.tree_util.tree_flatten_with_path(nnx.split(model, nnx.Param)[1])[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): v for path, v in leaves}


def _patterns(model, x: np.ndarray) -> dict[str, np.ndarray]:
    from simuq_core.network.forward import estimate_patterns

    return estimate_patterns(model, x)


@pytest.mark.slow
def test_selfsup_training_ends_with_the_emitter_std_fit_when_asked(tiny_data, tmp_path):
    """``train_selfsup.resim_epochs``: after the usual run, only the emitter variance head trains
    on re-simulated samples; every other parameter equals the run without it."""
    from simuq_core.workflows.train import run_training

    section = {"epochs": 1, "debug_every_epochs": 1, "resim_epochs": 1, "resim_lr": 1e-2}
    run_training("selfsup", tiny_params(train_selfsup=section), tiny_data, tmp_path / "resim", progress=False)
    run_training("selfsup", tiny_params(train_selfsup=section | {"resim_epochs": 0}), tiny_data,
                 tmp_path / "plain", progress=False)
    with_fit, plain = np.load(tmp_path / "resim" / "model.npz"), np.load(tmp_path / "plain" / "model.npz")
    changed = {k for k in plain.files if not np.array_equal(plain[k], with_fit[k])}
    assert changed and all(k.startswith("emitter_logvar_head") for k in changed), changed
    assert (tmp_path / "resim" / "checkpoints" / "resim" / "metrics.csv").is_file()
