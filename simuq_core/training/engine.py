"""The training engine shared by the self-supervised and the supervised stages.

One loop, parameterised by an *objective* ``(model, batch, mean_only) -> (loss, terms)`` and an
*evaluator* ``(model, split) -> metrics``:

- optax AdamW (no decay on biases / norms), linear warm-up then cosine decay, global-norm clipping;
- a mean-first phase (``mean_first_epochs``: the objective's mean-only loss, variance heads idle)
  before the likelihood;
- data parallel over all local devices: ``jax.jit`` with the batch sharded over a 1-D device
  :class:`~jax.sharding.Mesh` and the parameters replicated (no ``pmap``);
- deterministic for a seed on CPU: the model initialisation and the epoch order derive from
  ``seed`` and the epoch index only, so ``resume`` reproduces an uninterrupted run;
- checkpoints (host NumPy arrays, written atomically, last ``keep_checkpoints`` kept) restore on
  any device count;
- a non-finite loss stops training with :class:`TrainingDiverged`, naming the step and terms; the
  last good checkpoint is left untouched;
- ``metrics.csv`` rows every ``log_every`` steps (``kind=step``) and per epoch (``kind=epoch``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from simuq_core.config import TrainParams
from simuq_core.io import atomic_file, read_json, write_json, write_npz
from simuq_core.network.store import key_str, load_checkpoint_arrays, restore_state, state_to_arrays

__all__ = [
    "BatchSource",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "lr_schedule",
    "make_optimizer",
    "parameter_groups",
]

log = logging.getLogger("simuq.training")

Batch = dict[str, np.ndarray]
Objective = Callable[[nnx.Module, Mapping[str, jax.Array], jax.Array],
                     tuple[jax.Array, dict[str, jax.Array]]]
Evaluator = Callable[[nnx.Module], dict[str, float]]


@runtime_checkable
class BatchSource(Protocol):
    """Batches produced on demand instead of in-memory arrays (e.g. crops streamed from disk,
    :class:`simuq_core.realdata.crops.CropStream`).

    ``steps_per_epoch``: batches per epoch; ``epoch_batches(epoch)`` yields them (each a
    :data:`Batch` with ``batch_size`` samples), deterministically for the epoch, so ``resume``
    reproduces an uninterrupted run.
    """

    steps_per_epoch: int

    def epoch_batches(self, epoch: int) -> Iterator[Batch]: ...


def parameter_groups(model: nnx.Module) -> set[str]:
    """The top-level names of the model's parameters (``backbone``, ``emitter_logvar_head``, …)."""
    _, params = nnx.split(model, nnx.Param)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {str(getattr(path[0], "key", path[0])) for path, _ in leaves}


class TrainingDiverged(RuntimeError):
    """A non-finite loss; the message names the step and every loss term."""


# ----------------------------------------------------------------------------------------------
# Optimiser and state (de)serialisation
# ----------------------------------------------------------------------------------------------


def lr_schedule(cfg: TrainParams, total_steps: int) -> optax.Schedule:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``0.05·lr``."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else cfg.lr, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=0.05 * cfg.lr,
    )


def make_optimizer(cfg: TrainParams, total_steps: int) -> optax.GradientTransformation:
    """AdamW on :func:`lr_schedule`, global-norm clipping; no decay on 1-D
    params. Parameters whose path (``emitter_logvar_head/out/kernel``) starts with one of
    ``cfg.freeze`` get zero gradients (outside the clipping norm) and zero updates (no weight
    decay either)."""
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(lr_schedule(cfg, total_steps), weight_decay=cfg.weight_decay,
                    mask=lambda params: jax.tree.map(lambda p: p.ndim > 1, params)),
    )
    if not cfg.freeze:
        return tx
    prefixes = tuple(cfg.freeze)

    def frozen(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: key_str(path).startswith(prefixes), params)

    zero = optax.masked(optax.set_to_zero(), frozen)
    return optax.chain(zero, tx, zero)


# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    model: nnx.Module
    epochs_run: int
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Train ``model`` on ``train``: a dict of equally long NumPy arrays (first axis = sample),
    or a :class:`BatchSource` that streams the batches.

    Parameters
    ----------
    model : the network (initialised; its parameters are replaced on resume).
    objective : jittable ``(model, batch, mean_only) -> (loss, terms)``; ``mean_only`` is a traced
        0/1 scalar so both phases share one compiled step.
    cfg : training params.
    out_dir : model folder (``checkpoints/``, ``metrics.csv`` …).
    evaluator : optional ``model -> {name: value}`` run after every epoch (logged with ``val_``).
    on_debug : optional ``(model, epoch, step) -> None`` every ``debug_every_epochs``.
    on_epoch_end : optional ``(epoch) -> None`` after the epoch's checkpoint (tests use it to
        interrupt a run).
    on_rows : optional ``(rows) -> None`` after every epoch with the ``metrics.csv`` rows added
        since the previous call (experiment tracking).
    devices : devices of the data-parallel mesh (default: all local devices that divide the batch).
    """

    def __init__(
        self,
        model: nnx.Module,
        objective: Objective,
        cfg: TrainParams,
        train: Batch | BatchSource,
        out_dir: str | Path,
        evaluator: Evaluator | None = None,
        on_debug: Callable[[nnx.Module, int, int], None] | None = None,
        on_epoch_end: Callable[[int], None] | None = None,
        on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
        devices: list | None = None,
        progress: bool = True,
    ):
        self.cfg = cfg
        self.train = train
        if isinstance(train, BatchSource):
            self.steps_per_epoch = int(train.steps_per_epoch)
            self.n = self.steps_per_epoch * cfg.batch_size
            if self.steps_per_epoch < 1:
                raise ValueError("the batch source yields no batch per epoch")
        else:
            self.n = len(next(iter(train.values())))
            if cfg.batch_size > self.n:
                raise ValueError(
                    f"batch_size {cfg.batch_size} exceeds the {self.n} training samples"
                )
            self.steps_per_epoch = self.n // cfg.batch_size  # drop the remainder: static shapes
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.evaluator, self.on_debug, self.on_epoch_end = evaluator, on_debug, on_epoch_end
        self.on_rows = on_rows
        self.progress = progress
        devices = devices or jax.local_devices()
        n_dev = max(d for d in range(1, len(devices) + 1) if cfg.batch_size % d == 0)
        self.mesh = Mesh(np.asarray(devices[:n_dev]), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))
        self.data_sharding = NamedSharding(self.mesh, P("data"))
        self.replicated = NamedSharding(self.mesh, P())

        self.graphdef, params = nnx.split(model, nnx.Param)
        names = [key_str(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        unknown = [f for f in cfg.freeze if not any(n.startswith(f) for n in names)]
        if unknown:  # a typo would silently train everything
            raise ValueError(f"freeze {unknown}: no parameter path starts with it (e.g. {names[:3]})")
        self.schedule = lr_schedule(cfg, self.total_steps)
        self.tx = make_optimizer(cfg, self.total_steps)
        self.params = jax.device_put(params, self.replicated)
        self.opt_state = jax.device_put(self.tx.init(params), self.replicated)
        self.model = model
        self._step_fn = self._build_step(objective)
        self._grad_fn = self._build_grad(objective)

    # -- compiled functions ------------------------------------------------------------------

    def _loss(self, objective: Objective):
        def loss_of(params, batch, mean_only, key=None):
            model = nnx.merge(self.graphdef, params)
            if key is None:
                return objective(model, batch, mean_only)
            return objective(model, batch, mean_only, key)

        return loss_of

    def _build_step(self, objective: Objective):
        loss_of = self._loss(objective)
        tx = self.tx

        def step(params, opt_state, batch, mean_only, key):
            (loss, terms), grads = jax.value_and_grad(loss_of, has_aux=True)(
                params, batch, mean_only, key)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            terms = {**terms, "loss": loss, "grad_norm": optax.global_norm(grads)}
            return params, opt_state, terms

        return jax.jit(step, donate_argnums=(0, 1),
                       out_shardings=(self.replicated, self.replicated, self.replicated))

    def _build_grad(self, objective: Objective):
        loss_of = self._loss(objective)
        return jax.jit(jax.value_and_grad(loss_of, has_aux=True),
                       out_shardings=self.replicated)

    def loss_and_grads(self, batch: Batch, mean_only: bool = False):
        """Loss, terms and gradients on one (sharded) batch, without updating (for tests)."""
        (loss, terms), grads = self._grad_fn(self.params, self._shard(batch),
                                             jnp.float32(mean_only))
        return loss, terms, grads

    def _step_key(self, step: int) -> jax.Array | None:
        """The dropout key of training step ``step`` (``None`` for a network without dropout:
        its objective is then called without one). Fixed by ``(cfg.seed, step)``, so a resumed
        run draws the same masks."""
        if getattr(self.model, "dropout", 0.0) <= 0.0:
            return None
        key = jax.random.fold_in(jax.random.PRNGKey(self.cfg.seed), step)
        return jax.device_put(key, self.replicated)

    def _shard(self, batch: Batch) -> dict[str, jax.Array]:
        return {k: jax.device_put(np.asarray(v), self.data_sharding) for k, v in batch.items()}

    # -- checkpoints -------------------------------------------------------------------------

    def _ckpt_path(self, epoch: int) -> Path:
        return self.ckpt_dir / f"ckpt_epoch_{epoch:04d}.npz"

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.ckpt_dir.glob("ckpt_epoch_*.npz"))
        return found[-1] if found else None

    def save_checkpoint(self, epoch: int, step: int, history: list[dict]) -> Path:
        arrays = {f"params/{k}": v for k, v in state_to_arrays(self.params).items()}
        arrays |= {f"opt/{k}": v for k, v in state_to_arrays(self.opt_state).items()}
        path = self._ckpt_path(epoch)
        write_npz(path, **arrays)
        write_json(path.with_suffix(".json"), {"epoch": epoch, "step": step, "history": history})
        for old in sorted(self.ckpt_dir.glob("ckpt_epoch_*.npz"))[: -self.cfg.keep_checkpoints]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
        return path

    def restore_checkpoint(self, path: Path) -> tuple[int, int, list[dict]]:
        arrays = load_checkpoint_arrays(path)
        params = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
        opt = {k[len("opt/"):]: v for k, v in arrays.items() if k.startswith("opt/")}
        self.params = jax.device_put(restore_state(self.params, params, str(path)),
                                     self.replicated)
        self.opt_state = jax.device_put(restore_state(self.opt_state, opt, str(path)),
                                        self.replicated)
        meta = read_json(path.with_suffix(".json"))
        return int(meta["epoch"]), int(meta["step"]), list(meta["history"])

    # -- the loop ----------------------------------------------------------------------------

    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.cfg.seed, epoch]).permutation(self.n)

    def _epoch_batches(self, epoch: int) -> Iterator[Batch]:
        if isinstance(self.train, BatchSource):
            batches = iter(self.train.epoch_batches(epoch))
            for i in range(self.steps_per_epoch):
                batch = next(batches, None)
                if batch is None:
                    raise RuntimeError(f"the batch source ended after {i} of "
                                       f"{self.steps_per_epoch} batches in epoch {epoch}")
                yield batch
            return
        order = self._epoch_order(epoch)
        bs = self.cfg.batch_size
        for i in range(self.steps_per_epoch):
            idx = np.sort(order[i * bs:(i + 1) * bs])
            yield {k: v[idx] for k, v in self.train.items()}

    def sync_model(self) -> nnx.Module:
        """Copy the current parameters into ``self.model`` (host-side module) and return it."""
        nnx.update(self.model, jax.device_get(self.params))
        return self.model

    def fit(self) -> TrainResult:
        cfg = self.cfg
        start_epoch, step, history = 0, 0, []
        latest = self.latest_checkpoint()
        if cfg.resume and latest is not None:
            last_epoch, step, history = self.restore_checkpoint(latest)
            start_epoch = last_epoch + 1
            log.info("resumed from %s (epoch %d, step %d)", latest, last_epoch, step)
        elif latest is not None:
            for old in self.ckpt_dir.glob("ckpt_epoch_*"):
                old.unlink()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._write_csv(history)
        n_reported = len(history)
        bar = tqdm(total=self.total_steps, initial=step, desc="train", unit="step",
                   disable=not self.progress or None)
        t0 = time.perf_counter()
        try:
            for epoch in range(start_epoch, cfg.epochs):
                mean_only = jnp.float32(epoch < cfg.mean_first_epochs)
                sums: dict[str, float] = {}
                window: dict[str, float] = {}
                for host_batch in self._epoch_batches(epoch):
                    batch = self._shard(host_batch)
                    new_params, new_opt, terms = self._step_fn(
                        self.params, self.opt_state, batch, mean_only, self._step_key(step))
                    terms = {k: float(v) for k, v in jax.device_get(terms).items()}
                    if not all(math.isfinite(v) for v in terms.values()):
                        raise TrainingDiverged(self._diverged_message(epoch, step, terms))
                    self.params, self.opt_state = new_params, new_opt
                    step += 1
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + v
                        window[k] = window.get(k, 0.0) + v
                    if step % cfg.log_every == 0:
                        n_win = (step - 1) % cfg.log_every + 1
                        history.append(self._row("step", epoch, step, t0,
                                                 {k: v / n_win for k, v in window.items()}))
                        window = {}
                    bar.update()
                    bar.set_postfix(loss=f"{terms['loss']:.4g}", epoch=epoch)
                row = {f"train_{k}": v / self.steps_per_epoch for k, v in sums.items()}
                if self.evaluator is not None or self.on_debug is not None:
                    model = self.sync_model()
                    if self.evaluator is not None:
                        row |= {f"val_{k}": v for k, v in self.evaluator(model).items()}
                    last = epoch == cfg.epochs - 1
                    if self.on_debug is not None and ((epoch + 1) % cfg.debug_every_epochs == 0
                                                      or last):
                        self.on_debug(model, epoch, step)
                history.append(self._row("epoch", epoch, step, t0, row))
                self.save_checkpoint(epoch, step, history)
                self._write_csv(history)
                if self.on_rows is not None:
                    self.on_rows(history[n_reported:])
                n_reported = len(history)
                log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs, _short(row))
                if self.on_epoch_end is not None:
                    self.on_epoch_end(epoch)
        finally:
            bar.close()
        return TrainResult(self.sync_model(), cfg.epochs - start_epoch, step, history)

    def _diverged_message(self, epoch: int, step: int, terms: dict[str, float]) -> str:
        latest = self.latest_checkpoint()
        shown = ", ".join(f"{k}={v:.6g}" for k, v in sorted(terms.items()))
        where = f"; last good checkpoint: {latest}" if latest else "; no checkpoint was written yet"
        return f"non-finite loss at step {step} (epoch {epoch}): {shown}{where}"

    def _row(self, kind: str, epoch: int, step: int, t0: float, values: dict) -> dict[str, Any]:
        lr = float(self.schedule(step))
        return {"kind": kind, "epoch": epoch, "step": step, "lr": lr,
                "time_s": round(time.perf_counter() - t0, 3), **values}

    def _write_csv(self, history: list[dict]) -> None:
        columns: list[str] = ["kind", "epoch", "step", "lr", "time_s"]
        for row in history:
            columns += [c for c in row if c not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
        with atomic_file(self.out_dir / "metrics.csv") as tmp:
            tmp.write_text(buf.getvalue())


def _short(row: dict[str, Any]) -> str:
    keys = [k for k in row if k.startswith("val_")][:6] or list(row)[:6]
    return json.dumps({k: round(row[k], 4) for k in keys if isinstance(row[k], float)})
